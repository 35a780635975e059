"""Basic RNN (seed section 3a): an 8x8 grid of cells read as a sequence by a BiLSTM."""

from __future__ import annotations

import torch
from torch import nn

from kanjirec.data.sequences import grid_cells
from kanjirec.models import register_model
from kanjirec.models.base import RecognitionModel


@register_model("basic_rnn")
class GridRNN(RecognitionModel):
    """Cells in reading order (row-major), features mean/std/max/min -> Linear+ReLU embedding ->
    BiLSTM -> mean pool -> head.

    The grid statistics are tensor ops, so the whole model lives in the exported graph.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        grid: int = 8,
        embed_dim: int = 64,
        hidden_size: int = 192,
        num_layers: int = 2,
        dropout: float = 0.3,
    ) -> None:
        super().__init__(num_classes)
        self.grid = grid
        # Four raw statistics, mostly zero on background cells, train slowly straight into an LSTM.
        self.embed = nn.Sequential(nn.Linear(4, embed_dim), nn.ReLU())
        self.lstm = nn.LSTM(
            embed_dim,
            hidden_size,
            num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden_size, num_classes))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(grid_cells(images, self.grid)))
        return self.head(out.mean(dim=1))
