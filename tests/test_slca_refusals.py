"""SLCA refuses a bad experience before the head grows or any weight moves.

Each case builds an experience with one defect (labels out of range or not
integers, inputs of another dtype than the model's, inputs whose features are not
finite, items whose labels disagree with ``.targets``) and asserts that
``SLCA.train`` raises an error naming it, with the model, the optimizer and the
alignment's statistics exactly as they were (the head has not grown).
"""

import copy

import pytest
import torch
from avalanche.benchmarks import benchmark_from_datasets
from avalanche.benchmarks.utils.classification_dataset import (
    _as_taskaware_supervised_classification_dataset,
)
from bad_input import assert_refused

from neve.models import PretrainedClassifier
from neve.plugins import ClassifierAlignmentPlugin, SlowLearnerPlugin
from neve.strategies import SLCA


class Items(torch.utils.data.Dataset):
    """Inputs with ``.targets``; ``labels`` (what items give) may differ from ``targets``."""

    def __init__(self, x, targets, labels=None):
        self.x, self.targets = x, targets
        self.labels = targets if labels is None else labels

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.labels[i]


def experience(x, targets, labels=None):
    data = _as_taskaware_supervised_classification_dataset(Items(x, targets, labels))
    exp = benchmark_from_datasets(train=[data], test=[data]).train_stream[0]
    exp.classes_in_this_experience = sorted(set(targets.tolist()))  # a class timeline
    return exp


def slca():
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU())
    model = PretrainedClassifier(backbone, num_classes=2, feature_dim=8)
    return SLCA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                train_mb_size=4, eval_mb_size=8, evaluator=None,
                slow_learner=SlowLearnerPlugin(0.1),
                alignment=ClassifierAlignmentPlugin(samples_per_class=4, epochs=1,
                                                    max_classes=50))


def state_of(strategy):
    return {"model": copy.deepcopy(strategy.model.state_dict()),
            "optimizer": copy.deepcopy(strategy.optimizer.state_dict()),
            "alignment": strategy.alignment.state_dict(),
            "out_features": strategy.model.classifier.classifier.out_features}


X = torch.randn(12, 6, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1] * 6)
CASES = {
    "label -1": (X, torch.tensor([0, 1] * 5 + [1, -1]), None, "labels"),
    "label 10**6": (X, torch.tensor([0, 1] * 5 + [1, 10**6]), None, "max_classes"),
    "label above max_classes": (X, torch.tensor([0, 1] * 5 + [1, 50]), None, "max_classes"),
    "float labels": (X, Y.float(), None, "labels"),
    "float16 inputs": (X.half(), Y, None, "float16"),
    "bfloat16 inputs": (X.bfloat16(), Y, None, "bfloat16"),
    "inputs not finite": (X / 0.0, Y, None, "NaN or inf"),
    "features stop being finite": (X * 1e30, Y, None, "NaN or inf"),
    "items disagree with targets": (X, Y, torch.tensor([0, 1] * 5 + [1, 9]), "disagree"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_experience_is_refused_before_anything_changes(case):
    x, targets, labels, named = CASES[case]
    strategy = slca()
    strategy.train(experience(X, Y))  # a first, good experience: there is state to keep
    exp = experience(x, targets, labels)
    assert_refused(lambda: strategy.train(exp), named, state=lambda: state_of(strategy))


def test_a_refused_experience_leaves_the_next_good_one_as_if_it_never_came():
    a, b = slca(), slca()
    for s in (a, b):
        torch.manual_seed(4)
        s.train(experience(X, Y))
    with pytest.raises(ValueError):
        a.train(experience(X, torch.tensor([0, 1] * 5 + [1, -1])))
    for s in (a, b):
        torch.manual_seed(5)
        s.train(experience(X + 1.0, Y))
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64 - 2, 2.5, True, "3"])
def test_every_seed_has_one_rule_checked_at_construction(seed):
    assert_refused(lambda: ClassifierAlignmentPlugin(seed=seed), "seed")
    assert_refused(lambda: SlowLearnerPlugin(seed=seed), "seed")
