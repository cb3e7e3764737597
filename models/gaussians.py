"""Per-class Gaussians of feature vectors: statistics and sampling (SLCA Sec. 4.2).

Zhang, Wang, Kang, Chen, Wei, "SLCA: Slow Learner with Classifier Alignment for
Continual Learning on a Pre-trained Model", ICCV 2023. Each class ``c`` is
summarised by ``N(mu_c, Sigma_c)`` of its features, and features are sampled
from these Gaussians to re-train a classifier
(:func:`neve.models.head_alignment.align_head`). Pure tensors, no Avalanche.
"""

from __future__ import annotations

import math

import torch

COVARIANCE_KINDS = ("full", "diagonal", "shared")


def class_mean_and_covariance(
    features: torch.Tensor, ridge: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean ``[D]``, unbiased covariance + ``ridge * I`` ``[D, D]`` (float64) and count.

    SLCA Sec. 4.2: ``mu_c = mean_i f_i``, ``Sigma_c = cov(f) + ridge * I`` (the
    authors' code uses ``torch.cov`` in float64 with ridge 1e-4). With a single
    sample the covariance is undefined (0 degrees of freedom): it is then
    ``ridge * I``, an isotropic Gaussian around the one feature.

    Args:
        features: ``[N, D]`` features of one class, N >= 1.
    """
    if features.dim() != 2 or features.shape[0] < 1:
        raise ValueError(f"features must be [N >= 1, D], got {tuple(features.shape)}")
    x = features.detach().to(torch.float64)
    n, d = x.shape
    mean = x.mean(dim=0)
    eye = torch.eye(d, dtype=torch.float64, device=x.device)
    if n == 1:
        return mean, ridge * eye, 1
    centred = x - mean
    cov = centred.T @ centred / (n - 1)
    return mean, cov + ridge * eye, n


class ClassGaussianStats:
    """Per-class Gaussians ``N(mu_c, Sigma_c)`` of features, in float64 (SLCA Sec. 4.2).

    ``covariance`` chooses what is stored per class, with D the feature size and
    C the number of classes (float64, 8 bytes a number):

    * ``"full"``: a ``D x D`` covariance per class: ``C * (D^2 + D) * 8`` bytes
      (D = 1280, C = 100: 1.3 GB; C = 10: 131 MB). The paper's choice. When a
      class has ``n <= D`` samples its covariance has rank ``n - 1`` plus the
      ridge, and the ``[n, D]`` centred features over ``sqrt(n - 1)`` are kept as
      well (``n * D * 8`` bytes more): sampling then costs ``n * D`` instead of
      ``D^2`` a sample, exactly the same Gaussian
      (``x = mu + F^T z1 + sqrt(ridge) z2``, ``F^T F + ridge I = Sigma``).
    * ``"diagonal"``: per-feature variances only: ``2 * C * D * 8`` bytes
      (D = 1280, C = 100: 2 MB); features are sampled independently.
    * ``"shared"``: one pooled within-class covariance (sum of the classes'
      scatter matrices over their summed degrees of freedom, like LDA) plus a
      mean per class: ``(D^2 + C * D) * 8`` bytes (D = 1280: 13 MB + 10 kB a class).

    ``ridge * I`` is added to every covariance (variance), so it is positive
    definite; a class seen with one sample contributes no scatter and, alone,
    gets ``ridge * I``. Storing a class again replaces its statistics (and its
    share of the pooled covariance).

    State is plain tensors and ints (:meth:`state_dict` / :meth:`load_state_dict`).
    """

    def __init__(self, covariance: str = "full", ridge: float = 1e-4) -> None:
        if covariance not in COVARIANCE_KINDS:
            raise ValueError(f"covariance must be one of {COVARIANCE_KINDS}, got {covariance!r}")
        if not math.isfinite(ridge) or ridge <= 0:
            raise ValueError(f"ridge must be a finite number > 0, got {ridge!r}")
        self.covariance = covariance
        self.ridge = float(ridge)
        self.means: dict[int, torch.Tensor] = {}
        self.covs: dict[int, torch.Tensor] = {}  # [D, D] (full) or [D] (diagonal); with ridge
        self.scatters: dict[int, torch.Tensor] = {}  # shared: per-class scatter [D, D], no ridge
        self.counts: dict[int, int] = {}
        self.groups: dict[int, int] = {}  # class -> experience it was stored in
        self.low_rank: dict[int, torch.Tensor] = {}  # full, n <= D: centred / sqrt(n-1)
        self._factors: dict[int, torch.Tensor] = {}  # derived: Cholesky factors, not state

    @property
    def classes(self) -> list[int]:
        return sorted(self.means)

    def update(
        self, features: torch.Tensor, targets: torch.Tensor, group: int
    ) -> list[int]:
        """Store the statistics of each class present in ``targets``.

        Args:
            features: ``[N, D]``.
            targets: ``[N]`` integer class ids.
            group: the experience index these classes belong to (for the per-
                experience logit normalisation of the alignment).

        Returns:
            The classes stored, ascending.
        """
        if features.dim() != 2 or targets.dim() != 1 or features.shape[0] != targets.shape[0]:
            raise ValueError(
                f"features must be [N, D] and targets [N], got {tuple(features.shape)} "
                f"and {tuple(targets.shape)}"
            )
        if self.means:
            d = next(iter(self.means.values())).shape[0]
            if features.shape[1] != d:
                raise ValueError(f"features must have {d} columns, got {features.shape[1]}")
        features = features.detach().cpu()
        targets = targets.detach().cpu().long()
        if self.covariance == "shared":
            self._factors.clear()
        stored = []
        for c in torch.unique(targets).tolist():
            mean, cov, n = class_mean_and_covariance(features[targets == c], self.ridge)
            self._factors.pop(c, None)
            self.low_rank.pop(c, None)
            self.means[c], self.counts[c], self.groups[c] = mean, n, int(group)
            if self.covariance == "full":
                self.covs[c] = cov
                if n <= cov.shape[0]:
                    centred = features[targets == c].to(torch.float64) - mean
                    self.low_rank[c] = centred / math.sqrt(max(n - 1, 1))
            elif self.covariance == "diagonal":
                self.covs[c] = torch.diagonal(cov).clone()
            else:
                eye = torch.eye(cov.shape[0], dtype=torch.float64)
                self.scatters[c] = (cov - self.ridge * eye) * max(n - 1, 0)
            stored.append(c)
        return stored

    def shared_covariance(self) -> torch.Tensor:
        """Pooled within-class covariance ``sum_c S_c / sum_c (n_c - 1) + ridge * I``."""
        d = next(iter(self.means.values())).shape[0]
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
            return self.covs[c]
        if self.covariance == "diagonal":
            return torch.diag(self.covs[c])
        return self.shared_covariance()

    def sampler_factors(self) -> dict[int, torch.Tensor]:
        """Per class, ``L`` with ``L L^T = Sigma_c`` (Cholesky; ``[D]`` std for diagonal).

        Factors are cached until the class (for ``"shared"``: any class) is stored again.
        """
        if self.covariance == "diagonal":
            return {c: self.covs[c].sqrt() for c in self.classes}
        if self.covariance == "shared":
            if -1 not in self._factors:
                self._factors[-1] = psd_cholesky(self.shared_covariance())
            return {c: self._factors[-1] for c in self.classes}
        for c in self.classes:
            if c not in self._factors and c not in self.low_rank:
                self._factors[c] = psd_cholesky(self.covs[c])
        return {c: self._factors[c] for c in self.classes if c not in self.low_rank}

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
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
        classes = self.classes if classes is None else classes
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
            "covs": dict(self.covs),
            "low_rank": dict(self.low_rank),
            "scatters": dict(self.scatters),
            "counts": dict(self.counts),
            "groups": dict(self.groups),
        }

    def load_state_dict(self, state: dict) -> None:
        self.covariance = state["covariance"]
        self.ridge = float(state["ridge"])
        self.means = {int(k): v.clone() for k, v in state["means"].items()}
        self.covs = {int(k): v.clone() for k, v in state["covs"].items()}
        self.low_rank = {int(k): v.clone() for k, v in state["low_rank"].items()}
        self.scatters = {int(k): v.clone() for k, v in state["scatters"].items()}
        self.counts = {int(k): int(v) for k, v in state["counts"].items()}
        self.groups = {int(k): int(v) for k, v in state["groups"].items()}
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
