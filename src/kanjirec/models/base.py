"""The base class every registered model derives from, and shared building blocks.

Every model takes a batch of single-channel 64x64 images, ``(B, 1, 64, 64)``, either
``uint8`` (ink 255 on 0, the dataset convention) or float in [0, 1], and returns logits
``(B, num_classes)``. What differs between models (image -> sequence transform, auxiliary
losses) lives in the model, so the trainer, the benchmark and the exporter never name one.

A forward pass is split in two so that a step that cannot live in an ONNX graph (the stroke
model's contour / skeleton extraction) can run outside it:

    forward(images) = forward_features(*extract_features(images))

For most models ``extract_features`` only converts to float and everything else is in the
graph; ``feature_kind`` names what the exported graph takes as input (see ``export.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def to_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images -> float in [0, 1] (divide by 255); float images pass through as float32."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / 255.0
    if not torch.is_floating_point(images):
        raise TypeError(f"images must be uint8 or float, got {images.dtype}")
    return images.to(torch.float32)


def check_images(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"expected images of shape (B, 1, H, W), got {tuple(images.shape)}")


class RecognitionModel(nn.Module):
    """Base class: cross-entropy training, float conversion, the feature/graph split.

    ``name`` and ``config`` are set by ``create_model`` so that a checkpoint can rebuild the
    model exactly: ``create_model(model.name, num_classes, classes=classes, **model.config)``.
    """

    #: What the exported ONNX graph takes: "images" (float (B,1,64,64) in [0,1]) for models whose
    #: whole pipeline is tensor ops; anything else names a feature extractor the Recognizer runs.
    feature_kind: str = "images"
    #: What the model reads: "images", or "pen" (true pen trajectories, ``data.sequences.pen_strokes``
    #: rows: the trainer, evaluation and the Recognizer give it strokes instead of images).
    input_kind: str = "images"
    name: str = ""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.config: dict = {}
        # The class characters in logit order, when known (create_model(classes=...)); export needs them.
        self.classes: tuple[str, ...] | None = None

    # -- the two halves of a forward pass ------------------------------------------------------

    def extract_features(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The part of the pipeline that runs outside the ONNX graph; default: to float."""
        check_images(images)
        return (to_float(images),)

    def forward_features(self, *features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def feature_names(self) -> tuple[str, ...]:
        """Names of the ONNX graph inputs, matching ``extract_features``' outputs."""
        return ("images",)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(*self.extract_features(images))

    # -- training -------------------------------------------------------------------------------

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """``(loss, logits, extras)``; extras are floats the trainer logs (auxiliary losses)."""
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        return loss, logits, {}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class SqueezeExcite(nn.Module):
    """SENet channel attention: global pool -> bottleneck MLP -> sigmoid gate per channel."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


def conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


def _lstm_flops(lstm: nn.LSTM, inputs: torch.Tensor) -> int:
    """Multiply-adds of an LSTM's gate matmuls, counted as 2 FLOPs each (like FlopCounterMode)."""
    steps, batch = (inputs.shape[1], inputs.shape[0]) if lstm.batch_first else inputs.shape[:2]
    if inputs.dim() == 2:
        steps, batch = inputs.shape[0], 1
    directions = 2 if lstm.bidirectional else 1
    h = lstm.hidden_size
    total = 0
    for layer in range(lstm.num_layers):
        in_size = lstm.input_size if layer == 0 else h * directions
        total += directions * steps * batch * 2 * 4 * h * (in_size + h)
    return total


def bilstm(input_size: int, hidden_size: int, num_layers: int, dropout: float) -> nn.LSTM:
    """The batch-first bidirectional LSTM the RNN models share (dropout only between layers)."""
    return nn.LSTM(
        input_size,
        hidden_size,
        num_layers,
        batch_first=True,
        bidirectional=True,
        dropout=dropout if num_layers > 1 else 0.0,
    )


def count_flops(model: RecognitionModel, batch: int = 1, image_size: int = 64) -> int:
    """Forward FLOPs of one batch of blank-free random images, feature extraction excluded.

    torch's FlopCounterMode counts convolutions and matmuls but not the fused LSTM kernel,
    so LSTM gate matmuls are added by formula (4 gates x (input + hidden) x hidden per step
    and direction); elementwise ops are not counted by either.
    """
    from torch.utils.flop_counter import FlopCounterMode

    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(batch, 1, image_size, image_size, generator=generator) > 0.8).to(torch.uint8) * 255
    features = model.extract_features(images)
    lstm_flops = 0

    def hook(module: nn.Module, args: tuple, _output: object) -> None:
        nonlocal lstm_flops
        lstm_flops += _lstm_flops(module, args[0])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.LSTM)]
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model.forward_features(*features)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return counter.get_total_flops() + lstm_flops
