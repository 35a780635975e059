"""How heavy a print sample can get and still be read: top-1 of a model by target stroke width.

Renders the same characters in one face at target stroke widths from a hairline to 0.15 em (the
range `synth.font_styles` draws from), once with `fonts.apply_weight`'s cap (thickening stops where
the glyph's narrow gaps would close) and once without it (a uniform dilation, as before the cap),
with the same writer styles and scan finish, and prints the model's top-1 for each.

    PYTHONPATH=src python scripts/weight_legibility.py [--model MODEL] [--face NAME] [--samples N]
"""

from __future__ import annotations

import argparse

import numpy as np

from kanjirec.data import fonts
from kanjirec.data.fonts import GlyphCache, registry_faces, stroke_width
from kanjirec.data.synth import font_images, font_styles
from kanjirec.recognizer import Recognizer

TARGETS = (0.016, 0.022, 0.03, 0.05, 0.08, 0.11, 0.15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model to read with (default: the shipped model)")
    parser.add_argument("--face", default="Noto Serif CJK JP Regular")
    parser.add_argument("--samples", type=int, default=1500)
    args = parser.parse_args()
    rec = Recognizer.load(args.model)
    face = next(f for f in registry_faces() if f.name == args.face)
    rng = np.random.default_rng(5)
    chars = [rec.classes[i] for i in rng.choice(len(rec.classes), args.samples, replace=False)]
    capped = fonts.apply_weight

    def uncapped(distance, centre, weight, res, gap=None):
        return capped(distance, centre, weight, res)

    print(f"{args.face}, {len(chars)} characters, model {rec.path}")
    print("| target width (em) | top-1, capped | top-1, uncapped |")
    print("|---|---|---|")
    for target in TARGETS:
        row = []
        for weigh in (capped, uncapped):
            fonts.apply_weight = weigh  # GlyphCache.get calls it through the module
            try:
                style = font_styles(face, np.random.default_rng(1), len(chars))
                style["font_weight"] = np.full(len(chars), target - stroke_width(face))
                cache = GlyphCache(face, 128, smooth=True)
                images = font_images(cache, chars, style, np.random.default_rng(2))
            finally:
                fonts.apply_weight = capped
            top = [t[0][0] for t in rec.top(images, 1)]
            row.append(100 * np.mean([t == c for t, c in zip(top, chars, strict=True)]))
        print(f"| {target:.3f} | {row[0]:.2f}% | {row[1]:.2f}% |")


if __name__ == "__main__":
    main()
