"""The one image convention, applied in one place.

Every packed image is square uint8 with ink bright (255) on a dark background
(0). `normalize_images` turns a batch of raw images whose ink is high (ETL,
rendered strokes, fonts drawn as white on black) into that convention:

1. contrast: the background level (the image's median) goes to 0 and the ink's
   99th percentile to 255, so faint scans and saturated renders look alike;
2. optional crop to the ink's bounding box (pixels above a quarter of full ink);
3. an aspect-preserving resize of the longer side to ``size - 2 * margin``,
   centred on a ``size`` x ``size`` canvas.

It is vectorised over the batch with torch (one ``grid_sample`` per chunk), so
no image is resized in a Python loop and nothing is kept as float beyond the
chunk being processed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Above this fraction of full ink a pixel counts as ink for cropping.
_INK_THRESHOLD = 0.25
_CHUNK = 2048


def normalize_images(
    images: np.ndarray,
    *,
    max_level: int,
    size: int = 64,
    crop: bool = False,
    margin: int = 2,
) -> np.ndarray:
    """Return uint8 ``(n, size, size)`` images, ink 255 on 0, from ink-high ``(n, h, w)`` images.

    ``max_level`` is the value of full ink in the input (15 for 4-bit ETL, 63 for
    6-bit, 1 for binary, 255 for 8-bit).
    """
    if images.ndim != 3:
        raise ValueError(f"expected images of shape (n, h, w), got {images.shape}")
    if max_level <= 0:
        raise ValueError(f"max_level must be positive, got {max_level}")
    if size <= 2 * margin:
        raise ValueError(f"size {size} leaves no room inside a margin of {margin}")
    out = np.empty((len(images), size, size), np.uint8)
    for start in range(0, len(images), _CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + _CHUNK])).float()
        out[start : start + _CHUNK] = _normalize_chunk(chunk / max_level, size, crop, margin).numpy()
    return out


def _normalize_chunk(x: torch.Tensor, size: int, crop: bool, margin: int) -> torch.Tensor:
    n, h, w = x.shape
    flat = x.reshape(n, -1)
    background = flat.median(dim=1).values
    # The ink's 99th percentile, not its maximum, so one hot pixel cannot dim a whole image.
    top = torch.quantile(flat, 0.99, dim=1) if flat.shape[1] <= 16_000_000 else flat.max(dim=1).values
    scale = (top - background).clamp_min(1e-6)
    x = ((x - background[:, None, None]) / scale[:, None, None]).clamp_(0, 1)

    # Box (x0, y0, x1, y1) of the content in pixel units, per image.
    if crop:
        ink = x > _INK_THRESHOLD
        rows, cols = ink.any(dim=2), ink.any(dim=1)
        has_ink = rows.any(dim=1)
        ar_h, ar_w = torch.arange(h), torch.arange(w)
        y0 = torch.where(rows, ar_h, h).min(dim=1).values
        y1 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
        x0 = torch.where(cols, ar_w, w).min(dim=1).values
        x1 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
        # A blank image keeps its full frame rather than collapsing to nothing.
        y0, y1 = torch.where(has_ink, y0, 0), torch.where(has_ink, y1, h)
        x0, x1 = torch.where(has_ink, x0, 0), torch.where(has_ink, x1, w)
        box = torch.stack([x0, y0, x1, y1], dim=1).float()
    else:
        box = torch.tensor([0.0, 0.0, w, h]).expand(n, 4)

    bw, bh = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    inner = size - 2 * margin
    scale_px = inner / torch.maximum(bw, bh)  # output pixels per input pixel, aspect kept
    # Blur before shrinking so strokes thinner than the new pixel pitch do not alias away.
    shrink = float((1.0 / scale_px).max())
    src = x[:, None]
    if shrink > 1.5:
        k = int(round(shrink))
        src = F.avg_pool2d(src, kernel_size=k, stride=1, padding=k // 2, count_include_pad=False)
        src = src[..., :h, :w]

    # Affine map from output pixel centres to normalised input coordinates (align_corners=False).
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = (size / scale_px) / w
    theta[:, 1, 1] = (size / scale_px) / h
    theta[:, 0, 2] = 2 * cx / w - 1
    theta[:, 1, 2] = 2 * cy / h - 1
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out[:, 0] * 255).round_().clamp_(0, 255).to(torch.uint8)
