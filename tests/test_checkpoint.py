from pathlib import Path

import torch
from resume_harness import run_full_and_resumed

from neve.plugins import restore_submodule_attributes

RUN = Path(__file__).with_name("naive_digits_run.py")


def test_resumed_run_ends_exactly_where_uninterrupted_run_ends(tmp_path):
    a, b = run_full_and_resumed(RUN, tmp_path)
    assert sorted(b["accs"]) == [3, 4]
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    for i in (3, 4):
        assert a["accs"][i] == b["accs"][i]
    assert a["accs"][3] > 0.15  # it learned (Naive keeps about the last 2 of 10 classes)


def test_dill_pickles_torch_optimizers_by_reference():
    import dill

    restore_submodule_attributes()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    blob = dill.dumps(opt)
    # by reference the class costs a few bytes; by value it drags whole modules
    assert b"torch.optim.sgd" in blob and len(blob) < 2000
    assert type(dill.loads(blob)) is torch.optim.SGD
