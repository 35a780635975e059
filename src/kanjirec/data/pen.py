"""Pen strokes -> an image in the training convention, drawn the way the synthetic renderer draws a
typical writer, so a model sees a drawing as it saw its training data.

This is the one place that turns strokes into an image (``kanjirec serve`` uses it; the browser page
mirrors it in JavaScript, so keep the two in step). For a drawing on a W x H canvas, in canvas units:

1. box: the bounding box of all points; its extent is its longer side, at least 1% of max(W, H)
   (a lone dot is not blown up to full size);
2. KanjiVG units: the box is centred in the 109-unit KanjiVG box and scaled so that its extent is
   `TYPICAL_EXTENT` units, the median extent of the ETL9G characters in KanjiVG;
3. pixels: the 109-unit box spans `SIZE_FRACTION` of the image side and is centred, as the renderer
   places a writer of middle size (`synth.draw_writer_styles`: 0.78..0.98);
4. each stroke is resampled every ``size / 64`` pixels along its length (a one-point stroke is a dot);
5. ink: every point is splatted bilinearly at full pressure, blurred by a Gaussian pen of sigma
   `PEN_SIGMA` * size / 64 pixels and passed through the renderer's saturating ink curve with gain
   `INK_GAIN` (`synth._render_stroke_batch`, stage 5);
6. finish: the ink is quantised to 16 grey levels at ink level `INK_LEVEL` and contrast-stretched as
   `synth.finish_images` does (background -> 0, the 95th percentile of the ink -> 255), without the
   scan's random grain, noise and specks.

The result is uint8 (size, size), ink 255 on 0, not cropped (as the synthetic training sets are).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from kanjirec.data.kanjivg import KANJIVG_BOX
from kanjirec.data.synth import _DENSE_SPACING, _PAD, MAX_LEVEL, _blur, _contrast_tables, _splat
from kanjirec.errors import KanjirecError

TYPICAL_EXTENT = 85.0  # KanjiVG units: median of max(width, height) over the 3,036 ETL9G characters
SIZE_FRACTION = 0.88  # middle of the writers' 0.78..0.98
PEN_SIGMA = 0.74  # pixels at 64x64: geometric middle of the writers' 0.5..1.1
INK_GAIN = 2.25  # middle of the writers' 1.5..3.0
INK_LEVEL = 0.75  # middle of the writers' 0.5..1.0
MAX_POINTS = 100_000  # per drawing: far beyond any hand-drawn character


class PenInputError(KanjirecError):
    """Pen strokes that cannot be drawn: the message names the field at fault."""


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PenInputError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def parse_strokes(payload: object) -> tuple[list[np.ndarray], float, float]:
    """A JSON drawing ``{"width": W, "height": H, "strokes": [[[x, y], ...], ...]}`` -> (strokes as
    (k, 2) float arrays, W, H), or a `PenInputError` naming the field at fault."""
    if not isinstance(payload, dict):
        raise PenInputError(
            f"expected a JSON object with width, height and strokes, got {type(payload).__name__}"
        )
    for key in ("width", "height", "strokes"):
        if key not in payload:
            raise PenInputError(f"missing field {key!r} (expected width, height and strokes)")
    width, height = _number(payload["width"], "width"), _number(payload["height"], "height")
    if width <= 0 or height <= 0:
        raise PenInputError(f"width and height must be positive, got {width} x {height}")
    strokes = payload["strokes"]
    if not isinstance(strokes, list) or not strokes:
        raise PenInputError("strokes: expected a non-empty list of strokes, each a list of [x, y] points")
    out = []
    total = 0
    for i, stroke in enumerate(strokes):
        if not isinstance(stroke, list) or not stroke:
            raise PenInputError(f"strokes[{i}]: expected a non-empty list of [x, y] points")
        total += len(stroke)
        if total > MAX_POINTS:
            raise PenInputError(f"strokes: more than {MAX_POINTS:,} points")
        points = []
        for j, point in enumerate(stroke):
            if not isinstance(point, list) or len(point) != 2:
                raise PenInputError(f"strokes[{i}][{j}]: expected a point [x, y], got {point!r}")
            points.append(
                (_number(point[0], f"strokes[{i}][{j}][0]"), _number(point[1], f"strokes[{i}][{j}][1]"))
            )
        out.append(np.array(points, np.float64))
    return out, width, height


def _resample(points: np.ndarray, spacing: float) -> np.ndarray:
    """A polyline (k, 2) resampled every ``spacing`` along its arc, ends kept."""
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    if arc[-1] == 0:
        return points[:1]
    t = np.linspace(0.0, arc[-1], max(2, int(np.ceil(arc[-1] / spacing)) + 1))
    return np.stack([np.interp(t, arc, points[:, 0]), np.interp(t, arc, points[:, 1])], axis=1)


def strokes_to_image(
    strokes: Sequence[np.ndarray], width: float, height: float, size: int = 64
) -> np.ndarray:
    """Strokes (each (k, 2) x, y in canvas units, in writing order) on a ``width`` x ``height`` canvas
    -> a (size, size) uint8 image, ink 255 on 0, as the module docstring describes."""
    if not strokes or any(len(s) == 0 for s in strokes):
        raise PenInputError("strokes: expected at least one stroke, each with at least one point")
    everything = np.concatenate([np.asarray(s, np.float64).reshape(-1, 2) for s in strokes])
    low, high = everything.min(axis=0), everything.max(axis=0)
    extent = max(float((high - low).max()), 0.01 * max(width, height))
    centre = (low + high) / 2
    px = size / 64.0
    # canvas units -> KanjiVG units about the box centre -> image pixels (centre of the image)
    scale = TYPICAL_EXTENT / extent * size * SIZE_FRACTION / KANJIVG_BOX
    spacing = _DENSE_SPACING * px
    dense = [
        _resample((np.asarray(s, np.float64).reshape(-1, 2) - centre) * scale + size / 2, spacing)
        for s in strokes
    ]
    points = np.concatenate(dense).astype(np.float32)
    # image coordinates -> the renderer's canvas (pixel centres on integers, a border of _PAD)
    x, y = points[:, 0] + np.float32(_PAD - 0.5), points[:, 1] + np.float32(_PAD - 0.5)
    weight = np.full(len(points), spacing, np.float32)
    canvas = _splat(x, y, np.zeros(len(points), np.int64), weight, 1, size + 2 * _PAD)
    sigma = np.array([PEN_SIGMA * px])
    density = _blur(canvas, sigma, np.array([-INK_GAIN * np.sqrt(2 * np.pi) * sigma[0]]), _PAD)[0]
    ink = -np.expm1(density) / (1 - np.exp(-INK_GAIN))
    levels = np.floor(np.clip(ink * (MAX_LEVEL * INK_LEVEL), 0, MAX_LEVEL) + 0.5).astype(np.intp)
    table = _contrast_tables(np.bincount(levels.ravel(), minlength=MAX_LEVEL + 1)[None])[0]
    return table[levels]
