"""`kanjirec bench styles`: top-1 on styles that no training data contains (leave-styles-out).

A user's handwriting is always a style our data never held, so accuracy on the synthetic test
split (writers drawn from the same style space the model trained on) says little. This benchmark
renders families of samples that training never sees and reports top-1 per family:

- ``brush-cursive``: the renderer's held-out region, brush hands that are also strongly
  semi-cursive (`synth.draw_writer_styles(region="held_out")`); training only ever draws from the
  rest of the style space;
- one family per face of the held-out print-face families (`fonts.held_out_faces`), bold weights
  reported apart: whole design families no training run may use.

The families are fixed (the same families, seed and classes in every run), so figures compare
across changes; they are never used to choose anything but what they measure. Samples are
rendered on the spot into a packed dataset (one writer per family) and scored with the one
evaluation pass (`evaluate.evaluate`).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REGION_FAMILY = "brush-cursive"
SEED = 20261202  # fixed: every run renders the same held-out samples


def held_out_font_faces() -> list:
    from kanjirec.data.fonts import held_out_faces

    return list(held_out_faces())


def render_families(
    classes: Sequence[str],
    out: str | Path,
    per_class: int = 1,
    seed: int = SEED,
    faces: Sequence | None = None,
) -> Path:
    """A packed dataset at ``out`` holding ``per_class`` samples of every class for each held-out family
    (a face renders only the characters it may draw); its writers are the family names."""
    from kanjirec.data.fonts import GlyphCache
    from kanjirec.data.kanjivg import load_kanjivg
    from kanjirec.data.store import DatasetWriter
    from kanjirec.data.synth import StrokeBank, draw_writer_styles, font_images, font_styles, stroke_images

    faces = held_out_font_faces() if faces is None else list(faces)
    kvg = load_kanjivg()
    writer = DatasetWriter(out)
    rng = np.random.default_rng([seed, 0])
    stroke_chars = [c for c in classes if c in kvg]
    bank = StrokeBank.build([kvg[c] for c in stroke_chars])
    index = np.tile(np.arange(len(stroke_chars)), per_class)
    for b0 in range(0, len(index), 4096):
        part = index[b0 : b0 + 4096]
        style = draw_writer_styles(rng, len(part), region="held_out")
        images, _ = stroke_images(bank, part, style, rng)
        writer.add(
            images, "".join(stroke_chars[i] for i in part), [REGION_FAMILY] * len(part), "held-out-region"
        )
    # One family per face, so that a bold weight is reported apart from its regular.
    for f, face in enumerate(faces):
        covered = face.coverage()  # for a Chinese face, only characters drawn in the Japanese form
        chars = [c for c in classes if ord(c) in covered] * per_class
        frng = np.random.default_rng([seed, 1, f])
        style = font_styles(face, frng, len(chars), weight=False)  # the face at its own weight
        cache = GlyphCache(face, 128, smooth=True)
        for b0 in range(0, len(chars), 2048):
            part = {k: v[b0 : b0 + 2048] for k, v in style.items()}
            images = font_images(cache, chars[b0 : b0 + 2048], part, frng)
            writer.add(images, "".join(chars[b0 : b0 + 2048]), [face.name] * len(images), face.source)
            cache.clear()
    return writer.finish(
        split="random",
        seed=seed,
        provenance={"generator": "kanjirec.benchmarks.styles", "seed": seed, "per_class": per_class},
    )


def run(
    model: str | Path | None = None,
    *,
    classes: str | None = None,
    per_class: int = 1,
    data: str | Path | None = None,
    out: str | Path | None = None,
    keep: str | Path | None = None,
    log=print,
) -> dict:
    """Render the held-out families (into ``keep`` if given, for later runs' ``data``; or reuse
    ``data``, made by an earlier run) and score ``model`` (None: the shipped model) on each; returns
    the report, also written to ``out`` if given. ``classes``: a class-set name to render, or None
    for the model's own classes."""
    from kanjirec.charset import get_charset
    from kanjirec.evaluation.report import evaluate
    from kanjirec.loading import load_any

    lm = load_any(model)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kanjirec-styles-") as tmp:
        if data is None:
            target = Path(keep) if keep is not None else Path(tmp) / "held_out"
            chars = lm.classes if classes is None else get_charset(classes)
            data = render_families(chars, target, per_class=per_class)
            log(f"rendered the held-out families in {time.perf_counter() - t0:.0f} s")
        report = evaluate(lm, data, split=None)
    families = sorted(report["per_writer"], key=lambda w: w["writer"] != REGION_FAMILY)
    result = {
        "model": lm.name,
        "model_path": str(lm.path) if lm.path else None,
        "classes": classes or f"the model's {len(lm.classes):,} classes",
        "per_class": per_class,
        "seed": SEED,
        "families": families,
        "overall_top1": report["top1"],
        "worst_family_top1": min(f["top1"] for f in families),
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "styles.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
        (out / "styles.md").write_text(report_markdown(result), encoding="utf-8")
    return result


def report_markdown(r: dict) -> str:
    lines = [
        f"Leave-styles-out top-1 of `{r['model']}` ({r['classes']}, {r['per_class']} per class and family, "
        f"seed {r['seed']}):",
        "",
        "| family | samples | top-1 |",
        "|---|---|---|",
        *(f"| {f['writer']} | {f['samples']:,} | {100 * f['top1']:.2f}% |" for f in r["families"]),
        f"| **all** | {sum(f['samples'] for f in r['families']):,} | {100 * r['overall_top1']:.2f}% |",
        "",
        f"Worst family: {100 * r['worst_family_top1']:.2f}% (target: >= 90% on every family).",
        "",
        "Read wrong (true->read, the first 40 per family):",
        "",
        *(f"- {f['writer']}: {' '.join(f['misread']) or '-'}" for f in r["families"] if "misread" in f),
    ]
    return "\n".join(lines)
