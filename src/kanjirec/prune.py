"""Structured pruning: whole convolution channels, LSTM hidden units and MLP hidden units removed.

A pruned model is a smaller instance of the same registered model (narrower ``channels``,
``hidden_size``, ``head_hidden``, ... in its config), holding the kept slices of the trained
weights; so it is saved, fine-tuned (through the one training loop, ``TrainConfig.init_weights``),
loaded and exported like any other model, and it really is smaller and faster, not just sparser.

Which units are kept, per layer: the largest by weight magnitude. A convolution channel is
scored by the L2 norm of its filter scaled by its batch norm (``gamma / sqrt(var + eps)``, what
the channel contributes before the bias); a depthwise convolution keeps the channels its input
kept (it filters each channel on its own); an LSTM hidden unit by its four gates' input and
recurrent weights and the recurrent weights reading it; an MLP hidden unit by the product of
the norms of its input row and its output column (and its batch norm's scale, where one follows).
``mobile_cnn`` scores its channels where they are read instead (see `_prune_mobile_cnn`). Widths
of 16 and more are rounded to a multiple of 8, which is what ONNX Runtime's and oneDNN's blocked
kernels process at once.

``prune_model(model, amount)`` removes about ``amount`` (0 < amount < 1) of every prunable width;
the class list, the input and everything not listed in a family's pruner stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kanjirec.errors import KanjirecError
from kanjirec.models import RecognitionModel, create_model
from kanjirec.models.base import SqueezeExcite


class PruneError(KanjirecError):
    """A model that cannot be pruned, or an amount outside (0, 1)."""


def pruned_width(width: int, amount: float) -> int:
    """How many of ``width`` units to keep when removing ``amount`` of them."""
    keep = max(1, round(width * (1 - amount)))
    if width >= 16:
        keep = max(8, 8 * round(keep / 8))
    return min(keep, width)


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` largest scores, in their original order."""
    return scores.topk(keep).indices.sort().values


def _copy(target: torch.Tensor, source: torch.Tensor) -> None:
    if target.shape != source.shape:
        raise PruneError(f"internal: pruned slice {tuple(source.shape)} does not fit {tuple(target.shape)}")
    target.copy_(source)


# ---------------------------------------------------------------- layer slicing


def _bn_scale(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> torch.Tensor:
    return (bn.weight / torch.sqrt(bn.running_var + bn.eps)).abs()


def _batch_norm(old: nn.BatchNorm1d | nn.BatchNorm2d, new: nn.BatchNorm1d | nn.BatchNorm2d, keep) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        _copy(getattr(new, name), getattr(old, name)[keep])
    new.num_batches_tracked.copy_(old.num_batches_tracked)


def _conv_bn(old_conv: nn.Conv2d, old_bn: nn.BatchNorm2d, conv: nn.Conv2d, bn: nn.BatchNorm2d, inputs):
    """Copy the kept output channels of a Conv-BN pair reading ``inputs``; returns the kept channels."""
    if old_conv.groups > 1:
        if old_conv.groups != old_conv.in_channels or old_conv.out_channels != old_conv.in_channels:
            raise PruneError(f"internal: only depthwise grouped convolutions are pruned, not {old_conv}")
        keep = inputs  # one filter per input channel: the channels stand or fall with their input
        _copy(conv.weight, old_conv.weight[keep])
    else:
        keep = _top(old_conv.weight.flatten(1).norm(dim=1) * _bn_scale(old_bn), conv.out_channels)
        _copy(conv.weight, old_conv.weight[keep][:, inputs])
    if old_conv.bias is not None:
        _copy(conv.bias, old_conv.bias[keep])
    _batch_norm(old_bn, bn, keep)
    return keep


def _conv_stack(old: nn.Module, new: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Every Conv2d-BatchNorm2d pair of ``old`` (in order) into the narrower ``new``."""

    def pairs(module: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
        layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        return list(zip(layers[::2], layers[1::2], strict=True))

    for (old_conv, old_bn), (conv, bn) in zip(pairs(old), pairs(new), strict=True):
        inputs = _conv_bn(old_conv, old_bn, conv, bn, inputs)
    return inputs


def _linear(
    old: nn.Linear, new: nn.Linear, inputs: torch.Tensor | None, outputs: torch.Tensor | None
) -> None:
    rows = outputs if outputs is not None else slice(None)
    cols = inputs if inputs is not None else slice(None)
    _copy(new.weight, old.weight[rows][:, cols])
    if old.bias is not None:
        _copy(new.bias, old.bias[rows])


def _hidden_units(
    first: nn.Linear, second_weight: torch.Tensor, keep: int, bn: nn.BatchNorm1d | None = None
) -> torch.Tensor:
    """MLP hidden units to keep: input-row norm x output-column norm (x the batch norm's scale)."""
    scale = _bn_scale(bn) if bn is not None else 1.0
    return _top(first.weight.norm(dim=1) * scale * second_weight.norm(dim=0), keep)


def _squeeze_excite(old: SqueezeExcite, new: SqueezeExcite, inputs: torch.Tensor) -> None:
    """The SE bottleneck on the kept ``inputs`` channels, with its own most important hidden units."""
    hidden = _hidden_units(old.fc1, old.fc2.weight, new.fc1.out_features)
    _linear(old.fc1, new.fc1, inputs, hidden)
    _linear(old.fc2, new.fc2, hidden, inputs)


def _layer_norm(old: nn.LayerNorm, new: nn.LayerNorm, keep: torch.Tensor) -> None:
    _copy(new.weight, old.weight[keep])
    _copy(new.bias, old.bias[keep])


def _lstm(old: nn.LSTM, new: nn.LSTM, inputs: torch.Tensor) -> torch.Tensor:
    """Copy the kept hidden units of each layer and direction; returns the kept output features
    (forward units, then ``hidden_size +`` backward units, as the bidirectional output is laid out)."""
    h_old, h_new = old.hidden_size, new.hidden_size
    directions = ("", "_reverse") if old.bidirectional else ("",)
    for layer in range(old.num_layers):
        kept = []
        for suffix in directions:
            w_ih = getattr(old, f"weight_ih_l{layer}{suffix}")
            w_hh = getattr(old, f"weight_hh_l{layer}{suffix}")
            per_gate = lambda w: w.reshape(4, h_old, -1).norm(dim=(0, 2))  # noqa: E731
            keep = _top(per_gate(w_ih) + per_gate(w_hh) + w_hh.norm(dim=0), h_new)
            rows = torch.cat([gate * h_old + keep for gate in range(4)])
            _copy(getattr(new, f"weight_ih_l{layer}{suffix}"), w_ih[rows][:, inputs])
            _copy(getattr(new, f"weight_hh_l{layer}{suffix}"), w_hh[rows][:, keep])
            for bias in ("bias_ih", "bias_hh"):
                _copy(
                    getattr(new, f"{bias}_l{layer}{suffix}"), getattr(old, f"{bias}_l{layer}{suffix}")[rows]
                )
            kept.append(keep + h_old * len(kept))
        inputs = torch.cat(kept)
    return inputs


def _attention(old: nn.MultiheadAttention, new: nn.MultiheadAttention, inputs, next_weight) -> torch.Tensor:
    """Copy the kept query/key and value dimensions of every head and the kept outputs (scored with
    ``next_weight``, the layer reading them); returns the kept outputs."""
    e, heads = old.embed_dim, old.num_heads
    d, d_new = e // heads, new.embed_dim // heads
    w, b = old.in_proj_weight, old.in_proj_bias
    qk, v = [], []
    for head in range(heads):
        span = torch.arange(head * d, (head + 1) * d)
        qk.append(span[_top(w[span].norm(dim=1) * w[e + span].norm(dim=1), d_new)])
        v.append(span[_top(w[2 * e + span].norm(dim=1) * old.out_proj.weight[:, span].norm(dim=0), d_new)])
    qk, v = torch.cat(qk), torch.cat(v)
    rows = torch.cat([qk, e + qk, 2 * e + v])
    # Attention divides q.k by sqrt(head width): scaling q keeps the kept terms' logits as they were.
    scale = torch.ones(len(rows))
    scale[: len(qk)] = (d_new / d) ** 0.5
    _copy(new.in_proj_weight, w[rows][:, inputs] * scale[:, None])
    _copy(new.in_proj_bias, b[rows] * scale)
    out = _top(old.out_proj.weight.norm(dim=1) * next_weight.norm(dim=0), new.embed_dim)
    _linear(old.out_proj, new.out_proj, v, out)
    return out


# ---------------------------------------------------------------- the families


def _widths(*keys: str) -> Callable[[dict, float], dict]:
    """Narrow the config ``keys`` (a width or a list of widths each) by the pruning amount."""

    def narrow(config: dict, amount: float) -> dict:
        out = dict(config)
        for key in keys:
            value = config[key]
            out[key] = (
                [pruned_width(v, amount) for v in value]
                if isinstance(value, list)
                else pruned_width(value, amount)
            )
        return out

    return narrow


def _narrow_mobile_cnn(config: dict, amount: float) -> dict:
    """The stem, every stage's width (its block count stays) and the embedding."""
    out = _widths("stem", "embedding")(config, amount)
    out["stages"] = [[pruned_width(width, amount), blocks] for width, blocks in config["stages"]]
    return out


def _prune_cnn(old, new) -> None:
    inputs = torch.arange(1)
    for old_block, block in zip(old.features, new.features, strict=True):
        inputs = _conv_stack(old_block, block, inputs)
        _squeeze_excite(old_block[-2], block[-2], inputs)
    hidden = _hidden_units(old.head[1], old.head[5].weight, new.head[1].out_features, old.head[2])
    _linear(old.head[1], new.head[1], inputs, hidden)
    _batch_norm(old.head[2], new.head[2], hidden)
    _linear(old.head[5], new.head[5], hidden, None)


def _relu_mean(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> torch.Tensor:
    """Mean output of BN -> ReLU per channel, taking BN's output as N(beta, gamma^2) (at its running
    mean input BN outputs beta); exact for a channel whose gamma is 0, which outputs relu(beta)."""
    mu, sigma = bn.bias, bn.weight.abs().clamp_min(1e-12)
    z = mu / sigma
    return mu * torch.special.ndtr(z) + sigma * torch.exp(-0.5 * z**2) / (2 * torch.pi) ** 0.5


def _rest(keep: torch.Tensor, width: int) -> torch.Tensor:
    """The indices below ``width`` that ``keep`` leaves out."""
    mask = torch.ones(width, dtype=torch.bool)
    mask[keep] = False
    return mask.nonzero().flatten()


def _mobile_cnn_groups(model: nn.Module) -> list[list]:
    """Per channel group: [its Conv2d, its BatchNorm2d, the SE gating it or None, the separable block
    reading it or None (the head reads it)], the stem's group first."""
    parts = [
        m for m in model.features if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Sequential, SqueezeExcite))
    ]
    groups = [[parts[0], parts[1], None, None]]
    for part in parts[2:]:
        if isinstance(part, SqueezeExcite):
            groups[-1][2] = part
        else:
            groups[-1][3] = part
            groups.append([part[3], part[4], None, None])  # the block's pointwise Conv-BN
    return groups


def _prune_mobile_cnn(old, new) -> None:
    """Channels are scored where they are read, and what removed units fed on average is kept.

    A channel produced by a pointwise conv (or the stem) is read through the next block's depthwise
    filter, which stands or falls with it: its score is that filter's batch norm scale times the
    norm of the next pointwise conv's column reading it (the head's column, for the last stage).
    A trained channel with a small filter often outputs a large constant (its batch norm's shift),
    so the mean a removed unit fed (`_relu_mean`) moves into what read it: the next batch norm's
    running mean, the SE's and the head's biases. On ship2 (96.3% validation top-1), 10% pruned
    without fine-tuning kept 25% with producer-side scores and no means moved, 94.0% this way."""
    inputs, shift = torch.arange(1), None
    for (conv0, bn0, se0, reader0), (conv, bn, se, reader) in zip(
        _mobile_cnn_groups(old), _mobile_cnn_groups(new), strict=True
    ):
        if reader0 is not None:
            reads = reader0[1].weight.abs() * reader0[3].weight.flatten(1).norm(dim=0)
        else:
            reads = bn0.weight.abs() * old.head[0].weight.norm(dim=0)
        keep = _top(reads, conv.out_channels)
        drop = _rest(keep, conv0.out_channels)
        _copy(conv.weight, conv0.weight[keep][:, inputs])
        _batch_norm(bn0, bn, keep)
        if shift is not None:
            bn.running_mean -= shift[keep]
        mean = _relu_mean(bn0)  # of each channel, over the image: what SE and the pooled head read
        if se0 is not None:
            hidden0 = torch.relu(se0.fc1(mean))
            hidden = _hidden_units(se0.fc1, se0.fc2.weight, se.fc1.out_features)
            _linear(se0.fc1, se.fc1, keep, hidden)
            _linear(se0.fc2, se.fc2, hidden, keep)
            gone = _rest(hidden, len(hidden0))
            se.fc1.bias += se0.fc1.weight[hidden][:, drop] @ mean[drop]
            se.fc2.bias += se0.fc2.weight[keep][:, gone] @ hidden0[gone]
            mean = mean * torch.sigmoid(se0.fc2(hidden0))
        if reader0 is not None:
            _conv_bn(reader0[0], reader0[1], reader[0], reader[1], keep)  # the depthwise filter
            shift = reader0[3].weight.flatten(1)[:, drop] @ _relu_mean(reader0[1])[drop]
        inputs = keep
    embed0, embed, bn0 = old.head[0], new.head[0], old.head[1]
    units = _hidden_units(embed0, old.head[4].weight, embed.out_features, bn0)
    _linear(embed0, embed, inputs, units)
    embed.bias += embed0.weight[units][:, drop] @ mean[drop]
    _batch_norm(bn0, new.head[1], units)
    _linear(old.head[4], new.head[4], units, None)
    gone = _rest(units, embed0.out_features)
    new.head[4].bias += old.head[4].weight[:, gone] @ _relu_mean(bn0)[gone]


def _prune_hybrid(old, new) -> None:
    channels = _conv_stack(old.backbone, new.backbone, torch.arange(1))
    glob = _hidden_units(
        old.global_proj[0],
        old.head[0].weight[:, : old.global_proj[0].out_features],
        new.global_proj[0].out_features,
    )
    _linear(old.global_proj[0], new.global_proj[0], channels, glob)
    seq = _lstm(old.lstm, new.lstm, channels)
    head_in = torch.cat([glob, old.global_proj[0].out_features + seq])
    hidden = _hidden_units(old.head[0], old.head[4].weight, new.head[0].out_features, old.head[1])
    _linear(old.head[0], new.head[0], head_in, hidden)
    _batch_norm(old.head[1], new.head[1], hidden)
    _linear(old.head[4], new.head[4], hidden, None)


def _prune_basic_rnn(old, new) -> None:
    new.cell_norm.load_state_dict(old.cell_norm.state_dict())
    embed = _hidden_units(old.embed[0], old.lstm.weight_ih_l0, new.embed[0].out_features)
    _linear(old.embed[0], new.embed[0], None, embed)
    _layer_norm(old.embed[2], new.embed[2], embed)
    seq = _lstm(old.lstm, new.lstm, embed)
    if isinstance(old.pooled_norm, nn.BatchNorm1d):
        _batch_norm(old.pooled_norm, new.pooled_norm, seq)
    _linear(old.head[1], new.head[1], seq, None)


def _prune_radical_attn(old, new) -> None:
    channels = _conv_stack(old.encoder, new.encoder, torch.arange(1))
    _linear(old.detector, new.detector, channels, None)
    _linear(old.nothing_detector, new.nothing_detector, channels, None)
    if not isinstance(old.projection, nn.Identity):
        raise PruneError("radical_attn_rnn: only the 'learned' component encoding is pruned")
    embed = _top(old.embedding.norm(dim=0) * old.lstm.weight_ih_l0.norm(dim=0), new.embedding.shape[1])
    _copy(new.embedding, old.embedding[:, embed])
    _copy(new.nothing_embedding, old.nothing_embedding[embed])
    _layer_norm(old.embedding_norm, new.embedding_norm, embed)
    seq = _lstm(old.lstm, new.lstm, embed)
    score = _hidden_units(
        old.attention_score[0], old.attention_score[2].weight, new.attention_score[0].out_features
    )
    _linear(old.attention_score[0], new.attention_score[0], seq, score)
    _linear(old.attention_score[2], new.attention_score[2], score, None)
    _batch_norm(old.pooled_norm, new.pooled_norm, seq)
    _linear(old.head[1], new.head[1], seq, None)


def _prune_radical_rnn(old, new) -> None:
    channels = _conv_stack(old.encoder, new.encoder, torch.arange(1))
    cells = 16  # the encoder's AdaptiveAvgPool2d(4), flattened channel-major
    flat = (channels[:, None] * cells + torch.arange(cells)).flatten()
    slots = _hidden_units(
        old.image_to_slots[1], old.slot_classifier.weight, new.image_to_slots[1].out_features
    )
    _linear(old.image_to_slots[1], new.image_to_slots[1], flat, slots)
    _copy(new.slot_queries, old.slot_queries[:, slots])
    _linear(old.slot_classifier, new.slot_classifier, slots, None)
    embed = _top(old.embedding.norm(dim=0) * old.lstm.weight_ih_l0.norm(dim=0), new.embedding.shape[1])
    _copy(new.embedding, old.embedding[:, embed])
    _layer_norm(old.embedding_norm, new.embedding_norm, embed)
    seq = _lstm(old.lstm, new.lstm, embed)
    _batch_norm(old.pooled_norm, new.pooled_norm, seq)
    _linear(old.head[1], new.head[1], seq, None)


def _prune_stroke(old, new) -> None:
    first = torch.cat([old.lstm.forward_lstms[0].weight_ih_l0, old.lstm.backward_lstms[0].weight_ih_l0])
    embed = _hidden_units(old.embed[0], first, new.embed[0].out_features)
    _linear(old.embed[0], new.embed[0], None, embed)
    _layer_norm(old.embed[2], new.embed[2], embed)
    inputs, hidden = embed, old.lstm.forward_lstms[0].hidden_size
    for layers in zip(
        old.lstm.forward_lstms,
        old.lstm.backward_lstms,
        new.lstm.forward_lstms,
        new.lstm.backward_lstms,
        strict=True,
    ):
        f_old, b_old, f_new, b_new = layers
        inputs = torch.cat([_lstm(f_old, f_new, inputs), hidden + _lstm(b_old, b_new, inputs)])
    out = _attention(old.attention, new.attention, inputs, old.head[1].weight)
    units = _hidden_units(old.head[1], old.head[4].weight, new.head[1].out_features)
    _linear(old.head[1], new.head[1], out, units)
    _linear(old.head[4], new.head[4], units, None)


# Per family: how its config narrows (config, amount) -> config, and the pruner copying the kept slices.
PRUNERS: dict[str, tuple[Callable[[dict, float], dict], Callable[[nn.Module, nn.Module], None]]] = {
    "cnn": (_widths("channels", "head_hidden"), _prune_cnn),
    "mobile_cnn": (_narrow_mobile_cnn, _prune_mobile_cnn),
    "hybrid_cnn_rnn": (_widths("channels", "global_dim", "hidden_size", "head_hidden"), _prune_hybrid),
    "basic_rnn": (_widths("embed_dim", "hidden_size"), _prune_basic_rnn),
    "radical_attn_rnn": (_widths("channels", "embed_dim", "hidden_size"), _prune_radical_attn),
    "radical_rnn": (_widths("channels", "detector_hidden", "embed_dim", "hidden_size"), _prune_radical_rnn),
    "stroke_rnn": (_widths("hidden_size", "head_hidden"), _prune_stroke),
}


def prune_model(model: RecognitionModel, amount: float) -> RecognitionModel:
    """A narrower copy of ``model`` (eval mode) holding its most important channels and units."""
    if not 0 < amount < 1:
        raise PruneError(f"the pruning amount must lie between 0 and 1 (a fraction to remove), got {amount}")
    if model.name not in PRUNERS:
        raise PruneError(
            f"structured pruning is not implemented for {model.name!r}; prunable: {', '.join(PRUNERS)}"
        )
    if model.classes is None:
        raise PruneError(f"{model.name}: the model carries no class list (build it with classes=...)")
    narrow, copy_slices = PRUNERS[model.name]
    config = narrow(model.config, amount)
    try:
        pruned = create_model(model.name, model.num_classes, classes=list(model.classes), **config)
    except (AssertionError, ValueError) as e:  # e.g. attention heads that no longer divide the width
        raise PruneError(
            f"{model.name} pruned by {amount}: the narrower config {config} is invalid ({e})"
        ) from e
    model.eval()
    with torch.no_grad():
        copy_slices(model, pruned)
    return pruned.eval()


def prune_and_finetune(
    source: str | Path,
    amount: float,
    *,
    epochs: int = 2,
    lr: float | None = None,
    data: str | Path | None = None,
    log=print,
) -> Path:
    """Prune the trained model at ``source`` (a run folder or checkpoint) and fine-tune it with the
    run's own training config for ``epochs`` at ``lr`` (default: a tenth of the run's), through
    `train.train` started from the pruned weights. The fine-tune is a run of its own, next to the
    source run, named ``<run>-pruned<percent>``; returns its folder."""
    from kanjirec.checkpoint import FORMAT, VERSION, atomic_torch_save, load_model
    from kanjirec.config import ConfigError, TrainConfig
    from kanjirec.train import train

    model, info = load_model(source)
    try:
        config = TrainConfig(**info.config)
    except TypeError as e:
        raise PruneError(f"{info.path}: the checkpoint's training config does not read back ({e})") from e
    if not config.model:
        raise PruneError(f"{info.path}: the checkpoint holds no training config to fine-tune with")
    pruned = prune_model(model, amount)
    run_dir = info.path.parent.parent if info.path.parent.name == "checkpoints" else info.path.parent
    config.out_dir = str(run_dir.parent)
    config.run_name = f"{run_dir.name}-pruned{round(100 * amount)}"
    config.model_config = dict(pruned.config)
    config.epochs = epochs
    config.lr = lr if lr is not None else config.lr / 10
    config.data = str(data) if data is not None else config.data
    config.patience = 0
    init = config.run_dir / "init" / "pruned.pt"
    config.init_weights = str(init)
    try:
        config.validate()
    except ConfigError as e:
        raise PruneError(f"fine-tuning {info.path}: {e}") from e
    atomic_torch_save(
        {
            "format": FORMAT,
            "version": VERSION,
            "model_name": pruned.name,
            "model_config": pruned.config,
            "classes": list(info.classes),
            "config": config.to_dict(),
            "model": pruned.state_dict(),
        },
        init,
    )
    log(
        f"pruned {amount:.0%} of every width of {info.model_name}: {model.num_parameters():,} -> "
        f"{pruned.num_parameters():,} parameters; fine-tuning {epochs} epoch(s) in {config.run_dir}"
    )
    train(config, resume="none")
    return config.run_dir
