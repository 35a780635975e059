"""Import a user's own labelled images into the packed dataset format.

Two layouts are accepted:

* a folder with one sub-folder per character (``src/明/001.png``); the
  sub-folder name is the class, and each image file is one sample;
* a CSV file with a header ``path,character`` (optionally a third column
  ``writer``); relative paths are resolved against the CSV's folder.

Without a writer column the writer is the image's parent folder (for a
folder-per-character tree that is the character folder itself, so give a
``writer`` column when you want writer-disjoint splits that mean something).
Any image mode is accepted; the polarity is detected from the border (paper
is the majority of the border), so dark-on-light scans and light-on-dark
renders both end up in the one convention.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from kanjirec.data.preprocess import normalize_images, open_image
from kanjirec.data.store import DatasetWriter
from kanjirec.errors import DatasetFormatError, ImageInputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}
_WORK = 256  # images are first fitted into this square so a batch can be normalised at once


def list_labelled_images(src: Path) -> list[tuple[Path, str, str]]:
    """(image path, character, writer key) for every sample under ``src``."""
    if src.is_file():
        return _from_csv(src)
    if not src.is_dir():
        raise DatasetFormatError(f"{src}: neither a folder of character folders nor a CSV file")
    items = []
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        if len(folder.name) != 1:
            raise DatasetFormatError(f"{folder}: a class folder must be named by one character")
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                items.append((f, folder.name, f"user/{folder.name}"))
    if not items:
        raise DatasetFormatError(f"{src}: no images found in character sub-folders")
    return items


def _from_csv(path: Path) -> list[tuple[Path, str, str]]:
    items = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"path", "character"} - set(reader.fieldnames or [])
            if missing:
                raise DatasetFormatError(
                    f"{path}: header must name columns path,character[,writer]; missing {missing}"
                )
            for line, row in enumerate(reader, start=2):
                char, image = row["character"] or "", row["path"] or ""  # None when a row is short
                if len(char) != 1:
                    raise DatasetFormatError(f"{path}, line {line}: character {char!r} is not one character")
                if not image:
                    raise DatasetFormatError(f"{path}, line {line}: no image path")
                img = (path.parent / image).resolve()
                writer = row.get("writer") or img.parent.name
                items.append((img, char, f"user/{writer}"))
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{path}: not UTF-8 text ({e})") from e
    except csv.Error as e:
        raise DatasetFormatError(f"{path}: not a readable CSV file ({e})") from e
    if not items:
        raise DatasetFormatError(f"{path}: no rows")
    return items


def load_ink_high(path: Path) -> np.ndarray:
    """A greyscale image with ink high, fitted (aspect kept) into a _WORK x _WORK canvas."""
    with open_image(path) as im:
        try:
            if im.mode in ("RGBA", "LA", "P", "PA"):
                im = im.convert("RGBA")
                paper = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(paper, im)
            grey = np.asarray(im.convert("L"), np.uint8)
        except ValueError as e:  # a pixel mode Pillow cannot turn into grey levels
            raise ImageInputError(f"{path}: cannot convert its {im.mode} pixels to grey ({e})") from e
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 127:  # light paper: ink is dark, flip it
        grey = 255 - grey
    h, w = grey.shape
    scale = _WORK / max(h, w)
    if scale < 1:
        grey = np.asarray(
            Image.fromarray(grey).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        )
    canvas = np.zeros((_WORK, _WORK), np.uint8)
    h, w = grey.shape
    y, x = (_WORK - h) // 2, (_WORK - w) // 2
    canvas[y : y + h, x : x + w] = grey
    return canvas


def import_images(
    src: str | Path,
    out: str | Path,
    image_size: int = 64,
    crop: bool = True,
    split: str = "writer",
    seed: int = 0,
    chunk: int = 1024,
) -> Path:
    items = list_labelled_images(Path(src))
    n_writers = len({w for _, _, w in items})
    if split == "writer" and n_writers < 3:
        raise DatasetFormatError(
            f"{src}: {n_writers} writer(s) cannot make a writer-disjoint split; add a writer column "
            f"to the CSV or use --split random"
        )
    with DatasetWriter(out, image_size=image_size) as writer:
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            raw = np.stack([load_ink_high(p) for p, _, _ in part])
            images = normalize_images(raw, max_level=255, size=image_size, crop=crop)
            writer.add(images, [c for _, c, _ in part], [w for _, _, w in part], source="user")
        path = writer.finish(
            split=split,
            seed=seed,
            preprocess={"max_level": 255, "crop": crop, "size": image_size},
            provenance={"imported_from": str(src)},
        )
    print(f"imported {len(items):,} images of {len({c for _, c, _ in items}):,} characters into {path}")
    return path
