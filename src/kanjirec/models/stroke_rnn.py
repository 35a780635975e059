"""Stroke RNN (seed section 3b): stroke-like units of the ink -> BiLSTM -> attention -> head.

The units come from ``data.sequences.extract_strokes`` (``extractor="contour"``: the seed's
connected components / external contours; ``"skeleton"``: segments of the thinned ink between
junctions). Labelling and thinning are numpy/scipy and have no ONNX operators, so this model is
split: ``extract_features(images) -> (features, lengths)`` runs outside the graph and
``forward_features(features, lengths) -> logits`` is what ``export_onnx`` exports; the
``Recognizer`` runs the extractor named in the ONNX metadata before the graph. The extraction
is not differentiable with respect to the image (a threshold); every parameter still trains.

The seed packs the sequences (``pack_padded_sequence``); packed sequences do not export to
ONNX, so ``LengthMaskedBiLSTM`` gets the same result with tensor ops: the forward direction
runs over the padded batch (padding only follows the real steps, so it cannot reach them) and
the backward direction runs over each sequence reversed within its own length.

Hook for true pen strokes: ``forward_features`` takes any (B, T, F) rows with lengths, so an
extractor that turns ``PackedDataset.strokes_of`` trajectories into the same rows could train
this model on real stroke order; it is not implemented.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kanjirec.data.sequences import STROKE_FEATURES, extract_strokes
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


@register_model("stroke_rnn")
class StrokeRNN(RecognitionModel):
    """Stroke rows -> Linear(F, hidden/2) -> BiLSTM(hidden, layers) -> 8-head self-attention
    over the real strokes -> max pool -> MLP head."""

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
        self.embed = nn.Sequential(nn.Linear(STROKE_FEATURES[extractor], hidden_size // 2), nn.ReLU())
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

    def extract_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
