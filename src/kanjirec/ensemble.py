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

A saved ensemble is a small JSON manifest: the member checkpoints' paths (relative
to the manifest, so the folder can move as a whole), the weights and the class
list. `load_ensemble` rebuilds it with one call, and `kanjirec evaluate` accepts it
wherever it accepts a run. Every member must have the same class list, character
for character.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kanjirec.errors import CheckpointError, KanjirecError

FORMAT = "kanjirec-ensemble"
# Version 2 added per-member temperatures; a version-1 manifest had none, i.e. all 1.
VERSION = 2
# "best": fit, then keep whichever of the fitted and the plain mean is more accurate on the fit split.
WEIGHTINGS = ("best", "fitted", "mean")
# Calibration temperatures tried: 0.05 to 20, log-spaced, 8% apart (NLL is flat near its minimum).
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 79)).astype(np.float32)


@dataclass(frozen=True, eq=False)  # array fields: no element-wise __eq__
class Pooling:
    """How an ensemble combines its members: weights (summing to 1) and a temperature per member."""

    weights: np.ndarray
    temperatures: np.ndarray

    @classmethod
    def mean(cls, members: int) -> Pooling:
        return cls(np.full(members, 1 / members), np.ones(members))


def combine_logits(
    logits: Sequence[torch.Tensor], weights: torch.Tensor, temperatures: torch.Tensor | None = None
) -> torch.Tensor:
    """log(sum_m w_m softmax(logits_m / T_m)): the ensemble's log-probabilities, usable as logits."""
    if temperatures is None:
        temperatures = torch.ones(len(logits))
    log_probs = torch.stack(
        [torch.log_softmax(z.float() / t, dim=1) for z, t in zip(logits, temperatures.float(), strict=True)]
    )  # (M, B, C)
    log_w = torch.log(weights.to(log_probs.dtype).clamp(min=1e-30))[:, None, None]
    return torch.logsumexp(log_probs + log_w, dim=0)


class EnsembleModel(nn.Module):
    """Weighted average of calibrated member probabilities; forward returns log-probabilities as logits.

    It has the two halves of `RecognitionModel`'s forward pass, so the one exporter writes it as a
    single ONNX graph: its inputs are the distinct inputs its members' graphs take (``images``, and
    ``strokes``/``lengths`` for a stroke member), each computed once."""

    name = "ensemble"

    def __init__(
        self,
        members: Sequence[nn.Module],
        weights: Sequence[float],
        classes: Sequence[str],
        temperatures: Sequence[float] | None = None,
    ):
        super().__init__()
        if len(members) != len(weights):
            raise ValueError(f"{len(members)} members but {len(weights)} weights")
        w = torch.as_tensor(np.asarray(weights, np.float64), dtype=torch.float32)
        if bool((w < 0).any()) or not torch.isclose(w.sum(), torch.tensor(1.0), atol=1e-4):
            raise ValueError(f"ensemble weights must be non-negative and sum to 1, got {list(weights)}")
        t = torch.ones(len(members)) if temperatures is None else torch.as_tensor(temperatures).float()
        if t.shape != (len(members),) or not bool((t > 0).all()):
            raise ValueError(f"need one positive temperature per member, got {list(map(float, t))}")
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", w)
        self.register_buffer("temperatures", t)
        self.classes = list(classes)
        self.num_classes = len(classes)
        # The distinct graph inputs, in order of first use; member m reads inputs self._slots[m].
        kinds = [getattr(m, "feature_kind", "images") for m in members]
        self.feature_kinds = list(dict.fromkeys(kinds))
        self.feature_kind = ",".join(self.feature_kinds)
        self._kind_members = [kinds.index(k) for k in self.feature_kinds]  # who computes each kind
        slots: dict[str, tuple[int, ...]] = {}
        for k, m in zip(self.feature_kinds, self._kind_members, strict=True):
            size = len(members[m].feature_names()) if hasattr(members[m], "feature_names") else 1
            first = sum(map(len, slots.values()))
            slots[k] = tuple(range(first, first + size))
        self._slots = [slots[k] for k in kinds]

    @property
    def config(self) -> dict:
        return {
            "members": [{"model": m.name, "config": getattr(m, "config", {})} for m in self.members],
            "weights": [float(w) for w in self.weights],
            "temperatures": [float(t) for t in self.temperatures],
        }

    def extract_features(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(f for m in self._kind_members for f in self.members[m].extract_features(images))

    def feature_names(self) -> tuple[str, ...]:
        names = [n for m in self._kind_members for n in self.members[m].feature_names()]
        # Two stroke members with different extractors would both name their inputs "strokes".
        seen: dict[str, int] = {}
        out = []
        for n in names:
            seen[n] = seen.get(n, 0) + 1
            out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
        return tuple(out)

    def forward_features(self, *features: torch.Tensor) -> torch.Tensor:
        logits = [
            m.forward_features(*(features[i] for i in slots))
            for m, slots in zip(self.members, self._slots, strict=True)
        ]
        return combine_logits(logits, self.weights, self.temperatures)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Members called whole: an ONNX-file member (evaluate.OnnxModel) has no feature halves.
        return combine_logits([m(images) for m in self.members], self.weights, self.temperatures)


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
    temperature (`evaluate.predict(..., temperatures=...)`). A grid end is a real answer: on a
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
    pooling: Pooling,
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
        "weights": [float(w) for w in pooling.weights],
        "temperatures": [float(t) for t in pooling.temperatures],
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
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: an ensemble manifest is a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT or manifest.get("version") not in (1, VERSION):
        raise CheckpointError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
            f"expected {FORMAT!r} version 1 or {VERSION}"
        )
    required = ("weights", "members", "classes") + (("temperatures",) if manifest["version"] >= 2 else ())
    for key in required:
        if key not in manifest:
            raise CheckpointError(f"{path}: ensemble manifest lacks the field {key!r}")
    if manifest["version"] == 1 and "temperatures" in manifest:
        raise CheckpointError(f"{path}: a version-1 ensemble manifest has no field 'temperatures'")
    if not isinstance(manifest["members"], list) or not manifest["members"]:
        raise CheckpointError(f"{path}: field 'members' must be a non-empty list")
    n = len(manifest["members"])
    weights = _numbers(path, manifest, "weights", n)
    temperatures = _numbers(path, manifest, "temperatures", n) if "temperatures" in manifest else [1.0] * n
    classes = manifest["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{path}: field 'classes' must be a non-empty list of characters")
    members = []
    for k, m in enumerate(manifest["members"]):
        if not isinstance(m, dict) or not isinstance(m.get("path"), str) or not m["path"]:
            raise CheckpointError(f"{path}: member {k} must be an object with a 'path' string, got {m!r}")
        member_path = (path.parent / m["path"]).resolve()
        name = m.get("name", m["path"])
        if not member_path.exists():
            raise CheckpointError(f"{path}: member {name!r} not found at {member_path}")
        if is_ensemble_file(member_path):  # also what would make a manifest list itself, endlessly
            raise CheckpointError(
                f"{path}: member {name!r} at {member_path} is itself an ensemble; list its members instead"
            )
        lm = load_any(member_path)
        if lm.classes != manifest["classes"]:
            raise CheckpointError(
                f"{path}: member {member_path} has a class list different from the one the ensemble was "
                "built with (was it retrained?)"
            )
        members.append(lm)
    try:
        model = EnsembleModel([lm.model for lm in members], weights, manifest["classes"], temperatures).eval()
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    info = {
        "name": f"ensemble({'+'.join(lm.name for lm in members)})",
        "model": "ensemble",
        "classes": manifest["classes"],
        "weights": weights,
        "temperatures": temperatures,
        "weighting": manifest.get("weighting"),
        "members": [str(lm.path) for lm in members],
        "metrics": manifest.get("metrics", {}),
    }
    return model, info


def _numbers(path: Path, manifest: dict, key: str, n: int) -> list[float]:
    """Field ``key`` of a manifest as ``n`` finite numbers, or a CheckpointError naming it."""
    value = manifest[key]
    if (
        not isinstance(value, list)
        or len(value) != n
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
    ):
        raise CheckpointError(f"{path}: field {key!r} must be a list of {n} finite numbers (one per member)")
    return [float(v) for v in value]


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
    ``threads``: torch threads for the passes (batches run at once, `evaluate.predict`); None:
    torch's current count."""
    from kanjirec.data.store import PackedDataset
    from kanjirec.evaluate import (
        BATCH_SIZE,
        _split_indices,
        _unique_names,
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
    from kanjirec.evaluate import map_classes, predict, topk_accuracy

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
