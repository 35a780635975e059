"""Zero-shot scoring: a component model ranks characters it was never trained on by their decompositions.

A radical model (``models/radical.py``) predicts which components of its vocabulary an image holds
(``predict_components``); a candidate character scores the Bernoulli log-likelihood of its KanjiVG
decomposition under those probabilities (``decomposition_log_likelihood``, the scoring behind
``score_by_decomposition``). `DecompositionScorer` wraps that as a module whose "logits" are the
candidates' scores, so the one evaluation pass (`evaluation.predict.predict`) ranks them like any
classifier's classes and `metrics.topk_accuracy` counts the hits.

What a model can reach is fixed by its vocabulary, so `reachability` reports it beside the
accuracy: a candidate whose every component is in the vocabulary is *fully* reachable; one with
some is scored on those alone; one with none cannot be scored and ranks last (it counts as a miss).
Candidates whose decompositions coincide over the vocabulary cannot be told apart: their scores
are equal and the order among them is the evaluation pass's (top-k) tie order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kanjirec.decompose import decompose
from kanjirec.errors import KanjirecError

# The score of a candidate with no component in the vocabulary: below any real log-likelihood,
# finite so that softmax over the scores stays defined.
UNSCORABLE = -1e4


class ZeroShotError(KanjirecError):
    """A model that cannot rank characters by components, or a dataset that does not fit the candidates."""


def reachability(candidates: Sequence[str], vocabulary: Sequence[str], kanjivg: dict | None = None) -> dict:
    """How many candidates a vocabulary can express: fully (every component in it), partly, not at all,
    and how many share their decomposition over the vocabulary with another candidate."""
    known = set(vocabulary)
    decomposed = [decompose(c, kanjivg) for c in candidates]
    full = [all(x in known for x in d) for d in decomposed]
    none = [not any(x in known for x in d) for d in decomposed]
    rows = [frozenset(x for x in d if x in known) for d in decomposed]
    counts: dict[frozenset, int] = {}
    for r in rows:
        counts[r] = counts.get(r, 0) + 1
    shared = sum(counts[r] > 1 for r, n in zip(rows, none, strict=True) if not n)
    n = len(candidates)
    return {
        "candidates": n,
        "vocabulary": len(known),
        "fully_reachable": sum(full) / n,
        "partly_reachable": (n - sum(full) - sum(none)) / n,
        "unreachable": sum(none) / n,
        "indistinguishable": shared / n,
        "unreachable_chars": "".join(c for c, u in zip(candidates, none, strict=True) if u),
    }


class DecompositionScorer(nn.Module):
    """images -> (B, K) decomposition log-likelihoods of ``candidates`` under a component model."""

    def __init__(self, model: nn.Module, candidates: Sequence[str], kanjivg: dict | None = None) -> None:
        super().__init__()
        if not hasattr(model, "predict_components"):
            raise ZeroShotError(
                f"model {getattr(model, 'name', type(model).__name__)!r} predicts no components; "
                "zero-shot needs a radical model (radical_rnn or radical_attn_rnn)"
            )
        self.model = model
        known = set(model.vocabulary)
        scorable = [any(x in known for x in decompose(c, kanjivg)) for c in candidates]
        self.scorable = torch.tensor(scorable)
        chars = [c for c, s in zip(candidates, scorable, strict=True) if s]
        if not chars:
            raise ZeroShotError("no candidate has a component in the model's vocabulary")
        self.register_buffer("targets", model.decomposition_targets(chars))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from kanjirec.models.radical import decomposition_log_likelihood

        scores = decomposition_log_likelihood(self.model.predict_components(images), self.targets)
        out = torch.full((len(images), len(self.scorable)), UNSCORABLE, dtype=scores.dtype)
        out[:, self.scorable] = scores
        return out


def zero_shot_accuracy(
    model: nn.Module, data: str | Path, candidates: Sequence[str], batch_size: int = 64
) -> dict:
    """Top-1/top-5 of ``model`` ranking ``candidates`` on every sample of the packed dataset ``data``,
    whose classes must all be candidates; also on the samples of fully reachable classes."""
    from kanjirec.data.kanjivg import load_kanjivg
    from kanjirec.data.store import PackedDataset
    from kanjirec.evaluation.metrics import topk_accuracy
    from kanjirec.evaluation.predict import map_classes, predict
    from kanjirec.inference import inference_copy

    kvg = load_kanjivg()
    ds = PackedDataset.open(data)
    idx = ds.indices(None)
    mapping = map_classes(ds.classes, candidates, ds.labels[idx])
    if mapping.unknown_count:
        raise ZeroShotError(
            f"{ds.path}: {mapping.unknown_count} samples of characters outside the candidates "
            f"(e.g. {''.join(list(mapping.unknown)[:10])})"
        )
    scorer = DecompositionScorer(inference_copy(model), candidates, kvg)  # a copy: the model is left as is
    pred = predict(
        {"zero-shot": scorer},
        ds.images,
        idx,
        {"zero-shot": mapping.targets},
        batch_size=batch_size,
        desc="zero-shot",
    )["zero-shot"]
    known = set(model.vocabulary)
    full = np.array([all(x in known for x in decompose(c, kvg)) for c in candidates])
    rows = np.flatnonzero(full[pred.targets])
    on_full = topk_accuracy(pred.subset(rows)) if len(rows) else {"top1": None, "top5": None}
    acc = topk_accuracy(pred)
    return {
        "samples": len(idx),
        "top1": acc["top1"],
        "top5": acc["top5"],
        "fully_reachable_samples": len(rows),
        "fully_reachable_top1": on_full["top1"],
        "fully_reachable_top5": on_full["top5"],
        # How many candidates are anyone's first choice: 1 means a ranking that ignores the image.
        "distinct_top1": len(np.unique(pred.topk_idx[:, 0])),
        "reachability": reachability(candidates, model.vocabulary, kvg),
    }
