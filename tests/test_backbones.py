import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from neve.benchmarks import class_balanced_subset
from neve.models import ImagePreprocess, dataset_fingerprint, extract_features


def test_preprocess_shapes_and_normalisation():
    pre = ImagePreprocess(64)
    one = torch.rand(1, 28, 28)
    out = pre(one)
    assert out.shape == (3, 64, 64)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6
    batch = pre(torch.rand(4, 1, 8, 8))
    assert batch.shape == (4, 3, 64, 64)
    # a constant image stays constant: resizing keeps 0.75 -> (0.75 - 0.5) / 0.5
    flat = pre(torch.full((1, 8, 8), 0.75))
    assert torch.allclose(flat, torch.full_like(flat, 0.5), atol=1e-6)
    with pytest.raises(ValueError, match="images must be"):
        pre(torch.rand(2, 2, 8, 8))


def test_features_are_deterministic_and_1280d(backbone, digits_data):
    train, _ = digits_data
    small = torch.utils.data.Subset(train, range(40))
    a, ya = extract_features(backbone, small, batch_size=16, cache=False, progress=False)
    b, yb = extract_features(backbone, small, batch_size=16, cache=False, progress=False)
    assert a.shape == (40, 1280) and a.dtype == torch.float32
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert torch.equal(ya, train.targets[:40])
    assert a.std(0).mean() > 0.01  # features vary between images


def test_cache_returns_identical_tensors_without_recomputing(
    backbone, digits_data, tmp_path, monkeypatch
):
    train, _ = digits_data
    small = torch.utils.data.Subset(train, range(30))
    small.targets = train.targets[:30]
    first = extract_features(backbone, small, cache_dir=tmp_path, progress=False)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and "efficientnet-lite0-64px" in files[0].name

    def fail(*args, **kwargs):
        raise AssertionError("backbone ran on a cache hit")

    monkeypatch.setattr(backbone, "forward", fail)
    second = extract_features(backbone, small, cache_dir=tmp_path, progress=False)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_fingerprint_tracks_content(digits_data):
    train, test = digits_data
    assert dataset_fingerprint(train) == dataset_fingerprint(train)
    assert dataset_fingerprint(train) != dataset_fingerprint(test)


def test_linear_probe_on_imagenet_features_scores_80_percent(backbone, fmnist):
    """Real ImageNet weights: a logistic-regression probe on 2,000 Fashion-MNIST
    training images' features scores >= 80% on 1,000 test images (82% measured)."""
    train, test = fmnist
    tr = class_balanced_subset(train, per_class=200, seed=0)
    te = class_balanced_subset(test, per_class=100, seed=0)
    xtr, ytr = extract_features(backbone, tr, progress=False)
    xte, yte = extract_features(backbone, te, progress=False)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    probe = LogisticRegression(max_iter=2000, C=0.1)
    probe.fit(((xtr - mean) / std).numpy(), ytr.numpy())
    acc = float(np.mean(probe.predict(((xte - mean) / std).numpy()) == yte.numpy()))
    assert acc >= 0.80, acc
