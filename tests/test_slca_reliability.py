"""SLCA reliability and composition (issues #11.1, #11.5, #11.6, #11.9, #12.5, #12.13-15)."""

import math

import pytest
import torch
from avalanche.benchmarks import benchmark_from_datasets
from avalanche.benchmarks.scenarios.online import split_online_stream
from avalanche.benchmarks.utils import as_classification_dataset
from avalanche.models import MultiHeadClassifier
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.supervised import JointTraining, Naive
from bad_input import assert_refused
from conftest import silent_evaluator, tiny_model

from neve.benchmarks import LabelledTensorDataset, digits
from neve.models.gaussians import ClassGaussianStats
from neve.models.head_alignment import align_head, alignment_batch_size
from neve.plugins import ClassifierAlignmentPlugin, SlowLearnerPlugin
from neve.strategies import SLCA

RIDGE = 1e-4
STREAM = "Top1_Acc_Stream/eval_phase/test_stream/Task000"


class FixedHead(torch.nn.Module):
    """The contract with a fixed 10-way linear head (no IncrementalClassifier)."""

    def __init__(self, head: torch.nn.Module | None = None, dim: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, dim), torch.nn.ReLU()
        )
        self.classifier = torch.nn.Linear(dim, 10) if head is None else head

    def forward(self, x):
        return self.classifier(self.features(x))


def features_of(model, dataset):
    data = dataset.eval() if hasattr(dataset, "eval") else dataset
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([int(data[i][1]) for i in range(len(data))])
    model.eval()
    with torch.no_grad():
        return model.features(x).double(), y


# ------------------------------------------------------------------ #12.15 merging


def scatter(x: torch.Tensor) -> torch.Tensor:
    c = x - x.mean(0)
    return c.T @ c


@pytest.mark.parametrize("kind", ["full", "diagonal", "shared"])
@pytest.mark.parametrize("sizes", [(136, 3), (3, 136), (1, 1), (2, 5), (40, 40, 7)])
def test_a_class_seen_again_is_merged_by_counts(kind, sizes):
    """Moments after several updates == moments of the concatenated data, computed directly."""
    gen = torch.Generator().manual_seed(sum(sizes))
    d = 6
    parts = [torch.randn(n, d, generator=gen, dtype=torch.float64) * 2 + i for i, n in
             enumerate(sizes)]
    other = torch.randn(30, d, generator=gen, dtype=torch.float64)  # class 9, seen once
    stats = ClassGaussianStats(kind, RIDGE)
    stats.update(other.float(), torch.full((30,), 9), group=0)
    for g, part in enumerate(parts):
        stats.update(part.float(), torch.full((len(part),), 4), group=g + 1)
    x = torch.cat([p.float().double() for p in parts])
    n = len(x)
    assert stats.counts[4] == n and stats.groups[4] == 1  # the class keeps its first group
    torch.testing.assert_close(stats.means[4], x.mean(0), rtol=0, atol=1e-12)
    eye = torch.eye(d, dtype=torch.float64)
    cov = scatter(x) / max(n - 1, 1) + RIDGE * eye
    if kind == "full":
        torch.testing.assert_close(stats.covariance_of(4), cov, rtol=1e-10, atol=1e-12)
    elif kind == "diagonal":
        torch.testing.assert_close(stats.covariance_of(4), torch.diag(torch.diagonal(cov)),
                                   rtol=1e-10, atol=1e-12)
    else:
        o = other.float().double()
        pooled = (scatter(x) + scatter(o)) / (max(n - 1, 0) + 29) + RIDGE * eye
        torch.testing.assert_close(stats.covariance_of(9), pooled, rtol=1e-10, atol=1e-12)
    if kind == "full" and 4 in stats.low_rank:  # the low-rank sampler's factor is exact too
        rows = stats.low_rank[4]
        torch.testing.assert_close(rows.T @ rows + RIDGE * eye, cov, rtol=1e-10, atol=1e-12)
        assert rows.shape[0] <= d
    samples, _ = stats.sample(20_000, torch.Generator().manual_seed(0), classes=[4])
    assert torch.isfinite(samples).all()
    assert (samples.double().mean(0) - x.mean(0)).abs().max() < 0.2


def test_plugin_merges_a_class_that_comes_back(split_digits):
    """Two experiences holding class c: its count is the sum, mean that of both feature sets."""
    train, test = digits(seed=0)
    x, y = train.data, train.targets
    first, second = torch.arange(len(y)) % 3 != 0, torch.arange(len(y)) % 3 == 0
    keep = (y == 0) | (y == 1)
    exp_a = as_classification_dataset(LabelledTensorDataset(x[first & keep], y[first & keep]))
    exp_b = as_classification_dataset(LabelledTensorDataset(x[second & keep], y[second & keep]))
    bm = benchmark_from_datasets(train=[exp_a, exp_b], test=[exp_a])
    model = FixedHead()
    model.features.requires_grad_(False)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.classifier.parameters(), lr=0.1),
                     train_mb_size=32, evaluator=silent_evaluator(),
                     plugins=[ClassifierAlignmentPlugin(samples_per_class=8, epochs=1)])
    plugin = strategy.plugins[0]
    for exp in bm.train_stream:
        strategy.train(exp)
    f, t = features_of(model, LabelledTensorDataset(x[keep], y[keep]))
    for c in (0, 1):
        assert plugin.stats.counts[c] == int((t == c).sum())
        torch.testing.assert_close(plugin.stats.means[c], f[t == c].mean(0), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ #12.5 non-finite data


@pytest.mark.parametrize("kind", ["full", "diagonal", "shared"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_update_refuses_non_finite_features_without_state_change(kind, bad):
    gen = torch.Generator().manual_seed(0)
    stats = ClassGaussianStats(kind, RIDGE)
    stats.update(torch.randn(20, 4, generator=gen), torch.arange(20) % 2, group=0)
    x = torch.randn(20, 4, generator=gen)
    x[17, 2] = bad
    # class 2's rows come first and are fine; class 1 (already stored) holds the bad row
    y = torch.where(torch.arange(20) < 10, 2, 1)
    assert_refused(lambda: stats.update(x, y, group=1), "features", state=stats.state_dict)
    assert stats.classes == [0, 1]


def test_slca_refuses_a_nan_pixel_before_the_weights_change(split_digits):
    exp = split_digits.train_stream[0]
    x = torch.stack([exp.dataset[i][0] for i in range(len(exp.dataset))])
    y = torch.tensor([int(exp.dataset[i][1]) for i in range(len(exp.dataset))])
    x[len(x) // 2, 0, 3, 3] = math.nan
    data = as_classification_dataset(LabelledTensorDataset(x, y))
    bm = benchmark_from_datasets(train=[data], test=[exp.dataset])
    model = FixedHead()
    strategy = SLCA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                    train_mb_size=16, evaluator=silent_evaluator())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plugin_before = strategy.alignment.state_dict()
    with pytest.raises(ValueError, match="NaN or inf"):
        strategy.train(bm.train_stream[0])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert strategy.alignment.state_dict()["stats"] == plugin_before["stats"]


def test_data_check_can_be_turned_off_and_draws_no_random_numbers(split_digits):
    plugin = ClassifierAlignmentPlugin(check_data=False)
    assert plugin.check_data is False
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    from neve.plugins.experience_data import check_experience_data

    check_experience_data(split_digits.train_stream[0].dataset, 64, max_classes=10)
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------ #11.1 JointTraining


def test_joint_training_stores_the_statistics_of_the_whole_joint_set(split_digits):
    model = tiny_model()
    plugin = ClassifierAlignmentPlugin(samples_per_class=16, epochs=1)
    strategy = JointTraining(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                             criterion=torch.nn.CrossEntropyLoss(),
                             train_mb_size=32, train_epochs=1, evaluator=silent_evaluator(),
                             plugins=[plugin])
    strategy.train(split_digits.train_stream)
    all_data = torch.utils.data.ConcatDataset([e.dataset.eval() for e in split_digits.train_stream])
    f, y = features_of(model, all_data)
    assert plugin.stats.classes == list(range(10))
    for c in range(10):
        fc = f[y == c]
        assert plugin.stats.counts[c] == len(fc)
        torch.testing.assert_close(plugin.stats.means[c], fc.mean(0), rtol=0, atol=1e-6)
        expected = torch.cov(fc.T) + RIDGE * torch.eye(16, dtype=torch.float64)
        torch.testing.assert_close(plugin.stats.covariance_of(c), expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ #11.5 no class timeline


def test_slca_derives_the_current_classes_from_the_targets(split_digits):
    """benchmark_from_datasets and split_online_stream: the loss is over the targets' classes."""
    seen = []

    class Check(SLCA):
        def criterion(self):
            loss = super().criterion()
            if self.is_training:
                classes = sorted(set(self.experience.dataset.targets))
                logits = self.mb_output[:, classes]
                target = torch.tensor([classes.index(int(t)) for t in self.mb_y])
                torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, target))
                seen.append(tuple(classes))
            return loss

    bfd = benchmark_from_datasets(train=[e.dataset for e in split_digits.train_stream[:2]],
                                  test=[e.dataset for e in split_digits.test_stream[:2]])
    online = split_online_stream(split_digits.train_stream[2:3], experience_size=40)
    model = FixedHead()
    strategy = Check(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                     train_mb_size=16, evaluator=silent_evaluator(),
                     alignment=ClassifierAlignmentPlugin(samples_per_class=8, epochs=1))
    for exp in [*bfd.train_stream, *list(online)[:2]]:
        strategy.train(exp)
    assert len(set(seen)) >= 3
    assert strategy.alignment.stats.classes == sorted(
        set(split_digits.train_stream[0].classes_in_this_experience)
        | set(split_digits.train_stream[1].classes_in_this_experience)
        | set(split_digits.train_stream[2].classes_in_this_experience)
    )


# ------------------------------------------------------------------ #11.6 multi-head


def test_multi_head_classifier_is_refused_before_any_change(split_digits):
    model = FixedHead(head=MultiHeadClassifier(16, 2))
    with pytest.raises(ValueError, match="single-head"):
        SLCA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05))
    plugin = ClassifierAlignmentPlugin(samples_per_class=8, epochs=1)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                     train_mb_size=16, evaluator=silent_evaluator(), plugins=[plugin])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="single-head"):
        strategy.train(split_digits.train_stream[0])
    assert model.state_dict().keys() == before.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------ #11.9 small experiences


def test_alignment_batch_gives_at_least_min_steps_and_keeps_the_paper_setting():
    # paper: 100 classes x 256 samples, batch 256: 100 steps an epoch, untouched
    assert alignment_batch_size(100 * 256, None, 32) == 256
    assert alignment_batch_size(4 * 256, 256, 32) == 256  # a given batch is used as it is
    assert alignment_batch_size(4 * 256, 64, 32) == 64  # quickstart's batch 64 unchanged
    assert alignment_batch_size(4 * 256, None, 32) == 32  # 32 steps
    assert alignment_batch_size(10, None, 32) == 1
    for n in range(1, 30000, 37):
        b = alignment_batch_size(n, None, 32)
        assert 1 <= b <= 256 and (math.ceil(n / b) >= 32 or b == 1 or b == 256)
    assert ClassifierAlignmentPlugin().batch_size is None


def naive_with_alignment(bm, **options):
    """The finding's setup: frozen 64-128 ReLU features, linear head trained 1 epoch, Naive."""
    RNGManager.set_random_seeds(0)
    model = tiny_model(128)
    model.features.requires_grad_(False)
    plugins = [ClassifierAlignmentPlugin(**options)]
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05,
                                                            momentum=0.9),
                     train_mb_size=32, train_epochs=1, eval_mb_size=256,
                     evaluator=silent_evaluator(stream=True),
                     plugins=plugins)
    for exp in bm.train_stream:
        strategy.train(exp)
    return strategy.eval(bm.test_stream)[STREAM]


def test_default_alignment_works_on_small_experiences(split_digits):
    default = naive_with_alignment(split_digits)
    paper = naive_with_alignment(split_digits, batch_size=256)  # 4 to 10 steps an epoch
    unaligned = naive_with_alignment(split_digits, epochs=0)
    assert unaligned < 0.25 and paper < 0.45  # measured 0.191 and 0.378
    assert default > 0.8  # measured 0.869


# ------------------------------------------------------------------ #12.13/#12.14 bad inputs


def _state(obj):
    return obj.state_dict


BAD_ALIGNMENT = [
    ("samples_per_class", 0), ("samples_per_class", 2.5), ("samples_per_class", True),
    ("epochs", -1), ("epochs", "5"), ("lr", "0.1"), ("lr", math.nan), ("lr", 0.0),
    ("temperature", math.inf), ("temperature", "0.1"), ("covariance", "low-rank"),
    ("keep_aligned", "no"), ("batch_size", 0), ("batch_size", 64.0), ("batch_size", "64"),
    ("momentum", math.nan), ("momentum", -0.1), ("momentum", "0.9"),
    ("weight_decay", math.inf), ("weight_decay", -1.0), ("ridge", 0.0), ("ridge", math.nan),
    ("logit_norm", 1), ("features", ""), ("features", 3), ("head", None), ("seed", "x"),
    ("seed", 1.5), ("stats_batch_size", 0), ("stats_batch_size", "64"), ("min_steps", 0),
    ("min_steps", 1.5), ("check_data", "yes"),
]


@pytest.mark.parametrize("name, value", BAD_ALIGNMENT)
def test_alignment_plugin_refuses_bad_options(name, value):
    assert_refused(lambda: ClassifierAlignmentPlugin(**{name: value}), name)


@pytest.mark.parametrize("name, value", [
    ("backbone_lr_scale", "0.1"), ("backbone_lr_scale", math.nan), ("backbone_lr_scale", -1.0),
    ("backbone_lr_scale", True), ("head", ""), ("head", 3), ("norm_stats", "fast"),
])
def test_slow_learner_refuses_bad_options(name, value):
    assert_refused(lambda: SlowLearnerPlugin(**{name: value}), name)


@pytest.mark.parametrize("name, value", [
    ("covariance", "low-rank"), ("covariance", 1), ("ridge", 0.0), ("ridge", "1e-4"),
    ("ridge", math.inf),
])
def test_gaussian_stats_refuse_bad_options(name, value):
    assert_refused(lambda: ClassGaussianStats(**{name: value}), name)


def stored_stats():
    gen = torch.Generator().manual_seed(0)
    stats = ClassGaussianStats("full", RIDGE)
    stats.update(torch.randn(30, 4, generator=gen), torch.arange(30) % 3, group=0)
    return stats


@pytest.mark.parametrize("call, name", [
    (lambda s: s.update(torch.randn(4, 4), torch.tensor([0.0, 1.0, 1.0, 0.0]), 1), "targets"),
    (lambda s: s.update(torch.randn(4, 4), torch.tensor([0, -1, 1, 0]), 1), "targets"),
    (lambda s: s.update(torch.randn(4, 5), torch.tensor([0, 1, 1, 0]), 1), "features"),
    (lambda s: s.update(torch.randn(0, 4), torch.zeros(0, dtype=torch.long), 1), "features"),
    (lambda s: s.update(torch.randn(4, 4), torch.tensor([0, 1, 1, 0]), -1), "group"),
    (lambda s: s.update(torch.randn(4, 4), torch.tensor([0, 1, 1, 0]), "1"), "group"),
    (lambda s: s.update([[1.0]], torch.tensor([0]), 1), "features"),
    (lambda s: s.sample(0, torch.Generator()), "samples_per_class"),
    (lambda s: s.sample(2, None), "generator"),
    (lambda s: s.sample(2, torch.Generator(), classes=[7]), "classes"),
    (lambda s: s.load_state_dict({**s.state_dict(), "covariance": "low-rank"}), "covariance"),
    (lambda s: s.load_state_dict({**s.state_dict(), "ridge": -1.0}), "ridge"),
    (lambda s: s.load_state_dict({**s.state_dict(), "counts": {0: 10, 1: 10}}), "counts"),
    (lambda s: s.load_state_dict({**s.state_dict(), "counts": {0: 0, 1: 10, 2: 10}}), "counts"),
    (lambda s: s.load_state_dict(
        {**s.state_dict(), "means": {**s.state_dict()["means"], 0: torch.full((4,), math.nan)}}),
     "means"),
    (lambda s: s.load_state_dict(
        {**s.state_dict(), "scatters": {**s.state_dict()["scatters"], 1: torch.zeros(5, 5)}}),
     "scatters"),
    (lambda s: s.load_state_dict({"means": {}}), "state"),
])
def test_gaussian_stats_refuse_bad_calls_without_state_change(call, name):
    stats = stored_stats()
    assert_refused(lambda: call(stats), name, state=stats.state_dict)


def test_alignment_plugin_load_state_dict_refuses_a_bad_state_unchanged():
    plugin = ClassifierAlignmentPlugin(samples_per_class=8)
    plugin.stats.update(torch.randn(10, 3), torch.arange(10) % 2, group=0)
    good = plugin.state_dict()
    bad_options = {**good, "options": {**good["options"], "lr": math.nan}}
    assert_refused(lambda: plugin.load_state_dict(bad_options), "lr", state=plugin.state_dict)
    bad_stats = {**good, "stats": {**good["stats"], "ridge": 0.0}}
    assert_refused(lambda: plugin.load_state_dict(bad_stats), "ridge", state=plugin.state_dict)
    unknown = {**good, "options": {**good["options"], "colour": 1}}
    assert_refused(lambda: plugin.load_state_dict(unknown), "colour", state=plugin.state_dict)
    slow = SlowLearnerPlugin(0.1)
    assert_refused(lambda: slow.load_state_dict({"backbone_lr_scale": -2.0, "head": "classifier"}),
                   "backbone_lr_scale", state=slow.state_dict)


@pytest.mark.parametrize("name, value", [
    ("train_mb_size", 0), ("train_mb_size", 2.5), ("eval_mb_size", -1), ("train_epochs", 0),
    ("optimizer", None), ("current_classes_loss", "yes"),
])
def test_slca_refuses_bad_arguments_at_construction(name, value):
    model = FixedHead()
    kwargs = dict(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    kwargs[name] = value
    assert_refused(lambda: SLCA(**kwargs), name)


@pytest.mark.parametrize("name, value", [
    ("samples_per_class", 0), ("epochs", -1), ("lr", math.nan), ("temperature", 0.0),
    ("batch_size", 0), ("momentum", math.nan), ("weight_decay", math.inf),
])
def test_align_head_refuses_bad_arguments(name, value):
    stats = stored_stats()
    head = torch.nn.Linear(4, 3)
    kwargs = dict(samples_per_class=4, epochs=1, lr=0.1, temperature=0.1, batch_size=4,
                  momentum=0.9, weight_decay=0.0, generator=torch.Generator(), device="cpu")
    kwargs[name] = value
    assert_refused(lambda: align_head(head, stats, **kwargs), name, state=head.state_dict)
