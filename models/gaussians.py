"""Per-class Gaussians of feature vectors: statistics and sampling (SLCA Sec. 4.2).

Zhang, Wang, Kang, Chen, Wei, "SLCA: Slow Learner with Classifier Alignment for
Continual Learning on a Pre-trained Model", ICCV 2023. Each class ``c`` is
summarised by ``N(mu_c, Sigma_c)`` of its features, and features are sampled
from these Gaussians to re-train a classifier
(:func:`neve.models.head_alignment.align_head`). Pure tensors, no Avalanche.

A class is stored as its count ``n``, mean ``mu`` and scatter matrix
``S = sum_i (f_i - mu)(f_i - mu)^T`` (``M2``), so two sets of statistics of the
same class merge exactly (:func:`merge_moments`, the parallel update of Chan,
Golub and LeVeque) and the covariance is ``S / (n - 1) + ridge * I``. The
pure checks of a stored state are in :mod:`neve.models.gaussian_state`.
"""

from __future__ import annotations

import math

import torch

from .class_moments import Moments, checked_class_moments, class_moments, merge_moments
from .core.checks import Instance, Int, validated
from .gaussian_checks import COVARIANCE, COVARIANCE_KINDS, RIDGE, check_update_inputs, checked_state

__all__ = ["COVARIANCE_KINDS", "ClassGaussianStats", "class_moments", "merge_moments"]


class ClassGaussianStats:
    """Per-class Gaussians ``N(mu_c, Sigma_c)`` of features, in float64 (SLCA Sec. 4.2).

    ``covariance`` chooses what is stored per class, with D the feature size and
    C the number of classes (float64, 8 bytes a number):

    * ``"full"``: a ``D x D`` scatter per class: ``C * (D^2 + D) * 8`` bytes
      (D = 1280, C = 100: 1.3 GB; C = 10: 131 MB). The paper's choice. When a
      class has few samples (``n <= D``, or after merges ``n_rows <= D``) the
      rows ``F`` with ``F^T F = S / (n - 1)`` are kept as well (``n * D * 8``
      bytes more): sampling then costs ``n * D`` instead of ``D^2`` a sample,
      exactly the same Gaussian (``x = mu + F^T z1 + sqrt(ridge) z2``).
    * ``"diagonal"``: the diagonal of the scatter only: ``2 * C * D * 8`` bytes
      (D = 1280, C = 100: 2 MB); features are sampled independently.
    * ``"shared"``: one pooled within-class covariance (sum of the classes'
      scatter matrices over their summed degrees of freedom, like LDA) plus a
      mean per class.

    ``ridge * I`` is added to every covariance (variance), so it is positive
    definite; a class seen with one sample contributes no scatter and, alone,
    gets ``ridge * I``. Storing a class again merges the new samples into its
    statistics by counts (:func:`merge_moments`); the class keeps the group
    (experience) it was first stored in.

    State is plain tensors and ints (:meth:`state_dict` / :meth:`load_state_dict`):
    counts, means and scatters, so statistics of disjoint data merge exactly.
    """

    @validated(covariance=COVARIANCE, ridge=RIDGE)
    def __init__(self, covariance: str = "full", ridge: float = 1e-4) -> None:
        self.covariance = covariance
        self.ridge = ridge
        self.means: dict[int, torch.Tensor] = {}
        self.scatters: dict[int, torch.Tensor] = {}  # [D, D] (full, shared) or [D] (diagonal)
        self.counts: dict[int, int] = {}
        self.groups: dict[int, int] = {}  # class -> experience it was first stored in
        self.low_rank: dict[int, torch.Tensor] = {}  # full, few rows: F^T F = S / (n - 1)
        self._factors: dict[int, torch.Tensor] = {}  # derived: Cholesky factors, not state

    @property
    def classes(self) -> list[int]:
        return sorted(self.means)

    @property
    def feature_dim(self) -> int | None:
        """D of the stored features; None before any class is stored."""
        return next(iter(self.means.values())).shape[0] if self.means else None

    @property
    def covs(self) -> dict[int, torch.Tensor]:
        """Per class ``S / max(n - 1, 1) + ridge``: ``[D, D]`` (full) or ``[D]`` (diagonal)."""
        if self.covariance == "shared":
            return {}
        return {c: self._own_covariance(c) for c in self.classes}

    def _own_covariance(self, c: int) -> torch.Tensor:
        scatter = self.scatters[c] / max(self.counts[c] - 1, 1)
        if scatter.dim() == 1:
            return scatter + self.ridge
        return scatter + self.ridge * torch.eye(scatter.shape[0], dtype=torch.float64)

    def update(self, features: torch.Tensor, targets: torch.Tensor, group: int) -> list[int]:
        """Store (or merge in) the statistics of each class present in ``targets``.

        All classes' statistics are computed first and committed together, so a
        refused call (non-finite features, bad targets) changes nothing.

        Args:
            features: ``[N, D]`` finite floats, N >= 1.
            targets: ``[N]`` integer class ids >= 0.
            group: the experience index (int >= 0) these classes belong to (for
                the per-experience logit normalisation of the alignment); a class
                stored before keeps its first group.

        Returns:
            The classes stored, ascending.
        """
        d = self.feature_dim
        check_update_inputs(features, targets, group, d)
        moments = checked_class_moments(features, targets, self.covariance)
        return self.update_moments(moments, group)

    def update_moments(self, moments: dict[int, Moments], group: int) -> list[int]:
        """Store (or merge in) per-class moments, e.g. summed over processes.

        Args:
            moments: class -> ``(n, mean [D], scatter, rows)`` as made by
                :func:`neve.models.class_moments.class_moments`: float64,
                scatter ``[D, D]`` (``[D]`` for ``"diagonal"``), ``rows`` the
                centred features ``[n, D]`` or None (then a ``"full"`` class is
                sampled through its Cholesky factor).
            group: the experience index (int >= 0); a class stored before keeps its first.

        Everything is checked and computed before anything is stored.

        Returns:
            The classes stored, ascending.
        """
        self._check_moments(moments, group)
        new: dict[int, tuple] = {}
        for c, (n, mean, scatter, centred) in sorted(moments.items()):
            own = (n, mean, scatter)
            low = None
            if self.covariance == "full" and centred is not None:
                low = self._merged_rows(c, centred, own)
            if c in self.means:
                own = merge_moments((self.counts[c], self.means[c], self.scatters[c]), own)
            new[c] = (own, low)
        for c, ((n, mean, scatter), low) in new.items():
            self._factors.pop(c, None)
            self.low_rank.pop(c, None)
            self.means[c], self.scatters[c], self.counts[c] = mean, scatter.clone(), n
            self.groups.setdefault(c, int(group))
            if low is not None:
                self.low_rank[c] = low
        if self.covariance == "shared":
            self._factors.clear()
        return sorted(new)

    def _check_moments(self, moments: dict, group: object) -> None:
        if isinstance(group, bool) or not isinstance(group, int) or group < 0:
            raise ValueError(f"group must be an int >= 0, got {group!r}")
        if not isinstance(moments, dict) or not moments:
            raise ValueError("moments must be a non-empty dict class -> (n, mean, scatter, rows)")
        d = self.feature_dim
        for c, moment in moments.items():
            n, mean, scatter, rows = moment
            d = mean.shape[0] if d is None else d
            shape = (d,) if self.covariance == "diagonal" else (d, d)
            if isinstance(c, bool) or not isinstance(c, int) or c < 0 \
                    or isinstance(n, bool) or not isinstance(n, int) or n < 1 \
                    or mean.shape != (d,) or scatter.shape != shape \
                    or (rows is not None and rows.shape != (n, d)) \
                    or not all(bool(torch.isfinite(t).all()) for t in (mean, scatter)):
                raise ValueError(
                    f"moments[{c!r}] must be (n >= 1, finite mean [{d}], finite scatter "
                    f"{list(shape)}, rows [n, {d}] or None) for a class id >= 0"
                )

    def _merged_rows(self, c: int, centred: torch.Tensor, own: tuple) -> torch.Tensor | None:
        """Rows ``F``, ``F^T F = S / (n - 1)``, after storing ``centred``; None if over D rows."""
        d = centred.shape[1]
        if c not in self.means:
            n = own[0]
            return centred / math.sqrt(max(n - 1, 1)) if n <= d else None
        if c not in self.low_rank:
            return None
        n_a, n_b = self.counts[c], own[0]
        n = n_a + n_b
        delta = (own[1] - self.means[c]) * math.sqrt(n_a * n_b / n)
        old = self.low_rank[c] * math.sqrt(max(n_a - 1, 1))
        rows = torch.cat([old, centred, delta[None]])
        return rows / math.sqrt(max(n - 1, 1)) if rows.shape[0] <= d else None

    def shift_means(self, shifts: dict[int, torch.Tensor]) -> None:
        """Add ``shifts[c]`` (``[D]``) to the mean of each stored class ``c`` (drift compensation).

        Counts and scatters (so covariances) are kept: the Gaussian is translated.
        Everything is checked before a mean changes.
        """
        for c, shift in shifts.items():
            if c not in self.means:
                raise ValueError(f"shifts must be for stored classes {self.classes}, got {c!r}")
            if not isinstance(shift, torch.Tensor) or shift.shape != self.means[c].shape \
                    or not bool(torch.isfinite(shift).all()):
                raise ValueError(f"shifts[{c}] must be a finite [D] tensor")
        for c, shift in shifts.items():
            self.means[c] = self.means[c] + shift.detach().to(torch.float64).cpu()

    def map_covariances(self, transform: torch.Tensor, classes: list[int] | None = None) -> None:
        """Covariances of ``classes`` (default: all) under the linear map ``x -> x A``.

        ``transform`` ``A`` is ``[D, D]`` (e.g. :func:`neve.models.drift.drift_jacobian`):
        each scatter becomes ``A^T S A`` (diagonal statistics: the diagonal of it,
        ``(A * A)^T s``), a class's few-sample rows ``F`` become ``F A``; counts,
        means and the ridge are kept. Checked before anything changes.
        """
        classes = self.classes if classes is None else classes
        d = self.feature_dim or 0
        if not isinstance(transform, torch.Tensor) or transform.shape != (d, d) \
                or not bool(torch.isfinite(transform).all()):
            raise ValueError(f"transform must be a finite [{d}, {d}] tensor")
        unknown = sorted(set(classes) - set(self.means))
        if unknown:
            raise ValueError(f"classes must be stored classes {self.classes}, got {unknown}")
        a = transform.detach().to(torch.float64).cpu()
        for c in classes:
            s = self.scatters[c]
            self.scatters[c] = (a * a).T @ s if s.dim() == 1 else a.T @ s @ a
            if c in self.low_rank:
                self.low_rank[c] = self.low_rank[c] @ a
            self._factors.pop(c, None)
        if self.covariance == "shared":
            self._factors.clear()

    def shared_covariance(self) -> torch.Tensor:
        """Pooled within-class covariance ``sum_c S_c / sum_c (n_c - 1) + ridge * I``."""
        d = self.feature_dim
        dof = sum(max(self.counts[c] - 1, 0) for c in self.scatters)
        pooled = torch.zeros(d, d, dtype=torch.float64)
        for c in sorted(self.scatters):
            pooled += self.scatters[c]
        if dof > 0:
            pooled /= dof
        return pooled + self.ridge * torch.eye(d, dtype=torch.float64)

    def covariance_of(self, c: int) -> torch.Tensor:
        """Class ``c``'s covariance as a ``[D, D]`` float64 matrix (ridge included)."""
        if self.covariance == "full":
            return self._own_covariance(c)
        if self.covariance == "diagonal":
            return torch.diag(self._own_covariance(c))
        return self.shared_covariance()

    def sampler_factors(self) -> dict[int, torch.Tensor]:
        """Per class, ``L`` with ``L L^T = Sigma_c`` (Cholesky; ``[D]`` std for diagonal).

        Factors are cached until the class (for ``"shared"``: any class) is stored again.
        """
        if self.covariance == "diagonal":
            return {c: self._own_covariance(c).sqrt() for c in self.classes}
        if self.covariance == "shared":
            if -1 not in self._factors:
                self._factors[-1] = psd_cholesky(self.shared_covariance())
            return {c: self._factors[-1] for c in self.classes}
        for c in self.classes:
            if c not in self._factors and c not in self.low_rank:
                self._factors[c] = psd_cholesky(self._own_covariance(c))
        return {c: self._factors[c] for c in self.classes if c not in self.low_rank}

    @validated(samples_per_class=Int(1),
               generator=Instance(torch.Generator, what="a torch.Generator"))
    def sample(
        self,
        samples_per_class: int,
        generator: torch.Generator,
        classes: list[int] | None = None,
        factors: dict[int, torch.Tensor] | None = None,
        device: str | torch.device = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``samples_per_class`` features from each class's Gaussian.

        ``x = mu_c + L z`` with ``z ~ N(0, I)`` drawn from ``generator`` (on CPU,
        so the draw is the same on every device) and ``L L^T = Sigma_c``; ``z``
        and the product ``L z`` are float32 (twice as fast; the sampled features
        are float32 anyway), the statistics stay float64.

        Returns:
            ``(features [K * n, D] float32, targets [K * n] int64)`` on ``device``,
            class by class in ascending class order.
        """
        classes = self.classes if classes is None else classes
        unknown = sorted(set(classes) - set(self.means))
        if unknown or not classes:
            raise ValueError(f"classes must be stored classes {self.classes}, got {classes!r}")
        factors = self.sampler_factors() if factors is None else factors
        xs, ys = [], []
        for c in classes:
            mean = self.means[c]
            z = torch.randn(samples_per_class, mean.shape[0], generator=generator)
            if self.covariance == "full" and c in self.low_rank:
                rows = self.low_rank[c]
                z_low = torch.randn(samples_per_class, rows.shape[0], generator=generator)
                x = z_low.to(device) @ rows.to(device, torch.float32)
                x += math.sqrt(self.ridge) * z.to(device)
                xs.append(x + mean.to(device, torch.float32))
                ys.append(torch.full((samples_per_class,), c, dtype=torch.long, device=device))
                continue
            factor = factors[c].to(device, torch.float32)
            z = z.to(device)
            x = z * factor if factor.dim() == 1 else z @ factor.T
            xs.append(x + mean.to(device, torch.float32))
            ys.append(torch.full((samples_per_class,), c, dtype=torch.long, device=device))
        return torch.cat(xs), torch.cat(ys)

    def state_dict(self) -> dict:
        return {
            "covariance": self.covariance,
            "ridge": self.ridge,
            "means": dict(self.means),
            "scatters": dict(self.scatters),
            "low_rank": dict(self.low_rank),
            "counts": dict(self.counts),
            "groups": dict(self.groups),
        }

    def load_state_dict(self, state: dict) -> None:
        """Load a :meth:`state_dict`; the whole state is checked before anything changes."""
        checked = checked_state(state)
        self.covariance, self.ridge = checked["covariance"], checked["ridge"]
        self.means, self.scatters = checked["means"], checked["scatters"]
        self.low_rank, self.counts = checked["low_rank"], checked["counts"]
        self.groups = checked["groups"]
        self._factors = {}


def psd_cholesky(cov: torch.Tensor) -> torch.Tensor:
    """Lower ``L`` with ``L L^T = cov`` for a symmetric positive (semi-)definite ``cov``.

    Cholesky in float64; if it fails (rounding on a near-singular matrix), the
    symmetric square root from ``eigh`` with negative eigenvalues clipped to 0.
    """
    factor, info = torch.linalg.cholesky_ex(cov)
    if int(info) == 0:
        return factor
    values, vectors = torch.linalg.eigh((cov + cov.T) / 2)
    return vectors * values.clamp_min(0).sqrt()
