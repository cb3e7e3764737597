"""One rule for arguments and labels across neve's entry points (table-driven, bad_input.py).

Each case is refused with a TypeError or ValueError naming the argument, and the
learner's state is unchanged.
"""

from __future__ import annotations

import copy

import pytest
import torch
from bad_input import assert_refused
from test_slca_refusals import experience

import neve.benchmarks as B
import neve.models as M
import neve.strategies as S
from neve.benchmarks import LabelledTensorDataset

DATA = LabelledTensorDataset(torch.rand(40, 1, 8, 8), torch.arange(40) % 4)
NAN = torch.rand(8, 1, 4, 4)
NAN[3, 0, 1, 2] = float("nan")
CUDA = "cuda" if not torch.cuda.is_available() else "cuda:99"


def _nan_dataset():
    x = torch.rand(20, 1, 4, 4)
    x[:, 0, 0, 0] = float("inf")
    return LabelledTensorDataset(x, torch.zeros(20, dtype=torch.long))


ARGUMENTS = {  # name -> (call, argument it must name)
    **{f"extract_features(batch_size={v!r})": (
        lambda v=v: M.extract_features(torch.nn.Identity(), DATA, batch_size=v, cache=False),
        "batch_size") for v in (2.5, "7", True, 0)},
    "extract_features(device=no GPU)": (
        lambda: M.extract_features(torch.nn.Identity(), DATA, device=CUDA, cache=False), "device"),
    "extract_features(NaN images)": (
        lambda: M.extract_features(torch.nn.Identity(), LabelledTensorDataset(
            NAN, torch.arange(8)), cache=False), "dataset"),
    "iter_features(batch_size=2.5)": (
        lambda: M.iter_features(torch.nn.Identity(), DATA, batch_size=2.5), "batch_size"),
    **{f"encode(batch_size={v!r})": (
        lambda v=v: M.encode(torch.nn.Identity(), torch.rand(4, 3), batch_size=v), "batch_size")
       for v in (0, 2.5, True, "2")},
    "encode(device=no GPU)": (lambda: M.encode(torch.nn.Identity(), torch.rand(4, 3),
                                               device=CUDA), "device"),
    "encode(NaN images)": (lambda: M.encode(torch.nn.Identity(), NAN), "images"),
    "instance_test_episodes(inf images)": (
        lambda: next(iter(B.instance_test_episodes(_nan_dataset(), 1, 4, 2))), "dataset"),
    "cfsl_episodes(inf images)": (
        lambda: next(iter(B.cfsl_episodes(_nan_dataset(), 1, n_classes=1, shots=2,
                                          support_sets=1))), "dataset"),
    **{f"PretrainedClassifier(num_classes={v!r})": (
        lambda v=v: M.PretrainedClassifier(torch.nn.Linear(3, 4), num_classes=v, feature_dim=4),
        "num_classes") for v in (2.5, "3", True)},
    "PretrainedClassifier(feature_dim=64.9)": (
        lambda: M.PretrainedClassifier(torch.nn.Linear(3, 4), feature_dim=64.9), "feature_dim"),
}


@pytest.mark.parametrize("case", list(ARGUMENTS))
def test_bad_arguments_are_refused_by_name(case):
    call, argument = ARGUMENTS[case]
    assert_refused(call, argument)


SEEDED = {  # every public seed parameter (SlowLearnerPlugin: tests/test_slca_refusals.py)
    "AnalyticClassifier": (lambda s: M.AnalyticClassifier(torch.nn.Flatten(), 64, buffer_size=8,
                                                          seed=s), "seed"),
    "BufferLayer": (lambda s: M.BufferLayer(4, 8, seed=s), "seed"),
    "TunedNetwork": (lambda s: M.TunedNetwork(torch.nn.Flatten(), 2, 64, head_seed=s),
                     "head_seed"),
    "tune_network": (lambda s: S.tune_network(torch.nn.Flatten(), 2, feature_dim=64, head_seed=s),
                     "head_seed"),
    "AnalyticCIL": (lambda s: S.AnalyticCIL(backbone=torch.nn.Identity(), feature_dim=4,
                                            buffer_size=8, buffer_seed=s, evaluator=None),
                    "buffer_seed"),
    "meta_train_protonet": (lambda s: M.meta_train_protonet(DATA, meta_episodes=1, seed=s,
                                                            cache=False), "seed"),
    "pretrain_convnet": (lambda s: M.pretrain_convnet(DATA, epochs=1, seed=s, cache=False),
                         "seed"),
    "si_blurry_split": (lambda s: B.si_blurry_split(torch.arange(40) % 4, n_tasks=2, seed=s),
                        "seed"),
    "CurriculumDesigner": (lambda s: B.CurriculumDesigner(seed=s), "seed"),
    "Occlusion": (lambda s: B.Occlusion(0.2, seed=s), "seed"),
    "PixelNoise": (lambda s: B.PixelNoise(0.2, seed=s), "seed"),
    "make_corruption": (lambda s: B.make_corruption("noise", 0.2, seed=s), "seed"),
    "class_balanced_subset": (lambda s: B.class_balanced_subset(DATA, 2, seed=s), "seed"),
    "digits": (lambda s: B.digits(seed=s), "seed"),
    "fashion_and_digits": (lambda s: B.fashion_and_digits(seed=s), "seed"),
    "instance_test_episodes": (lambda s: B.instance_test_episodes(DATA, 1, 2, 1, seed=s), "seed"),
    "cfsl_episodes": (lambda s: B.cfsl_episodes(DATA, 1, n_classes=2, shots=1, support_sets=1,
                                                seed=s), "seed"),
}


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64, 2.5, True, "3"])
@pytest.mark.parametrize("name", list(SEEDED))
def test_every_seed_has_one_rule(name, seed):
    call, argument = SEEDED[name]
    assert_refused(lambda: call(seed), argument)


X = torch.randn(12, 8)
TARGETS = torch.tensor([2, 3] * 6)
ITEMS = TARGETS.clone()
ITEMS[-1] = 9  # what the last item says


def nearest_prototype():
    return S.NearestPrototype(num_classes=10, feature_dim=8, evaluator=None, train_mb_size=4)


def analytic():
    return S.AnalyticCIL(backbone=torch.nn.Identity(), feature_dim=8, buffer_size=16,
                         evaluator=None, train_mb_size=4)


def _learner_state(strategy):
    if isinstance(strategy, S.AnalyticCIL):
        return {"head": copy.deepcopy(dict(strategy.head._buffers)), **strategy.state_dict()}
    return strategy.state_dict()


LABELS = {
    "NearestPrototype: items disagree with .targets": (nearest_prototype, X, ITEMS, "disagree"),
    "AnalyticCIL: items disagree with .targets": (analytic, X, ITEMS, "disagree"),
    "NearestPrototype: [N, 1, 8, 8] images": (
        lambda: S.NearestPrototype(num_classes=4, feature_dim=64, evaluator=None),
        torch.randn(12, 1, 8, 8), None, "inputs"),
    "NearestPrototype: an item label >= num_classes": (
        lambda: S.NearestPrototype(num_classes=4, feature_dim=8, evaluator=None), X,
        torch.tensor([2, 3] * 5 + [2, 7]), "num_classes"),
}


@pytest.mark.parametrize("case", list(LABELS))
def test_labels_and_inputs_are_refused_before_anything_is_learned(case):
    make, x, items, named = LABELS[case]
    strategy = make()
    targets = TARGETS if x.dim() == 2 else torch.arange(12) % 4
    exp = experience(x, targets, items)
    assert_refused(lambda: strategy.train(exp), named, state=lambda: _learner_state(strategy))
    strategy.train(experience(x.flatten(1), targets))  # the same learner then learns good data
    assert _learner_state(strategy) != {} and strategy.clock.train_exp_counter == 1
