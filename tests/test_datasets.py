import pytest
import torch
from avalanche.benchmarks import nc_benchmark

import neve.benchmarks.datasets as ds_mod
from neve.benchmarks import class_balanced_subset, digits, fashion_mnist


def test_fashion_mnist_has_6000_and_1000_per_class(fmnist):
    train, test = fmnist
    assert len(train) == 60_000 and len(test) == 10_000
    assert torch.bincount(train.targets).tolist() == [6000] * 10
    assert torch.bincount(test.targets).tolist() == [1000] * 10
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_missing_fashion_mnist_names_the_three_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(ds_mod, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as err:
        fashion_mnist(root=tmp_path / "empty")
    msg = str(err.value)
    assert "root=" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "download=True" in msg


def test_explicit_root_is_used_first(tmp_path, monkeypatch, fmnist):
    # unpack the Debian files into an explicit root, then hide the Debian path
    ds_mod._unpack_debian_fashion_mnist(ds_mod.DEBIAN_FASHION_MNIST, tmp_path)
    monkeypatch.setattr(ds_mod, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    train, test = fashion_mnist(root=tmp_path)
    assert str(tmp_path) in train.root
    assert torch.equal(train.targets, fmnist[0].targets)


def test_digits_split_is_deterministic_stratified_and_disjoint():
    a_train, a_test = digits(seed=3)
    b_train, b_test = digits(seed=3)
    c_train, _ = digits(seed=4)
    assert torch.equal(a_train.data, b_train.data) and torch.equal(a_test.targets, b_test.targets)
    assert not torch.equal(a_train.data, c_train.data)
    assert len(a_train) + len(a_test) == 1797
    assert a_train[0][0].shape == (1, 8, 8)
    # no image is in both parts
    train_rows = {tuple(r.tolist()) for r in a_train.data.flatten(1)}
    test_rows = [tuple(r.tolist()) for r in a_test.data.flatten(1)]
    overlap = sum(r in train_rows for r in test_rows)
    assert overlap <= 5  # the digits set has a few exact duplicate images, no more
    share = torch.bincount(a_test.targets, minlength=10) / torch.bincount(
        torch.cat([a_train.targets, a_test.targets]), minlength=10
    )
    assert torch.allclose(share, torch.full((10,), 0.25), atol=0.01)


def test_digits_rejects_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        digits(test_fraction=1.5)


def test_avalanche_builders_accept_the_datasets(digits_data, fmnist):
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

    train, test = digits_data
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    assert len(bm.train_stream) == 5
    seen = set()
    for exp in bm.train_stream:
        classes = set(exp.classes_in_this_experience)
        assert len(classes) == 2 and not classes & seen
        seen |= classes
    x, y, t = bm.train_stream[0].dataset[0]
    assert x.shape == (1, 8, 8)

    small = class_balanced_subset(fmnist[0], per_class=20)
    bm2 = class_incremental_benchmark(
        {"train": small, "test": small}, num_experiences=5
    )
    assert sum(len(e.dataset) for e in bm2.train_stream) == 200


def test_class_balanced_subset_is_balanced_and_seeded(fmnist):
    sub = class_balanced_subset(fmnist[0], per_class=7, seed=1)
    again = class_balanced_subset(fmnist[0], per_class=7, seed=1)
    assert torch.bincount(sub.targets).tolist() == [7] * 10
    assert torch.equal(sub.indices, again.indices)
    x, y = sub[3]
    assert y == int(sub.targets[3])
