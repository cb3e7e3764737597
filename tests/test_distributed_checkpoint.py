"""Checkpoint and resume under torch.distributed (#14).

Every process calls ``save_checkpoint`` with the same path (as a script run by
torchrun does); rank 0 alone writes the file and the others wait for it, so no
two processes write the same file at once and none reads it half-written. Each
of 2 gloo processes then resumes SLCA fine-tuned with DDP (GlobalBatchPlugin,
DDPPlugin) from it and ends exactly where the uninterrupted 2-process run ends.
"""

from functools import partial

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from gloo_harness import error_of, run_on_processes
from resume_harness import assert_resumes_exactly
from test_distributed_methods import example

import neve.plugins.checkpoint as checkpoint
import neve.plugins.checkpoint_file as checkpoint_file
from neve.benchmarks import digits
from neve.models import PretrainedClassifier
from neve.plugins import ClassifierAlignmentPlugin, DDPPlugin, GlobalBatchPlugin
from neve.strategies import SLCA


def make_slca() -> SLCA:
    model = PretrainedClassifier(example().backbone(0), num_classes=10, feature_dim=32)
    return SLCA(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        train_mb_size=16, train_epochs=1, eval_mb_size=100,
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
        alignment=ClassifierAlignmentPlugin(samples_per_class=16, epochs=1, seed=0),
        plugins=[GlobalBatchPlugin(seed=0), DDPPlugin()],
    )


def on_process(folder: str, rank: int, world: int) -> dict:
    writes = []
    original = checkpoint_file.write_checkpoint_file
    checkpoint_file.write_checkpoint_file = lambda path, payload: (writes.append(rank),
                                                         original(path, payload))
    train, test = digits(seed=0)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    assert_resumes_exactly(make_slca, bm, f"{folder}/ck.ckpt", save_after=2)
    failure = error_of(  # rank 0 cannot write: every process raises, none waits forever
        lambda: checkpoint.save_checkpoint(make_slca(), f"{folder}/missing/ck.ckpt"),
        (OSError, RuntimeError, ValueError))
    return {"writes": len(writes), "failure": failure}


def test_two_processes_resume_from_the_file_rank_0_wrote(tmp_path):
    ranks = run_on_processes(partial(on_process, str(tmp_path)), tmp_path)
    assert [r["writes"] for r in ranks] == [2, 0]  # rank 0 alone writes (the 2nd call fails)
    assert "missing" in ranks[0]["failure"]
    assert ranks[1]["failure"].startswith("ValueError: rank 0 could not write")
    assert (tmp_path / "ck.ckpt").is_file()
    assert not (tmp_path / "ck.ckpt.partial").exists()
