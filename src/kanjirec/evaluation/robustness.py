"""The robustness suite: top-1 under every distortion x severity, relative to clean top-1."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from torch import nn

from kanjirec.errors import KanjirecError
from kanjirec.evaluation.predict import BATCH_SIZE, Predictions, predict, progress
from kanjirec.inference import inference_copy

# The robustness suite runs 33 distortion sets on one fixed subsample. At 200 samples per set it
# costs about a quarter of the clean pass of a full comparison (six default-size models, a
# 31,879-image test split; `kanjirec bench compare`), which is what a 10-minute budget on 2 cores
# leaves it. The score (accuracy relative to clean, on the same samples) averages 6,600 predictions.
DEFAULT_ROBUSTNESS_SAMPLES = 200
ROBUSTNESS_SEED = 1234


def robustness_sets() -> list[tuple[str, int, float]]:
    """(distortion name, severity 1..3, strength) for every distortion of `augment.DISTORTIONS`."""
    from kanjirec.augment import DISTORTIONS

    return [
        (name, level + 1, float(strength))
        for name, d in DISTORTIONS.items()
        for level, strength in enumerate(d.severities)
    ]


def robustness_subsample(targets: Mapping[str, np.ndarray], samples: int | None, seed: int) -> np.ndarray:
    """Positions of the samples the suite uses: known to every model, a fixed random subset, sorted."""
    known = np.logical_and.reduce([np.asarray(t) >= 0 for t in targets.values()])
    rows = np.flatnonzero(known)
    if samples is not None and samples < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, samples, replace=False))
    return rows


def robustness_suite(
    models: Mapping[str, nn.Module],
    images,
    indices: np.ndarray,
    targets: Mapping[str, np.ndarray],
    *,
    samples: int | None = DEFAULT_ROBUSTNESS_SAMPLES,
    seed: int = ROBUSTNESS_SEED,
    batch_size: int = BATCH_SIZE,
    clean: Mapping[str, Predictions] | None = None,
) -> dict[str, dict]:
    """Top-1 under every distortion x severity, relative to clean top-1 on the same samples.

    Deterministic: the subsample and each distortion's generator come from ``seed``.
    ``clean`` (predictions over all of ``indices``) is reused when given instead of rerun.
    Returns, per model: clean accuracy, accuracy[distortion][severity], the strengths,
    and the score (mean over distortions x severities of accuracy / clean accuracy).
    """
    from kanjirec.augment import DISTORTIONS

    models = {name: inference_copy(m) for name, m in models.items()}
    rows = robustness_subsample(targets, samples, seed)
    if len(rows) == 0:
        raise KanjirecError("robustness suite: no sample has a character every model knows")
    sub_idx = np.asarray(indices)[rows]
    sub_t = {name: np.asarray(targets[name])[rows] for name in models}
    if clean is None:
        clean_sub = predict(models, images, sub_idx, sub_t, batch_size=batch_size, desc="clean")
    else:
        clean_sub = {name: clean[name].subset(rows) for name in models}
    clean_acc = {name: float(clean_sub[name].correct.mean()) for name in models}
    acc: dict[str, dict[str, list[float]]] = {name: {} for name in models}
    sets = robustness_sets()
    for n, (dname, level, strength) in enumerate(progress(sets, desc="robustness", unit="set")):
        pred = predict(
            models,
            images,
            sub_idx,
            sub_t,
            distortion=DISTORTIONS[dname],
            strength=strength,
            seed=seed + 1000 * n,
            batch_size=batch_size,
            desc=f"{dname} s{level}",
        )
        for name in models:
            acc[name].setdefault(dname, []).append(float(pred[name].correct.mean()))
    out = {}
    for name in models:
        rel = [a / clean_acc[name] if clean_acc[name] > 0 else 0.0 for v in acc[name].values() for a in v]
        out[name] = {
            "samples": int(len(rows)),
            "seed": seed,
            "clean_top1": clean_acc[name],
            "accuracy": acc[name],
            "strengths": {d: [float(s) for s in DISTORTIONS[d].severities] for d in acc[name]},
            "score": float(np.mean(rel)),
        }
    return out
