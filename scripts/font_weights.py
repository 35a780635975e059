"""Stroke widths of print faces and of `GlyphCache.get(..., weight)`, and what weights cost.

Prints the median stroke width (em) of a few faces as drawn and of Noto Sans CJK JP Regular and
IPA Mincho under weights from -0.12 to +0.08 em, so that a weight distribution can be chosen against
the faces' own range (docs/FONTS.md). Width: twice the distance from the skeleton to the background,
at 128 px per em, median over seven characters (a 1-pixel line reads as 2 px: 0.0156 em).

    PYTHONPATH=src python scripts/font_weights.py
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from kanjirec.charset import get_charset
from kanjirec.data.fonts import GlyphCache, registry_faces
from kanjirec.data.sequences import thin

RES = 128
CHARS = list("明書国永語愛川")
FACES = (
    "Noto Sans CJK JP Thin Regular",
    "Noto Sans CJK JP Regular",
    "Noto Sans CJK JP Bold",
    "Noto Sans CJK JP Black Regular",
    "Noto Serif CJK JP Black Regular",
    "BIZ UDGothic Bold",
    "IPAMincho Regular",
)
WEIGHTS = (-0.12, -0.04, -0.02, 0.0, 0.02, 0.04, 0.06, 0.08)


def stroke_width(ink: np.ndarray) -> float:
    widths = []
    for glyph in ink:
        mask = glyph >= 0.5
        widths.append(2 * np.median(ndimage.distance_transform_edt(mask)[thin(mask[None])[0]]))
    return float(np.median(widths)) / RES


def main() -> None:
    faces = {f.name: f for f in registry_faces()}
    for name in FACES:
        if name in faces:
            print(f"{name:34} {stroke_width(GlyphCache(faces[name], RES).get(CHARS)):.4f} em")
    for name in ("Noto Sans CJK JP Regular", "IPAMincho Regular"):
        cache = GlyphCache(faces[name], RES)
        cells = [f"{w:+.2f}: {stroke_width(cache.get(CHARS, np.full(len(CHARS), w))):.4f}" for w in WEIGHTS]
        print(f"{name} with weight (em): " + ", ".join(cells))
    # Costs, one thread: a glyph's distance field is made once per cache lifetime, a weight per sample.
    cache = GlyphCache(faces["Noto Sans CJK JP Regular"], RES, smooth=True)
    chars = get_charset("jis1")[:200]
    t = time.process_time()
    cache.get(chars)
    draw = time.process_time() - t
    t = time.process_time()
    cache.get(chars, np.zeros(len(chars)))
    field = time.process_time() - t
    weights = np.random.default_rng(0).uniform(-0.05, 0.08, len(chars))
    t = time.process_time()
    cache.get(chars, weights)
    apply = time.process_time() - t
    n = len(chars)
    print(
        f"per glyph at {RES} px: Pillow draw + smoothing {draw / n * 1e3:.2f} ms, distance field "
        f"{(field - apply) / n * 1e3:.2f} ms (once); weight + smoothing {apply / n * 1e3:.2f} ms per sample"
    )


if __name__ == "__main__":
    main()
