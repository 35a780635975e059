"""The one image convention, applied in one place.

Every packed image is square uint8 with ink bright (255) on a dark background
(0). `normalize_images` turns a batch of raw images whose ink is high (ETL,
rendered strokes, fonts drawn as white on black) into that convention:

1. contrast: the background level (the image's median) goes to 0 and the ink level
   (95th percentile of the pixels above it) to 255, so faint scans and saturated renders look alike;
2. optional crop to the ink's bounding box (pixels above a quarter of full ink);
3. an aspect-preserving resize of the longer side to ``size - 2 * margin``,
   centred on a ``size`` x ``size`` canvas.

It is vectorised over the batch with torch (one ``grid_sample`` per chunk), so
no image is resized in a Python loop and nothing is kept as float beyond the
chunk being processed.

Image files come in through `open_image`, the one place that reads them: it refuses
non-images, damaged files and images over `MAX_IMAGE_PIXELS` with an `ImageInputError`
naming the file, before anything expensive happens.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from kanjirec.errors import ImageInputError

# The largest image accepted, checked from the file's header before any pixel is decoded: 40
# megapixels is a full-page scan at 600 dpi, far more than one character needs, while decoding
# much larger files costs seconds and gigabytes (Pillow's own guard starts at 89 megapixels).
MAX_IMAGE_PIXELS = 40_000_000

# Above this fraction of full ink a pixel counts as ink for cropping.
_INK_THRESHOLD = 0.25
_CHUNK = 512


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
    if not np.issubdtype(images.dtype, np.integer):
        raise ValueError(f"expected integer images (levels 0..max_level), got {images.dtype}")
    if not 0 < max_level < 65536:
        raise ValueError(f"max_level must lie in 1..65535, got {max_level}")
    if size <= 2 * margin:
        raise ValueError(f"size {size} leaves no room inside a margin of {margin}")
    out = np.empty((len(images), size, size), np.uint8)
    for start in range(0, len(images), _CHUNK):
        chunk = np.ascontiguousarray(images[start : start + _CHUNK])
        background, top = _levels(chunk, max_level)
        x = torch.from_numpy(chunk.astype(np.float32))  # a copy: `chunk` may be a read-only view
        scale = torch.from_numpy(top - background).float().clamp_min(0.5)
        x = ((x - torch.from_numpy(background).float()[:, None, None]) / scale[:, None, None]).clamp_(0, 1)
        out[start : start + _CHUNK] = _resize_chunk(x, size, crop, margin).numpy()
    return out


def _levels(chunk: np.ndarray, max_level: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the median level (background) and the ink level, from one histogram.

    The ink level is the 95th percentile of the pixels above the background, not the
    maximum, so one hot pixel cannot dim a whole image, and a character covering 1% of
    the frame is stretched as well as one covering 30%. Histograms of all images in one
    bincount beat sorting for the few levels scans have.
    """
    n = len(chunk)
    levels = max_level + 1
    flat = np.minimum(chunk.reshape(n, -1), max_level).astype(np.int64)
    flat += (np.arange(n, dtype=np.int64) * levels)[:, None]
    hist = np.bincount(flat.ravel(), minlength=n * levels).reshape(n, levels)
    cum = hist.cumsum(axis=1)
    background = (cum * 2 < cum[:, -1:]).sum(axis=1)
    hist[np.arange(levels)[None, :] <= background[:, None]] = 0
    ink = hist.cumsum(axis=1)
    top = np.where(ink[:, -1] > 0, (ink * 100 < ink[:, -1:] * 95).sum(axis=1), background)
    return background.astype(np.float32), top.astype(np.float32)


def _resize_chunk(x: torch.Tensor, size: int, crop: bool, margin: int) -> torch.Tensor:
    n, h, w = x.shape

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


def check_image_size(width: int, height: int, source: str | Path) -> None:
    """Raise `ImageInputError` naming ``source`` if a width x height image exceeds `MAX_IMAGE_PIXELS`."""
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageInputError(
            f"{source}: {width} x {height} pixels ({width * height / 1e6:,.0f} megapixels) is over the limit "
            f"of {MAX_IMAGE_PIXELS // 1_000_000} megapixels; scale it down first"
        )


def open_image(path: str | Path) -> Image.Image:
    """The image file at ``path``, decoded; ImageInputError naming the file if it is missing, not an
    image, truncated or damaged, or larger than MAX_IMAGE_PIXELS (checked before decoding)."""
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"{path}: no such image file")
    with warnings.catch_warnings():
        # Pillow warns from 89 megapixels on (ours is the lower limit, checked below) and about
        # damaged metadata it skips; the user gets our error or the image, not Pillow's warnings.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
        return _open_checked(path)


def _open_checked(path: Path) -> Image.Image:
    limit = f"the limit of {MAX_IMAGE_PIXELS // 1_000_000} megapixels"
    # Pillow's parsers raise many types on damaged data (OSError, SyntaxError, ValueError, EOFError,
    # struct.error, ...); each means the same to the user: this file is not a readable image.
    try:
        im = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as e:  # over twice Pillow's limit: the size is in its message
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(pixels[1]) / 1e6:,.0f} megapixels" if pixels else "an image of that many pixels"
        raise ImageInputError(f"{path}: {size} is over {limit}; scale it down first") from e
    except UnidentifiedImageError as e:
        raise ImageInputError(f"{path}: not an image file Pillow can read (PNG, JPEG, BMP, TIFF, ...)") from e
    except Exception as e:
        raise ImageInputError(f"{path}: not a readable image ({e})") from e
    try:
        check_image_size(*im.size, path)
    except ImageInputError:
        im.close()
        raise
    try:
        im.load()
    except Exception as e:
        im.close()
        raise ImageInputError(f"{path}: truncated or damaged {im.format or ''} image ({e})") from e
    return im
