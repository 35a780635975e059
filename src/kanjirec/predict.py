"""`kanjirec predict`: the top candidates for image files, folders or globs.

Every image goes through `recognizer.to_convention` (any size; dark ink on light paper or light on
dark; RGB, RGBA, grey or palette; PNG, JPEG, WebP, BMP, TIFF and whatever else Pillow reads), then
through the model in batches. A file that cannot be read is reported by name and the others are
still answered; `predict_files` returns every result, `run_predict` prints them and fails at the end
if any file failed.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from tqdm import tqdm

from kanjirec.errors import KanjirecError

# What a folder is searched for (a file named explicitly is read whatever its suffix).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".pgm", ".ppm")
BATCH_SIZE = 64


class PredictError(KanjirecError):
    """Some inputs could not be answered (each is named in its own message)."""


@dataclass
class ImageResult:
    """The answer for one input: its candidates (char, probability), most probable first, or an error."""

    source: str
    candidates: list[tuple[str, float]] | None = None
    error: str | None = None

    def as_json(self) -> dict:
        if self.error is not None:
            return {"file": self.source, "error": self.error}
        return {"file": self.source, "candidates": [{"char": c, "prob": p} for c, p in self.candidates]}


def expand_inputs(items: Sequence[str | Path]) -> list[tuple[str, Path | None, str | None]]:
    """(name, path, error) per input file: a folder gives its image files (sorted, not recursive), a
    pattern with * ? or [ ] its matches (sorted; ** recurses), anything else itself. A folder without
    images or a pattern matching nothing is an error entry, not silence."""
    out: list[tuple[str, Path | None, str | None]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                out.append((str(item), None, f"no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder"))
            out += [(str(f), f, None) for f in files]
        elif not path.exists() and glob.has_magic(str(item)):
            files = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
            if not files:
                out.append((str(item), None, "no file matches this pattern"))
            out += [(str(f), f, None) for f in files]
        elif not path.exists():
            out.append((str(item), None, "no such file"))
        else:
            out.append((str(item), path, None))
    return out


def predict_files(
    items: Sequence[str | Path],
    model: str | Path | None = None,
    top_k: int = 10,
    batch_size: int = BATCH_SIZE,
) -> list[ImageResult]:
    """Top-``top_k`` candidates for every image named by ``items`` (files, folders, globs), in order.

    ``model``: anything `loading.load_any` takes; None: the shipped model."""
    from kanjirec.recognizer import Recognizer, to_convention

    if top_k < 1:
        raise KanjirecError(f"--top-k must be at least 1, got {top_k}")
    rec = Recognizer.load(model)
    inputs = expand_inputs(items)
    results = [ImageResult(name, error=error) for name, _, error in inputs]
    images, rows = [], []
    bar = tqdm(inputs, desc="predict", unit="image", disable=bool(os.environ.get("CI")) or len(inputs) < 100)
    for row, (_, path, error) in enumerate(bar):
        if error is not None:
            continue
        try:
            images.append(to_convention(path, rec.image_size))
            rows.append(row)
        except KanjirecError as e:
            results[row].error = str(e).removeprefix(f"{path}: ")
    for start in range(0, len(images), batch_size):
        batch = np.stack(images[start : start + batch_size])
        for row, candidates in zip(rows[start : start + batch_size], rec.top(batch, top_k), strict=True):
            results[row].candidates = candidates
    return results


def format_text(results: Sequence[ImageResult]) -> str:
    """One line per answered image: its name, then char and probability per candidate."""
    lines = [
        f"{r.source}\t" + "  ".join(f"{c} {p:.3f}" for c, p in r.candidates)
        for r in results
        if r.error is None
    ]
    return "\n".join(lines) + ("\n" if lines else "")


def run_predict(
    items: Sequence[str | Path],
    model: str | Path | None = None,
    top_k: int = 10,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> list[ImageResult]:
    """`predict_files`, printed: text lines or one JSON list on ``out`` (default stdout); each failed
    input named on ``err`` (default stderr). Raises `PredictError` at the end if any input failed
    (the others are printed first)."""
    out, err = out or sys.stdout, err or sys.stderr
    results = predict_files(items, model, top_k)
    if as_json:
        out.write(json.dumps([r.as_json() for r in results], ensure_ascii=False, indent=1) + "\n")
    else:
        out.write(format_text(results))
    failed = [r for r in results if r.error is not None]
    for r in failed:
        err.write(f"kanjirec: {r.source}: {r.error}\n")
    if failed:
        raise PredictError(f"{len(failed)} of {len(results)} inputs could not be read (named above)")
    return results
