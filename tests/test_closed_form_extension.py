"""The extension story: a new closed-form learner on ``ClosedFormStrategy``, through the matrix.

:class:`RandomProjectionRidge` (a RanPAC-style head, in the 80 lines between the
markers) supplies only how a batch is absorbed, how an experience is finished,
its state and its settings; the skeleton refuses plugins, adds the exact-shards
plugin, rolls a failed experience back and checkpoints it. It is a row of the
composition matrix, declared here with its exceptions, run through the cells.
"""

import composition_cells as cc
import numpy as np
import pytest
import test_composition_matrix as matrix
import torch
from avalanche.benchmarks import nc_benchmark
from bad_input import assert_refused
from composition_cells import FEATURE_DIM, accuracy_of, evaluator, feature_block, split_digits
from resume_harness import assert_resumes_exactly
from torch import nn

from neve.benchmarks import LabelledTensorDataset
from neve.models import BufferLayer
from neve.models.core.data_checks import check_labels
from neve.plugins import ExactShardsPlugin
from neve.strategies.closed_form import ClosedFormStrategy


# -- the learner (80 lines at most) -----------------------------------------------------
class RandomProjectionRidge(ClosedFormStrategy):
    """RanPAC-style: frozen features, a fixed random projection with ReLU, a ridge head.

    McDonnell et al., "RanPAC: Random Projections and Pre-trained Models for Continual
    Learning" (NeurIPS 2023), the head of their eq. 3-4: ``phi = ReLU(f(x) W)`` with a
    fixed random ``W`` (:class:`~neve.models.BufferLayer`), ``G = sum phi^T phi`` ``[M, M]``
    and ``C = sum phi^T Y`` ``[M, classes]`` accumulated over every experience, and the
    head's weight ``((G + gamma I)^-1 C)^T`` after each one.
    """

    checkpointed = ("projection_size", "num_classes", "gamma")

    def __init__(self, *, backbone: nn.Module, feature_dim: int, projection_size: int = 256,
                 num_classes: int = 10, gamma: float = 1.0, seed: int = 0, **strategy_args):
        self.projection_size, self.num_classes, self.gamma = projection_size, num_classes, gamma
        for p in backbone.parameters():
            p.requires_grad_(False)
        model = nn.Sequential(backbone, BufferLayer(feature_dim, projection_size, seed=seed),
                              nn.Linear(projection_size, num_classes, bias=False,
                                        dtype=torch.float64))
        nn.init.zeros_(model[2].weight)
        super().__init__(model=model, criterion=nn.CrossEntropyLoss(), **strategy_args)
        self.gram = torch.zeros(projection_size, projection_size, dtype=torch.float64)
        self.cross = torch.zeros(projection_size, num_classes, dtype=torch.float64)

    def check_experience(self, experience) -> None:
        super().check_experience(experience)
        targets = check_labels(experience.dataset.targets, "experiences: targets")
        if int(targets.max()) >= self.num_classes:
            raise ValueError(f"experiences: labels must be below num_classes={self.num_classes}"
                             f", got {int(targets.max())}")

    def before_absorbing(self) -> None:
        self._pending = [torch.zeros_like(self.gram), torch.zeros_like(self.cross)]

    def absorb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's ``phi^T phi`` and ``phi^T Y`` added to the experience's sums."""
        phi = self.model[1](self.model[0](x))
        targets = nn.functional.one_hot(y.long(), self.num_classes).to(phi)
        gram, cross = (t.to(phi.device) for t in self._pending)
        self._pending = [gram + phi.T @ phi, cross + phi.T @ targets]
        return self.model[2](phi).float()

    def finish_experience(self) -> None:
        """The experience's sums (over every process) added; the head solved from them."""
        gram, cross = self.reduction.sum([t.cpu() for t in self._pending])
        self.load_state_dict({"gram": self.gram + gram, "cross": self.cross + cross})

    def state_dict(self) -> dict:
        return {"gram": self.gram, "cross": self.cross}

    def load_state_dict(self, state: dict) -> None:
        """The sums put back, and the head set to their ridge solution."""
        eye = torch.eye(self.projection_size, dtype=torch.float64)
        weight = torch.linalg.solve(state["gram"] + self.gamma * eye, state["cross"])
        self.gram, self.cross = state["gram"].clone(), state["cross"].clone()
        self.model[2].weight.data.copy_(weight.T)
# -- end of the learner -------------------------------------------------------------------


PROJECTION = 128


def build(**overrides) -> RandomProjectionRidge:
    kwargs = dict(backbone=feature_block(), feature_dim=FEATURE_DIM, projection_size=PROJECTION,
                  gamma=matrix.GAMMA, train_mb_size=32, eval_mb_size=256)
    kwargs.update(overrides)
    return RandomProjectionRidge(**kwargs)


def joint_solution(strategy: RandomProjectionRidge, bm) -> tuple[np.ndarray, float]:
    """The head and the test accuracy of one ridge solve on every experience's data, in numpy."""
    projection = strategy.model[1].weight.numpy()

    def phi(x):
        return np.maximum(matrix.frozen_features(x).numpy() @ projection, 0.0)

    (x, y), (xt, yt) = matrix.all_train(bm), matrix.all_test(bm)
    features, targets = phi(x), np.eye(strategy.num_classes)[y.numpy()]
    weight = np.linalg.solve(features.T @ features + matrix.GAMMA * np.eye(PROJECTION),
                             features.T @ targets)
    return weight, float(((phi(xt) @ weight).argmax(1) == yt.numpy()).mean())


def cell_random_projection_ridge(ctx, capfd):
    def built():
        return build(plugins=matrix.context_plugins(ctx), evaluator=ctx.evaluator(),
                     eval_every=ctx.eval_every)

    bm = ctx.benchmark()
    if ctx.name in matrix.GRADIENT_PLUGINS:
        return matrix.refused_gradient_plugin(built, ctx, bm)
    if ctx.name in matrix.REPLAYING_PLUGINS:
        return matrix.refused_replay_plugin(built, ctx, bm)
    strategy = built()
    final = matrix.run_with_context(strategy, bm, ctx, capfd)
    weight, accuracy = joint_solution(strategy, bm)
    head = strategy.model[2].weight.detach().T.numpy()
    assert np.linalg.norm(head - weight) <= 1e-8 * np.linalg.norm(weight)
    assert accuracy_of(final) == pytest.approx(accuracy, abs=1.5 / len(matrix.all_test(bm)[1]))


ROW = {"RandomProjectionRidge": matrix.Row(cell_random_projection_ridge, {
    **matrix.NEVE_STRATEGY, **matrix.BUILDS_ITS_MODEL, **matrix.GRADIENT_FREE,
    **matrix.exemplar_free("exemplar-free: replayed samples would be counted twice in G and C"),
})}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("row", "col"), list(matrix.cells(ROW)))
def test_cell(row, col, tmp_path, capfd):
    matrix.run_cell(ROW[row], col, tmp_path, capfd)


def test_the_skeleton_says_what_it_adds_and_refuses():
    strategy = build(evaluator=evaluator())
    assert sum(isinstance(p, ExactShardsPlugin) for p in strategy.plugins) == 1
    doc = " ".join(ClosedFormStrategy.__doc__.split())
    for said in ("ExactShardsPlugin", "refused", "gradients", "replay", "train_epochs"):
        assert said in doc, said


def test_a_failed_experience_leaves_the_learner_as_it_was():
    bm = split_digits()
    strategy = build(evaluator=evaluator())
    strategy.train(bm.train_stream[0])
    x, y = cc.stacked([bm.train_stream[1]])
    x[-1, 0, 3, 3] = float("nan")
    bad = nc_benchmark(LabelledTensorDataset(x, y), LabelledTensorDataset(x, y),
                       n_experiences=1, task_labels=False, seed=0)

    def state():
        return {**strategy.state_dict(), "head": strategy.model[2].weight}

    assert_refused(lambda: strategy.train(bad.train_stream[0]), "NaN", state=state)


def test_resumes_exactly(tmp_path):
    assert_resumes_exactly(lambda: build(evaluator=evaluator()), split_digits(),
                           tmp_path / "ck.ckpt")
