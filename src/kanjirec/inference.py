"""Running a loaded model fast on a CPU: batch norm folded into convolutions, channels_last, and a
scoped torch thread count. Used by evaluation, ensembles and the recogniser alike."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def _fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution computing ``bn(conv(x))`` with the batch norm's running statistics."""
    weight = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    scale = weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale[:, None, None, None])
        folded.bias.copy_((bias - bn.running_mean) * scale + shift)
    return folded


def inference_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` that computes the same logits faster on a CPU.

    Every ``Conv2d`` directly followed by a ``BatchNorm2d`` inside an ``nn.Sequential`` becomes
    one convolution (the norm's running statistics folded into weights and bias), and a model
    with convolutions is stored channels_last, which oneDNN's convolutions and pooling run
    about twice as fast on this project's models. A model without convolutions is returned as
    is; the caller's model is never modified.
    """
    if getattr(model, "_inference_copy", False):
        return model
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return model.eval()
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        keys = list(seq._modules)
        for a, b in itertools.pairwise(keys):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                seq._modules[a] = _fold_batch_norm(conv, bn)
                seq._modules[b] = nn.Identity()
    model = model.to(memory_format=torch.channels_last)
    model._inference_copy = True
    return model


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (None: leave torch's setting alone)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
