"""The instance test's own learners (issue #16): conv nets, end-to-end tuning, ProtoNet, dot scores.

Tiny data (scikit-learn digits, 8x8), tiny nets: seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bad_input import assert_refused
from resume_harness import assert_resumes_exactly

from neve.benchmarks import episode_benchmark, instance_test_episodes, run_episodes
from neve.models import ConvNet, DotProductNCM, TunedNetwork, meta_train_protonet, pretrain_convnet
from neve.models.convnet_training import protonet_episode_loss
from neve.models.prototypes import prototype_scores, seen_class_scores
from neve.strategies import NearestPrototype, tune_network

TINY = {"stages": 2, "filters": 4}


def _body(seed=0):
    torch.manual_seed(seed)
    return ConvNet(**TINY, input_size=8).eval()


def test_convnet_shapes_follow_the_stages():
    assert ConvNet(3, 8).feature_dim == 8 * 3 * 3  # 28 -> 14 -> 7 -> 3
    assert ConvNet(4, 8).feature_dim == 8  # ... -> 1
    assert ConvNet(3, 8)(torch.rand(2, 1, 28, 28)).shape == (2, 72)
    assert_refused(lambda: ConvNet(5, 8, input_size=8), "stages")


def test_tune_network_updates_every_layer_and_leaves_the_pretrained_body(digits_data):
    train, _ = digits_data
    body = _body()
    before = {k: v.clone() for k, v in body.state_dict().items()}
    strategy = tune_network(body, 20, lr=0.01, steps_per_set=5)
    start = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    bm = next(instance_test_episodes(train, 1, 20, 4, seed=0))
    for exp in bm.train_stream:
        strategy.train(exp)
    end = strategy.model.state_dict()
    trainable = {n for n, p in strategy.model.named_parameters()}
    assert any(n.startswith("body.") for n in trainable) and "head.weight" in trainable
    for name in trainable:
        assert not torch.equal(start[name], end[name]), f"{name} was not tuned"
    for name, value in start.items():  # BatchNorm running statistics: frozen
        if "running" in name:
            assert torch.equal(value, end[name]), name
    for name, value in before.items():  # the pretrained net itself: untouched
        assert torch.equal(value, body.state_dict()[name]), name


def test_fresh_head_is_seeded_and_batchnorm_stays_in_eval_mode():
    a = TunedNetwork(_body(), 20, head_seed=3)
    b = TunedNetwork(_body(), 20, head_seed=3)
    c = TunedNetwork(_body(), 20, head_seed=4)
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)
    a.train()
    assert a.training and not any(m.training for m in a.modules()
                                  if isinstance(m, torch.nn.BatchNorm2d))


def test_dot_scores_equal_the_hand_computation_and_differ_from_nearest_mean():
    # one support item per class; class 1's feature is long and close in angle to class 0's
    support = torch.tensor([[1.0, 0.0], [3.0, 0.5], [0.0, 1.0]])
    labels = torch.arange(3)
    queries = support.clone()  # exact copies, as the instance test's clean queries
    bm = episode_benchmark(support, labels, queries, labels.clone(), 3)
    hand = queries.numpy() @ support.numpy().T  # means = the items themselves
    preds = {}
    for scoring in ("euclidean", "dot"):
        s = NearestPrototype(num_classes=3, feature_dim=2, normalize=False, scoring=scoring)
        for exp in bm.train_stream:
            s.train(exp)
        s.model.eval()
        out = s.model(queries)
        if scoring == "dot":
            assert isinstance(s.model, DotProductNCM)
            np.testing.assert_allclose(out.numpy(), hand, rtol=1e-6)
        preds[scoring] = out.argmax(1)
    # nearest mean: each exact copy is at distance 0 from its own mean -> always right
    assert torch.equal(preds["euclidean"], labels)
    # dot product: query 0 scores 3 with class 1 and 1 with itself -> wrong, as by hand
    assert torch.equal(preds["dot"], torch.as_tensor(hand.argmax(1)))
    assert preds["dot"].tolist() == [1, 1, 2]


def test_exact_copy_queries_are_a_tautology_for_nearest_mean_not_for_dot(digits_data):
    train, _ = digits_data
    episodes = [bm for bm in instance_test_episodes(train, 6, 20, 4, seed=1)]
    flat = [_flatten(bm) for bm in episodes]
    euclid = run_episodes(lambda: NearestPrototype(num_classes=20, feature_dim=64), flat)
    dot = run_episodes(lambda: NearestPrototype(num_classes=20, feature_dim=64,
                                                normalize=False, scoring="dot"), flat)
    assert euclid.accuracies["test"] == [1.0] * 6
    assert dot.mean() < 1.0


def _flatten(bm):
    xs = torch.cat([torch.stack([d[0] for d in exp.dataset]) for exp in bm.train_stream])
    ys = torch.cat([torch.tensor([int(d[1]) for d in exp.dataset]) for exp in bm.train_stream])
    test = bm.test_stream[0].dataset
    xq = torch.stack([d[0] for d in test])
    yq = torch.tensor([int(d[1]) for d in test])
    return episode_benchmark(xs.flatten(1), ys, xq.flatten(1), yq, len(bm.train_stream))


def test_prototype_scores_dot_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    sums = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    counts = torch.tensor([2.0, 0.0, 1.0, 3.0], dtype=torch.float64)
    got = seen_class_scores(x, sums, counts, scoring="dot")
    means = sums.numpy() / np.maximum(counts.numpy(), 1)[:, None]
    want = x.numpy() @ means.T
    want[:, 1] = -np.inf
    np.testing.assert_allclose(got.numpy(), want.astype(np.float32), rtol=1e-6)


def test_protonet_episode_loss_is_cross_entropy_of_dot_products_to_class_means():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(4, 3)
    sx, sy = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    qx, qy = torch.randn(5, 4), torch.tensor([0, 1, 2, 2, 1])
    with torch.no_grad():
        zs, zq = encoder(sx).numpy(), encoder(qx).numpy()
        means = np.stack([zs[sy.numpy() == c].mean(0) for c in range(3)])
        logits = zq @ means.T
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        want = -logp[np.arange(5), qy.numpy()].mean()
        got = protonet_episode_loss(encoder, sx, sy, qx, qy)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    assert torch.equal(prototype_scores(torch.eye(2), torch.ones(3, 2), "dot"), torch.ones(2, 3))


def _held_out_loss(net, data, classes, n=8, episodes=12):
    targets = data.targets.numpy()
    rng = np.random.default_rng(123)
    losses = []
    with torch.no_grad():
        for _ in range(episodes):
            c = classes[int(rng.integers(len(classes)))]
            idx = rng.choice(np.flatnonzero(targets == c), size=n, replace=False)
            x = data.data[torch.as_tensor(idx)]
            y = torch.arange(n)
            losses.append(float(protonet_episode_loss(net.eval(), x, y, x, y)))
    return float(np.mean(losses))


def test_meta_training_lowers_the_episode_loss_and_is_cached(digits_data, tmp_path):
    train, test = digits_data
    kwargs = dict(**TINY, meta_episodes=60, images_per_episode=8, lr=1e-2, seed=0,
                  cache_dir=tmp_path)
    torch.manual_seed(0)
    untrained = ConvNet(**TINY, input_size=8)  # the same initialisation (seeded alike)
    net = meta_train_protonet(train, [0, 1, 2, 3, 4], **kwargs)
    assert _held_out_loss(net, test, [5, 6, 7, 8, 9]) < _held_out_loss(untrained, test,
                                                                      [5, 6, 7, 8, 9])
    assert np.mean(net.training_losses[-15:]) < np.mean(net.training_losses[:15])
    files = list((tmp_path / "convnets").glob("protonet-*.pt"))
    assert len(files) == 1
    again = meta_train_protonet(train, [0, 1, 2, 3, 4], **kwargs)  # loaded, not trained
    for k, v in net.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    assert again.training_losses == net.training_losses
    other = meta_train_protonet(train, [0, 1, 2, 3, 4], **{**kwargs, "seed": 1})
    assert not torch.equal(other.state_dict()["layers.0.weight"],
                           net.state_dict()["layers.0.weight"])


def test_pretraining_learns_the_held_out_split_classes(digits_data, tmp_path):
    train, test = digits_data
    net = pretrain_convnet(train, [0, 1, 2, 3, 4], **TINY, epochs=3, batch_size=32, lr=1e-2,
                           seed=0, cache_dir=tmp_path)
    assert net.training_losses[-1] < net.training_losses[0]
    assert list((tmp_path / "convnets").glob("pretrain-*.pt"))
    assert_refused(lambda: pretrain_convnet(train, [0, 42], cache=False), "classes")


@pytest.mark.parametrize("call, argument", [
    (lambda: tune_network("net", 20), "body"),
    (lambda: tune_network(_body(), 0), "num_classes"),
    (lambda: tune_network(_body(), 20, lr=-1.0), "lr"),
    (lambda: tune_network(_body(), 20, head_seed=-1), "head_seed"),
    (lambda: NearestPrototype(num_classes=3, scoring="cosine"), "scoring"),
    (lambda: TunedNetwork(torch.nn.Identity(), 3), "feature_dim"),
])
def test_bad_input_is_refused_by_name(call, argument):
    assert_refused(call, argument)


@pytest.mark.parametrize("learner", ["tune", "tune+replay", "dot"])
def test_checkpoint_mid_episode_resumes_exactly(digits_data, tmp_path, learner):
    train, _ = digits_data
    bm = next(instance_test_episodes(train, 1, 20, 5, seed=1))
    if learner == "dot":
        bm = _flatten(bm)
    body = _body()

    def make():
        if learner == "dot":
            return NearestPrototype(num_classes=20, feature_dim=64, normalize=False,
                                    scoring="dot")
        replay = {"replay_sets": 2, "replay_samples": 4} if learner == "tune+replay" else {}
        return tune_network(body, 20, lr=0.1, **replay)

    assert_resumes_exactly(make, bm, tmp_path / "ck.pkl")


@pytest.mark.parametrize("scoring,normalize", [("euclidean", False), ("euclidean", True),
                                               ("dot", False), ("dot", True)])
def test_prototypes_are_means_of_several_support_items_per_class(scoring, normalize):
    """Three classes with 1, 3 and 4 support items over two support sets: the prototypes
    are the per-class means (a sum would be 3 and 4 times too long), checked against numpy."""
    g = torch.Generator().manual_seed(0)
    support = torch.randn(8, 5, generator=g, dtype=torch.float64).float()
    labels = torch.tensor([1, 2, 0, 1, 2, 2, 1, 2])  # counts 1, 3, 4; 4 items per set
    queries = torch.randn(30, 5, generator=g)
    bm = episode_benchmark(support, labels, queries, torch.arange(30) % 3, 2)
    s = NearestPrototype(num_classes=3, feature_dim=5, normalize=normalize, scoring=scoring,
                         evaluator=None)
    for exp in bm.train_stream:
        s.train(exp)
    z = support.double().numpy()
    if normalize:
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
    hand = np.stack([z[labels.numpy() == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(s.model.class_means.double().numpy(), hand, rtol=1e-5, atol=1e-6)
    q = queries.double().numpy()
    if normalize:
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    scores = q @ hand.T if scoring == "dot" else -((q[:, None] - hand[None]) ** 2).sum(-1)
    s.model.eval()
    with torch.no_grad():
        predicted = s.model(queries).argmax(1).numpy()
    assert (predicted == scores.argmax(1)).all()
    assert len(set(scores.argmax(1).tolist())) > 1  # the queries do not all go to one class
