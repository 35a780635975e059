"""Plain CNN (seed section 1): conv blocks with SE channel attention, then a classification head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kanjirec.models import register_model
from kanjirec.models.base import RecognitionModel, SqueezeExcite, conv_bn_relu


@register_model("cnn")
class PlainCNN(RecognitionModel):
    """Blocks of ``convs_per_block`` 3x3 Conv-BN-ReLU + squeeze-excitation + 2x2 max-pool.

    64x64 input, four blocks -> 4x4x256, global average pool -> MLP head whose hidden layer is
    batch-normalised. About 2.9M parameters at 3,036 classes, most of them in the head.

    The batch norm in the head: without it the head read small pooled features (std ~0.4 at init,
    logits ~0.15) and the demo's 300 AdamW steps went by before it separated classes (train top-1
    1% after the first epoch, 37% test after six); normalised as in mobile_cnn, the first epoch
    already reads 8% (docs/results/learning/).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        channels: Sequence[int] = (32, 64, 128, 256),
        convs_per_block: int = 2,
        se_reduction: int = 8,
        head_hidden: int = 512,
        dropout: float = 0.3,
    ) -> None:
        super().__init__(num_classes)
        blocks: list[nn.Module] = []
        in_ch = 1
        for out_ch in channels:
            layers = [conv_bn_relu(in_ch if i == 0 else out_ch, out_ch) for i in range(convs_per_block)]
            blocks.append(nn.Sequential(*layers, SqueezeExcite(out_ch, se_reduction), nn.MaxPool2d(2)))
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_ch, head_hidden),
            nn.BatchNorm1d(head_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(head_hidden, num_classes),
        )

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.features(images)
        return self.head(x.mean(dim=(2, 3)))
