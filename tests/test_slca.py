"""SLCA plugins: class statistics, sampling, optimizer groups, alignment, bad inputs."""

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.supervised import Naive
from conftest import silent_evaluator

from neve.benchmarks import digits
from neve.models import PretrainedClassifier
from neve.models.head_alignment import align_head, normalised_logits
from neve.plugins import ClassGaussianStats, ClassifierAlignmentPlugin, SlowLearnerPlugin
from neve.plugins.slow_learner import split_param_groups
from neve.strategies import SLCA

RIDGE = 1e-4


def bn_backbone(feature_dim: int = 12) -> torch.nn.Module:
    """A tiny trainable backbone with a BatchNorm (buffers that eval mode must not touch)."""
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, feature_dim),
        torch.nn.BatchNorm1d(feature_dim),
        torch.nn.ReLU(),
    )


# ------------------------------------------------------------------ statistics


def test_stored_mean_and_covariance_equal_torch_cov():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=gen) @ torch.randn(6, 6, generator=gen) + 3.0
    y = torch.randint(0, 3, (300,), generator=gen) + 5
    full, diag, shared = (ClassGaussianStats(k, RIDGE) for k in ("full", "diagonal", "shared"))
    for stats in (full, diag, shared):
        assert stats.update(x, y, group=0) == [5, 6, 7]
    eye = np.eye(6)
    scatter, dof = np.zeros((6, 6)), 0
    for c in (5, 6, 7):
        xc = x[y == c].double()
        expected = torch.cov(xc.T).numpy() + RIDGE * eye
        np.testing.assert_allclose(full.means[c].numpy(), xc.numpy().mean(0), rtol=1e-12)
        np.testing.assert_allclose(full.covs[c].numpy(), expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(diag.covs[c].numpy(), np.diag(expected), rtol=1e-10)
        assert full.covs[c].dtype == torch.float64
        scatter += np.cov(xc.numpy().T) * (len(xc) - 1)
        dof += len(xc) - 1
    np.testing.assert_allclose(
        shared.covariance_of(6).numpy(), scatter / dof + RIDGE * eye, rtol=1e-10
    )


def test_single_sample_class_gets_isotropic_ridge_covariance():
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    y = torch.tensor([0, 1, 1])
    for kind in ("full", "diagonal", "shared"):
        stats = ClassGaussianStats(kind, RIDGE)
        stats.update(x[:1], y[:1], group=0)  # class 0 alone, one sample
        assert torch.equal(stats.means[0], x[0].double())
        assert torch.allclose(stats.covariance_of(0), RIDGE * torch.eye(3, dtype=torch.float64))
        samples, _ = stats.sample(4000, torch.Generator().manual_seed(0))
        assert torch.isfinite(samples).all()
        assert (samples - x[0]).std().item() == pytest.approx(RIDGE**0.5, rel=0.05)
    shared = ClassGaussianStats("shared", RIDGE)
    shared.update(x, y, group=0)  # the single-sample class adds no degrees of freedom
    expected = torch.cov(x[1:].double().T) + RIDGE * torch.eye(3, dtype=torch.float64)
    assert torch.allclose(shared.covariance_of(0), expected)


def test_plugin_stores_statistics_of_the_experience_features(split_digits):
    torch.manual_seed(0)
    model = PretrainedClassifier(bn_backbone(), num_classes=2, feature_dim=12)
    strategy = SLCA(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        train_mb_size=32,
        train_epochs=1,
        eval_mb_size=100,
        evaluator=silent_evaluator(),
        alignment=ClassifierAlignmentPlugin(samples_per_class=16, epochs=1),
    )
    for exp in split_digits.train_stream[:2]:
        strategy.train(exp)
    # the last experience's classes were stored with the final backbone, eval mode
    data = split_digits.train_stream[1].dataset.eval()
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][1] for i in range(len(data))])
    model.eval()
    with torch.no_grad():
        f = model.features(x).double()
    stats = strategy.alignment.stats
    assert sorted(split_digits.train_stream[1].classes_in_this_experience) == [
        c for c in stats.classes if stats.groups[c] == 1
    ]
    for c in split_digits.train_stream[1].classes_in_this_experience:
        fc = f[y == c]
        assert stats.counts[c] == len(fc)
        torch.testing.assert_close(stats.means[c], fc.mean(0), rtol=0, atol=1e-6)
        expected = torch.cov(fc.T) + RIDGE * torch.eye(12, dtype=torch.float64)
        torch.testing.assert_close(stats.covs[c], expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ sampling


def test_samples_have_the_stored_mean_and_covariance():
    gen = torch.Generator().manual_seed(1)
    d, n = 5, 200_000
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    sigma = a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)
    mu = torch.randn(d, generator=gen, dtype=torch.float64)
    stats = ClassGaussianStats("full", RIDGE)
    eye = torch.eye(d, dtype=torch.float64)
    stats.means[3], stats.counts[3], stats.groups[3] = mu, 100, 0
    stats.scatters[3] = (sigma - RIDGE * eye) * 99  # covariance S / (n - 1) + ridge = sigma
    x, y = stats.sample(n, torch.Generator().manual_seed(7))
    assert x.shape == (n, d) and torch.equal(y, torch.full((n,), 3))
    xd = x.double()
    # mean within 5 standard errors per coordinate
    se = torch.sqrt(torch.diagonal(sigma) / n)
    assert ((xd.mean(0) - mu).abs() < 5 * se).all()
    # covariance entries: standard error of a sample covariance ~ sqrt((s_ii s_jj + s_ij^2) / n)
    cov_se = torch.sqrt((torch.outer(torch.diagonal(sigma), torch.diagonal(sigma)) + sigma**2) / n)
    assert ((torch.cov(xd.T) - sigma).abs() < 5 * cov_se).all()
    # a fixed seed gives the same draw
    x2, _ = stats.sample(n, torch.Generator().manual_seed(7))
    assert torch.equal(x, x2)

    diag = ClassGaussianStats("diagonal", RIDGE)
    diag.means[0], diag.counts[0], diag.groups[0] = mu, 9, 0
    diag.scatters[0] = (torch.diagonal(sigma) - RIDGE) * 8
    xd, _ = diag.sample(n, torch.Generator().manual_seed(3))
    np.testing.assert_allclose(xd.double().var(0).numpy(), torch.diagonal(sigma).numpy(), rtol=0.02)
    off = torch.cov(xd.double().T) - torch.diag(torch.diagonal(torch.cov(xd.double().T)))
    assert (off.abs() < 5 * cov_se).all()


def test_low_rank_sampling_matches_the_stored_covariance():
    # fewer samples than dimensions: the sampler uses the centred features, not a Cholesky
    gen = torch.Generator().manual_seed(2)
    d, n = 12, 8
    feats = torch.randn(n, d, generator=gen) * torch.linspace(0.5, 2.0, d)
    stats = ClassGaussianStats("full", 0.05)
    stats.update(feats, torch.zeros(n, dtype=torch.long), group=0)
    assert 0 in stats.low_rank and stats.low_rank[0].shape == (n, d)
    sigma = stats.covs[0]
    torch.testing.assert_close(
        stats.low_rank[0].T @ stats.low_rank[0] + 0.05 * torch.eye(d, dtype=torch.float64), sigma
    )
    m = 200_000
    x, _ = stats.sample(m, torch.Generator().manual_seed(5))
    xd = x.double()
    se = torch.sqrt(torch.diagonal(sigma) / m)
    assert ((xd.mean(0) - stats.means[0]).abs() < 5 * se).all()
    cov_se = torch.sqrt((torch.outer(torch.diagonal(sigma), torch.diagonal(sigma)) + sigma**2) / m)
    assert ((torch.cov(xd.T) - sigma).abs() < 5 * cov_se).all()


# ------------------------------------------------------------------ slow learner


@pytest.mark.parametrize("optimizer_class", [torch.optim.SGD, torch.optim.Adam])
def test_optimizer_groups_carry_two_learning_rates_after_head_grows(split_digits, optimizer_class):
    torch.manual_seed(0)
    model = PretrainedClassifier(bn_backbone(), num_classes=2, feature_dim=12)
    optimizer = optimizer_class(model.parameters(), lr=0.02)
    scale = 0.05

    class CheckGroups(SupervisedPlugin):
        checked = 0

        def before_training_epoch(self, strategy, **kwargs):
            head_ids = {id(p) for p in model.classifier.parameters()}
            all_ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
            assert sorted(all_ids) == sorted(id(p) for p in model.parameters())  # each once
            for g in optimizer.param_groups:
                ids = {id(p) for p in g["params"]}
                if ids & head_ids:
                    assert ids == head_ids and g["lr"] == 0.02
                elif ids:
                    assert not ids & head_ids and g["lr"] == pytest.approx(0.02 * scale)
            CheckGroups.checked += 1

    strategy = Naive(
        model=model,
        optimizer=optimizer,
        train_mb_size=32,
        train_epochs=1,
        evaluator=silent_evaluator(),
        plugins=[SlowLearnerPlugin(backbone_lr_scale=scale), CheckGroups()],
    )
    sizes = []
    for exp in split_digits.train_stream[:3]:
        strategy.train(exp)
        sizes.append(model.classifier.classifier.out_features)
    assert CheckGroups.checked == 3 and sizes[-1] > sizes[0]  # the head grew


@pytest.mark.parametrize("norm_stats, factor", [("slow", 0.05), ("frozen", 0.0), ("train", 1.0)])
def test_batch_norm_running_statistics_follow_norm_stats(split_digits, norm_stats, factor):
    """The running statistics equal plain Naive's on a model whose momentum was set by hand."""

    def run(plugins, momentum):
        torch.manual_seed(0)
        model = PretrainedClassifier(bn_backbone(), num_classes=2, feature_dim=12)
        model.features[2].momentum = momentum
        strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.02),
                         train_mb_size=32, train_epochs=1, evaluator=silent_evaluator(),
                         plugins=plugins)
        strategy.train(split_digits.train_stream[0])
        return model.features[2]

    start = bn_backbone()[2]
    ours = run([SlowLearnerPlugin(backbone_lr_scale=0.05, norm_stats=norm_stats)], 0.1)
    assert ours.momentum == 0.1  # restored after the experience
    by_hand = run([SlowLearnerPlugin(backbone_lr_scale=0.05, norm_stats="train")], 0.1 * factor)
    assert torch.equal(ours.running_mean, by_hand.running_mean)
    assert torch.equal(ours.running_var, by_hand.running_var)
    moved = (ours.running_mean - start.running_mean).abs().max()
    assert (moved == 0) == (norm_stats == "frozen")


def test_backbone_step_is_scaled_learning_rate_times_gradient():
    torch.manual_seed(0)
    model = PretrainedClassifier(bn_backbone(4), num_classes=3, feature_dim=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    split_param_groups(optimizer, list(model.classifier.parameters()), 0.01)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = model(torch.randn(8, 1, 8, 8)).logsumexp(1).mean()
    loss.backward()
    optimizer.step()
    for n, p in model.named_parameters():
        lr = 0.1 if n.startswith("classifier.") else 0.1 * 0.01
        torch.testing.assert_close(p.detach(), before[n] - lr * p.grad, rtol=0, atol=1e-7)


# ------------------------------------------------------------------ alignment


class Snapshot(SupervisedPlugin):
    """Copies the model's state in after_training_exp (placed before the alignment plugin)."""

    def __init__(self):
        super().__init__()
        self.states = []

    def after_training_exp(self, strategy, **kwargs):
        self.states.append({k: v.clone() for k, v in strategy.model.state_dict().items()})


class CheckUntouched(SupervisedPlugin):
    """After the alignment plugin: the backbone is bitwise as before, the head moved."""

    def __init__(self, snapshot):
        super().__init__()
        self.snapshot = snapshot
        self.head_moved = []

    def after_training_exp(self, strategy, **kwargs):
        before = self.snapshot.states[-1]
        after = strategy.model.state_dict()
        for k, v in after.items():
            if k.startswith("features."):
                assert torch.equal(v, before[k]), k
        key = "classifier.classifier.weight"
        self.head_moved.append(not torch.equal(after[key], before[key]))


@pytest.mark.parametrize("keep_aligned", [False, True])
def test_alignment_leaves_backbone_untouched_and_restores_head(split_digits, keep_aligned):
    torch.manual_seed(0)
    model = PretrainedClassifier(bn_backbone(), num_classes=2, feature_dim=12)
    snapshot = Snapshot()
    check = CheckUntouched(snapshot)
    alignment = ClassifierAlignmentPlugin(
        samples_per_class=32, epochs=2, batch_size=32, keep_aligned=keep_aligned
    )

    class CheckRestored(SupervisedPlugin):
        """At the next experience's start the head's old rows are the unaligned ones."""

        restored = 0

        def before_training_exp(self, strategy, **kwargs):
            if len(snapshot.states) < 2:
                return
            w = model.classifier.classifier.weight
            old = snapshot.states[-1]["classifier.classifier.weight"]
            assert torch.equal(w[: len(old)], old) != keep_aligned
            CheckRestored.restored += 1

    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        train_mb_size=32,
        train_epochs=1,
        eval_mb_size=100,
        evaluator=silent_evaluator(),
        plugins=[SlowLearnerPlugin(0.1), CheckRestored(), snapshot, alignment, check],
    )
    for exp in split_digits.train_stream[:3]:
        strategy.train(exp)
        strategy.eval(split_digits.test_stream)  # grows the head to 10 during eval
    assert check.head_moved == [False, True, True]  # no alignment after the first experience
    assert CheckRestored.restored == 1
    assert len(alignment.alignment_losses) == 2


def test_alignment_fits_sampled_features_better_than_chance():
    # digits pixels as fixed features: an aligned linear head must classify held-out images
    train, test = digits(seed=0)
    x, y = train.data.flatten(1), train.targets
    stats = ClassGaussianStats("full", RIDGE)
    for g in range(5):
        mask = (y == 2 * g) | (y == 2 * g + 1)
        stats.update(x[mask], y[mask], g)
    torch.manual_seed(0)
    head = torch.nn.Linear(64, 10)
    gen = torch.Generator().manual_seed(0)
    align_head(
        head,
        stats,
        samples_per_class=96,
        epochs=5,
        lr=0.01,
        temperature=0.1,
        batch_size=16,
        momentum=0.9,
        weight_decay=5e-4,
        generator=gen,
        device="cpu",
    )
    acc = (head(test.data.flatten(1)).argmax(1) == test.targets).float().mean().item()
    assert acc > 0.8


def test_normalised_logits_divide_by_mean_per_experience_norm():
    logits = torch.tensor([[3.0, 4.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    groups = torch.tensor([0, 0, 1, 1])
    out = normalised_logits(logits, groups, temperature=0.5, eps=0.0)
    # row 0: norms 5 and 1 -> mean 3; row 1: norms 1 and 0 -> mean 0.5
    torch.testing.assert_close(out[0], logits[0] / 3 / 0.5)
    torch.testing.assert_close(out[1], logits[1] / 0.5 / 0.5)


# ------------------------------------------------------------------ contract, bad inputs


def test_pretrained_classifier_meets_the_contract(backbone):
    model = PretrainedClassifier(backbone, num_classes=3, preprocess=True).eval()
    images = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        expected = model.classifier(backbone(backbone.transform(images)))
        torch.testing.assert_close(model(images), expected)
        assert model.features(images).shape == (2, 1280)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: SlowLearnerPlugin(backbone_lr_scale=-0.1), "backbone_lr_scale"),
        (lambda: SlowLearnerPlugin(norm_stats="fast"), "norm_stats"),
        (lambda: ClassifierAlignmentPlugin(temperature=0.0), "temperature"),
        (lambda: ClassifierAlignmentPlugin(temperature=-1.0), "temperature"),
        (lambda: ClassifierAlignmentPlugin(samples_per_class=0), "samples_per_class"),
        (lambda: ClassifierAlignmentPlugin(covariance="low-rank"), "covariance"),
        (lambda: ClassGaussianStats("full", ridge=0.0), "ridge"),
        (lambda: PretrainedClassifier(torch.nn.Flatten()), "feature_dim"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_model_without_contract_names_the_missing_attribute():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(ValueError, match="'features'"):
        SLCA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="'classifier' for the head"):
        SLCA(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            alignment=ClassifierAlignmentPlugin(features="0"),
        )


def test_slca_training_loss_is_over_the_current_experience_classes(split_digits):
    import torch.nn.functional as F

    checked = []

    class CheckLoss(SupervisedPlugin):
        def before_backward(self, strategy, **kwargs):
            classes = sorted(strategy.experience.classes_in_this_experience)
            logits = strategy.mb_output[:, classes]
            target = torch.tensor([classes.index(int(t)) for t in strategy.mb_y])
            expected = F.cross_entropy(logits, target)
            torch.testing.assert_close(strategy.loss.reshape(()), expected)
            full = F.cross_entropy(strategy.mb_output, strategy.mb_y)
            checked.append(not torch.allclose(full, expected))

    torch.manual_seed(0)
    model = PretrainedClassifier(bn_backbone(), num_classes=2, feature_dim=12)
    strategy = SLCA(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        train_mb_size=64,
        evaluator=silent_evaluator(),
        plugins=[CheckLoss()],
        alignment=ClassifierAlignmentPlugin(epochs=0),
    )
    for exp in split_digits.train_stream[:2]:
        strategy.train(exp)
    assert len(checked) > 4 and all(checked[len(checked) // 2 :])  # 2nd experience: differs
