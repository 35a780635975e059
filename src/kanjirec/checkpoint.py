"""Checkpoints: atomic writes, automatic resume, loud failures.

A run's ``checkpoints/`` folder holds ``step-00001234.pt`` files (the last ``keep_last``
are kept) and ``best.pt`` (the best validation accuracy so far). Each file is a complete
training state: model, optimizer, scheduler, grad scaler, every RNG state, the position
in the data order, the resolved config, the class list and the history, so that a run
killed at any moment resumes to the same weights an uninterrupted run reaches.

Files are written to a temporary file in the same folder, fsynced, then renamed over the
target (``os.replace`` is atomic), so a crash never leaves a half-written checkpoint under
a checkpoint's name. A file that is unreadable, or that belongs to another model, class
list or config, raises `CheckpointError` naming the file and what differs; a run never
silently starts afresh.

Every checkpoint stores ``sha256``, the `digest.state_sha256` of the rest of its state
(every tensor's bytes, every other value), and every read recomputes it: torch does not
check its zip CRCs, so without it flipped bytes in a weight tensor load silently. The hash
is of the content rather than of the file's bytes so that it can live inside the file, and
so that it holds whatever zip layout a torch version writes. Files without one (version 1,
written before hashes) are refused: they cannot be told apart from a damaged file.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kanjirec.digest import state_sha256
from kanjirec.errors import CheckpointError

FORMAT = "kanjirec-checkpoint"
VERSION = 2  # 2: content hash ("sha256") in every file
BEST = "best.pt"
HASH_KEY = "sha256"
_STEP_FILE = re.compile(r"^step-(\d{8})\.pt$")
_REQUIRED = ("format", "version", "model_name", "model_config", "classes", "config", "model")

# Config fields that do not change the course of training: a resumed run may differ in these.
RUN_ONLY_FIELDS = frozenset(
    {
        "data",
        "out_dir",
        "run_name",
        "workers",
        "save_every",
        "keep_last",
        "eval_batch_size",
        "device",
        "patience",
    }
)


def _fsync_dir(directory: Path) -> None:
    if os.name == "posix":  # directory fsync makes the rename durable; not available on Windows
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename into place.

    A dict is saved with its content hash under ``sha256`` (see the module docstring), so that
    `read_checkpoint` can verify it. A failed write (disk full, no permission) removes the
    temporary file, leaves any previous file at ``path`` as it was and raises `CheckpointError`.
    """
    path = Path(path)
    if isinstance(obj, dict):
        obj = with_hash(obj)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CheckpointError(
                f"{path}: cannot write checkpoint ({e}); the previous file is unchanged"
            ) from e
        raise
    return path


def with_hash(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with ``sha256`` set to the content hash of everything else in it."""
    body = {k: v for k, v in state.items() if k != HASH_KEY}
    return {**body, HASH_KEY: state_sha256(body)}


def verify_hash(state: dict[str, Any], path: str | Path) -> None:
    """Raise `CheckpointError` naming ``path`` unless ``state`` holds the hash of its own content."""
    stored = state.get(HASH_KEY)
    if not isinstance(stored, str):
        raise CheckpointError(f"{path}: checkpoint has no content hash, so its integrity cannot be checked")
    actual = state_sha256({k: v for k, v in state.items() if k != HASH_KEY})
    if actual != stored:
        raise CheckpointError(
            f"{path}: checkpoint is corrupt: its content hash is {actual[:16]}..., the file records "
            f"{stored[:16]}... (bytes changed on disk after it was written); use an older checkpoint "
            "or retrain"
        )


# ---------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states in types ``torch.load(weights_only=True)`` reads."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"][: torch.cuda.device_count()]])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------- reading and checking


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file and verify its content hash; `CheckpointError` names the file and the fault."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError... for damaged files
        raise CheckpointError(f"{path}: unreadable checkpoint, truncated or corrupt ({e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a kanjirec checkpoint (no format marker {FORMAT!r})")
    if state.get("version") == 1:
        raise CheckpointError(
            f"{path}: checkpoint version 1, written by an earlier kanjirec without a content hash; "
            "its integrity cannot be checked, so it is not loaded: retrain to get a version-2 checkpoint"
        )
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')!r}, expected {VERSION}")
    verify_hash(state, path)
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return state


def _describe_class_difference(saved: list[str], current: list[str]) -> str:
    if len(saved) != len(current):
        return f"the checkpoint has {len(saved)} classes, the dataset {len(current)}"
    k = next(i for i, (a, b) in enumerate(zip(saved, current, strict=True)) if a != b)
    return f"class {k} is {saved[k]!r} in the checkpoint but {current[k]!r} in the dataset"


def _config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if not prefix and key in RUN_ONLY_FIELDS:
            continue
        a, b = saved.get(key, "<unset>"), current.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_differences(a, b, prefix=f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} in the checkpoint, {b!r} now")
    return diffs


def check_compatible(
    state: dict[str, Any], path: str | Path, model_name: str, classes: list[str], config: dict[str, Any]
) -> None:
    """Raise `CheckpointError` if ``state`` was trained as another model, class list or config."""
    if state["model_name"] != model_name:
        raise CheckpointError(
            f"{path}: checkpoint belongs to model {state['model_name']!r}, this run trains {model_name!r}"
        )
    if list(state["classes"]) != list(classes):
        raise CheckpointError(
            f"{path}: checkpoint belongs to another class list: "
            f"{_describe_class_difference(list(state['classes']), list(classes))}"
        )
    diffs = _config_differences(state["config"], config)
    if diffs:
        raise CheckpointError(
            f"{path}: checkpoint was trained with another config ({'; '.join(diffs)}). "
            "Use the same config, or --no-resume to start afresh"
        )


# ---------------------------------------------------------------- the manager


class CheckpointManager:
    """Write, find and prune a run's checkpoints. Only the writer (DDP rank 0) has ``enabled=True``."""

    def __init__(self, directory: str | Path, keep_last: int = 3, enabled: bool = True) -> None:
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.enabled = enabled
        if enabled:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Temporary files of a writer killed mid-save are never valid checkpoints.
            for stale in self.directory.glob(".*.tmp"):
                stale.unlink()

    def step_path(self, global_step: int) -> Path:
        return self.directory / f"step-{global_step:08d}.pt"

    @property
    def best_path(self) -> Path:
        return self.directory / BEST

    def step_checkpoints(self) -> list[Path]:
        """Step checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _STEP_FILE.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        steps = self.step_checkpoints()
        return steps[-1] if steps else None

    def save(self, state: dict[str, Any], global_step: int, is_best: bool = False) -> Path:
        """Write a step checkpoint (and best.pt when ``is_best``), then drop the oldest beyond keep_last."""
        path = self.step_path(global_step)
        if not self.enabled:
            return path
        state = {"format": FORMAT, "version": VERSION, **state}
        atomic_torch_save(state, path)
        if is_best:
            atomic_torch_save(state, self.best_path)
        for old in self.step_checkpoints()[: -self.keep_last]:
            old.unlink()
        return path

    def update_best_metrics(self, metrics: dict[str, Any]) -> None:
        """Add final metrics (test accuracy) to best.pt, so `load_model` reports them."""
        if not self.enabled:
            return
        state = read_checkpoint(self.best_path)
        state["metrics"] = {**state.get("metrics", {}), **metrics}
        atomic_torch_save(state, self.best_path)

    def clear(self) -> int:
        """Remove every checkpoint of the run (``--no-resume``); returns how many were removed."""
        if not self.enabled:
            return 0
        paths = self.step_checkpoints() + ([self.best_path] if self.best_path.exists() else [])
        for p in paths:
            p.unlink()
        return len(paths)


# ---------------------------------------------------------------- loading a trained model


@dataclass
class ModelInfo:
    """What `load_model` knows about a trained model besides its weights."""

    path: Path
    model_name: str
    classes: list[str]
    model_config: dict[str, Any]
    config: dict[str, Any]  # the resolved training config
    metrics: dict[str, Any] = field(default_factory=dict)  # val (and, in best.pt, test) metrics
    epoch: int = 0
    global_step: int = 0


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A .pt file as is; a run dir (or its checkpoints/ folder) -> best.pt, else its latest step file."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if (folder / BEST).is_file():
        return folder / BEST
    latest = CheckpointManager(folder, enabled=False).latest()
    if latest is None:
        raise CheckpointError(f"{path}: no checkpoint found (looked for {folder / BEST} and step-*.pt)")
    return latest


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelInfo]:
    """Rebuild a trained model in eval mode on ``device`` from a .pt file or a run directory.

    Weights load with ``strict=True``: a missing or unexpected tensor is a `CheckpointError`.
    """
    from kanjirec.models import create_model

    file = resolve_checkpoint_path(path)
    state = read_checkpoint(file)
    classes = list(state["classes"])
    try:
        model = create_model(state["model_name"], len(classes), classes=classes, **state["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: cannot rebuild model {state['model_name']!r} ({e})") from e
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{file}: weights do not fit model {state['model_name']!r} ({e})") from e
    model.to(device).eval()
    info = ModelInfo(
        path=file,
        model_name=state["model_name"],
        classes=classes,
        model_config=dict(state["model_config"]),
        config=dict(state["config"]),
        metrics=dict(state.get("metrics", {})),
        epoch=int(state.get("epoch", 0)),
        global_step=int(state.get("global_step", 0)),
    )
    return model, info
