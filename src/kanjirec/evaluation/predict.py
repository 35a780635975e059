"""The evaluation pass: any number of models over the same batches of a packed dataset split.

One pass (`predict`) runs the models over the same batches (optionally distorted by one of
`augment.DISTORTIONS`) and keeps, per model, only what every metric needs: the top-5 classes with
their probabilities and the probability given to the true class. Full logits of a 3,036-class split
would cost 360 MB per model; these summaries cost 1/100 of that and are cached and reused (clean
accuracy, robustness relative to clean, fitting ensemble weights).

Dataset classes are mapped onto a model's classes by character (`map_classes`), so any packed
dataset (a user's imported images included) can be evaluated; samples whose character the model
does not know are counted and reported, never dropped silently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from kanjirec.errors import KanjirecError
from kanjirec.inference import torch_threads
from kanjirec.models.ensemble import Pooling, combine_logits

TOP_K = 5
# Measured on a 2-core AVX-512 Xeon, one thread: batch 64 is 15-50% faster per image than 256 for
# every model (activations of a 256-image batch exceed glibc's mmap threshold and are page-faulted
# afresh on every call).
BATCH_SIZE = 64


def progress(iterable=None, **kw):
    """A progress bar, off when the environment variable CI is set."""
    return tqdm(iterable, disable=bool(os.environ.get("CI")), dynamic_ncols=True, **kw)


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

    ``ensembles`` maps a name to an `models.ensemble.Pooling` over ``models`` (in order): each is
    scored from the members' logits of the same batch, without rerunning them (all models must
    then share one class list; ensembles are scored against the first model's targets).
    ``temperatures``: also keep, per model, the true class's log-probability at each of these
    temperatures (`Predictions.target_logp_t`; what calibration needs, without full logits).

    Models run as given; `inference_copy` makes them faster. With torch set to N > 1 threads,
    N batches run at once on one thread each; results do not depend on N.
    """
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
    with progress(total=n_batches, desc=desc, unit="batch", leave=False) as bar:
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


def split_indices(ds, split: str | None) -> np.ndarray:
    """The indices of a packed dataset's ``split`` (None: all); a clear error if it is empty."""
    idx = ds.indices(split)
    if len(idx) == 0:
        raise KanjirecError(f"{ds.path}: the {split!r} split is empty")
    return idx


def unique_names(names: list[str]) -> list[str]:
    """Model names made unique for one pass: a repeated name gets #2, #3, ..."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out
