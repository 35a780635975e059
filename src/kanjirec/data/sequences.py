"""Image -> sequence transforms used by the RNN models.

* ``grid_cells``: torch, in the model graph. An 8x8 grid of cells, 4 statistics each.
* ``extract_strokes``: numpy/scipy, outside the graph (connected-component labelling and
  thinning have no ONNX operators). Two extractors produce one feature row per stroke-like
  unit, padded to ``max_strokes``, ordered like writing (top-to-bottom, then left-to-right):

  - ``contour``: the seed's "strokes by contour detection". The external contours of a binary
    image are exactly the outlines of its 8-connected ink components, so we label those
    components (scipy.ndimage.label) and describe each by 8 features: centroid x/y, bounding
    box x/y, width, height, area and perimeter (boundary pixels), all divided by the image
    size (area as sqrt(area) / size, perimeter as boundary pixels / (4 * size)).
  - ``skeleton``: thins the ink to a one-pixel skeleton (Zhang-Suen), removes junction
    pixels (three or more skeleton neighbours) so the skeleton falls apart into stroke-like
    segments, and describes each segment by 9 features: centroid x/y, bounding box x/y,
    width, height, length (pixels / size) and its orientation as cos 2t, sin 2t of the
    principal axis angle t (so a stroke and its reverse look alike).

Everything is vectorised over the batch: one labelling call for a whole batch (a structuring
element that does not connect across the batch axis), per-component statistics by bincount
and reduceat. Components smaller than ``min_pixels`` are specks and dropped; an image with more
than ``max_strokes`` units keeps the largest ones.

* ``pen_strokes``: numpy, outside the graph. The online input: true pen trajectories (the stored
  strokes of synthetic samples, ``PackedDataset.strokes_of``, or what a pen or the browser page
  sends), one row per pen-down stroke in writing order, so a row boundary is a pen-up. A row is
  the stroke resampled to ``PEN_POINTS`` points evenly spaced along its arc (x, y each), its arc
  length, and the pen-up move from the previous stroke's end to its start (dx, dy; zero for the
  first), all in the drawing's own frame: the centre of the bounding box of every point at 0 and
  its longer side spanning 2, so canvas units, pixels and KanjiVG units give the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

PEN_POINTS = 8  # points per stroke row of the online input
STROKE_FEATURES = {"contour": 8, "skeleton": 9, "pen": 2 * PEN_POINTS + 3}
INK_THRESHOLD = 128
# Rows of the writing order: a unit's band is its top edge in quarters of the image height.
_ORDER_BANDS = 4


def grid_cells(images: torch.Tensor, grid: int = 8) -> torch.Tensor:
    """(B, 1, H, W) float -> (B, grid*grid, 4): mean, std, max, min of each cell, row-major."""
    b, _, h, w = images.shape
    if h % grid or w % grid:
        raise ValueError(f"image size {h}x{w} is not divisible by the grid {grid}")
    cells = images.reshape(b, grid, h // grid, grid, w // grid).permute(0, 1, 3, 2, 4)
    cells = cells.reshape(b, grid * grid, (h // grid) * (w // grid))
    mean = cells.mean(dim=2)
    std = (cells - mean[..., None]).pow(2).mean(dim=2).sqrt()
    return torch.stack([mean, std, cells.amax(dim=2), cells.amin(dim=2)], dim=2)


def _as_batch(images: np.ndarray) -> np.ndarray:
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"expected images of shape (B, H, W) or (B, 1, H, W), got {images.shape}")
    if images.dtype != np.uint8:
        raise TypeError(f"stroke extraction expects uint8 images (ink 255 on 0), got {images.dtype}")
    return images


_IN_PLANE_8 = np.zeros((3, 3, 3), bool)
_IN_PLANE_8[1] = True
_IN_PLANE_4 = np.zeros((3, 3, 3), bool)
_IN_PLANE_4[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


def _component_stats(mask: np.ndarray, min_pixels: int):
    """Label 8-connected components of a (B, H, W) bool mask; per-component pixel statistics.

    Returns labels (B, H, W) and, per kept component, its image index and a dict of statistics.
    """
    labels, count = ndimage.label(mask, structure=_IN_PLANE_8)
    b, h, w = mask.shape
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    lab = flat[where]
    img, rem = np.divmod(where, h * w)
    y, x = np.divmod(rem, w)
    order = np.argsort(lab, kind="stable")
    lab, img, y, x = lab[order], img[order], y[order], x[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]]) if len(lab) else np.zeros(0, np.int64)
    ids = lab[starts]
    n = np.diff(np.r_[starts, len(lab)]).astype(np.float64)
    stats = {
        "image": img[starts],
        "n": n,
        "sx": np.add.reduceat(x, starts) if len(lab) else np.zeros(0),
        "sy": np.add.reduceat(y, starts) if len(lab) else np.zeros(0),
        "sxx": np.add.reduceat(x * x, starts) if len(lab) else np.zeros(0),
        "syy": np.add.reduceat(y * y, starts) if len(lab) else np.zeros(0),
        "sxy": np.add.reduceat(x * y, starts) if len(lab) else np.zeros(0),
        "x0": np.minimum.reduceat(x, starts) if len(lab) else np.zeros(0),
        "y0": np.minimum.reduceat(y, starts) if len(lab) else np.zeros(0),
        "x1": np.maximum.reduceat(x, starts) + 1 if len(lab) else np.zeros(0),
        "y1": np.maximum.reduceat(y, starts) + 1 if len(lab) else np.zeros(0),
        "id": ids,
    }
    keep = n >= min_pixels
    return labels, count, {k: v[keep] for k, v in stats.items()}


def _pack_rows(image: np.ndarray, rows: np.ndarray, size: np.ndarray, y0, x0, batch: int, max_strokes: int):
    """Scatter per-unit rows into (batch, max_strokes, F): largest units kept, then writing order."""
    feats = np.zeros((batch, max_strokes, rows.shape[1]), np.float32)
    lengths = np.zeros(batch, np.int64)
    if len(rows) == 0:
        return feats, lengths
    # Keep the largest max_strokes units of each image.
    order = np.lexsort((-size, image))
    rank = np.arange(len(order)) - np.searchsorted(image[order], image[order], side="left")
    kept = order[rank < max_strokes]
    # Then sort the kept ones like writing: band of the top edge, then left edge.
    band = np.floor(y0[kept] * _ORDER_BANDS).astype(np.int64)
    kept = kept[np.lexsort((x0[kept], band, image[kept]))]
    img = image[kept]
    slot = np.arange(len(kept)) - np.searchsorted(img, img, side="left")
    feats[img, slot] = rows[kept]
    lengths[:] = np.bincount(img, minlength=batch)
    return feats, lengths


def contour_strokes(
    images: np.ndarray, max_strokes: int = 30, min_pixels: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """(B, [1,] S, S) uint8 -> features (B, max_strokes, 8) float32, lengths (B,) int64."""
    images = _as_batch(images)
    b, h, w = images.shape
    size = float(max(h, w))
    ink = images >= INK_THRESHOLD
    labels, _, st = _component_stats(ink, min_pixels)
    boundary = ink & ~ndimage.binary_erosion(ink, structure=_IN_PLANE_4, border_value=0)
    perimeter = np.bincount(labels[boundary], minlength=labels.max() + 1)[st["id"]]
    rows = np.stack(
        [
            (st["sx"] / st["n"] + 0.5) / size,  # pixel centres, so a box's centroid is its middle
            (st["sy"] / st["n"] + 0.5) / size,
            st["x0"] / size,
            st["y0"] / size,
            (st["x1"] - st["x0"]) / size,
            (st["y1"] - st["y0"]) / size,
            np.sqrt(st["n"]) / size,
            perimeter / (4 * size),
        ],
        axis=1,
    ).astype(np.float32)
    return _pack_rows(st["image"], rows, st["n"], rows[:, 3], rows[:, 2], b, max_strokes)


def _neighbours(p: np.ndarray) -> list[np.ndarray]:
    """P2..P9 (clockwise from north) of every interior pixel of a padded (B, H+2, W+2) array."""
    c = slice(1, -1)
    up, down, left, right = slice(None, -2), slice(2, None), slice(None, -2), slice(2, None)
    return [
        p[:, up, c],
        p[:, up, right],
        p[:, c, right],
        p[:, down, right],
        p[:, down, c],
        p[:, down, left],
        p[:, c, left],
        p[:, up, left],
    ]


def thin(mask: np.ndarray, max_iterations: int = 64) -> np.ndarray:
    """Zhang-Suen thinning of a (B, H, W) bool mask to a one-pixel-wide skeleton, whole batch at once."""
    p = np.pad(mask.astype(np.uint8), ((0, 0), (1, 1), (1, 1)))
    for _ in range(max_iterations):
        changed = False
        for step in (0, 1):
            nb = _neighbours(p)
            count = sum(nb)
            seq = nb + nb[:1]
            transitions = sum((seq[i] == 0) & (seq[i + 1] == 1) for i in range(8))
            p2, p4, p6, p8 = nb[0], nb[2], nb[4], nb[6]
            if step == 0:
                cond = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                cond = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            remove = (p[:, 1:-1, 1:-1] == 1) & (count >= 2) & (count <= 6) & (transitions == 1) & cond
            if remove.any():
                p[:, 1:-1, 1:-1][remove] = 0
                changed = True
        if not changed:
            break
    return p[:, 1:-1, 1:-1].astype(bool)


def skeleton_strokes(
    images: np.ndarray, max_strokes: int = 30, min_pixels: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """(B, [1,] S, S) uint8 -> features (B, max_strokes, 9) float32, lengths (B,) int64."""
    images = _as_batch(images)
    b, h, w = images.shape
    size = float(max(h, w))
    skeleton = thin(images >= INK_THRESHOLD)
    padded = np.pad(skeleton.astype(np.uint8), ((0, 0), (1, 1), (1, 1)))
    junction = skeleton & (sum(_neighbours(padded)) >= 3)
    _, _, st = _component_stats(skeleton & ~junction, min_pixels)
    n = st["n"]
    mu20 = st["sxx"] / n - (st["sx"] / n) ** 2
    mu02 = st["syy"] / n - (st["sy"] / n) ** 2
    mu11 = st["sxy"] / n - st["sx"] * st["sy"] / n**2
    r = np.sqrt((mu20 - mu02) ** 2 + 4 * mu11**2)
    safe = np.where(r > 1e-9, r, 1.0)
    rows = np.stack(
        [
            (st["sx"] / n + 0.5) / size,
            (st["sy"] / n + 0.5) / size,
            st["x0"] / size,
            st["y0"] / size,
            (st["x1"] - st["x0"]) / size,
            (st["y1"] - st["y0"]) / size,
            n / size,
            np.where(r > 1e-9, (mu20 - mu02) / safe, 0.0),
            np.where(r > 1e-9, 2 * mu11 / safe, 0.0),
        ],
        axis=1,
    ).astype(np.float32)
    return _pack_rows(st["image"], rows, n, rows[:, 3], rows[:, 2], b, max_strokes)


EXTRACTORS = {"contour": contour_strokes, "skeleton": skeleton_strokes}


def extract_strokes(
    images: np.ndarray, extractor: str = "contour", max_strokes: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """Run the named extractor: features (B, max_strokes, F) float32, lengths (B,) int64."""
    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown stroke extractor {extractor!r}; use one of {', '.join(EXTRACTORS)}")
    return EXTRACTORS[extractor](images, max_strokes=max_strokes)


def _resample_evenly(points: np.ndarray, count: int) -> tuple[np.ndarray, float]:
    """A polyline (k, 2) -> ``count`` points evenly spaced along its arc (a dot repeats), and its length."""
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    if arc[-1] <= 0:
        return np.repeat(points[:1], count, axis=0), 0.0
    t = np.linspace(0.0, arc[-1], count)
    return np.stack([np.interp(t, arc, points[:, 0]), np.interp(t, arc, points[:, 1])], axis=1), arc[-1]


def pen_strokes(
    samples: Sequence[Sequence[np.ndarray]], max_strokes: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """Pen trajectories (per sample, its strokes in writing order, each (k, 2) x, y with y down) ->
    features (B, max_strokes, 2 * PEN_POINTS + 3) float32, lengths (B,) int64.

    A sample with more than ``max_strokes`` strokes keeps its first ``max_strokes`` (the model's
    input has that many rows); a sample with no strokes gets length 0."""
    feats = np.zeros((len(samples), max_strokes, STROKE_FEATURES["pen"]), np.float32)
    lengths = np.zeros(len(samples), np.int64)
    for b, strokes in enumerate(samples):
        strokes = [np.asarray(s, np.float64).reshape(-1, 2) for s in strokes[:max_strokes]]
        strokes = [s for s in strokes if len(s)]
        if not strokes:
            continue
        everything = np.concatenate(strokes)
        low, high = everything.min(axis=0), everything.max(axis=0)
        centre, half = (low + high) / 2, max(float((high - low).max()) / 2, 1e-6)
        previous_end = None
        for i, stroke in enumerate(strokes):
            points, length = _resample_evenly((stroke - centre) / half, PEN_POINTS)
            move = points[0] - previous_end if previous_end is not None else np.zeros(2)
            feats[b, i] = np.concatenate([points.ravel(), [length], move])
            previous_end = points[-1]
        lengths[b] = len(strokes)
    return feats, lengths
