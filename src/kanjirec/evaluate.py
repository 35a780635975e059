"""Metrics, the robustness suite and the comparison of every model.

One evaluation pass (`predict`) runs any number of models over the same batches
of a packed dataset split (optionally distorted by one of `augment.DISTORTIONS`)
and keeps, per model, only what every metric needs: the top-5 classes with their
probabilities and the probability given to the true class. Full logits of a
3,036-class split would cost 360 MB per model; these summaries cost 1/100 of that
and are cached and reused (clean accuracy, robustness relative to clean, fitting
ensemble weights).

Dataset classes are mapped onto a model's classes by character, so any packed
dataset (a user's imported images included) can be evaluated; samples whose
character the model does not know are counted and reported, never dropped
silently.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from kanjirec.errors import KanjirecError

if TYPE_CHECKING:
    from kanjirec.ensemble import Pooling

TOP_K = 5
ECE_BINS = 15
# Measured on a 2-core AVX-512 Xeon, one thread: batch 64 is 15-50% faster per image than 256 for
# every model (activations of a 256-image batch exceed glibc's mmap threshold and are page-faulted
# afresh on every call).
BATCH_SIZE = 64
# The robustness suite runs 33 distortion sets on one fixed subsample. At 200 samples per set it
# costs about a quarter of the clean pass of a full comparison (six default-size models, a
# 31,879-image test split; `kanjirec bench compare`), which is what a 10-minute budget on 2 cores
# leaves it. The score (accuracy relative to clean, on the same samples) averages 6,600 predictions.
DEFAULT_ROBUSTNESS_SAMPLES = 200
ROBUSTNESS_SEED = 1234


def _progress(iterable=None, **kw):
    return tqdm(iterable, disable=bool(os.environ.get("CI")), dynamic_ncols=True, **kw)


# ---------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    """A model ready to evaluate, whatever it was loaded from."""

    name: str  # the run folder's name, else the model name
    model: nn.Module
    classes: list[str]
    path: Path | None = None  # what it was loaded from (run dir, checkpoint file, ensemble manifest)
    kind: str = ""  # the registered model name, or "ensemble"
    checkpoint: Path | None = None  # the file holding the weights
    run_dir: Path | None = None


class OnnxModel(nn.Module):
    """An exported model (`recognizer.Recognizer`) behind the same call as a torch model.

    It runs on as many ONNX Runtime threads as torch is set to use (`torch_threads`), so that
    `measure_speed`'s one-thread latency and the evaluation passes' one thread per batch worker
    hold for it too; a session per thread count is opened on first use."""

    def __init__(self, recognizer):
        super().__init__()
        self.recognizer = recognizer
        self._sessions = {}

    def _for_threads(self, threads: int):
        if threads not in self._sessions:
            from kanjirec.recognizer import Recognizer

            self._sessions[threads] = (
                self.recognizer
                if self.recognizer.threads == threads
                else Recognizer.load(self.recognizer.path, self.recognizer.top_k, threads=threads)
            )
        return self._sessions[threads]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        recognizer = self._for_threads(torch.get_num_threads())
        return torch.from_numpy(recognizer.logits(images[:, 0].numpy()))

    def __deepcopy__(self, memo) -> OnnxModel:
        # Sessions hold no per-call state, so a copy (e.g. inside an ensemble) may share them.
        copied = OnnxModel(self.recognizer)
        copied._sessions = self._sessions
        return copied


def load_any(path: str | Path) -> LoadedModel:
    """A training run directory, a checkpoint file, an exported .onnx file or an ensemble manifest."""
    from kanjirec.ensemble import is_ensemble_file, load_ensemble

    path = Path(path)
    if path.suffix == ".onnx":
        from kanjirec.recognizer import Recognizer

        rec = Recognizer.load(path, threads=torch.get_num_threads())
        return LoadedModel(path.stem, OnnxModel(rec), list(rec.classes), path, "onnx", None, None)
    if is_ensemble_file(path):
        model, info = load_ensemble(path)
        return LoadedModel(info["name"], model, list(info["classes"]), path, "ensemble", path, None)
    from kanjirec.checkpoint import load_model

    model, info = load_model(path)
    model.eval()
    file = Path(info.path)
    run_dir = file.parent.parent if file.parent.name == "checkpoints" else None
    name = run_dir.name if run_dir is not None else info.model_name
    return LoadedModel(name, model, list(info.classes), path, info.model_name, file, run_dir)


# ---------------------------------------------------------------- fast inference


def _fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution computing ``bn(conv(x))`` with the batch norm's running statistics."""
    weight = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    scale = weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale[:, None, None, None])
        folded.bias.copy_((bias - bn.running_mean) * scale + shift)
    return folded


def inference_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` that computes the same logits faster on a CPU.

    Every ``Conv2d`` directly followed by a ``BatchNorm2d`` inside an ``nn.Sequential`` becomes
    one convolution (the norm's running statistics folded into weights and bias), and a model
    with convolutions is stored channels_last, which oneDNN's convolutions and pooling run
    about twice as fast on this project's models. A model without convolutions is returned as
    is; the caller's model is never modified.
    """
    if getattr(model, "_inference_copy", False):
        return model
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return model.eval()
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        keys = list(seq._modules)
        for a, b in itertools.pairwise(keys):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                seq._modules[a] = _fold_batch_norm(conv, bn)
                seq._modules[b] = nn.Identity()
    model = model.to(memory_format=torch.channels_last)
    model._inference_copy = True
    return model


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (None: leave torch's setting alone)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- class mapping


@dataclass
class ClassMapping:
    """Dataset samples expressed in a model's class indices."""

    targets: np.ndarray  # int64 (n,): the model's index of each sample's character, -1 if unknown to it
    unknown: dict[str, int]  # character -> samples whose character the model does not know

    @property
    def unknown_count(self) -> int:
        return int(sum(self.unknown.values()))


def map_classes(
    dataset_classes: Sequence[str], model_classes: Sequence[str], labels: np.ndarray
) -> ClassMapping:
    """Map dataset labels (indices into ``dataset_classes``) onto ``model_classes`` by character."""
    model_index = {c: i for i, c in enumerate(model_classes)}
    lut = np.array([model_index.get(c, -1) for c in dataset_classes], np.int64)
    targets = lut[np.asarray(labels, np.int64)]
    missing = targets < 0
    unknown: dict[str, int] = {}
    if missing.any():
        counts = np.bincount(np.asarray(labels)[missing], minlength=len(dataset_classes))
        unknown = {dataset_classes[k]: int(counts[k]) for k in np.flatnonzero(counts)}
    return ClassMapping(targets=targets, unknown=unknown)


# ---------------------------------------------------------------- the evaluation pass


@dataclass
class Predictions:
    """What one model predicted for a list of samples (all samples, known or not)."""

    topk_idx: np.ndarray  # int32 (n, k), model class indices, most probable first
    topk_prob: np.ndarray  # float32 (n, k)
    target_prob: np.ndarray  # float32 (n,), probability of the true class; 0 where the target is unknown
    targets: np.ndarray  # int64 (n,), model class index of the true class, -1 if the model lacks it
    # float32 (n, T): log-probability of the true class with the logits divided by each of the
    # ``temperatures`` given to `predict` (0 where the target is unknown); None if none were given.
    target_logp_t: np.ndarray | None = None

    @property
    def known(self) -> np.ndarray:
        return self.targets >= 0

    @property
    def correct(self) -> np.ndarray:
        """bool (n,): top-1 correct (False where the target is unknown)."""
        return self.topk_idx[:, 0] == self.targets

    def subset(self, rows: np.ndarray) -> Predictions:
        return Predictions(
            self.topk_idx[rows],
            self.topk_prob[rows],
            self.target_prob[rows],
            self.targets[rows],
            None if self.target_logp_t is None else self.target_logp_t[rows],
        )


class _Accumulator:
    def __init__(self, targets: np.ndarray, k: int, temperatures: np.ndarray | None = None):
        n = len(targets)
        self.targets = np.asarray(targets, np.int64)
        self.k = k
        self.topk_idx = np.empty((n, k), np.int32)
        self.topk_prob = np.empty((n, k), np.float32)
        self.target_prob = np.zeros(n, np.float32)
        self.temperatures = (
            None if temperatures is None else torch.as_tensor(temperatures, dtype=torch.float32)
        )
        self.target_logp_t = None if temperatures is None else np.zeros((n, len(temperatures)), np.float32)

    def update(self, start: int, logits: torch.Tensor) -> None:
        end = start + len(logits)
        k = min(self.k, logits.shape[1])
        log_probs = torch.log_softmax(logits.float(), dim=1)
        top_lp, top_i = log_probs.topk(k, dim=1)
        self.topk_idx[start:end, :k] = top_i.numpy()
        self.topk_prob[start:end, :k] = top_lp.exp().numpy()
        if k < self.k:  # fewer classes than k: pad with impossible entries
            self.topk_idx[start:end, k:] = -1
            self.topk_prob[start:end, k:] = 0
        t = torch.from_numpy(self.targets[start:end])
        known = t >= 0
        tp = log_probs.gather(1, t.clamp(min=0)[:, None])[:, 0].exp()
        self.target_prob[start:end] = torch.where(known, tp, torch.zeros_like(tp)).numpy()
        if self.temperatures is not None:
            # One exp per logit and temperature; 8 temperatures at a time keep the (T, B, C)
            # temporaries a few MB.
            z = logits.float()
            target = z.gather(1, t.clamp(min=0)[:, None])[:, 0]
            for a in range(0, len(self.temperatures), 8):
                temps = self.temperatures[a : a + 8, None]
                lp = target[None] / temps - torch.logsumexp(z[None] / temps[..., None], dim=2)  # (T, B)
                lp = torch.where(known, lp, torch.zeros_like(lp))
                self.target_logp_t[start:end, a : a + 8] = lp.T.numpy()

    def result(self) -> Predictions:
        return Predictions(self.topk_idx, self.topk_prob, self.target_prob, self.targets, self.target_logp_t)


def predict(
    models: Mapping[str, nn.Module],
    images,
    indices: np.ndarray,
    targets: Mapping[str, np.ndarray],
    *,
    distortion=None,
    strength: float = 0.0,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    k: int = TOP_K,
    ensembles: Mapping[str, Pooling] | None = None,
    temperatures: np.ndarray | None = None,
    desc: str = "predict",
) -> dict[str, Predictions]:
    """Run every model over ``images[indices]`` in batches; one pass serves all models.

    ``images`` is anything indexable by an int array returning uint8 (n, S, S), e.g.
    `PackedDataset.images`. ``targets[name]`` holds the model's class index per sample
    (-1: unknown to that model). With a ``distortion`` (an `augment.Distortion`) each
    batch is distorted once, from a generator seeded with ``seed`` and the batch's position
    (`batch_generator`), and every model sees the same distorted images.

    ``ensembles`` maps a name to an `ensemble.Pooling` over ``models`` (in order): each is
    scored from the members' logits of the same batch, without rerunning them (all models must
    then share one class list; ensembles are scored against the first model's targets).
    ``temperatures``: also keep, per model, the true class's log-probability at each of these
    temperatures (`Predictions.target_logp_t`; what calibration needs, without full logits).

    Models run as given; `inference_copy` makes them faster. With torch set to N > 1 threads,
    N batches run at once on one thread each; results do not depend on N.
    """
    from kanjirec.ensemble import combine_logits

    ensembles = {
        name: (
            torch.as_tensor(p.weights, dtype=torch.float32),
            torch.as_tensor(p.temperatures, dtype=torch.float32),
        )
        for name, p in (ensembles or {}).items()
    }
    indices = np.asarray(indices, np.int64)
    acc = {name: _Accumulator(targets[name], k, temperatures) for name in models}
    first_targets = targets[next(iter(models))]
    acc.update({name: _Accumulator(first_targets, k) for name in ensembles})
    for name in models:
        if len(targets[name]) != len(indices):
            raise ValueError(f"{name}: {len(targets[name])} targets for {len(indices)} samples")
        models[name].eval()
    # Batches as equal as possible, none over batch_size (200 samples: 4 x 50, not 3 x 64 + 8), so
    # that parallel workers finish together; they depend on the sample count, not the worker count.
    n_batches = -(-len(indices) // batch_size)
    bounds = [b * len(indices) // n_batches for b in range(n_batches + 1)]

    def run(b: int) -> None:
        start = bounds[b]
        rows = indices[start : bounds[b + 1]]
        batch = torch.from_numpy(np.ascontiguousarray(images[rows])).unsqueeze(1)
        with torch.inference_mode():  # thread-local: entered in the thread that runs the batch
            if distortion is not None:
                batch = distortion.apply(batch, strength, batch_generator(seed, b))
            logits = {name: model(batch) for name, model in models.items()}
            for name, z in logits.items():
                acc[name].update(start, z)
            for name, (w, t) in ensembles.items():
                acc[name].update(start, combine_logits(list(logits.values()), w, t))

    workers = min(torch.get_num_threads(), n_batches)
    with _progress(total=n_batches, desc=desc, unit="batch", leave=False) as bar:
        if workers <= 1:
            for b in range(n_batches):
                run(b)
                bar.update()
        else:
            # Whole batches on parallel threads, each op on one thread: the models' small matmuls
            # and LSTM steps parallelise better across batches than inside one.
            # Each batch writes its own rows of the accumulators.
            with torch_threads(1), ThreadPoolExecutor(workers) as pool:
                for _ in pool.map(run, range(n_batches)):
                    bar.update()
    return {name: a.result() for name, a in acc.items()}


def batch_generator(seed: int, batch: int) -> torch.Generator:
    """The distortion generator of batch number ``batch``: the same whatever order batches run in."""
    state = np.random.SeedSequence([seed, batch]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# ---------------------------------------------------------------- metrics


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


# ---------------------------------------------------------------- evaluate one model


def _split_indices(ds, split: str | None) -> np.ndarray:
    idx = ds.indices(split)
    if len(idx) == 0:
        raise KanjirecError(f"{ds.path}: the {split!r} split is empty")
    return idx


def evaluate(
    model_path: str | Path | LoadedModel,
    data: str | Path,
    *,
    split: str | None = "test",
    out: str | Path | None = None,
    batch_size: int = BATCH_SIZE,
    top_pairs: int = 12,
    threads: int | None = None,
) -> dict:
    """Evaluate one model (run dir, checkpoint or ensemble) on a packed dataset split.

    Returns the report dict; with ``out`` also writes report.json, report.md,
    confusions.png and reliability.png there. ``threads``: torch intra-op threads for the pass
    (None: torch's setting).
    """
    from kanjirec.data.store import PackedDataset

    lm = model_path if isinstance(model_path, LoadedModel) else load_any(model_path)
    ds = PackedDataset.open(data)
    idx = _split_indices(ds, split)
    mapping = map_classes(ds.classes, lm.classes, ds.labels[idx])
    if mapping.unknown_count == len(idx):
        raise KanjirecError(
            f"{ds.path}: none of the {len(idx)} {split or 'all'} samples has a character that model "
            f"{lm.name} knows (dataset characters e.g. {''.join(list(mapping.unknown)[:10])})"
        )
    with torch_threads(threads):
        pred = predict(
            {lm.name: inference_copy(lm.model)},
            ds.images,
            idx,
            {lm.name: mapping.targets},
            batch_size=batch_size,
            desc=f"evaluate {lm.name}",
        )[lm.name]
    report = metrics_report(pred, lm.classes, ds.writer_ids[idx], ds.writers, top_pairs=top_pairs)
    report.update(
        model=lm.name,
        model_path=str(lm.path) if lm.path else None,
        dataset=str(ds.path),
        split=split or "all",
        samples=int(len(idx)),
        known_samples=int(pred.known.sum()),
        unknown={"samples": mapping.unknown_count, "characters": mapping.unknown},
    )
    if out is not None:
        from kanjirec import eval_plots

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        (out / "report.md").write_text(report_markdown(report), encoding="utf-8")
        pairs = confused_pairs(pred, top=top_pairs)
        eval_plots.plot_confusions(
            out / "confusions.png", pairs, lm.classes, ds.images, idx, pred.topk_prob[:, 0], title=lm.name
        )
        eval_plots.plot_reliability(out / "reliability.png", report["calibration"], title=lm.name)
    return report


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
            {"writer": writer_names[w], "samples": int(writer_n[w]), "top1": float(writer_acc[w])}
            for w in np.flatnonzero(writer_n)
        ],
        "confused_pairs": [
            {"true": classes[p.true], "predicted": classes[p.predicted], "count": p.count} for p in pairs
        ],
    }


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def report_markdown(r: dict) -> str:
    lines = [
        f"# Evaluation of {r['model']}",
        "",
        f"Dataset `{r['dataset']}`, split {r['split']}: {r['samples']:,} samples, "
        f"{r['known_samples']:,} with a character the model knows.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| top-1 | {_pct(r['top1'])} |",
        f"| top-5 | {_pct(r['top5'])} |",
        f"| mean per-class top-1 | {_pct(r['mean_class_accuracy'])} |",
        f"| expected calibration error ({r['calibration']['bins']} bins) | {100 * r['ece']:.2f} points |",
        "",
    ]
    unk = r["unknown"]
    if unk["samples"]:
        chars = sorted(unk["characters"].items(), key=lambda kv: -kv[1])
        lines += [
            f"**{unk['samples']:,} samples of {len(chars)} characters the model does not know** were not "
            "scored: " + ", ".join(f"{c} ({n})" for c, n in chars[:30]) + (" ..." if len(chars) > 30 else ""),
            "",
        ]
    if r["confused_pairs"]:
        lines += ["## Most confused pairs", "", "| true | read as | count |", "|---|---|---|"]
        lines += [f"| {p['true']} | {p['predicted']} | {p['count']} |" for p in r["confused_pairs"]]
        lines.append("")
    worst = sorted(r["per_class"], key=lambda c: (c["top1"], -c["samples"]))[:20]
    lines += ["## Worst classes", "", "| char | samples | top-1 |", "|---|---|---|"]
    lines += [f"| {c['char']} | {c['samples']} | {_pct(c['top1'])} |" for c in worst]
    writers = r["per_writer"]
    if writers:
        accs = np.array([w["top1"] for w in writers])
        lines += [
            "",
            "## Writers",
            "",
            f"{len(writers)} writers; top-1 per writer: min {_pct(accs.min())}, median "
            f"{_pct(float(np.median(accs)))}, max {_pct(accs.max())}.",
            "",
            "| writer | samples | top-1 |",
            "|---|---|---|",
        ]
        lines += [
            f"| {w['writer']} | {w['samples']} | {_pct(w['top1'])} |"
            for w in sorted(writers, key=lambda w: w["top1"])[:10]
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- robustness


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
    for n, (dname, level, strength) in enumerate(_progress(sets, desc="robustness", unit="set")):
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


# ---------------------------------------------------------------- cost measurements


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def weights_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer: the weights as stored, without optimizer state."""
    return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))


def count_flops(model: nn.Module, image_size: int = 64) -> int | None:
    """Forward FLOPs on one image (`models.base.count_flops`); an ensemble sums its members'.

    None for an ONNX file, whose graph torch cannot count."""
    from kanjirec.ensemble import EnsembleModel
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
import kanjirec.checkpoint, kanjirec.ensemble
from kanjirec.evaluate import load_any
from kanjirec.models import list_models
list_models()  # imports every model family's code and what it imports: not the model's memory
if sys.argv[1].endswith((".onnx", ".json")):
    import kanjirec.recognizer, onnxruntime
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
        _progress(total=len(paths), desc="memory", unit="model") as bar,
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


# ---------------------------------------------------------------- comparison


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
    names = _unique_names([lm.name for lm in loaded])
    ds = PackedDataset.open(data)
    idx = _split_indices(ds, split)
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
    for name, lm in _progress(list(zip(names, loaded, strict=True)), desc="cost", unit="model"):
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
        from kanjirec import eval_plots

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
        (out / "compare.md").write_text(compare_markdown(result), encoding="utf-8")
        eval_plots.plot_tradeoff(
            out / "accuracy_vs_latency.png", rows, "latency_ms", "latency at batch 1, 1 thread (ms)"
        )
        eval_plots.plot_tradeoff(out / "accuracy_vs_size.png", rows, "weights_mib", "weights (MiB)")
        if robust:
            eval_plots.plot_robustness(out / "robustness.png", robust)
    return result


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


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
            f"| {row['name']} | {_pct(row['top1'])} | {_pct(row['top5'])} | {row['parameters']:,} | "
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
