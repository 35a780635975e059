"""Stroke RNN (seed section 3b): one row per stroke -> BiLSTM -> attention -> head.

Two kinds of input, one architecture (``extractor``):

* online, ``"pen"``: true pen trajectories, one row per pen-down stroke in writing order
  (``data.sequences.pen_strokes``: the stroke resampled to 8 points, its length and the pen-up move
  before it). The model reads strokes, not images (``input_kind = "pen"``): it trains on the stored
  trajectories of synthetic samples (``data synth --with-strokes``) or on fresh synthetic ones, and
  the Recognizer and ``POST /recognize`` give it the drawing's strokes. Calling it on images is an
  error.
* offline, ``"contour"`` or ``"skeleton"``: stroke-like units guessed from the ink of an image
  (``data.sequences.extract_strokes``: connected components, or segments of the thinned ink).
  Labelling and thinning are numpy/scipy and have no ONNX operators, so ``extract_features(images)
  -> (features, lengths)`` runs outside the graph and ``forward_features(features, lengths) ->
  logits`` is what ``export_onnx`` exports; the ``Recognizer`` runs the extractor named in the ONNX
  metadata before the graph.

The seed packs the sequences (``pack_padded_sequence``); packed sequences do not export to
ONNX, so ``LengthMaskedBiLSTM`` gets the same result with tensor ops: the forward direction
runs over the padded batch (padding only follows the real steps, so it cannot reach them) and
the backward direction runs over each sequence reversed within its own length.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kanjirec.data.sequences import STROKE_FEATURES, extract_strokes, pen_strokes
from kanjirec.errors import KanjirecError
from kanjirec.models import register_model
from kanjirec.models.base import RecognitionModel, check_images


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse the first ``lengths[b]`` steps of each (B, T, D) sequence; padding stays in place."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    last = lengths[:, None] - 1
    index = torch.where(steps <= last, last - steps, steps)
    return torch.gather(x, 1, index[:, :, None].expand_as(x))


class LengthMaskedBiLSTM(nn.Module):
    """A bidirectional multi-layer LSTM over padded sequences, equal to running it on packed ones."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        sizes = [input_size] + [2 * hidden_size] * (num_layers - 1)
        self.forward_lstms = nn.ModuleList(nn.LSTM(s, hidden_size, batch_first=True) for s in sizes)
        self.backward_lstms = nn.ModuleList(nn.LSTM(s, hidden_size, batch_first=True) for s in sizes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        for i, (fwd, bwd) in enumerate(zip(self.forward_lstms, self.backward_lstms, strict=True)):
            if i:
                x = self.dropout(x)
            out_f, _ = fwd(x)
            out_b, _ = bwd(reverse_within_length(x, lengths))
            x = torch.cat([out_f, reverse_within_length(out_b, lengths)], dim=2)
        return x


class PenModelInputError(KanjirecError):
    """An online (pen) model was given images: it reads strokes."""


@register_model("stroke_rnn")
class StrokeRNN(RecognitionModel):
    """Stroke rows -> Linear(F, hidden/2) + LayerNorm -> BiLSTM(hidden, layers) -> 8-head
    self-attention over the real strokes -> max pool -> MLP head."""

    def __init__(
        self,
        num_classes: int,
        *,
        extractor: str = "contour",
        max_strokes: int = 30,
        hidden_size: int = 256,
        num_layers: int = 2,
        num_heads: int = 8,
        head_hidden: int = 256,
        dropout: float = 0.3,
    ) -> None:
        super().__init__(num_classes)
        if extractor not in STROKE_FEATURES:
            raise ValueError(
                f"unknown stroke extractor {extractor!r}; use one of {', '.join(STROKE_FEATURES)}"
            )
        self.extractor = extractor
        self.max_strokes = max_strokes
        self.feature_kind = f"strokes:{extractor}:{max_strokes}"
        self.input_kind = "pen" if extractor == "pen" else "images"
        # LayerNorm: the raw rows are small and uneven in scale; without it the embedding's gradient
        # started 70x below the head's and the model barely moved in the demo's steps
        # (docs/results/diagnosis.md, stroke_rnn).
        self.embed = nn.Sequential(
            nn.Linear(STROKE_FEATURES[extractor], hidden_size // 2), nn.ReLU(), nn.LayerNorm(hidden_size // 2)
        )
        self.lstm = LengthMaskedBiLSTM(hidden_size // 2, hidden_size, num_layers, dropout)
        self.attention = nn.MultiheadAttention(2 * hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(2 * hidden_size, head_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(head_hidden, num_classes),
        )

    def feature_names(self) -> tuple[str, ...]:
        return ("strokes", "lengths")

    def pen_features(self, samples) -> tuple[torch.Tensor, torch.Tensor]:
        """Pen trajectories (per sample, its strokes as (k, 2) x, y arrays in writing order) -> the
        inputs of ``forward`` for an online model: (features, lengths)."""
        features, lengths = pen_strokes(samples, self.max_strokes)
        return torch.from_numpy(features), torch.from_numpy(lengths)

    def forward(self, inputs) -> torch.Tensor:
        """Images (offline), or the (features, lengths) pair of ``pen_features`` (online)."""
        if self.input_kind == "pen":
            if isinstance(inputs, torch.Tensor):
                raise PenModelInputError(
                    "this stroke_rnn reads pen trajectories (extractor 'pen'), not images: give it strokes"
                )
            return self.forward_features(*inputs)
        return super().forward(inputs)

    def extract_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.input_kind == "pen":
            raise PenModelInputError(
                "this stroke_rnn reads pen trajectories (extractor 'pen'), not images: give it strokes"
            )
        check_images(images)
        if images.dtype != torch.uint8:
            # The extractors threshold the dataset convention; float [0, 1] input is scaled back.
            images = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8)
        features, lengths = extract_strokes(
            np.ascontiguousarray(images.cpu().numpy()), self.extractor, self.max_strokes
        )
        return torch.from_numpy(features).to(images.device), torch.from_numpy(lengths).to(images.device)

    def forward_features(self, strokes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # A blank image has no strokes; it is read as one all-zero stroke.
        lengths = lengths.clamp(min=1)
        padding = torch.arange(strokes.shape[1], device=strokes.device)[None, :] >= lengths[:, None]
        x = self.lstm(self.embed(strokes), lengths)
        attended, _ = self.attention(x, x, x, key_padding_mask=padding, need_weights=False)
        attended = attended.masked_fill(padding[:, :, None], -1e4)
        return self.head(attended.amax(dim=1))
