"""Avalanche's accuracy-matrix, forgetting and BWT metrics in neve's safe checkpoint.

A run interrupted after experience 2 and resumed in a new process reports the
uninterrupted run's accuracy matrix, forgetting and BWT; and those agree with the
figures of neve.models.accuracy_matrix computed from the matrix of the run.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from resume_harness import run_full_and_resumed

from neve.models.accuracy_matrix import (
    average_forgetting,
    backward_transfer,
    forgetting_per_experience,
)

RUN = Path(__file__).with_name("results_digits_run.py")


@pytest.fixture(scope="module", params=["naive", "analytic"])
def runs(request, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RESULTS_RUN_METHOD", request.param)
        return run_full_and_resumed(RUN, tmp_path_factory.mktemp(request.param))


def test_resumed_run_reports_the_same_matrix_and_forgetting(runs):
    full, resumed = runs
    assert sorted(resumed["accs"]) == [3, 4]
    for key in ("matrix", "last_matrix", "matrix_from_history", "matrix_from_curriculum"):
        assert full[key].shape == (5, 5) and torch.equal(full[key], resumed[key]), key
    for key in ("experience_forgetting", "stream_forgetting", "experience_bwt", "stream_bwt",
                "history", "last"):
        assert full[key] == resumed[key], key
    assert any(k.startswith("StreamForgetting") for k in full["history"])
    assert len(full["history"]["StreamForgetting/eval_phase/test_stream"]) == 5


def test_avalanches_forgetting_and_bwt_are_the_first_reference_figures(runs):
    full, _ = runs
    acc = full["matrix_from_history"].numpy()
    assert np.allclose(acc, full["matrix"].double().numpy(), atol=1e-6)
    assert (np.diag(acc) > 0.3).all()  # every experience was learned (10-class chance: 0.1)
    # Avalanche: accuracy right after learning an experience minus now, experiences 0..3
    first = forgetting_per_experience(acc, reference="first")
    assert sorted(full["experience_forgetting"]) == [0, 1, 2, 3]
    for j, value in full["experience_forgetting"].items():
        assert value == pytest.approx(acc[j, j] - acc[4, j]) == pytest.approx(first[j])
        assert full["experience_bwt"][j] == pytest.approx(-value)
    assert full["stream_forgetting"] == pytest.approx(average_forgetting(acc, "first"))
    assert full["stream_bwt"] == pytest.approx(backward_transfer(acc))
