"""The recogniser that ships inside the package.

``kanjirec.onnx`` is an ordinary kanjirec export (class list, preprocessing and image size in its
metadata); ``kanjirec.json`` beside it holds the file's SHA-256 and size and what the model card
says about it. `shipped_model_path` checks the hash before anything loads the file, so a damaged
or swapped file is refused with a message instead of answering wrongly. ``kanjirec ship RUN``
(`kanjirec.ship`) writes all three files, ``MODEL_CARD.md`` included.
"""

from __future__ import annotations

import json
from pathlib import Path

from kanjirec.digest import sha256_file
from kanjirec.errors import KanjirecError

WEIGHTS_DIR = Path(__file__).parent
MODEL_FILE = WEIGHTS_DIR / "kanjirec.onnx"
MANIFEST_FILE = WEIGHTS_DIR / "kanjirec.json"
MODEL_CARD_FILE = WEIGHTS_DIR / "MODEL_CARD.md"

_verified: dict[tuple, str] = {}  # (path, size, mtime) -> sha256 already checked in this process


class ShippedModelError(KanjirecError):
    """The shipped model is missing, or its file does not match its manifest."""


def read_manifest(manifest: Path = MANIFEST_FILE) -> dict:
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ShippedModelError(
            f"{manifest}: missing, so no model ships with this install; pass a model path (--model) "
            "or reinstall kanjirec"
        ) from e
    except (OSError, json.JSONDecodeError) as e:
        raise ShippedModelError(f"{manifest}: unreadable manifest ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("sha256"), str):
        raise ShippedModelError(f"{manifest}: the manifest has no 'sha256' field")
    return data


def shipped_model_path(model: Path = MODEL_FILE, manifest: Path | None = None) -> Path:
    """The shipped ONNX file, after checking its SHA-256 against its manifest (by default the .json
    beside it), once per process."""
    if not model.is_file():
        raise ShippedModelError(
            f"no model ships in this install (looked for {model}); give a model with --model PATH "
            "(a run folder, a checkpoint, an .onnx file or an ensemble .json)"
        )
    manifest = model.with_suffix(".json") if manifest is None else manifest
    expected = read_manifest(manifest)["sha256"]
    stat = model.stat()
    key = (str(model), stat.st_size, stat.st_mtime_ns)
    if _verified.get(key) != expected:
        actual = sha256_file(model)
        if actual != expected:
            raise ShippedModelError(
                f"{model}: SHA-256 {actual[:16]}... does not match {manifest.name}'s {expected[:16]}...: "
                "the file is damaged or was replaced; reinstall kanjirec"
            )
        _verified[key] = actual
    return model
