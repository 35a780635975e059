"""`compare`: accuracy, size, FLOPs, speed, memory and robustness of every run, in one table."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from kanjirec.errors import KanjirecError
from kanjirec.evaluation.costs import (
    count_flops,
    count_parameters,
    file_sizes,
    measure_peak_memories,
    measure_speed,
)
from kanjirec.evaluation.metrics import percent, topk_accuracy
from kanjirec.evaluation.predict import (
    BATCH_SIZE,
    map_classes,
    predict,
    progress,
    split_indices,
    unique_names,
)
from kanjirec.evaluation.robustness import DEFAULT_ROBUSTNESS_SAMPLES, robustness_suite
from kanjirec.inference import inference_copy, torch_threads
from kanjirec.loading import LoadedModel, load_any


def find_runs(root: str | Path = "model_training") -> list[Path]:
    """Every training run under ``root``: folders with a ``checkpoints/`` folder holding a checkpoint."""
    from kanjirec.checkpoint import BEST, CheckpointManager

    root = Path(root)
    if not root.is_dir():
        return []
    return [
        d
        for d in sorted(root.iterdir())
        if (d / "checkpoints" / BEST).is_file()
        or CheckpointManager(d / "checkpoints", enabled=False).latest()
    ]


def compare(
    runs: Sequence[str | Path | LoadedModel] | None,
    data: str | Path,
    *,
    split: str = "test",
    out: str | Path | None = None,
    robustness_samples: int | None = DEFAULT_ROBUSTNESS_SAMPLES,
    latency_runs: int = 50,
    memory: bool = True,
    batch_size: int = BATCH_SIZE,
    root: str | Path = "model_training",
    threads: int | None = None,
) -> dict:
    """Accuracy, size, FLOPs, speed, memory and robustness of every run, in one table.

    ``robustness_samples``: samples per distortion x severity; 0 skips the suite, None (or a
    negative number) uses the whole split. ``threads``: torch threads for the evaluation
    passes, which run that many batches at once (`predict`); None: torch's current count.
    Models are evaluated as `inference_copy` prepares them (batch norm folded, channels_last).
    """
    from kanjirec.data.store import PackedDataset

    if robustness_samples is not None and robustness_samples < 0:
        robustness_samples = None  # the whole split
    if not runs:
        runs = find_runs(root)
        if not runs:
            raise KanjirecError(f"{root}: no training runs found; train one with `kanjirec train`")
    loaded = [r if isinstance(r, LoadedModel) else load_any(r) for r in runs]
    names = unique_names([lm.name for lm in loaded])
    ds = PackedDataset.open(data)
    idx = split_indices(ds, split)
    maps = {
        n: map_classes(ds.classes, lm.classes, ds.labels[idx]) for n, lm in zip(names, loaded, strict=True)
    }
    models = {n: inference_copy(lm.model) for n, lm in zip(names, loaded, strict=True)}
    targets = {n: m.targets for n, m in maps.items()}
    # Costs first: a model the fresh memory-probe process cannot load fails before the long passes.
    seconds = {}
    t0 = time.perf_counter()
    memory_rows = measure_peak_memories([lm.path for lm in loaded], ds.image_size) if memory else {}
    sample_images = ds.images[idx[:64]]
    rows = []
    for name, lm in progress(list(zip(names, loaded, strict=True)), desc="cost", unit="model"):
        row = {
            "name": name,
            "model": lm.kind,
            "path": str(lm.path) if lm.path else None,
            "unknown_samples": maps[name].unknown_count,
            "parameters": count_parameters(lm.model),
            "flops": count_flops(lm.model, ds.image_size),
            **file_sizes(lm),
            **measure_speed(models[name], sample_images, runs=latency_runs),
        }
        row.update(memory_rows.get(lm.path, {}))
        rows.append(row)
    seconds["cost"] = time.perf_counter() - t0
    # Batch workers (`predict`) need no per-op synchronisation, so a core taken by other work
    # slows only its own worker: all threads, never a choice from timings that a passing load
    # spike could skew for the whole run.
    eval_threads = threads if threads is not None else torch.get_num_threads()
    with torch_threads(eval_threads):
        clean = predict(models, ds.images, idx, targets, batch_size=batch_size, desc=f"clean {split}")
        seconds["clean"] = time.perf_counter() - t0 - seconds["cost"]
        robust = {}
        if robustness_samples != 0:
            robust = robustness_suite(
                models,
                ds.images,
                idx,
                targets,
                samples=robustness_samples,
                batch_size=batch_size,
                clean=clean,
            )
    seconds["robustness"] = time.perf_counter() - t0 - seconds["cost"] - seconds["clean"]
    for row in rows:
        row.update(topk_accuracy(clean[row["name"]]))
        if row["name"] in robust:
            row["robustness"] = robust[row["name"]]["score"]
    result = {
        "dataset": str(ds.path),
        "split": split,
        "samples": int(len(idx)),
        "robustness_samples": int(next(iter(robust.values()))["samples"]) if robust else 0,
        "robustness": robust,
        "rows": rows,
        "machine": _machine(),
        "eval_threads": eval_threads,
        "seconds": seconds,
    }
    if out is not None:
        from kanjirec.evaluation import plots

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
        (out / "compare.md").write_text(compare_markdown(result), encoding="utf-8")
        plots.plot_tradeoff(
            out / "accuracy_vs_latency.png", rows, "latency_ms", "latency at batch 1, 1 thread (ms)"
        )
        plots.plot_tradeoff(out / "accuracy_vs_size.png", rows, "weights_mib", "weights (MiB)")
        if robust:
            plots.plot_robustness(out / "robustness.png", robust)
    return result


def _machine() -> dict:
    import platform

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        # Set by the CLI before torch loads (see `cli.main`); it changes the speed figures.
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE", "0") == "1",
    }


def _mflops(x: int | None) -> str:
    return "-" if x is None else f"{x / 1e6:.1f}"


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def compare_markdown(r: dict) -> str:
    lines = [
        "# Model comparison",
        "",
        f"Dataset `{r['dataset']}`, split {r['split']} ({r['samples']:,} samples). Latency: batch 1, one "
        f"thread, median. Throughput: batch 64, {r['machine']['threads']} threads. Peak memory: growth of "
        "VmHWM in a fresh process, after importing torch and kanjirec, loading the model and running a batch "
        "of 64. Robustness: mean top-1 over "
        f"distortions x 3 severities relative to clean, on {r['robustness_samples']:,} samples. PyTorch "
        "models run with batch norm folded into the convolutions and channels_last memory format"
        + (", tensors of 2 MB and up on transparent huge pages" if r["machine"].get("thp_mem_alloc") else "")
        + ".",
        "",
        "| model | top-1 | top-5 | params | weights MiB | ckpt MiB | ONNX MiB | MFLOPs | latency ms "
        "| img/s @64 | img/s @64, 1 thread | peak MiB | robustness |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        robustness = f"{row['robustness']:.3f}" if "robustness" in row else "-"
        lines.append(
            f"| {row['name']} | {percent(row['top1'])} | {percent(row['top5'])} | {row['parameters']:,} | "
            f"{_mib(row['weights_mib'])} | {_mib(row['checkpoint_mib'])} | {_mib(row['onnx_mib'])} | "
            f"{_mflops(row['flops'])} | {row['latency_ms']:.2f} | {row['throughput_per_s']:.0f} | "
            f"{row['throughput_1thread_per_s']:.0f} | "
            f"{_mib(row.get('peak_mib'))} | {robustness} |"
        )
    if r["robustness"]:
        dists = list(next(iter(r["robustness"].values()))["accuracy"])
        lines += [
            "",
            "## Top-1 (%) under distortion (severity 1 / 2 / 3)",
            "",
            "| model | clean | " + " | ".join(dists) + " |",
            "|---" * (len(dists) + 2) + "|",
        ]
        for name, rob in r["robustness"].items():
            cells = [" / ".join(f"{100 * a:.0f}" for a in rob["accuracy"][d]) for d in dists]
            lines.append(f"| {name} | {100 * rob['clean_top1']:.1f} | " + " | ".join(cells) + " |")
    sec = r["seconds"]
    lines += [
        "",
        f"Time: clean pass {sec['clean']:.0f} s, robustness {sec['robustness']:.0f} s, cost measurements "
        f"{sec['cost']:.0f} s on {r['machine']['cores']} cores ({r['machine']['cpu']}); evaluation passes "
        f"ran {r['eval_threads']} batch(es) at a time, one thread each.",
    ]
    return "\n".join(lines) + "\n"
