"""Metrics of one model's predictions: top-k accuracy, calibration (ECE), confused pairs, per-class
and per-writer accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kanjirec.evaluation.predict import Predictions

ECE_BINS = 15


def topk_accuracy(pred: Predictions, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy over the samples whose character the model knows."""
    known = pred.known
    n = int(known.sum())
    out = {}
    for k in ks:
        hit = (pred.topk_idx[:, :k] == pred.targets[:, None]).any(axis=1) & known
        out[f"top{k}"] = float(hit.sum() / n) if n else float("nan")
    return out


def per_group_accuracy(pred: Predictions, groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(samples, top-1 accuracy) per group id over known samples; accuracy is NaN for empty groups."""
    known = pred.known
    g = np.asarray(groups, np.int64)[known]
    count = np.bincount(g, minlength=n_groups)
    hits = np.bincount(g, weights=pred.correct[known], minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return count, hits / count


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> tuple[float, list[dict]]:
    """ECE with equal-width confidence bins: sum over bins of |accuracy - confidence| x bin share."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    n = len(confidence)
    if n == 0:
        return float("nan"), []
    b = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    conf_sum = np.bincount(b, weights=confidence, minlength=n_bins)
    hit_sum = np.bincount(b, weights=correct, minlength=n_bins)
    nonzero = count > 0
    ece = float(np.abs(hit_sum[nonzero] - conf_sum[nonzero]).sum() / n)
    bins = [
        {
            "low": i / n_bins,
            "high": (i + 1) / n_bins,
            "count": int(count[i]),
            "confidence": float(conf_sum[i] / count[i]) if count[i] else None,
            "accuracy": float(hit_sum[i] / count[i]) if count[i] else None,
        }
        for i in range(n_bins)
    ]
    return ece, bins


@dataclass
class ConfusedPair:
    true: int  # model class index
    predicted: int
    count: int
    rows: np.ndarray  # positions (into the evaluated sample list) of misread samples, first few


def confused_pairs(pred: Predictions, top: int = 20, samples: int = 4) -> list[ConfusedPair]:
    """The most frequent (true, predicted) top-1 confusions, most frequent first."""
    wrong = np.flatnonzero(pred.known & ~pred.correct)
    if len(wrong) == 0:
        return []
    t = pred.targets[wrong]
    p = pred.topk_idx[wrong, 0].astype(np.int64)
    n_classes = int(max(t.max(), p.max())) + 1
    key = t * n_classes + p
    uniq, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    # Most frequent first; ties broken by key for determinism.
    order = np.lexsort((uniq, -counts))[:top]
    pairs = []
    for j in order:
        rows = wrong[inverse == j][:samples]
        pairs.append(ConfusedPair(int(uniq[j] // n_classes), int(uniq[j] % n_classes), int(counts[j]), rows))
    return pairs


MISREAD_SHOWN = 40


def misread_by_writer(
    pred: Predictions, classes: Sequence[str], writer_ids: np.ndarray
) -> dict[int, list[str]]:
    """Per writer id, its first `MISREAD_SHOWN` samples read wrong as "true->read" strings in sample
    order: which characters one writer (or font family) loses, and to what. One pass over the
    misread samples, not one per writer (ETL9G has 4,000 writers)."""
    wrong = np.flatnonzero(pred.known & ~pred.correct)
    if len(wrong) == 0:
        return {}
    order = np.argsort(writer_ids[wrong], kind="stable")
    wrong, owners = wrong[order], writer_ids[wrong][order]
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    out = {}
    for a, b in zip(starts, np.r_[starts[1:], len(wrong)], strict=True):
        rows = wrong[a : min(b, a + MISREAD_SHOWN)]
        out[int(owners[a])] = [f"{classes[pred.targets[i]]}->{classes[pred.topk_idx[i, 0]]}" for i in rows]
    return out


def metrics_report(
    pred: Predictions,
    classes: Sequence[str],
    writer_ids: np.ndarray,
    writer_names: Sequence[str],
    top_pairs: int = 12,
) -> dict:
    """Every metric of one model's predictions, JSON-ready."""
    known = pred.known
    acc = topk_accuracy(pred)
    ece, bins = expected_calibration_error(pred.topk_prob[known, 0], pred.correct[known])
    class_n, class_acc = per_group_accuracy(pred, np.where(known, pred.targets, 0), len(classes))
    writer_n, writer_acc = per_group_accuracy(pred, writer_ids, len(writer_names))
    pairs = confused_pairs(pred, top=top_pairs)
    misread = misread_by_writer(pred, classes, writer_ids)
    return {
        "top1": acc["top1"],
        "top5": acc["top5"],
        "mean_class_accuracy": float(np.nanmean(class_acc)) if (class_n > 0).any() else float("nan"),
        "ece": ece,
        "calibration": {"bins": ECE_BINS, "table": bins},
        "per_class": [
            {"char": classes[c], "samples": int(class_n[c]), "top1": float(class_acc[c])}
            for c in np.flatnonzero(class_n)
        ],
        "per_writer": [
            {
                "writer": writer_names[w],
                "samples": int(writer_n[w]),
                "top1": float(writer_acc[w]),
                "misread": misread.get(int(w), []),
            }
            for w in np.flatnonzero(writer_n)
        ],
        "confused_pairs": [
            {"true": classes[p.true], "predicted": classes[p.predicted], "count": p.count} for p in pairs
        ],
    }


def percent(x: float | None) -> str:
    """A fraction as a percentage for reports; "-" when missing or NaN."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"
