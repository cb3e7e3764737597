"""run_episodes, feature encoding and the episodic baselines, on digits pixels as features."""

import json
import warnings

import numpy as np
import pytest
import torch
from resume_harness import assert_resumes_exactly
from scipy import stats

from neve.benchmarks import (
    EpisodeResults,
    cfsl_episodes,
    encode_episode,
    encode_episodes,
    instance_test_episodes,
    paired_conditions,
    run_episodes,
)
from neve.strategies import (
    NearestPrototype,
    RecentSetsBuffer,
    episode_evaluator,
    pretrain_tune,
)


def _flat(x):
    return x.flatten(1)


def _pixel_episodes(episodes):
    for ep in episodes:
        if isinstance(ep, dict):
            yield {k: encode_episode(bm, _flat) for k, bm in ep.items()}
        else:
            yield encode_episode(ep, _flat)


def _tune():
    return pretrain_tune(20, feature_dim=64, lr=0.1, steps_per_set=5)


def test_run_episodes_builds_a_fresh_strategy_per_episode_and_nothing_leaks(digits_data):
    train, _ = digits_data
    episodes = list(_pixel_episodes(instance_test_episodes(train, 4, 20, 2, seed=0)))
    calls = []

    def factory():
        calls.append(1)
        return _tune()

    together = run_episodes(factory, episodes, progress=False)
    assert len(calls) == 4
    alone = [run_episodes(_tune, [ep], progress=False).accuracies["test"][0] for ep in episodes]
    assert together.accuracies["test"] == pytest.approx(alone)

    # the same episodes learnt by ONE strategy in a row (leaked state) score otherwise
    leaky = _tune()
    leaked = []
    for ep in episodes:
        for exp in ep.train_stream:
            leaky.train(exp)
        leaked.append(leaky.eval(ep.test_stream)["Top1_Acc_Stream/eval_phase/test_stream"])
    assert leaked != pytest.approx(alone)

    shared = _tune()
    with pytest.raises(ValueError, match="new one per episode"):
        run_episodes(lambda: shared, episodes[:2], progress=False)


def test_episode_results_mean_and_ci_match_scipy():
    accs = [0.5, 0.75, 0.6, 0.9, 0.8, 0.55]
    res = EpisodeResults({"clean": accs}, seconds=2.0, name="x")
    lo, hi = stats.t.interval(0.95, len(accs) - 1, loc=np.mean(accs), scale=stats.sem(accs))
    assert res.mean() == pytest.approx(np.mean(accs))
    assert res.ci95("clean") == pytest.approx((hi - lo) / 2)
    d = json.loads(res.to_json())
    assert d["conditions"]["clean"]["per_episode"] == accs
    assert d["n_episodes"] == 6 and d["episodes_per_second"] == 3.0
    with pytest.raises(ValueError, match="condition"):
        res.mean("noise")
    two = EpisodeResults({"clean": accs, "noise": accs[::-1]}, seconds=1.0)
    assert two.mean("noise") == pytest.approx(np.mean(accs))
    with pytest.raises(ValueError, match=r"condition must be one of \('clean', 'noise'\), got "
                       "None"):
        two.mean()  # two conditions: which one must be said


def test_paired_conditions_train_once_and_score_each_condition(digits_data):
    train, _ = digits_data

    def make(corruption=None, severity=0.0, seed=0):
        return instance_test_episodes(train, 5, 20, 4, corruption, severity, seed=seed)

    calls = []

    def factory():
        calls.append(1)
        return NearestPrototype(num_classes=20, feature_dim=64)

    res = run_episodes(
        factory,
        _pixel_episodes(paired_conditions(clean=make(), occluded=make("occlusion", 0.3))),
        progress=False,
    )
    assert len(calls) == 5
    assert res.accuracies["clean"] == [1.0] * 5  # nearest neighbour of an exact copy
    assert res.mean("occluded") < 1.0
    with pytest.raises(ValueError, match="support sets"):
        list(paired_conditions(a=make(seed=0), b=make(seed=1)))


def test_nearest_prototype_equals_brute_force_nearest_mean(digits_data):
    train, _ = digits_data
    for bm in _pixel_episodes(cfsl_episodes(train, 3, 10, 3, support_sets=5, query_shots=4,
                                            seed=4)):
        strategy = NearestPrototype(num_classes=10, feature_dim=64)
        for exp in bm.train_stream:
            strategy.train(exp)
        acc = strategy.eval(bm.test_stream)["Top1_Acc_Stream/eval_phase/test_stream"]
        xs = np.concatenate([[np.asarray(i[0]) for i in e.dataset] for e in bm.train_stream])
        ys = np.concatenate([[int(i[1]) for i in e.dataset] for e in bm.train_stream])
        xq = np.stack([np.asarray(i[0]) for i in bm.test_stream[0].dataset])
        yq = np.array([int(i[1]) for i in bm.test_stream[0].dataset])
        unit = xs / np.linalg.norm(xs, axis=1, keepdims=True)
        means = np.stack([unit[ys == c].mean(0) for c in range(10)])
        q = xq / np.linalg.norm(xq, axis=1, keepdims=True)
        pred = ((q[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
        assert acc == pytest.approx((pred == yq).mean())


def test_replay_buffer_keeps_the_last_sets(digits_data):
    train, _ = digits_data
    bm = next(_pixel_episodes(instance_test_episodes(train, 1, 20, 10, seed=0)))
    strategy = pretrain_tune(20, 64, replay_sets=3, replay_samples=4)
    storage = strategy.plugins[0].storage_policy
    assert isinstance(storage, RecentSetsBuffer)
    for k, exp in enumerate(bm.train_stream):
        strategy.train(exp)
        held = sorted(int(item[1]) for item in storage.buffer)
        assert held == list(range(2 * max(0, k - 2), 2 * (k + 1)))
    with pytest.raises(ValueError, match="max_sets"):
        RecentSetsBuffer(0)


def test_replay_beats_plain_tuning_on_a_long_instance_stream(digits_data):
    train, _ = digits_data
    episodes = list(_pixel_episodes(instance_test_episodes(train, 4, 20, 10, seed=0)))
    plain = run_episodes(_tune, episodes, progress=False).mean()
    replay = run_episodes(
        lambda: pretrain_tune(20, 64, lr=0.1, replay_sets=5, replay_samples=8),
        episodes,
        progress=False,
    ).mean()
    assert replay > plain + 0.1


class _TinyBackbone(torch.nn.Module):
    """A stand-in backbone: transform doubles, forward flattens; counts images seen."""

    def __init__(self):
        super().__init__()
        self.seen = 0
        self.transform = lambda x: 2 * x

    def forward(self, x):
        self.seen += len(x)
        return x.flatten(1) + 1


def test_encode_episodes_features_and_memo(digits_data):
    train, _ = digits_data
    tiny = _TinyBackbone()

    def pair():
        return paired_conditions(
            clean=instance_test_episodes(train, 3, 20, 4, seed=0),
            noisy=instance_test_episodes(train, 3, 20, 4, "noise", 0.2, seed=0),
        )

    encoded = list(encode_episodes(pair(), tiny))
    assert tiny.seen == 3 * 40  # supports (= clean queries) once, noisy queries once
    for enc, raw in zip(encoded, pair(), strict=True):
        for cond in ("clean", "noisy"):
            for e_exp, r_exp in zip(enc[cond].test_stream, raw[cond].test_stream, strict=True):
                xe = torch.stack([i[0] for i in e_exp.dataset])
                xr = torch.stack([i[0] for i in r_exp.dataset])
                assert torch.equal(xe, 2 * xr.flatten(1) + 1)
        assert torch.equal(enc["clean"].source_indices, raw["clean"].source_indices)


@pytest.mark.parametrize("replay", [False, True])
def test_checkpoint_mid_episode_resumes_exactly(digits_data, tmp_path, replay):
    train, _ = digits_data
    bm = next(_pixel_episodes(instance_test_episodes(train, 1, 20, 5, seed=1)))

    def make():
        if replay:
            return pretrain_tune(20, 64, lr=0.1, replay_sets=2, replay_samples=4)
        return NearestPrototype(num_classes=20, feature_dim=64)

    assert_resumes_exactly(make, bm, tmp_path / "ck.pkl")


def test_baselines_take_avalanche_keywords_or_say_what_is_fixed():
    evaluator = episode_evaluator()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # keyword arguments only: no Avalanche warning
        proto = NearestPrototype(num_classes=5, feature_dim=4, train_mb_size=3, train_epochs=1,
                                 eval_mb_size=6, evaluator=evaluator, eval_every=-1)
        tune = pretrain_tune(5, 4, steps_per_set=3, train_mb_size=2, train_epochs=3,
                             eval_mb_size=6, evaluator=evaluator, eval_every=-1)
    assert (proto.train_mb_size, proto.train_epochs, proto.eval_mb_size) == (3, 1, 6)
    assert (tune.train_mb_size, tune.train_epochs, tune.eval_mb_size) == (2, 3, 6)
    assert pretrain_tune(5, 4, evaluator=evaluator).train_mb_size > 20  # a support set
    with pytest.raises(ValueError, match="train_epochs is fixed to 1"):
        NearestPrototype(num_classes=5, train_epochs=2)
    with pytest.raises(ValueError, match="train_epochs is fixed to steps_per_set=5"):
        pretrain_tune(5, train_epochs=2)
