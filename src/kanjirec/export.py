"""ONNX export: the one exporter for every registered model.

The exported graph is ``model.forward_features``: for most models it takes ``images`` (float32
(B, 1, 64, 64) in [0, 1], ink bright on dark), for the stroke model the extracted ``strokes``
and ``lengths`` (see ``models/stroke_rnn.py``). An ensemble (`ensemble.EnsembleModel`) is one
graph too: its inputs are its members' distinct inputs, its output the ensemble's
log-probabilities. The batch axis is dynamic. What a runtime needs to use the graph is stored in
the ONNX ``metadata_props``:

    kanjirec.classes        JSON list of the class characters (logit order)
    kanjirec.preprocessing  the model's ``feature_kind``: "images" or "strokes:<extractor>:<max>",
                            or for an ensemble these kinds joined by "," in graph-input order
    kanjirec.image_size     side of the square input images
    kanjirec.model          registry name or "ensemble"; kanjirec.config: JSON of the model config

The default opset is 18: torch 2.13's exporter implements opset 18 and up, and its down-conversion
to 17 fails on several of our graphs (ReduceMean/ReduceMax axes), so an opset the written file
does not carry raises ``ExportError`` rather than passing silently.

``export_run`` is ``kanjirec export``: optionally prune and fine-tune first (``prune.py``), then
write fp32, or INT8 if it passes the checks of ``quantize.py``.

``Recognizer`` (recognizer.py) reads these. After writing, the export is checked: ONNX Runtime
must reproduce PyTorch's logits on a sample batch within ``tolerance``.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from kanjirec.errors import KanjirecError
from kanjirec.models.base import RecognitionModel

if TYPE_CHECKING:
    from kanjirec.models.ensemble import EnsembleModel

META_PREFIX = "kanjirec."


class ExportError(KanjirecError):
    """The exported graph does not reproduce the PyTorch model."""


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's known, harmless reports, for this export only.

    torch's ONNX registry logs one warning per torchvision operator it skips (we use none, and
    torchvision is not a dependency); torch's own code raises FutureWarnings about its internal
    ``LeafSpec`` and ``_check_is_size`` use; nn.LSTM re-assigns its ``_flat_weights`` list while
    traced (the weights are its registered parameters); the exporter notes that the one "batch"
    axis name covers several inputs. Whatever the warnings, the export is checked against PyTorch's
    logits below. Anything else still reaches the user."""
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for category, message in (
                (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
                (FutureWarning, r"_check_is_size will be removed in a future PyTorch release"),
                (
                    UserWarning,
                    r"The tensor attributes ([\w.]+\._flat_weights\[\d+\](, )?)+ were assigned during export",
                ),
                (UserWarning, r"# The axis name: batch will not be used, since it shares the same shape"),
            ):
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        registry.setLevel(level)


def _trace(model: RecognitionModel | EnsembleModel, image_size: int, opset: int):
    """The ONNX program of ``model.forward_features`` with a dynamic batch axis, the sample features it
    was traced with, their input names, and PyTorch's logits on them."""
    if getattr(model, "input_kind", "images") == "pen":
        features = model.pen_features(sample_strokes(3))
    else:
        features = model.extract_features(sample_images(3, image_size))
    names = list(model.feature_names())
    batch = torch.export.Dim("batch")
    # One entry for the wrapper's *xs, holding one spec per input.
    dynamic_shapes = (tuple({0: batch} for _ in features),)

    class _Graph(torch.nn.Module):
        def __init__(self, inner: RecognitionModel | EnsembleModel) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *xs: torch.Tensor) -> torch.Tensor:
            return self.inner.forward_features(*xs)

    with torch.no_grad():
        expected = model.forward_features(*features).numpy()
        program = torch.onnx.export(
            _Graph(model).eval(),
            tuple(features),
            input_names=names,
            output_names=["logits"],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    return program, features, names, expected


def sample_images(batch: int = 2, image_size: int = 64, seed: int = 0) -> torch.Tensor:
    """A reproducible uint8 batch with blocky ink (several connected parts) for tracing and checks."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, image_size // 8, image_size // 8, generator=generator) > 0.6
    return coarse.repeat_interleave(8, 2).repeat_interleave(8, 3).to(torch.uint8) * 255


def sample_strokes(batch: int = 2, seed: int = 0) -> list[list[np.ndarray]]:
    """Reproducible pen drawings of 1 to 4 random polylines each, for tracing pen models."""
    rng = np.random.default_rng(seed)
    return [
        [rng.uniform(0, 64, (int(rng.integers(2, 6)), 2)) for _ in range(1 + b % 4)] for b in range(batch)
    ]


def export_onnx(
    model: RecognitionModel | EnsembleModel,
    path: str | Path,
    opset: int = 18,
    classes: Sequence[str] | None = None,
    image_size: int = 64,
    tolerance: float = 1e-4,
) -> Path:
    """Write ``model`` as an ONNX file with a dynamic batch axis and the metadata above."""
    import onnx
    import onnxruntime as ort

    from kanjirec.loading import OnnxModel

    if isinstance(model, OnnxModel):
        raise ExportError(f"{model.path} is already an exported ONNX file; export from a run or a checkpoint")
    for k, member in enumerate(getattr(model, "members", [])):
        if not isinstance(member, RecognitionModel):
            onnx = member.path if isinstance(member, OnnxModel) else None
            what = f"{onnx} is an ONNX file" if onnx else f"is a {type(member).__name__}"
            raise ExportError(
                f"ensemble member {k}: {what}, not a PyTorch model; an ensemble exports from "
                "checkpoints (an ONNX member has no graph to trace)"
            )
    classes = list(classes if classes is not None else (getattr(model, "classes", None) or []))
    if len(classes) != model.num_classes:
        raise ValueError(
            f"export needs the {model.num_classes} class characters (pass classes= or build the model "
            f"with create_model(..., classes=...)); got {len(classes)}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        with _quiet_exporter():
            program, features, names, expected = _trace(model, image_size, opset)
            program.save(str(path))
    finally:
        model.train(was_training)

    proto = onnx.load(str(path))
    written = {o.domain: o.version for o in proto.opset_import}.get("", None)
    if written != opset:
        raise ExportError(f"{path}: asked for ONNX opset {opset}, the exporter wrote opset {written}")
    metadata = {
        "classes": json.dumps(classes, ensure_ascii=False),
        "preprocessing": model.feature_kind,
        "image_size": str(image_size),
        "model": model.name,
        "config": json.dumps(model.config, ensure_ascii=False),
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value
    onnx.save(proto, str(path))

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: f.numpy() for n, f in zip(names, features, strict=True)})[0]
    error = float(np.abs(got - expected).max())
    if error > tolerance:
        raise ExportError(f"{path}: ONNX Runtime logits differ from PyTorch by {error:.2e} (> {tolerance})")
    return path


def _log_pruning_table(paths: dict[str, Path], data, top1: dict[str, float], log) -> dict[str, float]:
    """Measure the ONNX files ``paths`` together (top-1 where ``top1`` does not hold it yet) and log
    them with each one's top-1 change from the first; returns every top-1 by label."""
    from kanjirec.quantize import measure_speed_onnx, measurement_table, speed_images, split_top1

    found = list(measure_speed_onnx(paths, speed_images(data)).values())
    for m in found:
        m.top1 = top1[m.label] if m.label in top1 else split_top1(m.path, data)
    base = found[0].top1
    notes = ["reference"] + [f"{100 * (m.top1 - base):+.2f} points" for m in found[1:]]
    log(measurement_table(found, notes))
    return {m.label: m.top1 for m in found}


def export_run(
    source: str | Path,
    out: str | Path,
    *,
    int8: bool = False,
    int8_modes: Sequence[str] | None = None,
    max_loss: float = 1.0,
    prune: float | None = None,
    finetune_epochs: int = 2,
    finetune_lr: float | None = None,
    data: str | Path | None = None,
    calibration_samples: int = 256,
    log=print,
) -> Path:
    """``kanjirec export``: a run, checkpoint or ensemble manifest -> one ONNX file at ``out``.

    ``prune``: first remove that fraction of every width (`prune.prune_and_finetune`, which
    fine-tunes in a run folder of its own) and report size, speed and top-1 before and after
    (with ``int8``, of the unpruned and the pruned model, each in fp32 and in the INT8 written).
    ``int8``: write the INT8 model instead of fp32, if it is as fast and loses at most
    ``max_loss`` points (`quantize.quantize_and_check`; else `quantize.Int8Refused`, nothing
    written). Both measure on ``data`` (default: the dataset the run trained on)."""
    import tempfile

    from kanjirec.loading import is_ensemble_file, load_ensemble

    out = Path(out)
    if is_ensemble_file(source):
        if prune is not None:
            raise ExportError(f"{source}: an ensemble is not pruned; prune its members' runs")
        model, info = load_ensemble(source)
        name, classes, trained_on = info["name"], info["classes"], None
    else:
        from kanjirec.checkpoint import load_model

        model, ckpt = load_model(source)
        name, classes, trained_on = ckpt.model_name, ckpt.classes, ckpt.config.get("data")
    data = data or trained_on
    if (int8 or prune is not None) and not data:
        raise ExportError(f"{source}: INT8 and pruning are measured on a dataset; pass --data DIR")
    if prune is None and not int8:
        export_onnx(model, out, classes=classes)
        log(f"wrote {out} ({name}, {len(classes):,} classes; ONNX Runtime matches PyTorch)")
        return out

    from kanjirec.quantize import QUANT_MODES, calibration_images, quantize_and_check, quantize_onnx

    with tempfile.TemporaryDirectory(prefix="kanjirec-export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx" if int8 else out
        if prune is not None:
            from kanjirec.checkpoint import load_model
            from kanjirec.prune import prune_and_finetune

            before = export_onnx(model, Path(tmp) / "unpruned.onnx", classes=classes)
            run = prune_and_finetune(
                source, prune, epochs=finetune_epochs, lr=finetune_lr, data=data, log=log
            )
            model = load_model(run)[0]
            export_onnx(model, fp32, classes=classes)
            top1 = _log_pruning_table({"unpruned": before, f"pruned {prune:.0%}": fp32}, data, {}, log)
        else:
            export_onnx(model, fp32, classes=classes)
        if int8:
            modes = tuple(int8_modes or QUANT_MODES)
            _, _, chosen = quantize_and_check(
                fp32,
                out,
                data,
                modes=modes,
                max_loss=max_loss,
                calibration_samples=calibration_samples,
                log=log,
            )
            if prune is not None:
                # The same INT8 of the unpruned model: all four side by side, measured together.
                mode = chosen.label
                calibration = (
                    calibration_images(data, calibration_samples) if mode.startswith("static") else None
                )
                before_int8 = quantize_onnx(before, Path(tmp) / "unpruned-int8.onnx", mode, calibration)
                top1 |= {f"pruned {prune:.0%} {mode}": chosen.top1}
                paths = {
                    "unpruned": before,
                    f"unpruned {mode}": before_int8,
                    f"pruned {prune:.0%}": fp32,
                    f"pruned {prune:.0%} {mode}": out,
                }
                _log_pruning_table(paths, data, top1, log)
    log(f"wrote {out} ({name}{f', pruned {prune:.0%}' if prune else ''}{', INT8' if int8 else ''})")
    return out
