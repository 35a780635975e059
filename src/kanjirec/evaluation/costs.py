"""What a model costs: parameters, FLOPs, file sizes, latency, throughput and peak memory."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kanjirec.errors import KanjirecError
from kanjirec.evaluation.predict import progress
from kanjirec.inference import torch_threads
from kanjirec.loading import LoadedModel, OnnxModel
from kanjirec.models.ensemble import EnsembleModel


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def weights_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer: the weights as stored, without optimizer state."""
    return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))


def count_flops(model: nn.Module, image_size: int = 64) -> int | None:
    """Forward FLOPs on one image (`models.base.count_flops`); an ensemble sums its members'.

    None for an ONNX file, whose graph torch cannot count."""
    from kanjirec.models.base import count_flops as model_flops

    if isinstance(model, EnsembleModel):
        members = [count_flops(m, image_size) for m in model.members]
        return None if None in members else sum(members)
    if isinstance(model, OnnxModel):
        return None  # the graph is opaque to torch's counter
    return int(model_flops(model, batch=1, image_size=image_size))


def measure_speed(
    model: nn.Module, sample_images: np.ndarray, *, runs: int = 50, throughput_batches: int = 3
) -> dict:
    """Latency at batch 1 on one thread (median of ``runs``) and throughput at batch 64 (median of
    ``throughput_batches``), on torch's current thread count and, where that is more, on one thread.
    """
    x1 = torch.from_numpy(np.ascontiguousarray(sample_images[:1]))[:, None]
    reps = -(-64 // len(sample_images))
    x64 = torch.from_numpy(np.ascontiguousarray(np.concatenate([sample_images] * reps)[:64]))[:, None]
    threads = torch.get_num_threads()
    model.eval()

    def seconds(x: torch.Tensor, n: int) -> float:
        model(x)  # warm-up: oneDNN builds its kernels for a new shape or thread count on first use
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    with torch.inference_mode():
        with torch_threads(1):
            for _ in range(4):
                model(x1)
            latency = seconds(x1, runs)
            one_thread = seconds(x64, throughput_batches)
        all_threads = seconds(x64, throughput_batches) if threads > 1 else one_thread
    return {
        "latency_ms": 1000 * latency,
        "latency_runs": runs,
        "throughput_per_s": 64 / all_threads,
        "throughput_threads": threads,
        "throughput_1thread_per_s": 64 / one_thread,
    }


_MEMORY_PROBE = """
import json, sys, numpy as np, torch
import kanjirec.checkpoint, kanjirec.models.ensemble
from kanjirec.loading import load_any
from kanjirec.models import list_models
list_models()  # imports every model family's code and what it imports: not the model's memory
if sys.argv[1].endswith((".onnx", ".json")):
    import onnxruntime
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024
try:  # restart the high-water mark at the current RSS, so the imports' transient peaks hide nothing
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    method = "VmHWM growth after imports (reset), fresh process"
except OSError:
    method = "VmHWM growth after imports (not reset: growth below the imports' peak is missed), fresh process"
base = hwm()
lm = load_any(sys.argv[1])
loaded = hwm()
x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (64, 1, {size}, {size}), dtype=np.uint8))
with torch.inference_mode():
    lm.model(x)
print(json.dumps({{"load": loaded - base, "peak": hwm() - base, "method": method}}))
"""


def measure_peak_memory(path: str | Path, image_size: int = 64) -> dict:
    """Peak RSS growth (VmHWM from /proc/self/status) in a fresh interpreter, over its state after
    importing torch and kanjirec's model code: loading the model (its weights and the tables it
    builds, e.g. component decompositions), then loading plus one batch-64 forward pass. Linux only."""
    code = _MEMORY_PROBE.format(size=image_size)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        # The allocator a library user gets: the CLI's huge-page setting would round RSS up.
        env={**os.environ, "OMP_NUM_THREADS": "1", "THP_MEM_ALLOC_ENABLE": "0"},
    )
    if proc.returncode != 0:
        raise KanjirecError(f"{path}: memory probe failed:\n{proc.stderr.strip()[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"load_mib": r["load"] / 2**20, "peak_mib": r["peak"] / 2**20, "method": r["method"]}


def measure_peak_memories(paths: Sequence[Path | None], image_size: int = 64) -> dict[Path, dict]:
    """`measure_peak_memory` of every path (None: skipped), the probes run side by side.

    Each probe is its own interpreter, so its VmHWM is its own; most of a probe's time is
    importing torch, which parallelises across cores. Called while nothing is being timed."""
    paths = list(dict.fromkeys(p for p in paths if p is not None))
    out = {}
    with (
        ThreadPoolExecutor(max(1, min(len(paths), os.cpu_count() or 1))) as pool,
        progress(total=len(paths), desc="memory", unit="model") as bar,
    ):
        for path, r in zip(paths, pool.map(lambda p: measure_peak_memory(p, image_size), paths), strict=True):
            out[path] = r
            bar.update()
    return out


def file_sizes(lm: LoadedModel) -> dict:
    """In MiB: the weights (parameters and buffers), the checkpoint file (which also holds the
    optimizer state) and the run's exported ONNX file, if there is one."""
    if lm.kind == "onnx":
        size = lm.path.stat().st_size / 2**20
        return {"weights_mib": None, "checkpoint_mib": None, "onnx_mib": size, "onnx_file": str(lm.path)}
    out = {"weights_mib": weights_bytes(lm.model) / 2**20, "checkpoint_mib": None, "onnx_mib": None}
    if lm.checkpoint is not None and lm.kind != "ensemble":
        out["checkpoint_mib"] = lm.checkpoint.stat().st_size / 2**20
    if lm.run_dir is not None:
        onnx = sorted(lm.run_dir.rglob("*.onnx"))
        if onnx:
            out["onnx_mib"] = onnx[0].stat().st_size / 2**20
            out["onnx_file"] = str(onnx[0])
    return out
