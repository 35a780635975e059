"""The ensemble model: a weighted average of calibrated member probabilities.

Members are any loaded models (`loading.load_any`); how the weights and temperatures are fitted is
`ensemble.py`, how an ensemble is saved and loaded is `loading.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


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
        # Members called whole: an ONNX-file member (loading.OnnxModel) has no feature halves.
        return combine_logits([m(images) for m in self.members], self.weights, self.temperatures)
