"""INT8 with ONNX Runtime's quantizer, measured against the fp32 export it came from.

Four ways to quantize a kanjirec ONNX file (``QUANT_MODES``), all with int8 weights per output
channel:

    static-qdq   activations uint8 with ranges calibrated on training images; the graph holds
                 QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into int8 kernels
    static-qop   the same calibration, written as QLinearConv / QGemm / QLinearMatMul operators
    dynamic      activations quantized per batch at run time; covers MatMul/Gemm and LSTM
                 (DynamicQuantizeLSTM), which static quantization leaves in float; convolutions
                 become ConvInteger, which ONNX Runtime runs far slower than QLinearConv
    static-lstm  static-qdq, then dynamic for the LSTMs only (tried for graphs that have one)

In the static modes the outputs of Gemm nodes (the logits among them) stay float: quantized to
256 levels, close logits tie and the top classes swap. The exporter already folds every
BatchNormalization into its convolution (the traced graph holds none), and ``quant_pre_process``
runs ONNX Runtime's graph optimizer and shape inference before quantizing, as its quantizer
expects.

Which mode is fastest depends on the model and the CPU, so ``quantize_and_check`` measures:
every candidate's batch-1 one-thread latency and batch-64 throughput in ONNX Runtime, then the
test-split top-1 of the fastest first. A candidate that is slower than fp32 on either figure, or
loses more than ``max_loss`` points of top-1, is refused; if none is left, `Int8Refused` says
why for each and nothing is written.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kanjirec.errors import KanjirecError

QUANT_MODES = ("static-qdq", "static-qop", "dynamic", "static-lstm")
CALIBRATION_BATCH = 32


class Int8Refused(KanjirecError):
    """No INT8 model met the bars (as fast as fp32, at most ``max_loss`` points of top-1 lost)."""


def quantize_onnx(
    fp32: str | Path, out: str | Path, mode: str, calibration: np.ndarray | None = None
) -> Path:
    """Write the INT8 version of the kanjirec export ``fp32`` to ``out``.

    ``calibration``: (N, S, S) uint8 training images in the dataset convention, needed by the
    static modes (the activation ranges are their min/max through the graph). The ``kanjirec.*``
    metadata is carried over, so the result loads through `loading.load_any` like any export."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from kanjirec.loading import OnnxModel

    if mode not in QUANT_MODES:
        raise ValueError(f"unknown INT8 mode {mode!r}; use one of {', '.join(QUANT_MODES)}")
    fp32, out = Path(fp32), Path(out)
    with tempfile.TemporaryDirectory(prefix="kanjirec-int8-") as tmp, _quiet_quantizer():
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX's own shape inference covers these graphs; ORT's symbolic one fails on some (basic_rnn).
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        if mode == "dynamic":
            quantize_dynamic(prepared, out, per_channel=True, weight_type=QuantType.QInt8)
        else:
            if calibration is None or len(calibration) == 0:
                raise ValueError(f"{mode} quantization needs calibration images")
            graph = OnnxModel(fp32)
            batches = [
                graph.graph_inputs(calibration[i : i + CALIBRATION_BATCH])
                for i in range(0, len(calibration), CALIBRATION_BATCH)
            ]

            class Reader(CalibrationDataReader):
                def __init__(self) -> None:
                    self.batches = iter(batches)

                def get_next(self) -> dict | None:
                    return next(self.batches, None)

            static = Path(tmp) / "static.onnx" if mode == "static-lstm" else out
            quantize_static(
                prepared,
                static,
                Reader(),
                quant_format=QuantFormat.QOperator if mode == "static-qop" else QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                # Logits squeezed into 256 levels tie and swap the top classes: a 60-class cnn kept
                # fp32's top-1 on 96% of images with quantized Gemm outputs, 99% with float ones.
                extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm"]},
            )
            if mode == "static-lstm":
                quantize_dynamic(
                    static, out, op_types_to_quantize=["LSTM"], per_channel=True, weight_type=QuantType.QInt8
                )
    # The quantizer keeps metadata_props today; set them again so a change there cannot lose them.
    source, proto = onnx.load(str(fp32)), onnx.load(str(out))
    kept = {p.key for p in proto.metadata_props}
    for entry in source.metadata_props:
        if entry.key not in kept:
            proto.metadata_props.add(key=entry.key, value=entry.value)
    onnx.save(proto, str(out))
    return out


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer logs to the root logger (e.g. each int64 shape tensor it leaves in float, with
    its whole type proto) and warns through `warnings`; users see our table, not those."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


@dataclass
class Measurement:
    """What `measure_onnx` found for one ONNX file."""

    label: str
    path: Path
    size_mib: float
    latency_ms: float = float("nan")  # batch 1, one thread
    throughput_per_s: float = float("nan")  # batch 64, one thread
    top1: float | None = None  # test split; None until measured
    refused: list[str] = field(default_factory=list)


def measure_speed_onnx(paths: dict[str, Path], images: np.ndarray, rounds: int = 3) -> dict[str, Measurement]:
    """Size, batch-1 latency and batch-64 throughput (both on one thread) of each ONNX file.

    The files are measured in turn, ``rounds`` times, keeping each one's best round: on a shared
    machine a round can be slowed by other work, and interleaving keeps that from favouring one."""
    from kanjirec.evaluation.costs import measure_speed
    from kanjirec.inference import torch_threads
    from kanjirec.loading import load_any

    models = {label: load_any(path).model for label, path in paths.items()}
    latency = {label: [] for label in paths}
    throughput = {label: [] for label in paths}
    with torch_threads(1):
        for _ in range(rounds):
            for label, model in models.items():
                speed = measure_speed(model, images)
                latency[label].append(speed["latency_ms"])
                throughput[label].append(speed["throughput_1thread_per_s"])
    found = {
        label: Measurement(
            label, path, path.stat().st_size / 2**20, min(latency[label]), max(throughput[label])
        )
        for label, path in paths.items()
    }
    return found


def split_top1(path: Path, data: str | Path, split: str = "test") -> float:
    """Top-1 of an ONNX file on a split of a packed dataset (the evaluation pass of `evaluate`)."""
    from kanjirec.evaluation.report import evaluate

    return float(evaluate(path, data, split=split)["top1"])


def calibration_images(data: str | Path, samples: int, seed: int = 0) -> np.ndarray:
    """``samples`` training images of a packed dataset, drawn at random with ``seed``."""
    from kanjirec.data.store import PackedDataset

    ds = PackedDataset.open(data)
    train = ds.indices("train")
    if len(train) == 0:
        raise KanjirecError(f"{ds.path}: the train split is empty; static INT8 calibrates on training images")
    pick = np.sort(np.random.default_rng(seed).choice(train, min(samples, len(train)), replace=False))
    return np.ascontiguousarray(ds.images[pick])


def speed_images(data: str | Path, split: str = "test", count: int = 64) -> np.ndarray:
    from kanjirec.data.store import PackedDataset

    ds = PackedDataset.open(data)
    idx = ds.indices(split)
    if len(idx) == 0:
        raise KanjirecError(f"{ds.path}: the {split!r} split is empty; INT8 is checked on it")
    return np.ascontiguousarray(ds.images[idx[:count]])


def quantize_and_check(
    fp32: str | Path,
    out: str | Path,
    data: str | Path,
    *,
    modes: tuple[str, ...] = QUANT_MODES,
    max_loss: float = 1.0,
    calibration_samples: int = 256,
    seed: int = 0,
    log=print,
) -> tuple[Measurement, list[Measurement], Measurement]:
    """Quantize ``fp32`` every way in ``modes``, measure, and write the fastest INT8 model that is
    not slower than fp32 and loses at most ``max_loss`` points of test top-1 to ``out``.

    Returns (fp32, every candidate, the one written); raises `Int8Refused` (``out`` untouched)
    when none qualifies. Accuracy is measured fastest-first and stops at the first that passes."""
    fp32, out = Path(fp32), Path(out)
    unknown = [m for m in modes if m not in QUANT_MODES]
    if unknown or not modes:
        raise ValueError(f"unknown INT8 mode(s) {unknown}; use {', '.join(QUANT_MODES)}")
    calibration = (
        calibration_images(data, calibration_samples, seed)
        if any(m.startswith("static") for m in modes)
        else None
    )
    if "static-lstm" in modes and not _has_lstm(fp32):
        modes = tuple(m for m in modes if m != "static-lstm")  # it would be static-qdq again
        if not modes:
            raise Int8Refused(f"{fp32}: the graph has no LSTM for static-lstm to quantize dynamically")
    with tempfile.TemporaryDirectory(prefix="kanjirec-int8-") as tmp:
        paths = {"fp32": fp32}
        failed = []
        for mode in modes:
            log(f"quantizing ({mode}) ...")
            try:
                paths[mode] = quantize_onnx(fp32, Path(tmp) / f"{mode}.onnx", mode, calibration)
            except Exception as e:  # the quantizer's own failure on a graph: that mode is out, said so
                failed.append(f"{mode}: ONNX Runtime's quantizer failed ({type(e).__name__}: {e})")
                log(failed[-1])
        if len(paths) == 1:
            raise Int8Refused(f"no INT8 model written to {out}: {'; '.join(failed)}")
        log("measuring speed ...")
        found = measure_speed_onnx(paths, speed_images(data))
        base = found.pop("fp32")
        base.top1 = split_top1(fp32, data)
        candidates = sorted(found.values(), key=lambda m: m.latency_ms)
        chosen = None
        for m in candidates:  # fastest first, until one passes
            if chosen is not None:
                break
            m.top1 = split_top1(m.path, data)
            m.refused = int8_faults(base, m, max_loss)
            chosen = None if m.refused else m
        log(int8_table(base, candidates))
        if chosen is None:
            reasons = "; ".join([f"{m.label}: {', '.join(m.refused)}" for m in candidates] + failed)
            raise Int8Refused(f"no INT8 model written to {out}: {reasons}")
        _write_atomically(chosen.path, out)
        chosen.path = out
    return base, candidates, chosen


def _has_lstm(path: Path) -> bool:
    import onnx

    return any(node.op_type == "LSTM" for node in onnx.load(str(path)).graph.node)


def int8_faults(base: Measurement, m: Measurement, max_loss: float) -> list[str]:
    """Why the INT8 candidate ``m`` may not replace ``base`` (empty: it may)."""
    faults = []
    if m.latency_ms > base.latency_ms:
        faults.append(f"slower at batch 1: {m.latency_ms:.3f} ms vs fp32 {base.latency_ms:.3f} ms")
    if m.throughput_per_s < base.throughput_per_s:
        faults.append(f"slower at batch 64: {m.throughput_per_s:.0f}/s vs fp32 {base.throughput_per_s:.0f}/s")
    loss = 100 * (base.top1 - m.top1)
    if loss > max_loss:
        faults.append(f"loses {loss:.2f} points of top-1 (more than {max_loss:g})")
    return faults


def _write_atomically(source: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fmt_top1(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def measurement_table(rows: list[Measurement], notes: list[str] | None = None) -> str:
    """Size, batch-1 latency, batch-64 throughput and test top-1 of each row, with a note each."""
    notes = notes or [""] * len(rows)
    width = max([12, *(len(m.label) for m in rows)])
    lines = [
        f"{'model':<{width}} {'size MiB':>9} {'b1 1-thread ms':>15} {'b64 1-thread /s':>16} "
        f"{'test top-1':>11}  {'verdict' if any(notes) else ''}".rstrip()
    ]
    for m, note in zip(rows, notes, strict=True):
        lines.append(
            f"{m.label:<{width}} {m.size_mib:>9.2f} {m.latency_ms:>15.3f} {m.throughput_per_s:>16.0f} "
            f"{_fmt_top1(m.top1):>11}  {note}".rstrip()
        )
    return "\n".join(lines)


def int8_table(base: Measurement, candidates: list[Measurement]) -> str:
    """fp32 against each INT8 candidate, with the verdict on each."""
    notes = ["reference"] + [
        "; ".join(m.refused) or ("kept" if m.top1 is not None else "not needed: a faster one passed")
        for m in candidates
    ]
    return measurement_table([base, *candidates], notes)
