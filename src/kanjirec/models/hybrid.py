"""Hybrid CNN-RNN (seed section 3d): a CNN backbone read two ways, globally and as a 4x4 sequence."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kanjirec.models import register_model
from kanjirec.models.base import RecognitionModel, bilstm


@register_model("hybrid_cnn_rnn")
class HybridCNNRNN(RecognitionModel):
    """Four Conv-BN-ReLU-MaxPool blocks (32->64->128->256), adaptive pool to 4x4, then

    global path: mean of the 16 cells -> Linear(256, 512) -> ReLU;
    sequence path: the 16 cells (row-major) -> BiLSTM(256, 2 layers) -> mean pool (512);
    concat (1024) -> 256, batch-normalised -> classes (the head's batch norm: see models.cnn).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        channels: Sequence[int] = (32, 64, 128, 256),
        global_dim: int = 512,
        hidden_size: int = 256,
        num_layers: int = 2,
        head_hidden: int = 256,
        dropout: float = 0.3,
    ) -> None:
        super().__init__(num_classes)
        blocks: list[nn.Module] = []
        in_ch = 1
        for out_ch in channels:
            blocks += [
                nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_ch = out_ch
        self.backbone = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(4))
        self.global_proj = nn.Sequential(nn.Linear(in_ch, global_dim), nn.ReLU(inplace=True))
        self.lstm = bilstm(in_ch, hidden_size, num_layers, dropout)
        self.head = nn.Sequential(
            nn.Linear(global_dim + 2 * hidden_size, head_hidden),
            nn.BatchNorm1d(head_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(head_hidden, num_classes),
        )

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        cells = self.backbone(images).flatten(2).transpose(1, 2)  # (B, 16, C)
        global_features = self.global_proj(cells.mean(dim=1))
        seq, _ = self.lstm(cells)
        return self.head(torch.cat([global_features, seq.mean(dim=1)], dim=1))
