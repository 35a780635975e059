"""The one loader: anything that holds a trained model, as a `LoadedModel`.

`load_any(path)` takes

- a training run folder or a checkpoint file (`checkpoint.load_model`),
- an exported ``.onnx`` file (run by ONNX Runtime behind the same call as a torch model, `OnnxModel`),
- an ensemble manifest (``.json``, written by `save_ensemble`; its members are loaded through here),
- nothing (None): the model that ships with the package, `shipped_model_path()`.

Evaluation, ensembles, export, the recogniser, ``kanjirec predict`` and ``kanjirec serve`` all load
through it; it imports nothing above the model code.

An exported file carries in its ONNX ``metadata_props`` what a runtime needs (see export.py):

    kanjirec.classes        JSON list of the class characters (logit order)
    kanjirec.preprocessing  "images", "strokes:<extractor>:<max>", or several joined by ","
    kanjirec.image_size     side of the square input images
    kanjirec.model          registry name or "ensemble"
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kanjirec.errors import CheckpointError, KanjirecError
from kanjirec.models.ensemble import EnsembleModel, Pooling
from kanjirec.weights import MODEL_FILE, ShippedModelError
from kanjirec.weights import shipped_model_path as verified_shipped_model

META_PREFIX = "kanjirec."
# The shipped model, with its manifest (SHA-256) and card beside it: `kanjirec.weights`.
SHIPPED_MODEL = MODEL_FILE
# The ensemble manifest. Version 2 added per-member temperatures; a version-1 manifest had none, i.e. all 1.
FORMAT = "kanjirec-ensemble"
VERSION = 2


NoShippedModelError = ShippedModelError  # no model ships in this install, or its file is damaged


def shipped_model_path() -> Path:
    """The model that ships with the package, its SHA-256 checked against its manifest."""
    return verified_shipped_model(SHIPPED_MODEL)


@dataclass
class LoadedModel:
    """A model ready to run, whatever it was loaded from."""

    name: str  # the run folder's name, else the model name
    model: nn.Module  # takes uint8 images (B, 1, S, S), ink 255 on 0; returns logits (B, classes)
    classes: list[str]
    path: Path | None = None  # what it was loaded from (run dir, checkpoint file, ONNX file, manifest)
    kind: str = ""  # the registered model name, "onnx" or "ensemble"
    checkpoint: Path | None = None  # the file holding the weights
    run_dir: Path | None = None
    image_size: int = 64


def load_any(path: str | Path | None = None) -> LoadedModel:
    """A training run folder, a checkpoint file, an exported .onnx file, an ensemble manifest, or
    (None) the shipped model."""
    path = shipped_model_path() if path is None else Path(path)
    if path.suffix == ".onnx":
        model = OnnxModel(path, threads=torch.get_num_threads())
        return LoadedModel(path.stem, model, list(model.classes), path, "onnx", None, None, model.image_size)
    if is_ensemble_file(path):
        model, info = load_ensemble(path)
        return LoadedModel(info["name"], model, list(info["classes"]), path, "ensemble", path, None)
    from kanjirec.checkpoint import load_model

    model, info = load_model(path)
    model.eval()
    file = Path(info.path)
    run_dir = file.parent.parent if file.parent.name == "checkpoints" else None
    name = run_dir.name if run_dir is not None else info.model_name
    return LoadedModel(name, model, list(info.classes), path, info.model_name, file, run_dir)


# ---------------------------------------------------------------- exported files


class OnnxModel(nn.Module):
    """An exported model run by ONNX Runtime, behind the same call as a torch model.

    ``forward`` runs on as many ONNX Runtime threads as torch is set to use, so that one-thread
    latency measurements and the evaluation passes' one thread per batch worker hold for it too;
    `logits` takes the thread count explicitly (None: ONNX Runtime's default, one per physical
    core). A session per thread count is opened on first use."""

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such ONNX file")
        self._sessions: dict[int | None, object] = {}
        session = self.session(threads)
        meta = session.get_modelmeta().custom_metadata_map
        missing = [k for k in ("classes", "preprocessing", "image_size") if META_PREFIX + k not in meta]
        if missing:
            raise CheckpointError(
                f"{self.path}: not a kanjirec export, metadata lacks "
                + ", ".join(META_PREFIX + k for k in missing)
            )
        self.classes: list[str] = json.loads(meta[META_PREFIX + "classes"])
        self.preprocessing: str = meta[META_PREFIX + "preprocessing"]
        self.image_size = int(meta[META_PREFIX + "image_size"])
        self.model_name = meta.get(META_PREFIX + "model", "")
        self._input_names = [i.name for i in session.get_inputs()]

    def session(self, threads: int | None = None):
        """The ONNX Runtime session running on ``threads`` intra-op threads (None: its default)."""
        import onnxruntime as ort

        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if threads not in self._sessions:
            options = ort.SessionOptions()
            if threads is not None:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

            try:
                self._sessions[threads] = ort.InferenceSession(
                    str(self.path), options, providers=["CPUExecutionProvider"]
                )
            except (
                ort_errors.Fail,
                ort_errors.InvalidArgument,
                ort_errors.InvalidGraph,
                ort_errors.InvalidProtobuf,
            ) as e:
                raise CheckpointError(f"{self.path}: not a loadable ONNX model ({e})") from e
        return self._sessions[threads]

    def graph_inputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(B, S, S) uint8 images in the convention -> the graph's named inputs.

        The preprocessing names one feature step, or (an ensemble) several joined by ",", whose
        outputs fill the graph inputs in order."""
        arrays = [a for kind in self.preprocessing.split(",") for a in self._features(kind, images)]
        if len(arrays) != len(self._input_names):
            raise CheckpointError(
                f"{self.path}: preprocessing {self.preprocessing!r} makes {len(arrays)} inputs, "
                f"the graph takes {len(self._input_names)} ({', '.join(self._input_names)})"
            )
        return dict(zip(self._input_names, arrays, strict=True))

    @property
    def input_kind(self) -> str:
        """ "pen" for a graph that reads pen trajectories (preprocessing 'strokes:pen:N'), else "images"."""
        return "pen" if self.preprocessing.startswith("strokes:pen:") else "images"

    @property
    def max_strokes(self) -> int:
        return int(self.preprocessing.split(":")[2])

    def pen_logits(self, features: np.ndarray, lengths: np.ndarray, threads: int | None = None) -> np.ndarray:
        """`data.sequences.pen_strokes` rows of a pen model's graph -> (B, C) logits."""
        return self.session(threads).run(
            None, dict(zip(self._input_names, (features, lengths), strict=True))
        )[0]

    def _features(self, kind: str, images: np.ndarray) -> list[np.ndarray]:
        if kind == "images":
            return [images[:, None].astype(np.float32) / 255.0]
        parts = kind.split(":")
        if len(parts) != 3 or parts[0] != "strokes" or not parts[2].isdigit():
            raise CheckpointError(
                f"{self.path}: unknown preprocessing {kind!r} in its metadata "
                "(expected 'images' or 'strokes:<extractor>:<max strokes>')"
            )
        if parts[1] == "pen":
            raise CheckpointError(f"{self.path}: this model reads pen strokes, not images")
        from kanjirec.data.sequences import extract_strokes

        return list(extract_strokes(images, parts[1], int(parts[2])))

    def logits(self, images: np.ndarray, threads: int | None = None) -> np.ndarray:
        """(B, S, S) uint8 images already in the convention -> (B, C) logits."""
        return self.session(threads).run(None, self.graph_inputs(images))[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.logits(images[:, 0].numpy(), torch.get_num_threads()))

    def __deepcopy__(self, memo) -> OnnxModel:
        # Sessions hold no per-call state, so a copy (e.g. inside an ensemble) may share them.
        return copy.copy(self)


# ---------------------------------------------------------------- ensemble manifests
# Writer and reader side by side, so the manifest format is defined in one place.


def is_ensemble_file(path: str | Path) -> bool:
    """True for an ensemble manifest (a .json file of this format)."""
    path = Path(path)
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def manifest_path(path: str | Path) -> Path:
    """``path`` if it can name an ensemble manifest (a .json file), else a clear error."""
    path = Path(path)
    if path.suffix != ".json":
        raise KanjirecError(f"{path}: an ensemble is saved as a .json manifest; give a path ending in .json")
    return path


def save_ensemble(
    path: str | Path,
    member_paths: Sequence[str | Path],
    pooling: Pooling,
    classes: Sequence[str],
    *,
    weighting: str,
    member_names: Sequence[str] | None = None,
    metrics: dict | None = None,
) -> Path:
    path = manifest_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    members = []
    for k, p in enumerate(member_paths):
        p = Path(p).resolve()
        rel = os.path.relpath(p, base)
        members.append({"path": rel, "name": member_names[k] if member_names else p.name})
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "weighting": weighting,
        "weights": [float(w) for w in pooling.weights],
        "temperatures": [float(t) for t in pooling.temperatures],
        "members": members,
        "classes": list(classes),
        "metrics": metrics or {},
    }
    path.write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def load_ensemble(path: str | Path) -> tuple[EnsembleModel, dict]:
    """Rebuild a saved ensemble: ``(model, info)``; info has name, classes, weights, members, metrics."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ensemble manifest ({e})") from e
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: an ensemble manifest is a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT or manifest.get("version") not in (1, VERSION):
        raise CheckpointError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
            f"expected {FORMAT!r} version 1 or {VERSION}"
        )
    required = ("weights", "members", "classes") + (("temperatures",) if manifest["version"] >= 2 else ())
    for key in required:
        if key not in manifest:
            raise CheckpointError(f"{path}: ensemble manifest lacks the field {key!r}")
    if manifest["version"] == 1 and "temperatures" in manifest:
        raise CheckpointError(f"{path}: a version-1 ensemble manifest has no field 'temperatures'")
    if not isinstance(manifest["members"], list) or not manifest["members"]:
        raise CheckpointError(f"{path}: field 'members' must be a non-empty list")
    n = len(manifest["members"])
    weights = _numbers(path, manifest, "weights", n)
    temperatures = _numbers(path, manifest, "temperatures", n) if "temperatures" in manifest else [1.0] * n
    classes = manifest["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{path}: field 'classes' must be a non-empty list of characters")
    members = []
    for k, m in enumerate(manifest["members"]):
        if not isinstance(m, dict) or not isinstance(m.get("path"), str) or not m["path"]:
            raise CheckpointError(f"{path}: member {k} must be an object with a 'path' string, got {m!r}")
        member_path = (path.parent / m["path"]).resolve()
        name = m.get("name", m["path"])
        if not member_path.exists():
            raise CheckpointError(f"{path}: member {name!r} not found at {member_path}")
        if is_ensemble_file(member_path):  # also what would make a manifest list itself, endlessly
            raise CheckpointError(
                f"{path}: member {name!r} at {member_path} is itself an ensemble; list its members instead"
            )
        lm = load_any(member_path)
        if lm.classes != manifest["classes"]:
            raise CheckpointError(
                f"{path}: member {member_path} has a class list different from the one the ensemble was "
                "built with (was it retrained?)"
            )
        members.append(lm)
    try:
        model = EnsembleModel([lm.model for lm in members], weights, manifest["classes"], temperatures).eval()
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    info = {
        "name": f"ensemble({'+'.join(lm.name for lm in members)})",
        "model": "ensemble",
        "classes": manifest["classes"],
        "weights": weights,
        "temperatures": temperatures,
        "weighting": manifest.get("weighting"),
        "members": [str(lm.path) for lm in members],
        "metrics": manifest.get("metrics", {}),
    }
    return model, info


def _numbers(path: Path, manifest: dict, key: str, n: int) -> list[float]:
    """Field ``key`` of a manifest as ``n`` finite numbers, or a CheckpointError naming it."""
    value = manifest[key]
    if (
        not isinstance(value, list)
        or len(value) != n
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
    ):
        raise CheckpointError(f"{path}: field {key!r} must be a list of {n} finite numbers (one per member)")
    return [float(v) for v in value]
