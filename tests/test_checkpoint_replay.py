"""Default-format checkpoints of lazily created tensors and of neve's replay storage (#12.7).

Avalanche's ``NCMClassifier`` registers ``class_means`` as ``None`` and sets it on
first use; ``pretrain_tune(replay_sets=L)`` keeps support sets in a
``RecentSetsBuffer`` inside Avalanche's ``ReplayPlugin``. Both must resume
exactly from ``save_checkpoint``'s default format, and a failed load must leave
the strategy as it was.
"""

import warnings

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.models import DynamicModule
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.storage_policy import ExperienceBalancedBuffer
from resume_harness import assert_resumes_exactly

from neve.benchmarks.datasets import LabelledTensorDataset
from neve.plugins import CheckpointError, maybe_load_checkpoint, save_checkpoint
from neve.plugins.checkpoint_file import read_checkpoint_file, write_checkpoint_file
from neve.strategies import NearestPrototype
from neve.strategies.episodic import RecentSetsBuffer, pretrain_tune


@pytest.fixture(scope="module")
def bm():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g) + torch.arange(6).repeat_interleave(20)[:, None]
    y = torch.arange(6).repeat_interleave(20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nc_benchmark(LabelledTensorDataset(x[::2], y[::2]),
                            LabelledTensorDataset(x[1::2], y[1::2]),
                            n_experiences=3, task_labels=False, seed=0)


def proto():
    return NearestPrototype(num_classes=6, feature_dim=6)


def tune(storage=None):
    strategy = pretrain_tune(6, 6, lr=0.1, replay_sets=2, replay_samples=4)
    if storage is not None:
        strategy.plugins[0].storage_policy = storage
    return strategy


def ncm_attributes(model):
    return model.class_means, dict(model.class_means_dict), model.max_class


def assert_same_ncm(a, b):
    (means_a, dict_a, max_a), (means_b, dict_b, max_b) = a, b
    assert max_a == max_b
    assert (means_a is None) == (means_b is None)
    if means_a is not None:
        assert torch.equal(means_a, means_b)
    assert dict_a.keys() == dict_b.keys()
    assert all(torch.equal(dict_a[k], dict_b[k]) for k in dict_a)


def test_ncm_class_means_and_its_attributes_are_restored_exactly(bm, tmp_path):
    first = proto()
    for exp in bm.train_stream[:2]:
        first.train(exp)
    first.eval(bm.test_stream)  # eval adaptation grows max_class past the trained classes
    save_checkpoint(first, tmp_path / "ck")
    resumed, start = maybe_load_checkpoint(proto(), tmp_path / "ck")
    assert start == 2
    assert_same_ncm(ncm_attributes(resumed.model), ncm_attributes(first.model))
    first.train(bm.train_stream[2])
    resumed.train(bm.train_stream[2])
    assert resumed.eval(bm.test_stream) == first.eval(bm.test_stream)
    assert torch.equal(resumed.model.class_means, first.model.class_means)


def test_an_untrained_ncm_file_unsets_class_means(bm, tmp_path):
    save_checkpoint(proto(), tmp_path / "fresh")
    trained = proto()
    trained.train(bm.train_stream[0])
    maybe_load_checkpoint(trained, tmp_path / "fresh")
    assert_same_ncm(ncm_attributes(trained.model), ncm_attributes(proto().model))
    assert "class_means" not in trained.model.state_dict()


def test_a_failed_load_puts_the_unset_buffer_back(bm, tmp_path):
    first = proto()
    first.train(bm.train_stream[0])
    save_checkpoint(first, tmp_path / "ck")
    state = read_checkpoint_file(tmp_path / "ck")
    state["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)  # fails after the model load
    write_checkpoint_file(tmp_path / "bad", state)
    fresh = proto()
    with pytest.raises(CheckpointError, match="left as it was"):
        maybe_load_checkpoint(fresh, tmp_path / "bad")
    assert_same_ncm(ncm_attributes(fresh.model), (None, {}, -1))
    assert "class_means" not in fresh.model.state_dict()


class LazyScale(DynamicModule):
    """Creates its ``scale`` buffer on first use: not there in a fresh module."""

    def forward(self, x):
        if not hasattr(self, "scale"):
            self.register_buffer("scale", x.detach().abs().mean(0))
        return x * self.scale


def test_a_buffer_created_on_first_use_in_a_dynamic_module_is_created_from_the_file(tmp_path):
    from avalanche.training.supervised import Naive

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(LazyScale(), torch.nn.Linear(3, 2))
        return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     criterion=torch.nn.CrossEntropyLoss(), evaluator=None)

    used = make()
    used.model(torch.tensor([[1.0, -2.0, 3.0]]))
    save_checkpoint(used, tmp_path / "ck")
    fresh = make()
    maybe_load_checkpoint(fresh, tmp_path / "ck")
    assert torch.equal(fresh.model[0].scale, torch.tensor([1.0, 2.0, 3.0]))
    state = read_checkpoint_file(tmp_path / "ck")
    state["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)  # fails after the model load
    write_checkpoint_file(tmp_path / "bad", state)
    again = make()
    with pytest.raises(CheckpointError, match="left as it was"):
        maybe_load_checkpoint(again, tmp_path / "bad")
    assert not hasattr(again.model[0], "scale")
    save_checkpoint(again, tmp_path / "unused")  # a file without it: refused, not unset
    with pytest.raises(CheckpointError, match=r"missing from the file: \['0.scale'\]"):
        maybe_load_checkpoint(fresh, tmp_path / "unused")
    assert torch.equal(fresh.model[0].scale, torch.tensor([1.0, 2.0, 3.0]))


def test_recent_sets_round_trip_replays_the_same_items_in_order(bm):
    class Holder:  # what RecentSetsBuffer.update reads
        experience = None

    buffer = RecentSetsBuffer(2)
    for exp in bm.train_stream:
        Holder.experience = exp
        buffer.update(Holder)
    copy = RecentSetsBuffer(2)
    copy.load_state_dict(buffer.state_dict())
    assert len(copy.sets) == 2 and len(copy.buffer) == len(buffer.buffer) == 40
    for i in range(len(buffer.buffer)):
        x, y, t = buffer.buffer[i]
        x2, y2, t2 = copy.buffer[i]
        assert torch.equal(x, x2) and int(y) == int(y2) and int(t) == int(t2)
    assert list(copy.buffer.targets) == list(buffer.buffer.targets)


def test_recent_sets_refuse_another_size_and_change_nothing(bm):
    buffer = RecentSetsBuffer(3)
    state = RecentSetsBuffer(2).state_dict()
    with pytest.raises(ValueError, match="max_sets"):
        buffer.load_state_dict(state)
    assert buffer.sets == [] and len(buffer.buffer) == 0


def test_replay_with_recent_sets_resumes_exactly(bm, tmp_path):
    assert_resumes_exactly(tune, bm, tmp_path / "ck")


def test_another_storage_policy_class_is_refused_before_anything_changes(bm, tmp_path):
    class OtherSets(RecentSetsBuffer):
        pass

    first = tune()
    first.train(bm.train_stream[0])
    save_checkpoint(first, tmp_path / "ck")
    other = tune(OtherSets(2))
    before = {k: v.clone() for k, v in other.model.state_dict().items()}
    with pytest.raises(CheckpointError, match="storage_policy"):
        maybe_load_checkpoint(other, tmp_path / "ck")
    assert other.plugins[0].storage_policy.sets == []
    assert all(torch.equal(v, other.model.state_dict()[k]) for k, v in before.items())


def test_avalanches_own_buffers_stay_refused_pointing_at_pickle(bm, tmp_path):
    strategy = tune()
    strategy.plugins[0] = ReplayPlugin(mem_size=20, storage_policy=ExperienceBalancedBuffer(20))
    strategy.train(bm.train_stream[0])
    with pytest.raises(ValueError, match="storage_policy.*format='pickle'"):
        save_checkpoint(strategy, tmp_path / "ck")
    assert not (tmp_path / "ck").exists()
