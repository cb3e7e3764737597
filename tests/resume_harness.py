"""Checkpoint/resume harness shared by the ``*_digits_run.py`` scripts and their tests.

A script builds a strategy and a 5-experience benchmark, then calls
:func:`train_with_checkpoint` in one of three modes:

* ``full``: all experiences, no interruption;
* ``first``: experiences ``0..save_after``, then ``neve.plugins.save_checkpoint``;
* ``resume``: ``neve.plugins.maybe_load_checkpoint`` in a new process, then the rest.

A test calls :func:`run_full_and_resumed` and compares what the uninterrupted
and the resumed process saved; :func:`assert_resumes_exactly` does the same
comparison inside the test process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from neve.plugins import maybe_load_checkpoint, save_checkpoint

STREAM_ACC = "Top1_Acc_Stream/eval_phase/test_stream/Task000"


def train_with_checkpoint(strategy, benchmark, mode: str, ckpt: str | None,
                          metric: str = STREAM_ACC, save_after: int = 2):
    """Train in ``mode``; returns ``(strategy, {experience: metric after it})``."""
    if mode not in ("full", "first", "resume"):
        raise ValueError(f"mode must be 'full', 'first' or 'resume', got {mode!r}")
    start = 0
    if mode == "resume":
        strategy, start = maybe_load_checkpoint(strategy, ckpt)
    stop = save_after + 1 if mode == "first" else len(benchmark.train_stream)
    results = {}
    for i in range(start, stop):
        strategy.train(benchmark.train_stream[i])
        results[i] = strategy.eval(benchmark.test_stream)[metric]
        if mode == "first" and i == save_after:
            save_checkpoint(strategy, ckpt)
    return strategy, results


def run_full_and_resumed(script: Path, tmp_path: Path) -> tuple[dict, dict]:
    """Run ``script`` uninterrupted and interrupted+resumed; return both saved dicts.

    The uninterrupted run and the first half of the interrupted one run in
    parallel; the resumed half runs in a fresh process after the checkpoint exists.
    """
    full, resumed, ckpt = tmp_path / "full.pt", tmp_path / "resumed.pt", tmp_path / "ck.ckpt"

    def start(*args):
        return subprocess.Popen(
            [sys.executable, str(script), *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def finish(proc):
        out, _ = proc.communicate()
        assert proc.returncode == 0, out[-3000:]

    first = start("first", tmp_path / "first.pt", ckpt)
    uninterrupted = start("full", full)
    finish(first)
    assert ckpt.is_file()
    finish(start("resume", resumed, ckpt))  # a new process
    finish(uninterrupted)
    return torch.load(full, weights_only=True), torch.load(resumed, weights_only=True)


def assert_resumes_exactly(make, benchmark, ckpt: Path, save_after: int = 2) -> None:
    """In this process, a run checkpointed after ``save_after`` experiences and resumed in
    a fresh ``make()`` ends with the uninterrupted run's evaluation and model weights.

    ``make()`` builds the strategy; both training runs start from ``torch.manual_seed(0)``.
    """
    torch.manual_seed(0)
    full = make()
    for exp in benchmark.train_stream:
        full.train(exp)
    acc_full = full.eval(benchmark.test_stream)
    torch.manual_seed(0)
    first = make()
    for exp in benchmark.train_stream[:save_after]:
        first.train(exp)
    save_checkpoint(first, ckpt)
    resumed, start = maybe_load_checkpoint(make(), ckpt)
    assert start == save_after
    for exp in benchmark.train_stream[start:]:
        resumed.train(exp)
    assert resumed.eval(benchmark.test_stream) == acc_full
    state, state_resumed = full.model.state_dict(), resumed.model.state_dict()
    assert state.keys() == state_resumed.keys()
    for k in state:
        assert torch.equal(state[k], state_resumed[k]), k
