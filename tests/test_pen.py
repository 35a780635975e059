"""Pen strokes -> image: the same convention as the synthetic renderer, whatever the canvas."""

from __future__ import annotations

import numpy as np
import pytest

from kanjirec.data.kanjivg import load_kanjivg
from kanjirec.data.pen import PenInputError, parse_strokes, strokes_to_image
from kanjirec.data.synth import StrokeBank, stroke_images

CHARS = "語田川"  # 語 spans the typical extent of a character, so the renderer draws it at the same size
MIDDLE_WRITER = {
    "size": 0.88, "aspect": 1.0, "slant": 0.0, "rotation": 0.0, "pen": 0.74, "ink": 0.75, "mess": 0.3,
    "cursive": 0.0, "gap": 0.0, "length": 0.0, "elastic": 0.3, "gain": 2.25, "grain": 0.0, "noise": 0.15,
    "background": 0.0, "brush": 0.0, "dry": 0.0, "press": 0.0, "compact": 0.0, "proportion": 0.0,
    "join_weight": 0.5,
}  # fmt: skip


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(float).ravel(), b.astype(float).ravel())[0, 1])


def test_strokes_of_a_character_draw_what_the_renderer_draws():
    kanjivg = load_kanjivg()
    n = 8
    style = {k: np.full(n * len(CHARS), v) for k, v in MIDDLE_WRITER.items()}
    rendered, _ = stroke_images(
        StrokeBank.build([kanjivg[c] for c in CHARS]),
        np.repeat(np.arange(len(CHARS)), n),
        style,
        np.random.default_rng(0),
    )
    mean = rendered.reshape(len(CHARS), n, 64, 64).astype(float).mean(axis=1)
    # 語 written on a 400 x 300 canvas: scaled, shifted and off-centre, as a browser would send it.
    strokes = [s.points * 2.5 + np.array([30.0, 10.0]) for s in kanjivg["語"].strokes]
    image = strokes_to_image(strokes, 400, 300)
    assert image.shape == (64, 64) and image.dtype == np.uint8 and image.max() == 255 and image[0, 0] == 0
    same, others = _corr(image, mean[0]), [_corr(image, mean[k]) for k in (1, 2)]
    assert same > 0.8 and max(others) < same - 0.3, (same, others)
    # Lines as wide as the renderer's: about as much ink.
    ink, ink_rendered = (image > 127).mean(), (rendered[:n] > 127).mean()
    assert 0.75 < ink / ink_rendered < 1.35, (ink, ink_rendered)
    # The canvas size and the drawing's place on it do not matter, only its shape.
    moved = strokes_to_image([s * 0.3 + 7 for s in strokes], 150, 150)
    assert np.abs(moved.astype(int) - image).mean() < 3


def test_bad_drawings_are_named():
    good = {"width": 100, "height": 100, "strokes": [[[1, 2], [3, 4]], [[5, 6]]]}
    strokes, w, h = parse_strokes(good)
    assert [s.shape for s in strokes] == [(2, 2), (1, 2)] and (w, h) == (100, 100)
    assert strokes_to_image(strokes, w, h).max() == 255  # a dot is drawn too
    cases = {
        "missing field 'strokes'": {"width": 1, "height": 1},
        "strokes: expected a non-empty list": {**good, "strokes": []},
        r"strokes\[1\]: expected a non-empty list": {**good, "strokes": [[[1, 2]], []]},
        r"strokes\[0\]\[1\]: expected a point": {**good, "strokes": [[[1, 2], [3]]]},
        r"strokes\[0\]\[0\]\[1\]: expected a finite number": {**good, "strokes": [[[1, "a"]]]},
        "width and height must be positive": {**good, "width": 0},
        "expected a JSON object": [1, 2],
    }
    for message, payload in cases.items():
        with pytest.raises(PenInputError, match=message):
            parse_strokes(payload)
