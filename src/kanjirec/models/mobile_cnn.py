"""Mobile CNN: the Plain CNN's idea (convolutions + SE channel attention) in depthwise-separable
blocks, so that a 3,134-class recogniser trains on a CPU and answers in a few milliseconds.

Depthwise-separable convolutions (a 3x3 per-channel filter, then a 1x1 mix) cost about a ninth of
a full 3x3 convolution of the same width (MobileNet, Howard et al. 2017); the stem halves the
64x64 input at once and pools again, since a character's strokes are several pixels wide at 64x64.
The defaults are the shipped recogniser's architecture (about 5.5 MMAC per image, 1.46M parameters at
3,134 classes, most of them in the classifier).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kanjirec.models import register_model
from kanjirec.models.base import RecognitionModel, SqueezeExcite


def separable(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 3, stride=stride, padding=1, groups=in_ch, bias=False),
        nn.BatchNorm2d(in_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_ch, out_ch, 1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


@register_model("mobile_cnn")
class MobileCNN(RecognitionModel):
    """Stem (3x3 conv, stride 2, then a 2x2 max-pool unless ``stem_pool`` is off: 16x16 maps) ->
    stages of separable blocks (the first block of every stage after the first halves the
    resolution), SE at the end of each stage -> global average pool -> an embedding -> the classes."""

    def __init__(
        self,
        num_classes: int,
        *,
        stem: int = 24,
        stages: Sequence[Sequence[int]] = ((64, 1), (128, 2), (256, 2)),
        stem_pool: bool = True,
        embedding: int = 384,
        se_reduction: int = 8,
        dropout: float = 0.2,
    ) -> None:
        super().__init__(num_classes)
        layers: list[nn.Module] = [
            nn.Conv2d(1, stem, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
            *([nn.MaxPool2d(2)] if stem_pool else []),
        ]
        in_ch = stem
        for i, (out_ch, blocks) in enumerate(stages):
            for b in range(blocks):
                layers.append(separable(in_ch, out_ch, 2 if (i > 0 and b == 0) else 1))
                in_ch = out_ch
            layers.append(SqueezeExcite(out_ch, se_reduction))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(in_ch, embedding),
            nn.BatchNorm1d(embedding),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(embedding, num_classes),
        )

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))
