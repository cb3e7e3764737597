"""The slow learner's ``"eval_slow"`` normalisation and the rates of a scheduler built before
the split: each compared with an independent computation written here."""

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive

from neve.benchmarks import digits
from neve.models import PretrainedClassifier
from neve.models.norm_stats import batch_moments, move_running_stats, slow_momentum
from neve.plugins import SlowLearnerPlugin
from neve.plugins.slow_learner import split_param_groups


def bn_dropout_backbone(feature_dim: int = 12) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, feature_dim),
                               torch.nn.BatchNorm1d(feature_dim), torch.nn.ReLU(),
                               torch.nn.Dropout(0.5))


@pytest.fixture(scope="module")
def split_digits():
    train, test = digits(seed=0)
    return nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)


class Recorder(SupervisedPlugin):
    """Per training forward: the batch-norm layer's input, its output, and whether the
    layer's output equals the eval-mode normalisation with the running statistics held
    just before the forward (computed here with ``F.batch_norm(training=False)``)."""

    def __init__(self, bn):
        super().__init__()
        self.bn, self.inputs, self.as_eval, self.held = bn, [], [], None
        bn.register_forward_hook(self._hook)
        self.recording = False

    def before_forward(self, strategy, **kwargs):
        self.held = (self.bn.running_mean.clone(), self.bn.running_var.clone())
        self.recording = True

    def after_forward(self, strategy, **kwargs):
        self.recording = False

    def _hook(self, module, inputs, output):
        if not self.recording:
            return
        x = inputs[0].detach().clone()
        self.inputs.append(x)
        expected = torch.nn.functional.batch_norm(x, *self.held, module.weight, module.bias,
                                                  training=False, eps=module.eps)
        self.as_eval.append(bool(torch.allclose(output, expected, atol=1e-6)))


def test_eval_slow_normalises_as_eval_and_moves_statistics_at_the_slow_rate(split_digits):
    torch.manual_seed(0)
    model = PretrainedClassifier(bn_dropout_backbone(), num_classes=2, feature_dim=12)
    bn = model.features[2]
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    count = int(bn.num_batches_tracked)
    recorder = Recorder(bn)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                     train_mb_size=32, train_epochs=2, evaluator=EvaluationPlugin(loggers=[]),
                     eval_every=1, plugins=[SlowLearnerPlugin(0.2, norm_stats="eval_slow"),
                                            recorder])
    strategy.train(split_digits.train_stream[0], eval_streams=[split_digits.test_stream[:1]])
    assert len(recorder.inputs) > 4 and all(recorder.as_eval)
    # by hand: r <- (1 - m) r + m s over the recorded training batches only (not the
    # periodic evaluation's), m = 0.1 * 0.2, s = the batch mean and unbiased variance
    m = 0.1 * 0.2
    for x in recorder.inputs:
        mean = (1 - m) * mean + m * x.mean(0)
        var = (1 - m) * var + m * x.var(0, unbiased=True)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == count + len(recorder.inputs)
    assert not torch.equal(bn.running_mean, torch.zeros(12))  # they did move
    # after the experience: no hook of the plugin left, modes and momentum as before
    assert list(bn._forward_hooks.values()) == [recorder._hook]
    assert all(m.training for m in model.modules()) and bn.momentum == 0.1
    with torch.no_grad():
        model.eval()
        model(split_digits.test_stream[0].dataset[0][0][None])
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)


def test_eval_slow_with_scale_zero_equals_eval(split_digits):
    def run(norm):
        torch.manual_seed(0)
        model = PretrainedClassifier(bn_dropout_backbone(), num_classes=2, feature_dim=12)
        strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                         train_mb_size=32, evaluator=EvaluationPlugin(loggers=[]),
                         plugins=[SlowLearnerPlugin(0.0, norm_stats=norm)])
        for exp in split_digits.train_stream[:2]:
            strategy.train(exp)
        return model.state_dict()

    ours, by_eval = run("eval_slow"), run("eval")
    for key, value in by_eval.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(ours[key], value), key


def test_move_running_stats_equals_torch_train_mode_update():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 5, 3, 3, generator=gen) * 2 + 1
    torch_bn, ours = torch.nn.BatchNorm2d(5, momentum=0.3), torch.nn.BatchNorm2d(5)
    for bn in (torch_bn, ours):
        bn.running_mean.uniform_(generator=gen)
    ours.load_state_dict(torch_bn.state_dict())
    torch_bn.train()(x)  # torch's own train-mode update at momentum 0.3
    move_running_stats(ours, x, 0.3)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(ours.state_dict()[key], torch_bn.state_dict()[key])
    mean, var = batch_moments(x)
    torch.testing.assert_close(var, x.transpose(0, 1).reshape(5, -1).var(1, unbiased=True))
    torch.testing.assert_close(mean, x.mean((0, 2, 3)))


def test_slow_momentum_of_a_cumulative_layer_and_a_batch_of_one():
    bn = torch.nn.BatchNorm1d(3, momentum=None)
    bn.num_batches_tracked.fill_(4)
    assert slow_momentum(bn, 0.5) == pytest.approx(0.5 / 5)
    assert slow_momentum(torch.nn.BatchNorm1d(3), 0.5) == pytest.approx(0.05)
    before = bn.state_dict()
    move_running_stats(bn, torch.randn(1, 3), 0.5)  # no variance in one sample: no move
    assert all(torch.equal(v, before[k]) for k, v in bn.state_dict().items())


# ------------------------------------------------------------------ schedulers and the split
def two_part_model():
    torch.manual_seed(0)
    return torch.nn.ModuleDict({"features": torch.nn.Linear(4, 3),
                                "classifier": torch.nn.Linear(3, 2)})


def test_a_scheduler_built_before_the_split_drives_the_backbone_at_the_scaled_rate():
    """OneCycleLR (it stores initial_lr, max_lr and min_lr in the groups) built on one
    group, then split: every step's rates equal a hand-made two-group optimizer's
    whose own OneCycleLR has the backbone's max_lr times the scale."""
    scale, steps = 0.01, 12
    model = two_part_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=steps)
    split_param_groups(optimizer, list(model["classifier"].parameters()), scale)
    twin = two_part_model()
    reference = torch.optim.SGD([{"params": twin["classifier"].parameters()},
                                 {"params": twin["features"].parameters()}], lr=0.1, momentum=0.9)
    reference_scheduler = torch.optim.lr_scheduler.OneCycleLR(
        reference, max_lr=[0.1, 0.1 * scale], total_steps=steps)
    for _ in range(steps - 1):
        for opt in (optimizer, reference):
            opt.step()
        scheduler.step()
        reference_scheduler.step()
        ours = [g["lr"] for g in optimizer.param_groups]
        assert ours == pytest.approx([g["lr"] for g in reference.param_groups], rel=1e-12)
    head, backbone = optimizer.param_groups
    for key in ("initial_lr", "max_lr", "min_lr"):
        assert backbone[key] == pytest.approx(head[key] * scale, rel=1e-12), key


def test_splitting_again_with_another_scale_rescales_every_rate_of_the_pair():
    model = two_part_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=5)
    head_params = list(model["classifier"].parameters())
    split_param_groups(optimizer, head_params, 0.01)
    split_param_groups(optimizer, head_params, 0.5)  # the pairs' path
    head, backbone = optimizer.param_groups
    for key in ("lr", "initial_lr", "max_lr", "min_lr"):
        assert backbone[key] == pytest.approx(head[key] * 0.5, rel=1e-12), key
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model["features"].parameters()}
