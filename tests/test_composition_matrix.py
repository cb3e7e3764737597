"""Issue #11: every neve component composed with Avalanche's strategies, plugins,
benchmark builders, models, metrics/loggers and ``eval_every``; one test per cell.

The matrix is component x context. A cell is ``ok`` (runs, and its numbers equal an
independent reference: the joint ridge solution by numpy lstsq, class means by
hand, F from Avalanche's own accuracies, Avalanche's own strategy), ``refused``
(a clear ValueError/TypeError naming what is wrong) or ``n/a`` (not generated).
A cell whose fix has not landed is ``xfail(strict=True)`` with its finding.
``python tests/test_composition_matrix.py`` prints the matrix as a markdown table.

Each row is declared by :func:`row` above its cell, with every context where it is
not plainly ``ok`` and the reason (a table shared by its kind of row, composed with
its own entries). A new component adds its cell and its declaration and edits no
shared conditional; a :class:`Row` declared elsewhere runs through :func:`cells` and
:func:`run_cell` (``tests/test_closed_form_extension.py``).

Reading a column for each kind of row:
* plugin rows (AnalyticHeadPlugin, SlowLearnerPlugin, ClassifierAlignmentPlugin,
  CurriculumEffectiveness): the plugin inside that Avalanche strategy;
* neve strategy rows (SLCA, AnalyticCIL, NearestPrototype, pretrain_tune): the plugin
  form of that Avalanche strategy (ReplayPlugin, EWCPlugin, LwFPlugin, GDumbPlugin,
  SynapticIntelligencePlugin) added; the Naive column is the neve strategy alone;
* benchmark rows (curriculum_benchmark, si_blurry_benchmark, instance episodes):
  that Avalanche strategy trained on the benchmark.
"""

from __future__ import annotations

import csv
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from avalanche.logging import CSVLogger, InteractiveLogger, TensorboardLogger, TextLogger
from avalanche.training.supervised import JointTraining

sys.path.insert(0, str(Path(__file__).parent))
import composition_cells as cc  # noqa: E402

from neve.benchmarks import (  # noqa: E402
    curriculum_benchmark,
    instance_test_episodes,
    run_episodes,
    si_blurry_benchmark,
    split_online,
)
from neve.plugins import (  # noqa: E402
    AnalyticHeadPlugin,
    ClassifierAlignmentPlugin,
    CurriculumEffectiveness,
    SlowLearnerPlugin,
)
from neve.strategies import SLCA, AnalyticCIL, NearestPrototype, pretrain_tune  # noqa: E402

LOGGERS = ["InteractiveLogger", "TextLogger", "CSVLogger", "TensorboardLogger"]
BUILDERS = ["nc_fixed_order", "class_incremental_benchmark", "benchmark_from_datasets",
            "split_online_stream", "task_labels"]
MODELS = ["IncrementalClassifier", "MultiHeadClassifier", "trainable features"]
CONTEXTS = [*cc.STRATEGIES, "metrics", *LOGGERS, *BUILDERS, *MODELS, "eval_every"]
GAMMA = 1.0


@dataclass
class Ctx:
    """What a context changes of a component's default run."""

    name: str
    tmp: Path

    @property
    def strategy(self) -> str:
        return self.name if self.name in cc.STRATEGIES else "Naive"

    @property
    def builder(self) -> str | None:
        return self.name if self.name in BUILDERS else None

    @property
    def model_kind(self) -> str:
        return {"IncrementalClassifier": "incremental", "MultiHeadClassifier": "multihead"}.get(
            self.name, "linear")

    @property
    def trainable(self) -> bool:
        return self.name == "trainable features"

    @property
    def eval_every(self) -> int:
        return 1 if self.name == "eval_every" else -1

    def loggers(self) -> list:
        if self.name == "InteractiveLogger":
            return [InteractiveLogger()]
        if self.name == "TextLogger":
            self._text = open(self.tmp / "log.txt", "w")  # noqa: SIM115
            return [TextLogger(self._text)]
        if self.name == "CSVLogger":
            return [CSVLogger(log_folder=str(self.tmp / "csv"))]
        if self.name == "TensorboardLogger":  # a new folder per run; closed before reading
            self.tb_dir = self.tmp / f"tb{len(list(self.tmp.glob('tb*')))}"
            self._tb = TensorboardLogger(tb_log_dir=str(self.tb_dir))
            return [self._tb]
        return []

    def evaluator(self, extra=()):
        all_metrics = self.name in ("metrics", *LOGGERS)
        return cc.evaluator(self.loggers(), all_metrics=all_metrics, extra=extra)

    def benchmark(self, *, flat: bool = False):
        if self.name == "MultiHeadClassifier":
            return cc.split_digits(flat=flat, task_labels=True)
        if self.name == "GenerativeReplay":  # a VAE per experience: 2 experiences keep it short
            bm = cc.split_digits(flat=flat)
            return cc._Online(bm.train_stream[:2], bm.test_stream[:2])
        if self.builder:
            return cc.build_benchmark(self.builder, flat=flat)
        return cc.split_digits(flat=flat)

    def eval_streams(self, bm):
        return [bm.test_stream] if self.eval_every > 0 else None


# -- shared checks --------------------------------------------------------------------
def check_logs(ctx: Ctx, metrics: dict, capfd) -> None:
    """The logger wrote the final stream accuracy (or per-experience accuracies) returned."""
    acc = cc.accuracy_of(metrics)
    if ctx.name in ("InteractiveLogger", "TextLogger"):
        if ctx.name == "TextLogger":
            ctx._text.close()
            text = (ctx.tmp / "log.txt").read_text()
        else:
            text = capfd.readouterr().out
        assert re.search(r"Top1_Acc_Stream/eval_phase/test_stream\S* = " + f"{acc:.4f}", text)
    elif ctx.name == "CSVLogger":
        with open(ctx.tmp / "csv" / "eval_results.csv") as f:
            rows = list(csv.DictReader(f))
        n_test = sum(1 for k in metrics if k.startswith("Top1_Acc_Exp/eval_phase/test_stream"))
        for row in rows[-n_test:]:
            key = next(k for k in metrics if k.startswith("Top1_Acc_Exp/eval_phase/test_stream")
                       and k.endswith(f"Exp{int(row['eval_exp']):03d}"))
            assert float(row["eval_accuracy"]) == pytest.approx(metrics[key], abs=1e-4)
    elif ctx.name == "TensorboardLogger":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        ctx._tb.writer.close()
        events = EventAccumulator(str(ctx.tb_dir))
        events.Reload()
        tag = next(t for t in events.Tags()["scalars"]
                   if t.startswith("Top1_Acc_Stream/eval_phase/test_stream"))
        assert events.Scalars(tag)[-1].value == pytest.approx(acc, abs=1e-6)


def check_forgetting(final: dict, rows: list[dict]) -> None:
    """Avalanche's ExperienceForgetting equals accuracy right after learning minus now
    (online streams, whose rows are mini-experiences: within [-1, 1])."""
    forgetting = [v for k, v in final.items() if k.startswith("ExperienceForgetting")]
    assert forgetting and all(-1.0 <= v <= 1.0 for v in forgetting)
    n_test = sum(1 for k in final if EXP_KEY.match(k))
    if len(rows) != n_test:
        return
    for j, row in enumerate(rows[:-1]):
        key = f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}"
        forgetting = f"ExperienceForgetting/eval_phase/test_stream/Task000/Exp{j:03d}"
        assert final[forgetting] == pytest.approx(row[key] - final[key], abs=1e-9)
    assert np.isfinite(final["Loss_Stream/eval_phase/test_stream/Task000"])


def run_with_context(strategy, bm, ctx: Ctx, capfd):
    """Train and evaluate; then the logger/metric checks the context asks for."""
    if ctx.name == "metrics":
        final, rows = cc.run(strategy, bm, per_experience_eval=True)
        check_forgetting(final, rows)
    else:
        final = cc.run(strategy, bm, eval_streams=ctx.eval_streams(bm))
    if ctx.name in LOGGERS:
        check_logs(ctx, final, capfd)
    return final


def run_plain(strategy, bm, ctx: Ctx):
    """``run_with_context``'s training and evaluation calls, without its checks."""
    if ctx.name == "metrics":
        return cc.run(strategy, bm, per_experience_eval=True)[0]
    return cc.run(strategy, bm, eval_streams=ctx.eval_streams(bm))


def frozen_features(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return cc.feature_block()(x).double()


def all_train(bm):
    return cc.stacked(bm.train_stream)


def all_test(bm):
    return cc.stacked(bm.test_stream)


def assert_ridge(acc: float, buffer, feats_fn, bm) -> None:
    """``acc`` equals the accuracy of the joint ridge solution on all training data."""
    x, y = all_train(bm)
    xt, yt = all_test(bm)
    with torch.no_grad():
        phi = buffer(feats_fn(x)).double().numpy()
        phi_t = buffer(feats_fn(xt)).double().numpy()
    pred = cc.ridge_reference(phi, y.numpy(), phi_t, GAMMA)
    assert acc == pytest.approx(float((pred == yt.numpy()).mean()), abs=1.5 / len(yt))


def assert_means(stats, bm, *, counts_only: bool = False) -> None:
    """Stored class statistics equal the counts and means over the training data by hand."""
    x, y = all_train(bm)
    assert stats.classes == sorted(torch.unique(y).tolist())
    for c in stats.classes:
        assert stats.counts[c] == int((y == c).sum())
    if not counts_only:
        means = cc.class_means_by_hand(frozen_features(x), y)
        for c, mean in means.items():
            torch.testing.assert_close(stats.means[c].double(), mean, atol=1e-5, rtol=1e-5)


# -- rows: a component, its cell and the contexts where it is not plainly ok ----------
Status = tuple[str, str]  # (ok / refused / n/a, the finding or the reason)


def ok(why: str = "") -> Status:
    return "ok", why


def refused(why: str) -> Status:
    return "refused", why


def not_applicable(cols, why: str) -> dict[str, Status]:
    """Cells that are not generated, with the reason."""
    return {col: ("n/a", why) for col in cols}


@dataclass(frozen=True)
class Row:
    """A component of the matrix: its cell, and each context where it is not plainly ``ok``.

    ``exceptions`` maps a context to its :data:`Status` (a component composes the
    shared tables of its kind with ``**`` and adds its own entries after them, which
    win). ``avalanche_bugs`` maps a context to ``(match, reason)``: Avalanche 0.6
    raises an error matching ``match`` there; the cell asserts it, so it flips
    loudly once Avalanche is fixed.
    """

    cell: Callable[[Ctx, object], None]
    exceptions: Mapping[str, Status] = field(default_factory=dict)
    avalanche_bugs: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    def expected(self, col: str) -> Status:
        if col in self.avalanche_bugs:
            return refused(self.avalanche_bugs[col][1])
        return self.exceptions.get(col, ok())


ROWS: dict[str, Row] = {}


def row(name: str, exceptions: Mapping[str, Status] | None = None,
        avalanche_bugs: Mapping[str, tuple[str, str]] | None = None):
    """Declare the decorated cell as the matrix row ``name``, with its exceptions."""
    def declare(cell):
        ROWS[name] = Row(cell, dict(exceptions or {}), dict(avalanche_bugs or {}))
        return cell
    return declare


# -- the plugins ----------------------------------------------------------------------
PLUGIN = not_applicable(["trainable features"], "frozen or not changes nothing")


@row("AnalyticHeadPlugin", {
    **PLUGIN,
    "trainable features": ok("#11.8 warns: statistics of earlier features go stale"),
    "JointTraining": ok("#11.1 fits the joint training set"),
})
def cell_analytic_head(ctx: Ctx, capfd):
    features = "feature_extractor" if ctx.strategy == "iCaRL" else None
    plugin = AnalyticHeadPlugin(256, gamma=GAMMA, features=features)
    model = cc.make_model(ctx.model_kind, trainable=ctx.trainable)
    bm = ctx.benchmark()
    if ctx.trainable:
        with pytest.warns(UserWarning, match="trainable"):
            strategy = cc.make_strategy(ctx.strategy, model, plugins=[plugin],
                                        evaluator=ctx.evaluator())
            cc.run(strategy, bm)
        return
    strategy = cc.make_strategy(ctx.strategy, model, plugins=[plugin], evaluator=ctx.evaluator(),
                                eval_every=ctx.eval_every)
    final = run_with_context(strategy, bm, ctx, capfd)
    assert_ridge(cc.accuracy_of(final), plugin.buffer, lambda x: cc.feature_block()(x), bm)


@row("SlowLearnerPlugin", {
    **PLUGIN,
    **not_applicable(["trainable features"], "SlowLearnerPlugin cells train the features already"),
    "iCaRL": ok("head='train_classifier'"),
})
def cell_slow_learner(ctx: Ctx, capfd):
    """``SlowLearnerPlugin(1.0)`` changes nothing: the strategy alone, same numbers."""
    head = "train_classifier" if ctx.strategy == "iCaRL" else "classifier"
    results = []
    for plugins in ([], [SlowLearnerPlugin(1.0, head=head)]):
        model = cc.make_model(ctx.model_kind, trainable=True)
        strategy = cc.make_strategy(ctx.strategy, model, plugins=plugins,
                                    evaluator=ctx.evaluator(), eval_every=ctx.eval_every)
        final = run_with_context(strategy, ctx.benchmark(), ctx, capfd)
        results.append((cc.accuracy_of(final), strategy.model.state_dict()))
    (acc0, state0), (acc1, state1) = results
    assert acc1 == acc0
    for k in state0:
        torch.testing.assert_close(state1[k], state0[k], atol=0, rtol=0)


@row("ClassifierAlignmentPlugin", {
    **PLUGIN,
    "trainable features": ok("counts checked (features change)"),
    "MultiHeadClassifier": refused("#11.6 single-head class-incremental only"),
    "JointTraining": ok("#11.1 fits the joint training set"),
    "Naive": ok("#11.9 defaults beat Naive on small experiences"),
})
def cell_alignment(ctx: Ctx, capfd):
    if ctx.name == "Naive":  # the defaults (#11.9) must beat Naive alone on small experiences
        plugin = ClassifierAlignmentPlugin()
    else:
        plugin = ClassifierAlignmentPlugin(samples_per_class=16, epochs=1, batch_size=32)
    if ctx.strategy == "iCaRL":
        plugin = ClassifierAlignmentPlugin(samples_per_class=16, epochs=1, batch_size=32,
                                           features="feature_extractor", head="train_classifier")
    bm = ctx.benchmark()
    strategy = cc.make_strategy(ctx.strategy, cc.make_model(ctx.model_kind, ctx.trainable),
                                plugins=[plugin], evaluator=ctx.evaluator(),
                                eval_every=ctx.eval_every)
    if ctx.name == "MultiHeadClassifier":
        with pytest.raises(ValueError, match="single-head"):
            cc.run(strategy, bm)
        return
    final = run_with_context(strategy, bm, ctx, capfd)
    assert_means(plugin.stats, bm, counts_only=ctx.trainable)
    if ctx.name == "Naive":
        alone = cc.run(cc.make_strategy("Naive", cc.make_model()), bm)
        assert cc.accuracy_of(final) > cc.accuracy_of(alone) + 0.1


EXP_KEY = re.compile(r"Top1_Acc_Exp/eval_phase/test_stream/(?:Task\d+/)?Exp(\d+)$")


def f_by_hand(rows: list[dict], origins: list[int]) -> float:
    """F of Singh et al. from Avalanche's per-experience accuracies after each experience."""
    matrix: dict[int, dict[int, float]] = {}
    for origin, row in zip(origins, rows, strict=True):
        matrix[origin] = {int(m.group(1)): v for k, v in row.items() if (m := EXP_KEY.match(k))}
    last = max(matrix)
    alpha = float(np.mean([matrix[last][j] for j in range(last + 1)]))
    beta = matrix[0][0] - matrix[last][0]
    return 2 * alpha / (beta * alpha + 1)


def origin_index(exp) -> int:
    origin = getattr(exp, "origin_experience", None)
    return int(origin.current_experience) if origin is not None else int(exp.current_experience)


@row("CurriculumEffectiveness", {
    **PLUGIN,
    "JointTraining": ok("F undefined with one training phase: a warning or a clear error"),
    "eval_every": ok("#11.2 same F as without periodic evaluation"),
})
def cell_curriculum_f(ctx: Ctx, capfd):
    metric = CurriculumEffectiveness()
    bm = ctx.benchmark()
    strategy = cc.make_strategy(ctx.strategy, cc.make_model(ctx.model_kind, ctx.trainable),
                                evaluator=ctx.evaluator(extra=[metric]), eval_every=ctx.eval_every)
    if isinstance(strategy, JointTraining):  # one training phase: F is undefined, and says so
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                final = cc.run(strategy, bm)
            except (ValueError, TypeError) as err:  # or refuses, naming JointTraining
                assert "JointTraining" in str(err)
                return
        assert any("CurriculumEffectiveness" in str(w.message) for w in caught)
        assert not any(k.startswith("CurriculumF") for k in final)
        return
    final, rows = cc.run(strategy, bm, eval_streams=ctx.eval_streams(bm), per_experience_eval=True)
    if ctx.name == "metrics":
        check_forgetting(final, rows)
    if ctx.name in LOGGERS:
        check_logs(ctx, final, capfd)
    origins = [origin_index(exp) for exp in bm.train_stream]
    assert final["CurriculumF/eval_phase/test_stream"] == pytest.approx(
        f_by_hand(rows, origins), abs=1e-9)


# -- the neve strategies --------------------------------------------------------------
GRADIENT_PLUGINS = {"EWC": "EWCPlugin", "LwF": "LwFPlugin", "SI": "SynapticIntelligencePlugin"}
REPLAYING_PLUGINS = {"Replay": "ReplayPlugin", "GDumb": "GDumbPlugin"}
NEVE_STRATEGY = not_applicable(("Cumulative", "JointTraining", "iCaRL", "GenerativeReplay"),
                               "a strategy, not a plugin: no form to add to a neve strategy")
BUILDS_ITS_MODEL = not_applicable(MODELS, "the strategy builds its own model")
GRADIENT_FREE = {col: refused(f"#11.7 gradient plugin {plugin} without gradients")
                 for col, plugin in GRADIENT_PLUGINS.items()}


def exemplar_free(why: str) -> dict[str, Status]:
    """The replaying plugins refused, with the reason."""
    return {col: refused(why) for col in REPLAYING_PLUGINS}


def context_plugins(ctx: Ctx) -> list:
    return [cc.PLUGIN_OF[ctx.name]()] if ctx.name in cc.PLUGIN_OF else []


@row("SLCA", {
    **NEVE_STRATEGY,
    "MultiHeadClassifier": refused("#11.6 single-head class-incremental only"),
    **{col: ok("#11.5 classes from the targets (linear head: IncrementalClassifier needs a "
               "class timeline)") for col in ("benchmark_from_datasets", "split_online_stream")},
})
def cell_slca(ctx: Ctx, capfd):
    def build():
        kind = {"MultiHeadClassifier": "multihead", "benchmark_from_datasets": "linear",
                "split_online_stream": "linear"}.get(ctx.name, "incremental")
        model = cc.make_model(kind, trainable=ctx.trainable)
        return SLCA(
            slow_learner=SlowLearnerPlugin(0.1),
            alignment=ClassifierAlignmentPlugin(samples_per_class=16, epochs=1, batch_size=32),
            plugins=context_plugins(ctx),
            **cc.common(model, evaluator=ctx.evaluator(), eval_every=ctx.eval_every),
        )

    if ctx.name == "MultiHeadClassifier":
        with pytest.raises(ValueError, match="single-head"):
            build()
        return
    strategy = build()
    bm = ctx.benchmark()
    final = run_with_context(strategy, bm, ctx, capfd)
    assert 0.0 < cc.accuracy_of(final) <= 1.0
    assert_means(strategy.alignment.stats, bm, counts_only=ctx.trainable)



def refused_replay_plugin(build, ctx: Ctx, bm) -> None:
    """Replay on an exemplar-free accumulator (each sample counted once): a clear error."""
    with pytest.raises((ValueError, TypeError), match=REPLAYING_PLUGINS[ctx.name]):
        cc.run(build(), bm)


def refused_gradient_plugin(build, ctx: Ctx, bm) -> None:
    """A gradient plugin on a gradient-free strategy: a clear error naming the plugin."""
    with pytest.raises((ValueError, TypeError), match=GRADIENT_PLUGINS[ctx.name]):
        cc.run(build(), bm)


@row("AnalyticCIL", {
    **NEVE_STRATEGY, **BUILDS_ITS_MODEL, **GRADIENT_FREE,
    **exemplar_free("#11.10 exemplar-free: replayed samples would be counted twice"),
})
def cell_analytic_cil(ctx: Ctx, capfd):
    def build():
        return AnalyticCIL(backbone=cc.feature_block(), feature_dim=cc.FEATURE_DIM,
                           buffer_size=256, gamma=GAMMA, train_mb_size=32, eval_mb_size=256,
                           plugins=context_plugins(ctx), evaluator=ctx.evaluator(),
                           eval_every=ctx.eval_every)

    bm = ctx.benchmark()
    if ctx.name in GRADIENT_PLUGINS:
        return refused_gradient_plugin(build, ctx, bm)
    if ctx.name in REPLAYING_PLUGINS:
        return refused_replay_plugin(build, ctx, bm)
    strategy = build()
    final = run_with_context(strategy, bm, ctx, capfd)
    assert_ridge(cc.accuracy_of(final), strategy.model.buffer, strategy.model.features, bm)


def nearest_mean_accuracy(bm) -> float:
    x, y = all_train(bm)
    xt, yt = all_test(bm)
    x = torch.nn.functional.normalize(x.double().flatten(1), dim=1)
    xt = torch.nn.functional.normalize(xt.double().flatten(1), dim=1)
    classes = sorted(torch.unique(y).tolist())
    means = torch.stack([x[y == c].mean(0) for c in classes])
    pred = torch.tensor(classes)[torch.cdist(xt, means).argmin(1)]
    return float((pred == yt).double().mean())


@row("NearestPrototype", {
    **NEVE_STRATEGY, **BUILDS_ITS_MODEL, **GRADIENT_FREE,
    **exemplar_free("replayed samples would be counted twice in the class means"),
    "benchmark_from_datasets": ok("works, or a clear error: Avalanche's NCMClassifier needs a "
                                  "class timeline"),
    "metrics": ok("#11.3 mb_output during training"),
})
def cell_nearest_prototype(ctx: Ctx, capfd):
    def build():
        return NearestPrototype(num_classes=10, feature_dim=64, train_mb_size=32,
                                eval_mb_size=256, plugins=context_plugins(ctx),
                                evaluator=ctx.evaluator(), eval_every=ctx.eval_every)

    bm = ctx.benchmark(flat=True)
    if ctx.name in GRADIENT_PLUGINS:
        return refused_gradient_plugin(build, ctx, bm)
    if ctx.name in REPLAYING_PLUGINS:
        return refused_replay_plugin(build, ctx, bm)
    if ctx.name == "benchmark_from_datasets":  # no class timeline: works, or says so
        try:
            final = run_with_context(build(), bm, ctx, capfd)
        except (ValueError, TypeError) as err:
            assert "class" in str(err)
            return
    else:
        final = run_with_context(build(), bm, ctx, capfd)
    assert cc.accuracy_of(final) == pytest.approx(nearest_mean_accuracy(bm), abs=1.5 / 450)


@row("pretrain_tune", {**NEVE_STRATEGY, **BUILDS_ITS_MODEL})
def cell_pretrain_tune(ctx: Ctx, capfd):
    """pretrain_tune + plugin X == Avalanche's strategy X on the same zero-initialised head."""
    bm = ctx.benchmark(flat=True)
    strategy = pretrain_tune(10, 64, lr=0.05, steps_per_set=1, train_mb_size=32,
                             eval_mb_size=256, plugins=context_plugins(ctx),
                             evaluator=ctx.evaluator(), eval_every=ctx.eval_every)
    final = run_with_context(strategy, bm, ctx, capfd)
    head = torch.nn.Linear(64, 10)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    kw = cc.common(head, lr=0.05, eval_every=ctx.eval_every)
    kw["optimizer"] = torch.optim.SGD(head.parameters(), lr=0.05)
    cls, extra = cc.av.Naive, {}
    if ctx.name in cc.PLUGIN_OF and ctx.name != "Naive":
        cls = {"SI": cc.av.SynapticIntelligence}.get(ctx.name) or getattr(cc.av, ctx.name)
        extra = {"Replay": {"mem_size": 100}, "EWC": {"ewc_lambda": 1.0},
                 "LwF": {"alpha": 1.0, "temperature": 2.0}, "GDumb": {"mem_size": 200},
                 "SI": {"si_lambda": 1.0}}[ctx.name]
    reference = cls(**kw, **extra)
    assert cc.accuracy_of(final) == cc.accuracy_of(run_plain(reference, bm, ctx))
    assert torch.equal(strategy.model.weight, reference.model.weight)


# -- the benchmarks -------------------------------------------------------------------
SUBSET = [3, 7, 1, 0, 5, 9]  # an order over 6 of the 10 classes (#11.11)
BENCHMARK = {
    **not_applicable(BUILDERS, "the row is a benchmark builder itself"),
    **not_applicable(("MultiHeadClassifier", "trainable features"),
                     "no task labels / the model is not the row's concern"),
}
OFFLINE_BENCHMARK = {**BENCHMARK, **not_applicable(
    ("metrics", *LOGGERS), "an offline benchmark does not touch metrics/loggers")}
ONLINE_BENCHMARK = {**BENCHMARK, **not_applicable(
    ("JointTraining", "GenerativeReplay"), "offline strategy / generator on mini-experiences")}
# Avalanche 0.6 bugs a cell asserts (they flip loudly once Avalanche fixes them)
ICARL_READS_BENCHMARK = {"iCaRL": (
    "benchmark", "#11.12 Avalanche bug: iCaRL reads experience.benchmark (AttributeError)")}


def by_hand_subset_benchmark():
    """nc_benchmark over the items of SUBSET's classes, selected by hand."""
    from avalanche.benchmarks import nc_benchmark

    from neve.benchmarks import LabelledTensorDataset

    sets = []
    for d in cc.digit_sets():
        keep = torch.isin(d.targets, torch.tensor(SUBSET))
        sets.append(LabelledTensorDataset(d.data[keep], d.targets[keep]))
    return nc_benchmark(*sets, n_experiences=3, task_labels=False, fixed_class_order=SUBSET,
                        class_ids_from_zero_from_first_exp=False)


def strategy_for_benchmark(ctx: Ctx):
    return cc.make_strategy(ctx.strategy, cc.make_model(ctx.model_kind, ctx.trainable),
                            evaluator=ctx.evaluator(), eval_every=ctx.eval_every)


def run_on(ctx: Ctx, bm, capfd):
    if ctx.strategy == "GenerativeReplay":
        bm = cc._Online(list(bm.train_stream)[:2], bm.test_stream)
    return run_with_context(strategy_for_benchmark(ctx), bm, ctx, capfd)


def same_items(stream_a, stream_b) -> None:
    xa, ya = cc.stacked(stream_a)
    xb, yb = cc.stacked(stream_b)
    assert torch.equal(ya, yb) and torch.equal(xa, xb)


@row("curriculum_benchmark", {
    **OFFLINE_BENCHMARK, "Naive": ok("#11.11 an order over a subset of the classes"),
}, avalanche_bugs={"iCaRL": (
    "size mismatch",
    "Avalanche bug: ICaRLLossPlugin's load_state_dict fails once NCM class_means grows "
    "(class order not 0..n-1)")})
def cell_curriculum_offline(ctx: Ctx, capfd):
    train, test = cc.digit_sets()
    bm = curriculum_benchmark(train, test, SUBSET, classes_per_experience=2)
    reference = by_hand_subset_benchmark()
    assert [sorted(e.classes_in_this_experience) for e in bm.train_stream] == [
        sorted(SUBSET[i:i + 2]) for i in range(0, 6, 2)]
    same_items(bm.train_stream, reference.train_stream)
    same_items(bm.test_stream, reference.test_stream)
    acc = cc.accuracy_of(run_on(ctx, bm, capfd))
    assert acc == cc.accuracy_of(run_on(ctx, reference, capfd))


def check_online_stream(online, offline) -> None:
    """Mini-experiences cover their origin experience once and know their classes."""
    for exp in online:
        targets = set(torch.as_tensor(list(exp.dataset.targets)).tolist())
        assert set(exp.classes_in_this_experience) == targets
    _, y_online = cc.stacked(online)
    _, y_offline = cc.stacked(offline)
    assert sorted(y_online.tolist()) == sorted(y_offline.tolist())


@row("curriculum_benchmark online", ONLINE_BENCHMARK, ICARL_READS_BENCHMARK)
def cell_curriculum_online(ctx: Ctx, capfd):
    train, test = cc.digit_sets()
    bm = curriculum_benchmark(train, test, SUBSET, classes_per_experience=2, online=True,
                              experience_size=128)
    offline = by_hand_subset_benchmark()
    check_online_stream(bm.train_stream, offline.train_stream)
    acc = cc.accuracy_of(run_on(ctx, bm, capfd))
    by_hand = cc._Online(split_online(offline.train_stream, 128, shuffle=True, seed=0),
                         offline.test_stream)
    assert acc == cc.accuracy_of(run_on(ctx, by_hand, capfd))
    assert 0.0 < acc <= 1.0


def blurry(online: bool):
    train, test = cc.digit_sets()
    # the balanced rules: every sample in one task (the reference rules drop a class here)
    return si_blurry_benchmark(train, test, n_tasks=3, seed=0, online=online,
                               experience_size=64, rules="balanced")


@row("si_blurry_benchmark", OFFLINE_BENCHMARK, ICARL_READS_BENCHMARK)
def cell_si_blurry_offline(ctx: Ctx, capfd):
    from avalanche.benchmarks import benchmark_from_datasets, with_classes_timeline

    bm = blurry(False)
    train, test = cc.digit_sets()
    indices = torch.cat(list(bm.task_indices))
    assert sorted(indices.tolist()) == list(range(len(train)))
    av_train = cc._av(train)
    by_hand = with_classes_timeline(benchmark_from_datasets(
        train=[av_train.subset(idx.tolist()) for idx in bm.task_indices],
        test=[exp.dataset for exp in bm.test_stream]))
    same_items(bm.train_stream, by_hand.train_stream)
    acc = cc.accuracy_of(run_on(ctx, bm, capfd))
    assert acc == cc.accuracy_of(run_on(ctx, by_hand, capfd))


@row("si_blurry_benchmark online", {
    **ONLINE_BENCHMARK, "IncrementalClassifier": ok("#11.4 neve's split_online"),
}, ICARL_READS_BENCHMARK)
def cell_si_blurry_online(ctx: Ctx, capfd):
    bm = blurry(True)
    offline = blurry(False)
    check_online_stream(bm.train_stream, offline.train_stream)
    same_items(bm.train_stream, offline.train_stream)  # shuffle=False: the task order
    acc = cc.accuracy_of(run_on(ctx, bm, capfd))
    assert 0.0 < acc <= 1.0
    if ctx.name == "IncrementalClassifier":  # #11.4: the head grew to every class seen
        strategy = strategy_for_benchmark(ctx)
        cc.run(strategy, bm)
        assert strategy.model.classifier.classifier.out_features == 10


@row("instance_test_episodes", {
    **OFFLINE_BENCHMARK,
    "eval_every": ("n/a", "episodes use episode_evaluator"),
    "JointTraining": ("n/a", "run_episodes trains experience by experience"),
    "GenerativeReplay": ("n/a", "a VAE per 5-image support set"),
}, ICARL_READS_BENCHMARK)
def cell_instance_episodes(ctx: Ctx, capfd):
    """run_episodes of Avalanche's strategy == the same training loop written by hand."""
    train, _ = cc.digit_sets()
    episodes = list(instance_test_episodes(train, n_episodes=2, images_per_episode=20,
                                           support_sets=4, seed=0))
    for bm in episodes:
        assert [sorted(e.classes_in_this_experience) for e in bm.train_stream] == [
            list(range(i, i + 5)) for i in range(0, 20, 5)]
        same_items(bm.train_stream, bm.test_stream)  # no corruption: queries == supports

    def make():
        torch.manual_seed(1)
        head = (torch.nn.Linear(cc.FEATURE_DIM, 20) if ctx.model_kind == "linear"
                else cc.IncrementalClassifier(cc.FEATURE_DIM, initial_out_features=2))
        return cc.make_strategy(ctx.strategy, cc.FeatureNet(head), train_mb_size=5)

    from avalanche.training.determinism.rng_manager import RNGManager

    RNGManager.set_random_seeds(0)
    results = run_episodes(make, episodes, progress=False)
    RNGManager.set_random_seeds(0)
    by_hand = []
    for bm in episodes:
        strategy = make()
        for exp in bm.train_stream:
            strategy.train(exp)
        by_hand.append(cc.accuracy_of(strategy.eval(bm.test_stream)))
    assert results.accuracies["test"] == by_hand


# -- the matrix -----------------------------------------------------------------------
# cells whose fix has not landed: {(row, col): finding}
NOT_FIXED: dict[tuple[str, str], str] = {
    # found by this matrix, not among #11's findings
}


def cells(rows: Mapping[str, Row] = ROWS):
    """The generated cells of ``rows`` (every context but the ``n/a`` ones)."""
    for name, declared in rows.items():
        for col in CONTEXTS:
            if declared.expected(col)[0] == "n/a":
                continue
            marks = []
            if (name, col) in NOT_FIXED:
                marks.append(pytest.mark.xfail(strict=True,
                                               reason=f"{NOT_FIXED[(name, col)]} not fixed yet"))
            yield pytest.param(name, col, id=f"{name}|{col}", marks=marks)


def run_cell(declared: Row, col: str, tmp_path, capfd) -> None:
    """Run one cell; where Avalanche has a bug, assert the error it raises."""
    warnings.filterwarnings("ignore", message=".*storage_policy.*")
    if col in declared.avalanche_bugs:
        with pytest.raises((AttributeError, RuntimeError), match=declared.avalanche_bugs[col][0]):
            declared.cell(Ctx(col, tmp_path), capfd)
        return
    declared.cell(Ctx(col, tmp_path), capfd)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("row", "col"), list(cells()))
def test_cell(row, col, tmp_path, capfd):
    run_cell(ROWS[row], col, tmp_path, capfd)


def matrix_markdown(rows: Mapping[str, Row] = ROWS) -> str:
    lines = ["| component | " + " | ".join(CONTEXTS) + " |",
             "|---" * (len(CONTEXTS) + 1) + "|"]
    for row, declared in rows.items():
        cells_md = []
        for col in CONTEXTS:
            status, why = declared.expected(col)
            if (row, col) in NOT_FIXED:
                status = "xfail"
            cells_md.append(f"{status} ({why})" if why and status != "ok" else status)
        lines.append(f"| {row} | " + " | ".join(cells_md) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(matrix_markdown())
