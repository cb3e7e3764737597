"""Instance-test and CFSL episodes, and the corruption transforms (Kowadlo et al., 2022)."""

import math

import numpy as np
import pytest
import torch

from neve.benchmarks import (
    LabelledTensorDataset,
    Occlusion,
    PixelNoise,
    cfsl_episodes,
    instance_test_episodes,
)


def _stream_tensors(stream):
    xs, ys = [], []
    for exp in stream:
        for item in exp.dataset:
            xs.append(torch.as_tensor(item[0]))
            ys.append(int(item[1]))
    return torch.stack(xs), torch.tensor(ys)


def _dataset_images(dataset, indices):
    return torch.stack([dataset[int(i)][0] for i in indices])


def test_episode_holds_n_distinct_images_of_one_class_with_instance_labels(digits_data):
    train, _ = digits_data
    targets = np.asarray(train.targets)
    for bm in instance_test_episodes(train, n_episodes=6, images_per_episode=10,
                                     support_sets=5, seed=3):
        idx = bm.source_indices.numpy()
        assert len(idx) == 10 and len(np.unique(idx)) == 10
        assert (targets[idx] == bm.source_class).all()
        x, y = _stream_tensors(bm.train_stream)
        assert torch.equal(y, torch.arange(10))  # each image is its own class
        assert torch.equal(x, _dataset_images(train, idx))
        assert len(bm.train_stream) == 5
        for k, exp in enumerate(bm.train_stream):
            assert set(exp.classes_in_this_experience) == {2 * k, 2 * k + 1}
            assert len(exp.dataset) == 2


def test_clean_queries_are_exactly_the_support_images(digits_data):
    train, _ = digits_data
    for bm in instance_test_episodes(train, 4, images_per_episode=20, support_sets=4, seed=1):
        xs, ys = _stream_tensors(bm.train_stream)
        xq, yq = _stream_tensors(bm.test_stream)
        assert len(bm.test_stream) == 1
        assert torch.equal(xq, xs) and torch.equal(yq, ys)


def test_corruption_changes_queries_only(digits_data):
    train, _ = digits_data
    for corruption, severity in (("occlusion", 0.3), ("noise", 0.4)):
        for bm in instance_test_episodes(train, 3, 20, 4, corruption, severity, seed=2):
            xs, ys = _stream_tensors(bm.train_stream)
            xq, yq = _stream_tensors(bm.test_stream)
            assert torch.equal(xs, _dataset_images(train, bm.source_indices))
            assert torch.equal(yq, ys)
            changed = (xq != xs).flatten(1).any(1)
            assert changed.float().mean() > 0.5, corruption


def _independent_disc(h, w, radius, row, col):
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return (ii - row) ** 2 + (jj - col) ** 2 <= radius**2


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.2, 0.3])
def test_occlusion_zeroes_one_disc_of_the_right_radius_and_nothing_else(fraction):
    h = w = 28
    radius = math.floor(fraction * h)
    images = torch.rand(5, 3, h, w) + 1.0  # no zeros before
    out = Occlusion(fraction, seed=7)(images)
    for img, res in zip(images, out, strict=True):
        zero = (res == 0).numpy()
        assert (zero == zero[0]).all()  # all channels of a pixel together
        zeroed = zero[0]
        matches = [
            (r, c)
            for r in range(h)
            for c in range(w)
            if (zeroed == _independent_disc(h, w, radius, r, c)).all()
        ]
        assert len(matches) == 1
        r, c = matches[0]
        assert radius <= r < h - radius and radius <= c < w - radius  # disc inside the image
        keep = torch.from_numpy(~zeroed)
        assert torch.equal(res[:, keep], img[:, keep])
    assert not torch.equal(out[0] == 0, out[1] == 0) or not torch.equal(out[1] == 0, out[2] == 0)


def test_occlusion_seed_repeats_and_zero_radius_is_identity():
    x = torch.rand(4, 1, 28, 28) + 1
    assert torch.equal(Occlusion(0.2, seed=3)(x), Occlusion(0.2, seed=3)(x))
    assert torch.equal(Occlusion(0.02, seed=3)(x), x)  # floor(0.02 * 28) = 0 pixels
    single = Occlusion(0.1, seed=0)(x[0])
    assert single.shape == (1, 28, 28) and int((single == 0).sum()) == 13  # r = 2: 13 pixels


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.1, 0.2, 0.4, 1.0])
def test_pixel_noise_replaces_the_right_fraction_of_pixels(fraction):
    c, h, w = 3, 20, 30
    images = torch.full((4, c, h, w), 5.0)  # outside [0, 1]: every replaced value shows
    out = PixelNoise(fraction, seed=11)(images)
    expected = math.floor(fraction * h * w)
    for res in out:
        changed = res != 5.0
        assert (changed == changed[0]).all()  # all channels of a pixel together
        assert int(changed[0].sum()) == expected
        values = res[changed]
        assert ((values >= 0) & (values < 1)).all()
    if expected:
        assert not torch.equal(out[0], out[1])


def test_same_seed_same_episodes_and_prefix_stable(digits_data):
    train, _ = digits_data

    def flat(it):
        return [
            (_stream_tensors(bm.train_stream), _stream_tensors(bm.test_stream)) for bm in it
        ]

    a = flat(instance_test_episodes(train, 4, 20, 4, "noise", 0.2, seed=5))
    b = flat(instance_test_episodes(train, 4, 20, 4, "noise", 0.2, seed=5))
    longer = flat(instance_test_episodes(train, 6, 20, 20, "noise", 0.2, seed=5))
    other = flat(instance_test_episodes(train, 4, 20, 4, "noise", 0.2, seed=6))
    for (sa, qa), (sb, qb), (sl, ql) in zip(a, b, longer[:4], strict=True):
        assert torch.equal(sa[0], sb[0]) and torch.equal(qa[0], qb[0])
        # another presentation (20x1) and more episodes: same images, same corrupted queries
        assert torch.equal(sa[0], sl[0]) and torch.equal(qa[0], ql[0])
    assert any(not torch.equal(sa[0], so[0]) for (sa, _), (so, _) in zip(a, other, strict=True))


def test_cfsl_episodes_classes_shots_and_disjoint_queries(digits_data):
    train, _ = digits_data
    targets = torch.as_tensor(train.targets)
    for bm in cfsl_episodes(train, 4, n_classes=6, shots=3, support_sets=3, query_shots=2,
                            seed=0):
        xs, ys = _stream_tensors(bm.train_stream)
        xq, yq = _stream_tensors(bm.test_stream)
        assert len(bm.source_classes.unique()) == 6
        assert torch.equal(targets[bm.support_indices], bm.source_classes[ys])
        assert torch.equal(targets[bm.query_indices], bm.source_classes[yq])
        assert not set(bm.support_indices.tolist()) & set(bm.query_indices.tolist())
        assert torch.equal(xs, _dataset_images(train, bm.support_indices))
        assert torch.equal(torch.bincount(ys), torch.full((6,), 3))
        assert torch.equal(torch.bincount(yq), torch.full((6,), 2))
        for k, exp in enumerate(bm.train_stream):
            assert set(exp.classes_in_this_experience) == {2 * k, 2 * k + 1}


def test_any_dataset_with_targets_works():
    x = torch.rand(60, 1, 6, 6)
    y = torch.arange(3).repeat_interleave(20)
    bm = next(instance_test_episodes(LabelledTensorDataset(x, y), 1, 20, 2, "occlusion", 0.3))
    assert int(y[bm.source_indices].unique().numel()) == 1


def test_bad_inputs_raise_clear_errors(digits_data):
    train, _ = digits_data
    largest = int(torch.bincount(torch.as_tensor(train.targets)).max())
    with pytest.raises(ValueError, match="images_per_episode"):
        instance_test_episodes(train, 1, images_per_episode=largest + 1, support_sets=1)
    with pytest.raises(ValueError, match="support_sets"):
        instance_test_episodes(train, 1, images_per_episode=20, support_sets=3)
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match="severity"):
            instance_test_episodes(train, 1, corruption="noise", severity=bad)
    with pytest.raises(ValueError, match="corruption"):
        instance_test_episodes(train, 1, corruption="blur", severity=0.1)
    with pytest.raises(ValueError, match="n_episodes"):
        instance_test_episodes(train, 0)
    with pytest.raises(TypeError, match="targets"):  # a dataset without labels: wrong kind
        instance_test_episodes([(torch.zeros(1, 2, 2), 0)] * 30, 1)
    with pytest.raises(ValueError, match="n_classes"):
        cfsl_episodes(train, 1, n_classes=11, shots=1, support_sets=1)
    with pytest.raises(ValueError, match="support_sets"):
        cfsl_episodes(train, 1, n_classes=10, shots=1, support_sets=3)
    with pytest.raises(ValueError, match="radius_fraction"):
        Occlusion(1.2)
    with pytest.raises(ValueError, match="fraction"):
        PixelNoise(-0.5)
    with pytest.raises(ValueError, match="image"):
        PixelNoise(0.1)(torch.zeros(5))
