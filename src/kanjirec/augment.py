"""Image distortions, shared by training augmentation and the robustness suite.

Every distortion is an entry of one table, `DISTORTIONS`. Each takes a batch of
``uint8`` images ``(B, 1, S, S)`` (ink 255 on 0) and a strength in [0, 1] (a float,
or one per sample as a ``(B,)`` tensor) and returns ``uint8`` images of the same
shape. Strength 0 is the identity; strength 1 is the top severity (rotation by 15
degrees, for example). The strength sets the magnitude; the direction (sign of the
angle, where a patch falls) is drawn from the explicit ``torch.Generator``, so that
a seeded generator reproduces a batch bit for bit.

Small random draws (angles, positions, coarse fields) come from the generator and move to
the images' device; image-sized noise is drawn on the images' device from a generator seeded
by the given one. So one CPU generator serves CPU and GPU batches alike, and a batch is
reproduced exactly on the same kind of device.

``augment_batch`` is the training augmentation: for each distortion named in the
config it picks a random subset of samples and a random strength per sample, and
fuses all geometric distortions (affine and elastic) into one resampling so that
images are interpolated once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kanjirec.errors import ConfigError

Tensor = torch.Tensor


def _strengths(strength: float | Tensor, batch: int) -> Tensor:
    s = torch.as_tensor(strength, dtype=torch.float32).cpu()
    if s.dim() == 0:
        s = s.expand(batch)
    if s.shape != (batch,):
        raise ValueError(f"strength must be a float or a ({batch},) tensor, got shape {tuple(s.shape)}")
    if bool((s < 0).any()) or bool((s > 1).any()):
        raise ValueError("strength must lie in [0, 1]")
    return s


def _check(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"expected uint8 images (B, 1, S, S), got {images.dtype} {tuple(images.shape)}")


def _to_uint8(x: Tensor) -> Tensor:
    return x.round().clamp_(0, 255).to(torch.uint8)


def _rand(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).cpu()


def _randn(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).cpu()


def _random_sign(generator: torch.Generator, batch: int) -> Tensor:
    return torch.where(_rand(generator, batch) < 0.5, -1.0, 1.0)


# ---------------------------------------------------------------- distortion kinds


@dataclass(frozen=True)
class Distortion:
    """One named distortion; ``severities`` are the three strengths the robustness suite uses."""

    name: str
    description: str
    severities: tuple[float, float, float]

    def apply(self, images: Tensor, strength: float | Tensor, generator: torch.Generator) -> Tensor:
        _check(images)
        s = _strengths(strength, images.shape[0])
        return _to_uint8(self._apply_float(images.float(), s, generator))

    def _apply_float(self, x: Tensor, s: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class AffineDistortion(Distortion):
    """A per-sample 3x3 matrix mapping output to input coordinates (normalised to [-1, 1])."""

    matrices: Callable[[Tensor, torch.Generator], Tensor] = None  # (s (B,), generator) -> (B, 3, 3)

    def _apply_float(self, x: Tensor, s: Tensor, generator: torch.Generator) -> Tensor:
        return _warp(x, self.matrices(s, generator), None)


@dataclass(frozen=True)
class DisplacementDistortion(Distortion):
    """A per-pixel displacement of the sampling grid, in normalised units."""

    displacement: Callable[[Tensor, torch.Generator, int, torch.device], Tensor] = None  # -> (B, S, S, 2)

    def _apply_float(self, x: Tensor, s: Tensor, generator: torch.Generator) -> Tensor:
        return _warp(x, None, self.displacement(s, generator, x.shape[-1], x.device))


@dataclass(frozen=True)
class PixelDistortion(Distortion):
    """Any other image operation on float images in [0, 255]."""

    fn: Callable[[Tensor, Tensor, torch.Generator], Tensor] = None  # (x, s (B,), generator) -> x

    def _apply_float(self, x: Tensor, s: Tensor, generator: torch.Generator) -> Tensor:
        return self.fn(x, s, generator)


def _warp(x: Tensor, matrices: Tensor | None, displacement: Tensor | None) -> Tensor:
    b, _, size, _ = x.shape
    theta = torch.eye(3).expand(b, 3, 3) if matrices is None else matrices
    grid = F.affine_grid(theta[:, :2].to(x.device), [b, 1, size, size], align_corners=False)
    if displacement is not None:
        grid = grid + displacement.to(x.device)
    # Zero padding is the background: content moved in from outside the image is blank.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ---------------------------------------------------------------- geometric distortions


def _rotation(s: Tensor, g: torch.Generator) -> Tensor:
    angle = _random_sign(g, len(s)) * s * math.radians(15.0)
    m = torch.eye(3).repeat(len(s), 1, 1)
    m[:, 0, 0], m[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
    m[:, 1, 0], m[:, 1, 1] = torch.sin(angle), torch.cos(angle)
    return m


def _scale(s: Tensor, g: torch.Generator) -> Tensor:
    # Enlarge or shrink by up to 25%; the matrix maps output to input, hence the inverse factor.
    factor = torch.exp(_random_sign(g, len(s)) * s * math.log(1.25))
    m = torch.eye(3).repeat(len(s), 1, 1)
    m[:, 0, 0] = m[:, 1, 1] = 1.0 / factor
    return m


def _translation(s: Tensor, g: torch.Generator) -> Tensor:
    # A shift of up to 12% of the image side (7.7 px at 64) in a random direction.
    direction = _rand(g, len(s)) * 2 * math.pi
    shift = s * 0.12 * 2  # normalised coordinates span 2
    m = torch.eye(3).repeat(len(s), 1, 1)
    m[:, 0, 2] = -shift * torch.cos(direction)
    m[:, 1, 2] = -shift * torch.sin(direction)
    return m


def _elastic(s: Tensor, g: torch.Generator, size: int, device: torch.device) -> Tensor:
    # A coarse 6x6 random field upsampled smoothly: local wobble of strokes, up to ~3 px std.
    coarse = _randn(g, len(s), 2, 6, 6).to(device)
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    field = field * (s * 3.0 * 2 / size).to(device)[:, None, None, None]
    return field.permute(0, 2, 3, 1)


# ---------------------------------------------------------------- pixel distortions


def _pool_steps(x: Tensor, s: Tensor, max_steps: float, dilate: bool) -> Tensor:
    """Dilate (max-pool) or erode (min-pool) by ``s * max_steps`` 3x3 steps, fractional steps blended."""
    t = (s.to(x.device) * max_steps)[:, None, None, None]
    out, stage = x, x
    for k in range(math.ceil(max_steps)):
        pooled = F.max_pool2d(stage if dilate else -stage, 3, stride=1, padding=1)
        pooled = pooled if dilate else -pooled
        # Step k+1 counts fully once t >= k+1, partly in between: a linear blend of successive stages.
        out = out + (t - k).clamp(0, 1) * (pooled - stage)
        stage = pooled
    return out


def _thicken(x: Tensor, s: Tensor, g: torch.Generator) -> Tensor:
    return _pool_steps(x, s, max_steps=2.0, dilate=True)


def _thin(x: Tensor, s: Tensor, g: torch.Generator) -> Tensor:
    # Strokes are 3-5 px wide at 64x64; more than 1.5 erosion steps erases them.
    return _pool_steps(x, s, max_steps=1.5, dilate=False)


def _noise(x: Tensor, s: Tensor, g: torch.Generator) -> Tensor:
    sigma = (s * 0.25 * 255).to(x.device)[:, None, None, None]
    # Image-sized noise is drawn where the images are, from a generator seeded by ``g``.
    seed = int(torch.randint(2**62, (1,), generator=g, device=g.device))
    on_device = torch.Generator(device=x.device).manual_seed(seed)
    return x + torch.randn(x.shape, generator=on_device, device=x.device) * sigma


def _blur(x: Tensor, s: Tensor, g: torch.Generator) -> Tensor:
    b, _, size, _ = x.shape
    sigma = (s * 1.5).clamp(min=1e-3)  # 1.5 px at the top severity
    radius = 4
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).to(x.device)  # (B, 2r+1)
    # One grouped convolution per axis, each sample with its own kernel.
    y = x.reshape(1, b, size, size)
    y = F.conv2d(y, kernel[:, None, :, None], padding=(radius, 0), groups=b)
    y = F.conv2d(y, kernel[:, None, None, :], padding=(0, radius), groups=b)
    return y.reshape(b, 1, size, size)


def _contrast(x: Tensor, s: Tensor, g: torch.Generator) -> Tensor:
    # Ink dims and the background lifts: at the top severity ink 153 on 51 (40% of full contrast).
    s = s.to(x.device)[:, None, None, None]
    return x * (1 - 0.6 * s) + 255 * 0.2 * s


def _invert(x: Tensor, s: Tensor, g: torch.Generator) -> Tensor:
    # Polarity has no degrees: any strength above 0 flips to dark ink on a bright background.
    return torch.where((s > 0).to(x.device)[:, None, None, None], 255 - x, x)


def _occlusion(x: Tensor, s: Tensor, g: torch.Generator) -> Tensor:
    # A background-coloured square with side up to 40% of the image erases part of the character.
    b, _, size, _ = x.shape
    half = (s * 0.4 * size / 2).to(x.device)[:, None, None]
    centre = (_rand(g, b, 2) * size).to(x.device)
    coords = torch.arange(size, dtype=torch.float32, device=x.device) + 0.5
    inside_y = (coords[None, :, None] - centre[:, None, None, 0]).abs() < half
    inside_x = (coords[None, None, :] - centre[:, None, None, 1]).abs() < half
    mask = (inside_y & inside_x)[:, None]
    return x.masked_fill(mask, 0.0)


# ---------------------------------------------------------------- the table

_ENTRIES: list[Distortion] = [
    AffineDistortion("rotation", "rotate by up to 15 degrees", (0.33, 0.67, 1.0), matrices=_rotation),
    AffineDistortion("scale", "enlarge or shrink by up to 25%", (0.33, 0.67, 1.0), matrices=_scale),
    AffineDistortion(
        "translation", "shift by up to 12% of the side", (0.33, 0.67, 1.0), matrices=_translation
    ),
    DisplacementDistortion(
        "elastic", "smooth random local displacement", (0.33, 0.67, 1.0), displacement=_elastic
    ),
    PixelDistortion("thicken", "thicker strokes (max pooling)", (0.33, 0.67, 1.0), fn=_thicken),
    PixelDistortion("thin", "thinner strokes (min pooling)", (0.33, 0.67, 1.0), fn=_thin),
    PixelDistortion("blur", "Gaussian blur, sigma up to 1.5 px", (0.33, 0.67, 1.0), fn=_blur),
    PixelDistortion("contrast", "lower contrast", (0.33, 0.67, 1.0), fn=_contrast),
    PixelDistortion("invert", "dark ink on a bright background", (1.0, 1.0, 1.0), fn=_invert),
    PixelDistortion("occlusion", "erase a square of up to 40% side", (0.33, 0.67, 1.0), fn=_occlusion),
    PixelDistortion("noise", "Gaussian pixel noise, sigma up to 64", (0.33, 0.67, 1.0), fn=_noise),
]

#: Every distortion by name, in the order augment_batch applies them (geometry first, noise last).
DISTORTIONS: dict[str, Distortion] = {d.name: d for d in _ENTRIES}


# ---------------------------------------------------------------- training augmentation


def check_augment_config(aug_config: Mapping[str, float] | None) -> None:
    """Raise `ConfigError` naming the key unless every entry is a known distortion (or ``p``) mapped
    to a number in [0, 1]. The training config is checked with this before a run writes anything."""
    if aug_config is None:
        return
    if not isinstance(aug_config, Mapping):
        raise ConfigError(f"augment must be a table of distortion name -> strength, got {aug_config!r}")
    for name, value in aug_config.items():
        if name != "p" and name not in DISTORTIONS:
            raise ConfigError(f"augment.{name}: unknown distortion; known: p, {', '.join(DISTORTIONS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            what = "the chance a sample gets each distortion" if name == "p" else "the largest strength"
            raise ConfigError(f"augment.{name}: {value!r} is not a number in [0, 1] ({what})")


def augment_batch(
    images: Tensor, aug_config: Mapping[str, float] | None, generator: torch.Generator
) -> Tensor:
    """Random augmentation for training.

    ``aug_config`` maps distortion names to their largest strength (0 leaves one out) and may
    hold ``p``, the chance that a sample gets each distortion (default 0.5). Each chosen
    sample draws its strength uniformly in [0, largest]. ``None`` or ``{}`` changes nothing.
    """
    _check(images)
    check_augment_config(aug_config)
    config = dict(aug_config or {})
    p = float(config.pop("p", 0.5))
    active = [(DISTORTIONS[name], float(top)) for name, top in config.items() if top > 0]
    if not active:
        return images
    active.sort(key=lambda item: list(DISTORTIONS).index(item[0].name))
    b = images.shape[0]
    x = images.float()
    matrices = torch.eye(3).repeat(b, 1, 1)
    displacement = None
    warped = False
    for d, top in active:
        chosen = _rand(generator, b) < p
        s = torch.where(chosen, _rand(generator, b) * top, torch.zeros(b))
        if isinstance(d, AffineDistortion):
            matrices = matrices @ d.matrices(s, generator)
            warped = True
        elif isinstance(d, DisplacementDistortion):
            field = d.displacement(s, generator, x.shape[-1], x.device)
            displacement = field if displacement is None else displacement + field
            warped = True
        else:
            if warped:  # geometry comes first in the table: resample once, then pixel operations
                x = _warp(x, matrices, displacement)
                warped = False
            # Only the chosen samples: strength 0 is the identity, so the rest need no work.
            rows = torch.nonzero(s > 0).flatten()
            if len(rows):
                x[rows.to(x.device)] = d._apply_float(x[rows.to(x.device)], s[rows], generator)
    if warped:
        x = _warp(x, matrices, displacement)
    return _to_uint8(x)
