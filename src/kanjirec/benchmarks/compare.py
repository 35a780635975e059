"""`kanjirec bench compare`: how long `kanjirec compare` takes on a full-size test split.

The target is a comparison of the six architectures, at their default sizes, on a
3,036-class test split of about 30,000 images in under 10 minutes on this kind of
machine. Speed does not depend on what the weights learned, so the benchmark needs no
trained models (which take a GPU at this size): it saves each registered model freshly
initialised as a run, exactly as the trainer would, and runs the real `evaluation.compare.compare`
on them with its defaults. The accuracies and robustness scores it prints are those of
untrained models and mean nothing; the times per phase are the figures.

The data: ``--data`` (a packed dataset whose test split is the one to time), or by default
the embedded synthetic ETL9G set rendered with `synthesize` at 100 samples per class
(303,600 images; its writer-disjoint test split holds about 31,900).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

TARGET_S = 600.0


def save_untrained_runs(root: Path, classes: list[str], seed: int = 0) -> list[Path]:
    """One run folder per registered model, its best.pt holding a freshly initialised model."""
    from kanjirec.checkpoint import CheckpointManager
    from kanjirec.models import create_model, list_models

    runs = []
    for name in list_models():
        torch.manual_seed(seed)
        model = create_model(name, len(classes), classes=classes)
        state = {
            "model_name": name,
            "model_config": model.config,
            "classes": list(classes),
            "config": {},
            "model": model.state_dict(),
        }
        CheckpointManager(root / name / "checkpoints").save(state, 1, is_best=True)
        runs.append(root / name)
    return runs


def bench_compare(
    data: str | Path | None = None,
    per_class: int = 100,
    workers: int = 2,
    workdir: str | Path | None = None,
) -> dict[str, float]:
    """Run the benchmark, print its figures and return them."""
    from kanjirec.data.store import PackedDataset
    from kanjirec.evaluation.compare import compare, compare_markdown

    with tempfile.TemporaryDirectory(dir=workdir, prefix="kanjirec-bench-compare-") as tmp:
        tmp = Path(tmp)
        if data is None:
            from kanjirec.data.synth import synthesize

            t0 = time.perf_counter()
            data = synthesize("etl9g", per_class, tmp / "data", workers=workers, log=lambda *a, **k: None)
            print(f"synthesised {data} ({per_class} per class) in {time.perf_counter() - t0:.0f} s")
        ds = PackedDataset.open(data)
        test = len(ds.indices("test"))
        print(f"dataset {data}: {len(ds.classes):,} classes, test split {test:,} images")
        runs = save_untrained_runs(tmp / "model_training", list(ds.classes))
        print(f"{len(runs)} untrained runs at default sizes: {', '.join(r.name for r in runs)}")

        t0 = time.perf_counter()
        result = compare(runs, data, out=tmp / "compare")
        total = time.perf_counter() - t0
    print(compare_markdown(result))
    s = result["seconds"]
    print(
        f"kanjirec compare on {test:,} test images, {len(runs)} models: {total:.0f} s "
        f"(cost measurements {s['cost']:.0f} s, clean pass {s['clean']:.0f} s, "
        f"robustness {s['robustness']:.0f} s on {result['robustness_samples']:,} samples x 33 sets)"
    )
    print(f"time / target {total / TARGET_S:6.2f}x  (target <= 1: under {TARGET_S / 60:.0f} minutes)")
    print("(untrained models: the accuracy and robustness columns above are meaningless, the times are not)")
    return {"seconds": total, "test_samples": test, **{f"{k}_s": v for k, v in s.items()}}
