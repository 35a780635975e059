"""Ensembles of trained models, across model types.

An ensemble averages its members' class probabilities, uniformly ("mean") or with
weights fitted on the validation split ("fitted"). Fitting has two steps:

1. each member is calibrated by a temperature (its logits are divided by T before the
   softmax), the T minimising its own negative log-likelihood on the validation split.
   Without it the weights follow confidence, not skill: members trained with label
   smoothing are under-confident, and an uncalibrated fit hands all weight to one of them;
2. the weights, a softmax of free parameters, are optimised by L-BFGS to minimise the
   ensemble's negative log-likelihood of the true class over the calibrated members.
   Because the ensemble probability of the true class is the weighted sum of the
   members' probabilities of it, the fit needs one number per member per sample (and
   step 1 one per temperature of a fixed grid), never full logits.

A saved ensemble is a small JSON manifest (`loading.save_ensemble`): the member
checkpoints' paths (relative to the manifest, so the folder can move as a whole), the
weights and the class list. `loading.load_any` rebuilds it with one call, wherever a
run is accepted. Every member must have the same class list, character for character.
The model itself is `models.ensemble.EnsembleModel`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from kanjirec.errors import KanjirecError
from kanjirec.evaluation.costs import measure_speed
from kanjirec.evaluation.metrics import topk_accuracy
from kanjirec.evaluation.predict import BATCH_SIZE, map_classes, predict, split_indices, unique_names
from kanjirec.inference import inference_copy, torch_threads
from kanjirec.loading import load_any, manifest_path, save_ensemble
from kanjirec.models.ensemble import EnsembleModel, Pooling

# "best": fit, then keep whichever of the fitted and the plain mean is more accurate on the fit split.
WEIGHTINGS = ("best", "fitted", "mean")
# Calibration temperatures tried: 0.05 to 20, log-spaced, 8% apart (NLL is flat near its minimum).
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 79)).astype(np.float32)


def check_same_classes(classes_by_member: Mapping[str, Sequence[str]]) -> list[str]:
    """The members' common class list; a clear error naming the first member that differs."""
    items = list(classes_by_member.items())
    if len(items) < 2:
        raise KanjirecError(f"an ensemble needs at least two members, got {len(items)}")
    first_name, first = items[0]
    for name, classes in items[1:]:
        if list(classes) != list(first):
            only_a = sorted(set(first) - set(classes))
            only_b = sorted(set(classes) - set(first))
            detail = (
                f"{len(only_a)} characters only in {first_name} ({''.join(only_a[:10])}), "
                f"{len(only_b)} only in {name} ({''.join(only_b[:10])})"
                if only_a or only_b
                else "same characters in a different order"
            )
            raise KanjirecError(
                f"ensemble members must share the class list: {first_name} has {len(first)} classes, "
                f"{name} has {len(classes)}; {detail}"
            )
    return list(first)


def calibrate_temperature(target_logp_t: np.ndarray, temperatures: np.ndarray = TEMPERATURES) -> int:
    """Index into ``temperatures`` of the one with the lowest negative log-likelihood.

    ``target_logp_t``: (n_samples, n_temperatures), the true class's log-probability at each
    temperature (`evaluation.predict.predict(..., temperatures=...)`). A grid end is a real answer: on a
    split the member classifies perfectly, NLL keeps falling as T falls.
    """
    lp = np.asarray(target_logp_t, np.float64)
    if lp.ndim != 2 or lp.shape[0] == 0 or lp.shape[1] != len(temperatures):
        raise ValueError(f"need (samples, {len(temperatures)}) log-probabilities, got shape {lp.shape}")
    return int(np.argmin(-lp.mean(axis=0)))


def fit_weights(target_probs: np.ndarray, max_iter: int = 200) -> np.ndarray:
    """Weights (summing to 1) minimising -mean log(sum_m w_m p_m(true class)).

    ``target_probs``: (n_samples, n_members), each member's probability of the true class.
    Softmax-parameterised weights, optimised with L-BFGS (the objective is convex in w).
    """
    p = torch.as_tensor(np.asarray(target_probs), dtype=torch.float64)
    if p.dim() != 2 or p.shape[0] == 0:
        raise ValueError(f"need a (samples, members) array with samples, got shape {tuple(p.shape)}")
    theta = torch.zeros(p.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = -torch.log(p @ torch.softmax(theta, 0) + 1e-12).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return torch.softmax(theta.detach(), 0).numpy()


# ---------------------------------------------------------------- building one


def build_ensemble(
    runs: Sequence[str | Path],
    data: str | Path,
    out: str | Path,
    *,
    weighting: str = "best",
    fit_split: str = "val",
    test_split: str = "test",
    batch_size: int | None = None,
    latency_runs: int = 50,
    threads: int | None = None,
) -> dict:
    """Fit weights on ``fit_split``, save the ensemble to ``out`` and report, on ``test_split``,
    every member, the mean and the fitted ensemble, the gain over the best single member and
    the latency cost. ``weighting`` "best" saves the fitted or the mean pooling, whichever is
    more accurate on ``fit_split`` (a second pass over it; the test split never chooses). The
    fitted pooling is scored on the split it was fitted on, which flatters it slightly; ties go
    to the mean.
    ``threads``: torch threads for the passes (batches run at once, `evaluation.predict.predict`); None:
    torch's current count."""
    from kanjirec.data.store import PackedDataset

    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    manifest_path(out)  # fail before the long passes, not after
    loaded = [load_any(r) for r in runs]
    names = unique_names([lm.name for lm in loaded])
    classes = check_same_classes({n: lm.classes for n, lm in zip(names, loaded, strict=True)})
    models = {n: inference_copy(lm.model) for n, lm in zip(names, loaded, strict=True)}
    ds = PackedDataset.open(data)
    test_idx = split_indices(ds, test_split)
    sample = ds.images[test_idx[:64]]
    with torch_threads(threads):
        poolings, fit_top1, test_pred, mapping = _fit_and_test(
            models, ds, classes, weighting, fit_split, test_idx, test_split, batch_size or BATCH_SIZE
        )

    accuracy = {name: topk_accuracy(p) for name, p in test_pred.items()}
    best = max(names, key=lambda n: accuracy[n]["top1"])
    kept = weighting
    if weighting == "best":
        kept = "fitted" if fit_top1["fitted"] > fit_top1["mean"] else "mean"
    chosen = f"ensemble-{kept}"
    pooling = poolings[kept]

    ensemble_model = EnsembleModel(
        list(models.values()), pooling.weights, classes, pooling.temperatures
    ).eval()
    best_speed = measure_speed(models[best], sample, runs=latency_runs)
    ens_speed = measure_speed(ensemble_model, sample, runs=latency_runs)
    report = {
        "dataset": str(ds.path),
        "test_split": test_split,
        "test_samples": int(len(test_idx)),
        "unknown_samples": mapping.unknown_count,
        "weighting": kept,
        "requested_weighting": weighting,
        "fit_split": fit_split if weighting != "mean" else None,
        "fit_top1": fit_top1,
        "weights": {k: dict(zip(names, map(float, p.weights), strict=True)) for k, p in poolings.items()},
        "temperatures": {
            k: dict(zip(names, map(float, p.temperatures), strict=True)) for k, p in poolings.items()
        },
        "accuracy": accuracy,
        "best_single": best,
        "gain_top1": accuracy[chosen]["top1"] - accuracy[best]["top1"],
        "gain_top5": accuracy[chosen]["top5"] - accuracy[best]["top5"],
        "latency_ms": {best: best_speed["latency_ms"], chosen: ens_speed["latency_ms"]},
        "latency_ratio": ens_speed["latency_ms"] / best_speed["latency_ms"],
        "path": str(out),
    }
    save_ensemble(
        out,
        [lm.path for lm in loaded],
        pooling,
        classes,
        weighting=kept,
        member_names=names,
        metrics=report,
    )
    return report


def _fit_and_test(models, ds, classes, weighting, fit_split, test_idx, test_split, batch_size):
    """The poolings (mean, and fitted on ``fit_split`` unless only the mean is asked for), their
    top-1 on ``fit_split`` where measured, and the test-split predictions of every member and of
    each pooling's ensemble."""
    poolings = {"mean": Pooling.mean(len(models))}
    fit_top1: dict[str, float] = {}
    if weighting != "mean":
        fit_idx = ds.indices(fit_split)
        fit_t = map_classes(ds.classes, classes, ds.labels[fit_idx]).targets
        known = fit_t >= 0
        if not known.any():
            raise KanjirecError(
                f"{ds.path}: no {fit_split} sample has a character the ensemble knows; fitted weights need "
                f"them (use weighting 'mean')"
            )
        targets = {n: fit_t for n in models}
        fit_pred = predict(
            models,
            ds.images,
            fit_idx,
            targets,
            batch_size=batch_size,
            temperatures=TEMPERATURES,
            ensembles={"mean": poolings["mean"]},
            desc=f"fit on {fit_split}",
        )
        best_t = [calibrate_temperature(fit_pred[n].target_logp_t[known]) for n in models]
        for n, t in zip(models, best_t, strict=True):
            if t in (0, len(TEMPERATURES) - 1):
                warnings.warn(
                    f"ensemble: {n}'s calibration stopped at the end of the temperature range "
                    f"(T = {TEMPERATURES[t]:.3g}); on {fit_split} its NLL keeps falling beyond it",
                    stacklevel=2,
                )
        target_probs = np.stack(
            [np.exp(fit_pred[n].target_logp_t[known, t]) for n, t in zip(models, best_t, strict=True)], axis=1
        )
        poolings["fitted"] = Pooling(fit_weights(target_probs), TEMPERATURES[best_t].astype(np.float64))
        fit_top1["mean"] = topk_accuracy(fit_pred["mean"])["top1"]
        if weighting == "best":
            check = predict(
                models,
                ds.images,
                fit_idx,
                targets,
                batch_size=batch_size,
                ensembles={"fitted": poolings["fitted"]},
                desc=f"score the fitted weights on {fit_split}",
            )
            fit_top1["fitted"] = topk_accuracy(check["fitted"])["top1"]

    mapping = map_classes(ds.classes, classes, ds.labels[test_idx])
    test_pred = predict(
        models,
        ds.images,
        test_idx,
        {n: mapping.targets for n in models},
        batch_size=batch_size,
        ensembles={f"ensemble-{k}": p for k, p in poolings.items()},
        desc=f"evaluate on {test_split}",
    )
    return poolings, fit_top1, test_pred, mapping


def ensemble_markdown(r: dict) -> str:
    fit = r.get("fit_top1", {})
    how = f"{r['weighting']} weights"
    if r.get("requested_weighting") == "best":
        scores = ", ".join(f"{k} {100 * v:.2f}%" for k, v in fit.items())
        how += f", the more accurate pooling on the {r['fit_split']} split ({scores})"
    elif r["weighting"] == "fitted":
        how += f", calibrated and fitted on the {r['fit_split']} split"
    lines = [
        f"Ensemble saved to {r['path']} ({how}); {r['test_split']} split, {r['test_samples']:,} samples.",
        "",
        "| model | top-1 | top-5 | temperature (fitted) | weight (fitted) |",
        "|---|---|---|---|---|",
    ]
    fitted = r["weights"].get("fitted", {})
    temps = r.get("temperatures", {}).get("fitted", {})
    for name, acc in r["accuracy"].items():
        w = f"{fitted[name]:.3f}" if name in fitted else ""
        t = f"{temps[name]:.2f}" if name in temps else ""
        lines.append(f"| {name} | {100 * acc['top1']:.2f}% | {100 * acc['top5']:.2f}% | {t} | {w} |")
    chosen = f"ensemble-{r['weighting']}"
    lines += [
        "",
        f"Gain over the best single model ({r['best_single']}): top-1 {100 * r['gain_top1']:+.2f} points, "
        f"top-5 {100 * r['gain_top5']:+.2f} points.",
        f"Latency at batch 1, one thread: {r['latency_ms'][r['best_single']]:.2f} ms -> "
        f"{r['latency_ms'][chosen]:.2f} ms ({r['latency_ratio']:.2f}x).",
    ]
    return "\n".join(lines) + "\n"
