"""bench/slca_authors_loop.py's plain-torch SLCA loop against neve's SLCA on identical inputs.

With the whole experience in one mini-batch (so the data order cannot differ),
the backbone in eval mode and the same initial head, the authors' stage 1 and
neve's ``SLCA`` (``norm_stats="eval"``, alignment off) must take the same
steps: the same backbone and the same head rows, up to float rounding.
"""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from neve.benchmarks import LabelledTensorDataset
from neve.models import PretrainedClassifier
from neve.plugins import ClassifierAlignmentPlugin, SlowLearnerPlugin
from neve.strategies import SLCA

PATH = Path(__file__).resolve().parents[1] / "bench" / "slca_authors_loop.py"
SPEC = importlib.util.spec_from_file_location("neve_bench_slca_authors_loop", PATH)
loop = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(loop)

N_PER_CLASS, DIM, EPOCHS, SEED = 6, 5, 3, 4


def backbone() -> nn.Module:
    """Conv + batch norm (running statistics away from 0 / 1) + dropout: eval mode matters."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, DIM, 3), nn.BatchNorm2d(DIM), nn.ReLU(), nn.Dropout(0.5),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    return net


@pytest.fixture(scope="module")
def stream():
    g = torch.Generator().manual_seed(1)
    y = torch.arange(4).repeat_interleave(N_PER_CLASS)
    x = torch.randn(len(y), 3, 6, 6, generator=g) + y.view(-1, 1, 1, 1) * 0.3
    data = LabelledTensorDataset(x, y)
    return data, nc_benchmark(data, data, n_experiences=2, task_labels=False,
                              fixed_class_order=[0, 1, 2, 3])


def neve_slca(reset: bool) -> SLCA:
    model = PretrainedClassifier(backbone(), num_classes=2, feature_dim=DIM)
    return SLCA(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4),
        train_mb_size=2 * N_PER_CLASS, train_epochs=EPOCHS, eval_mb_size=64,
        evaluator=EvaluationPlugin(loggers=[]),
        slow_learner=SlowLearnerPlugin(0.01, norm_stats="eval", head_init="trunc_normal",
                                       reset_optimizer=reset, seed=SEED),
        alignment=ClassifierAlignmentPlugin(epochs=0),
    )


def authors_task(net: nn.Module, blocks: nn.ModuleList, data, classes: list[int]) -> None:
    mask = torch.isin(data.targets, torch.tensor(classes))
    for p in blocks[:-1].parameters():
        p.requires_grad_(False)
    loop.train_task(net, blocks, data.data[mask], data.targets[mask] - min(classes),
                    epochs=EPOCHS, batch_size=2 * N_PER_CLASS, lr=0.01, scale=0.01,
                    norm="eval", generator=torch.Generator().manual_seed(0), device="cpu")


def assert_same_backbone(a: nn.Module, b: nn.Module, start: nn.Module) -> None:
    moved = False
    for (name, pa), pb, p0 in zip(a.state_dict().items(), b.state_dict().values(),
                                  start.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-7, rtol=1e-5), name
        moved |= not torch.equal(pa, p0)
    assert moved  # the backbone learned (slowly); equal buffers mean eval mode on both sides


def test_first_task_matches_neve_slca(stream):
    data, bm = stream
    strategy = neve_slca(reset=False)
    start = copy.deepcopy(strategy.model.features)
    strategy.train(bm.train_stream[0])
    # the authors' block: drawn as neve's head_init draws experience 0 (seed + 0)
    blocks = nn.ModuleList([loop.new_block(DIM, 2, torch.Generator().manual_seed(SEED))])
    initial = blocks[0].weight.detach().clone()
    net = copy.deepcopy(start)
    authors_task(net, blocks, data, [0, 1])
    head = strategy.model.classifier.classifier
    assert not torch.allclose(blocks[0].weight, initial, atol=1e-4)  # the head learned
    assert torch.allclose(head.weight[:2], blocks[0].weight, atol=1e-7, rtol=1e-5)
    assert torch.allclose(head.bias[:2], blocks[0].bias, atol=1e-7, rtol=1e-5)
    assert_same_backbone(strategy.model.features, net, start)
    assert torch.equal(net[1].running_mean, start[1].running_mean)


def test_second_task_matches_with_head_init_and_fresh_optimizer(stream):
    """A new optimizer per task (``reset_optimizer``) and the same new rows give the same steps;
    the kept optimizer's momentum moves the backbone differently."""
    data, bm = stream
    final = {}
    for reset in (True, False):
        strategy = neve_slca(reset=reset)
        start = copy.deepcopy(strategy.model.features)
        for exp in bm.train_stream:
            strategy.train(exp)
        final[reset] = strategy.model
    blocks = nn.ModuleList([loop.new_block(DIM, 2, torch.Generator().manual_seed(SEED))])
    net = copy.deepcopy(start)
    authors_task(net, blocks, data, [0, 1])
    blocks.append(loop.new_block(DIM, 2, torch.Generator().manual_seed(SEED + 1)))
    authors_task(net, blocks, data, [2, 3])
    head = final[True].classifier.classifier
    assert torch.allclose(head.weight[2:4], blocks[1].weight, atol=1e-7, rtol=1e-5)
    assert torch.allclose(head.bias[2:4], blocks[1].bias, atol=1e-7, rtol=1e-5)
    assert_same_backbone(final[True].features, net, start)
    # old rows: frozen by the authors; in neve only weight decay moves them (zero gradient)
    assert torch.allclose(head.weight[:2], blocks[0].weight, rtol=1e-4, atol=0)
    kept = final[False].features.state_dict()
    assert any(not torch.allclose(v, net.state_dict()[k], atol=1e-7, rtol=1e-5)
               for k, v in kept.items())
