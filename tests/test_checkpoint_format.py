"""neve's default checkpoint format: plain data only, hashed, checked against the strategy.

Issue #12, findings 6 (a flipped byte), 7 (a crafted file runs code), 8 (truncated,
empty or random files) and 9 (another strategy's file, another configuration).
"""

import pickle
import random
import warnings

import numpy as np
import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import (
    AccuracyMatrixPluginMetric,
    StreamConfusionMatrix,
    accuracy_metrics,
    bwt_metrics,
    forgetting_metrics,
)
from avalanche.models import IncrementalClassifier
from avalanche.training.plugins import EvaluationPlugin, EWCPlugin, ReplayPlugin
from avalanche.training.supervised import Naive
from torch import nn

from neve.benchmarks import digits
from neve.models import PretrainedClassifier
from neve.plugins import (
    CheckpointError,
    CurriculumEffectiveness,
    SlowLearnerPlugin,
    maybe_load_checkpoint,
    save_checkpoint,
)
from neve.strategies import SLCA, AnalyticCIL


@pytest.fixture(scope="module")
def bm():
    train, test = digits(seed=0)
    return nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)


def quiet_evaluator(*metrics):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin(*(metrics or [accuracy_metrics(stream=True)]), loggers=[])


def naive(plugins=None, evaluator=None, model=None, lr=0.02):
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    return Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
        criterion=nn.CrossEntropyLoss(), train_mb_size=32, train_epochs=1, eval_mb_size=256,
        plugins=plugins, evaluator=evaluator or quiet_evaluator(),
    )


def analytic(buffer_size=64, gamma=1.0):
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU())
    return AnalyticCIL(backbone=backbone, feature_dim=24, buffer_size=buffer_size, gamma=gamma,
                       train_mb_size=64, eval_mb_size=256, evaluator=quiet_evaluator())


def slca():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
    model = PretrainedClassifier(backbone, num_classes=2, feature_dim=16)
    return SLCA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                train_mb_size=32, eval_mb_size=256, evaluator=quiet_evaluator(),
                slow_learner=SlowLearnerPlugin(0.1))


def trained(strategy, bm, n=1):
    for exp in bm.train_stream[:n]:
        strategy.train(exp)
        strategy.eval(bm.test_stream[:n])
    return strategy


def snapshot(strategy):
    state = {k: v.clone() for k, v in strategy.model.state_dict().items()
             if isinstance(v, torch.Tensor)}
    return state, strategy.clock.train_exp_counter


def assert_same(a, b):
    assert a[1] == b[1]
    assert a[0].keys() == b[0].keys()
    for k in a[0]:
        assert a[0][k].shape == b[0][k].shape and torch.equal(a[0][k], b[0][k]), k


@pytest.fixture(scope="module")
def naive_file(bm, tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "naive.ckpt"
    save_checkpoint(trained(naive(), bm), path)
    return path


# ---------------------------------------------------------------- finding 7: plain data only
def test_default_file_holds_only_plain_data(naive_file):
    outer = torch.load(naive_file, weights_only=True)
    assert isinstance(outer, dict) and "sha256" in outer


def test_resume_in_process_is_exact_with_a_growing_head_and_rng_state(bm, tmp_path):
    def make():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(),
                              IncrementalClassifier(16, initial_out_features=2))
        return naive(model=model)

    path = tmp_path / "grow.ckpt"
    a = trained(make(), bm, 2)
    save_checkpoint(a, path)
    draws = (random.random(), float(np.random.rand()), torch.rand(1))
    b, start = maybe_load_checkpoint(make(), path)
    assert start == 2
    assert (random.random(), float(np.random.rand()), torch.rand(1)) == draws
    assert b.model[3].classifier.out_features == a.model[3].classifier.out_features > 2
    assert_same(snapshot(a), snapshot(b))
    params = {id(p) for p in b.model.parameters()}
    assert all(id(p) in params for g in b.optimizer.param_groups for p in g["params"])
    assert all(id(p) in params for p in b.optimized_param_id.values())
    for s in (a, b):  # both from the saved point, RNG states included
        maybe_load_checkpoint(s, path)
        s.train(bm.train_stream[2])
    assert_same(snapshot(a), snapshot(b))
    assert torch.equal(a.optimizer.state_dict()["state"][0]["momentum_buffer"],
                       b.optimizer.state_dict()["state"][0]["momentum_buffer"])
    last = b.evaluator.get_last_metrics()
    assert last and last == a.evaluator.get_last_metrics()


def test_slow_learner_groups_and_metric_state_survive(bm, tmp_path):
    a = trained(slca(), bm, 2)
    save_checkpoint(a, tmp_path / "s.ckpt")
    b, _ = maybe_load_checkpoint(slca(), tmp_path / "s.ckpt")
    assert [g["neve_slow_learner_role"] for g in b.optimizer.param_groups] == ["head", "backbone"]
    lrs = [g["lr"] for g in a.optimizer.param_groups]
    assert [g["lr"] for g in b.optimizer.param_groups] == lrs
    names = {id(p): n for n, p in b.model.named_parameters()}
    assert [[names[id(p)] for p in g["params"]] for g in b.optimizer.param_groups] == [
        [n for n, p in a.model.named_parameters() if any(p is q for q in g["params"])]
        for g in a.optimizer.param_groups
    ]
    assert b.alignment.experiences_seen == 2

    c = naive(evaluator=quiet_evaluator(accuracy_metrics(experience=True),
                                        CurriculumEffectiveness()))
    trained(c, bm, 2)
    save_checkpoint(c, tmp_path / "c.ckpt")
    d, _ = maybe_load_checkpoint(
        naive(evaluator=quiet_evaluator(accuracy_metrics(experience=True),
                                        CurriculumEffectiveness())), tmp_path / "c.ckpt")
    assert d.evaluator.metrics[-1].state_dict() == c.evaluator.metrics[-1].state_dict()
    assert d.evaluator.all_metric_results == c.evaluator.all_metric_results


@pytest.mark.parametrize("what", ["replay", "ewc", "confusion matrix"])
def test_state_that_cannot_be_represented_is_refused_at_save(bm, tmp_path, what):
    if what == "confusion matrix":  # an Avalanche metric with state and no adapter
        s = naive(evaluator=quiet_evaluator(accuracy_metrics(stream=True),
                                            StreamConfusionMatrix(num_classes=10,
                                                                  save_image=False)))
        name = "StreamConfusionMatrix"
    else:
        plugin = ReplayPlugin(mem_size=20) if what == "replay" else EWCPlugin(ewc_lambda=1.0)
        s = naive(plugins=[plugin])
        name = type(plugin).__name__
    trained(s, bm)
    with pytest.raises(ValueError, match=name) as info:
        save_checkpoint(s, tmp_path / "x.ckpt")
    assert "format='pickle'" in str(info.value)
    assert not (tmp_path / "x.ckpt").exists()


def test_accuracy_matrix_forgetting_and_bwt_metrics_are_saved_and_loaded(bm, tmp_path):
    """Once refused like the confusion matrix; now their state is plain data in the file."""
    def metrics():
        return quiet_evaluator(accuracy_metrics(stream=True, experience=True),
                               AccuracyMatrixPluginMetric(),
                               forgetting_metrics(experience=True, stream=True),
                               bwt_metrics(experience=True, stream=True))

    s = trained(naive(evaluator=metrics()), bm, 2)
    save_checkpoint(s, tmp_path / "f.ckpt")
    assert isinstance(torch.load(tmp_path / "f.ckpt", weights_only=True), dict)
    r, start = maybe_load_checkpoint(naive(evaluator=metrics()), tmp_path / "f.ckpt")
    assert start == 2
    for a, b in zip(s.evaluator.metrics, r.evaluator.metrics, strict=True):
        assert type(a) is type(b)
        if isinstance(a, AccuracyMatrixPluginMetric):
            assert torch.equal(a.matrix, b.matrix) and a.matrix is not b.matrix
            assert b.num_training_steps == a.num_training_steps == 1
        elif hasattr(a, "forgetting"):
            assert b.forgetting.initial == a.forgetting.initial != {}
            assert b.forgetting.last == a.forgetting.last
            assert b.train_exp_id == a.train_exp_id == 1
    stream = [m for m in r.evaluator.metrics if type(m).__name__ == "StreamForgetting"][0]
    assert stream.result() == [m for m in s.evaluator.metrics
                               if type(m).__name__ == "StreamForgetting"][0].result()


def test_pickle_format_stays_available_as_an_explicit_opt_in(bm, tmp_path):
    s = trained(naive(plugins=[ReplayPlugin(mem_size=20)]), bm)
    save_checkpoint(s, tmp_path / "p.pkl", format="pickle")
    with pytest.raises(CheckpointError, match="format='pickle'"):
        maybe_load_checkpoint(naive(plugins=[ReplayPlugin(mem_size=20)]), tmp_path / "p.pkl")
    r, start = maybe_load_checkpoint(naive(plugins=[ReplayPlugin(mem_size=20)]),
                                     tmp_path / "p.pkl", format="pickle")
    assert start == 1 and len(r.plugins[0].storage_policy.buffer) == 20


# ------------------------------------------------ findings 6 and 8: damaged files, one error
def damaged(path, kind):
    data = bytearray(path.read_bytes())
    if kind.startswith("flip"):
        i = int(len(data) * float(kind[4:]))
        data[i] ^= 0xFF
    elif kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "empty":
        data = b""
    elif kind == "random":
        data = np.random.default_rng(0).bytes(len(data))
    return bytes(data)


@pytest.mark.parametrize("kind", ["flip0.3", "flip0.5", "flip0.7", "flip0.9",
                                  "truncated", "empty", "random"])
def test_a_damaged_file_gives_one_clear_error_and_changes_nothing(naive_file, tmp_path, kind):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(damaged(naive_file, kind))
    s = naive()
    before = snapshot(s)
    with pytest.raises(CheckpointError, match="damaged") as info:
        maybe_load_checkpoint(s, bad)
    assert str(bad) in str(info.value)
    assert_same(before, snapshot(s))


def test_every_flipped_byte_is_refused_or_harmless(bm, tmp_path):
    """Each byte of a small file flipped in turn: an error, or (zip padding) the same state."""
    s = naive(model=nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), evaluator=quiet_evaluator())
    path = tmp_path / "small.ckpt"
    save_checkpoint(s, path)
    reference = snapshot(maybe_load_checkpoint(naive(model=nn.Sequential(
        nn.Flatten(), nn.Linear(64, 2))), path)[0])
    data, loaded = path.read_bytes(), 0
    for i in range(0, len(data), 7):
        flipped = bytearray(data)
        flipped[i] ^= 0xFF
        path.write_bytes(bytes(flipped))
        fresh = naive(model=nn.Sequential(nn.Flatten(), nn.Linear(64, 2)))
        try:
            maybe_load_checkpoint(fresh, path)
        except CheckpointError:
            continue
        loaded += 1
        assert_same(reference, snapshot(fresh))
    assert loaded < len(data) // 7 // 10


# --------------------------------------------------------- finding 7: crafted files never run code
class RunsCommand:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("how", ["pickle", "torch.save", "hashed payload"])
def test_a_crafted_file_never_runs_code(tmp_path, how):
    import hashlib
    import io

    marker, path = tmp_path / "ran", tmp_path / "evil.ckpt"
    evil = {"strategy": RunsCommand(marker), "exp_counter": 3}
    if how == "pickle":
        path.write_bytes(pickle.dumps(evil))
    elif how == "torch.save":
        torch.save(evil, path)
    else:  # a well-formed outer file whose hash matches a malicious payload
        buf = io.BytesIO()
        torch.save(evil, buf)
        blob = buf.getvalue()
        torch.save({"format": "neve.checkpoint", "version": 1,
                    "sha256": hashlib.sha256(blob).hexdigest(),
                    "payload": torch.frombuffer(bytearray(blob), dtype=torch.uint8)}, path)
    with pytest.raises(CheckpointError, match="not a neve checkpoint|damaged"):
        maybe_load_checkpoint(naive(), path)
    assert not marker.exists()


# --------------------------------------------- finding 9: another strategy, another configuration
def test_another_strategys_file_is_refused_naming_both_classes(bm, tmp_path):
    save_checkpoint(trained(slca(), bm), tmp_path / "slca.ckpt")
    target = analytic()
    before = snapshot(target)
    with pytest.raises(CheckpointError) as info:
        maybe_load_checkpoint(target, tmp_path / "slca.ckpt")
    assert "SLCA" in str(info.value) and "AnalyticCIL" in str(info.value)
    assert_same(before, snapshot(target))


def test_other_plugins_are_refused_naming_both(naive_file):
    target = naive(plugins=[SlowLearnerPlugin(0.1, head="3")])
    with pytest.raises(CheckpointError, match="SlowLearnerPlugin"):
        maybe_load_checkpoint(target, naive_file)


def test_a_configuration_mismatch_names_the_settings(bm, tmp_path):
    path = tmp_path / "a.ckpt"
    save_checkpoint(trained(analytic(buffer_size=64, gamma=1.0), bm), path)
    target = analytic(buffer_size=32, gamma=5.0)
    before = snapshot(target)
    with pytest.raises(CheckpointError) as info:
        maybe_load_checkpoint(target, path)
    message = str(info.value)
    assert "buffer_size" in message and "32" in message and "64" in message
    assert "gamma" in message and "5.0" in message and "1.0" in message
    assert_same(before, snapshot(target))


def test_override_takes_the_files_settings(bm, tmp_path):
    path = tmp_path / "a.ckpt"
    source = trained(analytic(buffer_size=64, gamma=1.0), bm)
    save_checkpoint(source, path)
    with pytest.raises(CheckpointError, match="gamma"):
        maybe_load_checkpoint(analytic(buffer_size=64, gamma=5.0), path)
    target, start = maybe_load_checkpoint(analytic(buffer_size=64, gamma=5.0), path,
                                          override=True)
    assert start == 1 and target.head.gamma == 1.0
    assert torch.equal(target.head.weight, source.head.weight)
    assert target.base_trained and target.train_mb_size == 64


def test_the_optimizers_settings_are_checked(naive_file):
    with pytest.raises(CheckpointError, match="lr"):
        maybe_load_checkpoint(naive(lr=0.5), naive_file)


class FailsOnLoad:
    """A plugin whose ``load_state_dict`` refuses the state of a trained one."""

    def __init__(self):
        self.trained = False

    def state_dict(self):
        return {"trained": self.trained}

    def load_state_dict(self, state):
        if state["trained"]:
            raise RuntimeError("plugin refuses")

    def __getattr__(self, name):  # the Avalanche callbacks: do nothing
        if name.startswith(("before", "after")):
            return lambda *a, **k: None
        raise AttributeError(name)


def test_an_error_while_loading_leaves_the_strategy_as_it_was(bm, tmp_path):
    path = tmp_path / "f.ckpt"
    source = trained(naive(plugins=[FailsOnLoad()]), bm)
    source.plugins[0].trained = True
    save_checkpoint(source, path)
    target = naive(plugins=[FailsOnLoad()])
    before = snapshot(target)
    with pytest.raises(CheckpointError, match="plugin refuses"):
        maybe_load_checkpoint(target, path)
    assert_same(before, snapshot(target))
    assert target.optimizer.state_dict()["state"] == {}
