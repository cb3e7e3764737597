"""Query corruptions of the instance test (Kowadlo et al., 2022): occlusion and pixel noise.

Kowadlo, Ahmed, Mayan, Rawlinson, "Expanding continual few-shot learning
benchmarks to include recognition of specific instances" (2022) score a learner
on queries that are its support images corrupted by a zero-filled disc
(:class:`Occlusion`, radius fraction ``r``) or by uniform noise on a fraction of
the pixels (:class:`PixelNoise`, fraction ``p``). Both are plain transforms of
``[C, H, W]`` or ``[B, C, H, W]`` tensors with their own seeded generator;
:func:`corrupt_images` applies one, by name, to a stack of images.
"""

from __future__ import annotations

import torch

from ..models.core.checks import Instance, OneOf, Real, Seed, validated

#: What the corruptions' shared arguments must be.
SEEDING = {"seed": Seed(optional=True),
           "generator": Instance(torch.Generator, what="a torch.Generator", optional=True)}

CORRUPTIONS = ("occlusion", "noise")


def occlusion_radius(radius_fraction: float, height: int) -> int:
    """Disc radius in pixels: ``floor(radius_fraction * height)`` (the authors' rounding)."""
    return int(radius_fraction * height)


def disc_mask(height: int, width: int, radius: int, row: int, col: int) -> torch.Tensor:
    """Boolean ``[height, width]`` mask of the pixels within ``radius`` of ``(row, col)``.

    A pixel ``(i, j)`` is inside when ``(i - row)^2 + (j - col)^2 <= radius^2``.
    """
    i = torch.arange(height).unsqueeze(1)
    j = torch.arange(width).unsqueeze(0)
    return (i - row) ** 2 + (j - col) ** 2 <= radius**2


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"image must be a tensor [C, H, W] or [B, C, H, W], got {shape}")


class _ImageCorruption:
    """Seeded per-image corruption of ``[C, H, W]`` or ``[B, C, H, W]`` tensors.

    Subclasses give ``_corrupt(image)``, which changes one ``[C, H, W]`` image of a
    fresh copy in place, drawing from ``self.generator``.
    """

    def __init__(self, seed: int | None, generator: torch.Generator | None) -> None:
        if seed is not None and generator is not None:
            raise ValueError("give seed or generator, not both")
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        self.generator = generator

    def _corrupt(self, image: torch.Tensor) -> None:
        raise NotImplementedError

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_images(image)
        out = (image if image.dim() == 4 else image.unsqueeze(0)).clone()
        for b in range(out.shape[0]):
            self._corrupt(out[b])
        return out if image.dim() == 4 else out[0]


class Occlusion(_ImageCorruption):
    """Zero-fills a disc of radius ``floor(radius_fraction * H)`` pixels at a random place.

    Kowadlo et al. (2022), instance test, occlusion with ``r`` in {0.05, 0.1, 0.2,
    0.3}. As in the authors' code (Cerenaut/cfsl), the centre is drawn uniformly
    among integer positions ``row in [r, H - r)``, ``col in [r, W - r)``, so the
    disc lies inside the image, and every channel of the covered pixels is set
    to 0. Each image of a batch gets its own centre. A radius of 0 pixels leaves
    the image unchanged.

    Args:
        radius_fraction: disc radius as a fraction of the image height, in [0, 1].
        seed: seeds a private generator, so a sequence of calls repeats exactly.
        generator: a ``torch.Generator`` to draw the centres from instead
            (default: torch's global generator when neither is given).

    Call it on ``[C, H, W]`` or ``[B, C, H, W]``; it returns a new tensor.
    """

    @validated(radius_fraction=Real(ge=0.0, le=1.0), **SEEDING)
    def __init__(
        self,
        radius_fraction: float,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.radius_fraction = radius_fraction
        super().__init__(seed, generator)

    def _corrupt(self, image: torch.Tensor) -> None:
        height, width = image.shape[-2:]
        radius = occlusion_radius(self.radius_fraction, height)
        if radius == 0:
            return
        row = _uniform_int(radius, height - radius, height, self.generator)
        col = _uniform_int(radius, width - radius, width, self.generator)
        image[:, disc_mask(height, width, radius, row, col)] = 0

    def __repr__(self) -> str:
        return f"Occlusion(radius_fraction={self.radius_fraction})"


def _uniform_int(low: int, high: int, size: int, generator: torch.Generator | None) -> int:
    """Integer uniform in ``[low, high)``; the middle pixel when that range is empty."""
    if high <= low:
        return size // 2
    return int(torch.randint(low, high, (1,), generator=generator))


class PixelNoise(_ImageCorruption):
    """Replaces ``floor(fraction * H * W)`` pixels, chosen without replacement, by U(0, 1) noise.

    Kowadlo et al. (2022), instance test, noise with ``p`` in {0.05, 0.1, 0.2,
    0.4}. A *pixel* is a spatial position: all channels of a chosen pixel are
    replaced together, each channel by its own U(0, 1) draw. (The authors' code
    picks positions over all channel values independently; for 1-channel
    images, like Omniglot and Fashion-MNIST, the two are the same.) Each image
    of a batch gets its own positions and values.

    Args:
        fraction: share of the pixels replaced, in [0, 1].
        seed: seeds a private generator, so a sequence of calls repeats exactly.
        generator: a ``torch.Generator`` to draw from instead.

    Call it on ``[C, H, W]`` or ``[B, C, H, W]`` images in [0, 1]; it returns a new tensor.
    """

    @validated(fraction=Real(ge=0.0, le=1.0), **SEEDING)
    def __init__(
        self,
        fraction: float,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.fraction = fraction
        super().__init__(seed, generator)

    def _corrupt(self, image: torch.Tensor) -> None:
        channels, height, width = image.shape
        n_pixels = int(self.fraction * height * width)
        where = torch.randperm(height * width, generator=self.generator)[:n_pixels]
        noise = torch.rand(channels, n_pixels, generator=self.generator)
        flat = image.reshape(channels, height * width)  # a view of image
        flat[:, where] = noise.to(dtype=image.dtype, device=image.device)

    def __repr__(self) -> str:
        return f"PixelNoise(fraction={self.fraction})"


@validated(corruption=OneOf(None, *CORRUPTIONS), severity=Real(ge=0.0, le=1.0),
           seed=Seed(optional=True))
def make_corruption(
    corruption: str | None, severity: float, seed: int | None = None
) -> Occlusion | PixelNoise | None:
    """The transform named ``corruption`` ("occlusion", "noise" or None) at ``severity``.

    ``severity`` is the radius fraction ``r`` for occlusion and the pixel fraction
    ``p`` for noise. Returns None for ``corruption=None``, whose severity must be 0
    (a severity without a corruption is a mistake, not a no-op).
    """
    if corruption is None:
        if severity != 0.0:
            raise ValueError(
                f"severity={severity!r} was given without a corruption: pass "
                f"corruption={CORRUPTIONS[0]!r} or {CORRUPTIONS[1]!r}, or severity=0"
            )
        return None
    return (Occlusion if corruption == "occlusion" else PixelNoise)(severity, seed=seed)


def corrupt_images(
    images: torch.Tensor, corruption: str | None, severity: float, seed: int | None = None
) -> torch.Tensor:
    """``images`` ``[N, C, H, W]`` corrupted by :func:`make_corruption`; a copy when None.

    Raises:
        ValueError: when a corruption is asked for and the items are not ``[C, H, W]``.
    """
    transform = make_corruption(corruption, severity, seed=seed)
    if transform is None:
        return images.clone()
    _check_images(images[0])
    return transform(images)
