"""Ensembles of trained models, across model types.

An ensemble averages its members' class probabilities, uniformly ("mean") or with
weights fitted on the validation split ("fitted"): the weights are a softmax of free
parameters, optimised by L-BFGS to minimise the ensemble's negative log-likelihood
of the true class. Because the ensemble probability of the true class is the
weighted sum of the members' probabilities of it, the fit needs only one number
per member per validation sample.

A saved ensemble is a small JSON manifest: the member checkpoints' paths (relative
to the manifest, so the folder can move as a whole), the weights and the class
list. `load_ensemble` rebuilds it with one call, and `kanjirec evaluate` accepts it
wherever it accepts a run. Every member must have the same class list, character
for character.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kanjirec.errors import CheckpointError, KanjirecError

FORMAT = "kanjirec-ensemble"
VERSION = 1
WEIGHTINGS = ("fitted", "mean")


def combine_logits(logits: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """log(sum_m w_m softmax(logits_m)): the ensemble's log-probabilities, usable as logits."""
    log_probs = torch.stack([torch.log_softmax(z.float(), dim=1) for z in logits])  # (M, B, C)
    log_w = torch.log(weights.to(log_probs.dtype).clamp(min=1e-30))[:, None, None]
    return torch.logsumexp(log_probs + log_w, dim=0)


class EnsembleModel(nn.Module):
    """Weighted average of member probabilities; forward returns log-probabilities as logits."""

    name = "ensemble"

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float], classes: Sequence[str]):
        super().__init__()
        if len(members) != len(weights):
            raise ValueError(f"{len(members)} members but {len(weights)} weights")
        w = torch.as_tensor(np.asarray(weights, np.float64), dtype=torch.float32)
        if bool((w < 0).any()) or not torch.isclose(w.sum(), torch.tensor(1.0), atol=1e-4):
            raise ValueError(f"ensemble weights must be non-negative and sum to 1, got {list(weights)}")
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", w)
        self.classes = list(classes)
        self.num_classes = len(classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return combine_logits([m(images) for m in self.members], self.weights)


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


# ---------------------------------------------------------------- the saved file


def is_ensemble_file(path: str | Path) -> bool:
    """True for an ensemble manifest (a .json file of this format)."""
    path = Path(path)
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _manifest_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".json":
        raise KanjirecError(f"{path}: an ensemble is saved as a .json manifest; give a path ending in .json")
    return path


def save_ensemble(
    path: str | Path,
    member_paths: Sequence[str | Path],
    weights: Sequence[float],
    classes: Sequence[str],
    *,
    weighting: str,
    member_names: Sequence[str] | None = None,
    metrics: dict | None = None,
) -> Path:
    path = _manifest_path(path)
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
        "weights": [float(w) for w in weights],
        "members": members,
        "classes": list(classes),
        "metrics": metrics or {},
    }
    path.write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def load_ensemble(path: str | Path) -> tuple[EnsembleModel, dict]:
    """Rebuild a saved ensemble: ``(model, info)``; info has name, classes, weights, members, metrics."""
    from kanjirec.evaluate import load_any

    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ensemble manifest ({e})") from e
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
            f"expected {FORMAT!r} version {VERSION}"
        )
    for key in ("weights", "members", "classes"):
        if key not in manifest:
            raise CheckpointError(f"{path}: ensemble manifest lacks the field {key!r}")
    members = []
    for m in manifest["members"]:
        member_path = (path.parent / m["path"]).resolve()
        if not member_path.exists():
            raise CheckpointError(f"{path}: member {m['name']!r} not found at {member_path}")
        lm = load_any(member_path)
        if lm.classes != manifest["classes"]:
            raise CheckpointError(
                f"{path}: member {member_path} has a class list different from the one the ensemble was "
                "built with (was it retrained?)"
            )
        members.append(lm)
    model = EnsembleModel([lm.model for lm in members], manifest["weights"], manifest["classes"]).eval()
    info = {
        "name": f"ensemble({'+'.join(lm.name for lm in members)})",
        "model": "ensemble",
        "classes": manifest["classes"],
        "weights": manifest["weights"],
        "weighting": manifest.get("weighting"),
        "members": [str(lm.path) for lm in members],
        "metrics": manifest.get("metrics", {}),
    }
    return model, info


# ---------------------------------------------------------------- building one


def build_ensemble(
    runs: Sequence[str | Path],
    data: str | Path,
    out: str | Path,
    *,
    weighting: str = "fitted",
    fit_split: str = "val",
    test_split: str = "test",
    batch_size: int | None = None,
    latency_runs: int = 50,
    threads: int | None = None,
) -> dict:
    """Fit weights on ``fit_split``, save the ensemble to ``out`` and report, on ``test_split``,
    every member, the mean and the fitted ensemble, the gain over the best single member and
    the latency cost. ``threads``: torch threads for the passes; None picks 1 or torch's count
    from the members' measured throughputs (`evaluate.choose_threads`)."""
    from kanjirec.data.store import PackedDataset
    from kanjirec.evaluate import (
        BATCH_SIZE,
        _split_indices,
        _unique_names,
        choose_threads,
        inference_copy,
        load_any,
        measure_speed,
        topk_accuracy,
        torch_threads,
    )

    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    _manifest_path(out)  # fail before the long passes, not after
    loaded = [load_any(r) for r in runs]
    names = _unique_names([lm.name for lm in loaded])
    classes = check_same_classes({n: lm.classes for n, lm in zip(names, loaded, strict=True)})
    models = {n: inference_copy(lm.model) for n, lm in zip(names, loaded, strict=True)}
    ds = PackedDataset.open(data)
    test_idx = _split_indices(ds, test_split)
    sample = ds.images[test_idx[:64]]
    speed = {n: measure_speed(m, sample, runs=latency_runs) for n, m in models.items()}
    with torch_threads(threads if threads is not None else choose_threads(list(speed.values()))):
        weights, test_pred, mapping = _fit_and_test(
            models, ds, classes, weighting, fit_split, test_idx, test_split, batch_size or BATCH_SIZE
        )

    accuracy = {name: topk_accuracy(p) for name, p in test_pred.items()}
    best = max(names, key=lambda n: accuracy[n]["top1"])
    chosen = f"ensemble-{weighting}"

    ensemble_model = EnsembleModel(list(models.values()), weights[weighting], classes).eval()
    best_speed = speed[best]
    ens_speed = measure_speed(ensemble_model, sample, runs=latency_runs)
    report = {
        "dataset": str(ds.path),
        "test_split": test_split,
        "test_samples": int(len(test_idx)),
        "unknown_samples": mapping.unknown_count,
        "weighting": weighting,
        "fit_split": fit_split if weighting == "fitted" else None,
        "weights": {k: dict(zip(names, map(float, w), strict=True)) for k, w in weights.items()},
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
        weights[weighting],
        classes,
        weighting=weighting,
        member_names=names,
        metrics=report,
    )
    return report


def _fit_and_test(models, ds, classes, weighting, fit_split, test_idx, test_split, batch_size):
    """Weights (mean, and fitted on ``fit_split`` if asked) and the test-split predictions of every
    member and of each weighting's ensemble."""
    from kanjirec.evaluate import map_classes, predict

    weights = {"mean": np.full(len(models), 1 / len(models))}
    if weighting == "fitted":
        fit_idx = ds.indices(fit_split)
        fit_t = map_classes(ds.classes, classes, ds.labels[fit_idx]).targets
        known = fit_t >= 0
        if not known.any():
            raise KanjirecError(
                f"{ds.path}: no {fit_split} sample has a character the ensemble knows; fitted weights need "
                f"them (use weighting 'mean')"
            )
        fit_pred = predict(
            models,
            ds.images,
            fit_idx,
            {n: fit_t for n in models},
            batch_size=batch_size,
            desc=f"fit on {fit_split}",
        )
        target_probs = np.stack([fit_pred[n].target_prob[known] for n in models], axis=1)
        weights["fitted"] = fit_weights(target_probs)

    mapping = map_classes(ds.classes, classes, ds.labels[test_idx])
    test_pred = predict(
        models,
        ds.images,
        test_idx,
        {n: mapping.targets for n in models},
        batch_size=batch_size,
        ensembles={f"ensemble-{k}": w for k, w in weights.items()},
        desc=f"evaluate on {test_split}",
    )
    return weights, test_pred, mapping


def ensemble_markdown(r: dict) -> str:
    lines = [
        f"Ensemble saved to {r['path']} ({r['weighting']} weights"
        + (f", fitted on the {r['fit_split']} split" if r["fit_split"] else "")
        + f"); {r['test_split']} split, {r['test_samples']:,} samples.",
        "",
        "| model | top-1 | top-5 | weight (fitted) |",
        "|---|---|---|---|",
    ]
    fitted = r["weights"].get("fitted", {})
    for name, acc in r["accuracy"].items():
        w = f"{fitted[name]:.3f}" if name in fitted else ""
        lines.append(f"| {name} | {100 * acc['top1']:.2f}% | {100 * acc['top5']:.2f}% | {w} |")
    chosen = f"ensemble-{r['weighting']}"
    lines += [
        "",
        f"Gain over the best single model ({r['best_single']}): top-1 {100 * r['gain_top1']:+.2f} points, "
        f"top-5 {100 * r['gain_top5']:+.2f} points.",
        f"Latency at batch 1, one thread: {r['latency_ms'][r['best_single']]:.2f} ms -> "
        f"{r['latency_ms'][chosen]:.2f} ms ({r['latency_ratio']:.2f}x).",
    ]
    return "\n".join(lines) + "\n"
