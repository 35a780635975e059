"""Basic RNN (seed section 3a): an 8x8 grid of cells read row by row by a BiLSTM."""

from __future__ import annotations

import torch
from torch import nn

from kanjirec.data.sequences import grid_cells
from kanjirec.models import register_model
from kanjirec.models.base import RecognitionModel, bilstm


@register_model("basic_rnn")
class GridRNN(RecognitionModel):
    """Cell statistics mean/std/max/min; one step per grid row (its cells left to right, 4 x grid
    numbers) -> Linear+ReLU embedding -> BiLSTM over the rows, top to bottom -> mean pool -> head.

    One step per row, not per cell: with one cell per step the LSTM read 64 steps of 4 numbers each
    through a shared 4 -> embed_dim map and stayed near chance for the demo's 6 epochs (13.75% on 40
    classes), while an MLP on the very same 256 numbers reached 92.5%; read by rows it reached 61.25%
    in the same steps, with 8 LSTM steps instead of 64 (docs/results/diagnosis.md).

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
        pooled_norm: bool = True,
    ) -> None:
        super().__init__(num_classes)
        self.grid = grid
        # The four raw statistics are small (a cell's mean ink is ~0.1) and mostly zero on background
        # cells; fed raw they left the LSTM near chance for the first epochs. Each statistic is
        # standardised over the image's own cells (per sample, so no batch or rank dependence and
        # batch 1 behaves like training), and LayerNorm keeps the LSTM's input on a unit scale.
        self.cell_norm = nn.InstanceNorm1d(4, affine=True)
        self.embed = nn.Sequential(nn.Linear(4 * grid, embed_dim), nn.ReLU(), nn.LayerNorm(embed_dim))
        self.lstm = bilstm(embed_dim, hidden_size, num_layers, dropout)
        # The LSTM's pooled outputs are small (logits ~0.05 at init): batch-normalised, the classifier
        # separates classes from the first steps (docs/results/learning/). pooled_norm=False is the
        # model before that fix, and a model whose training does not depend on the batch's make-up.
        self.pooled_norm = nn.BatchNorm1d(2 * hidden_size) if pooled_norm else nn.Identity()
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden_size, num_classes))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        cells = grid_cells(images, self.grid)  # (B, S, 4)
        # InstanceNorm1d wants channels second: standardise each of the 4 statistics over the cells.
        cells = self.cell_norm(cells.transpose(1, 2)).transpose(1, 2)
        rows = cells.reshape(cells.shape[0], self.grid, 4 * self.grid)  # row-major cells -> (B, rows, 4*grid)
        out, _ = self.lstm(self.embed(rows))
        return self.head(self.pooled_norm(out.mean(dim=1)))
