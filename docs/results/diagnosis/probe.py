"""Training probe for issue 15 item 2: learning curve, gradient norms per module, input statistics.

    PYTHONPATH=src python docs/results/diagnosis/probe.py DATA MODEL [--epochs N] [--set key=value ...]

Trains MODEL (demo width, DEMO_CONFIGS) with the trainer's optimiser, schedule, label smoothing
and clipping, but without augmentation, and prints per epoch: train class loss, val top-1, the
median gradient norm (before clipping) of each top-level module, and once the statistics of the
features the model's recurrent part reads. A diagnostic, not part of the toolkit.
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from collections import defaultdict

import numpy as np
import torch
from torch import nn

from kanjirec.config import TrainConfig
from kanjirec.data.store import PackedDataset
from kanjirec.demo import DEMO_CONFIGS
from kanjirec.models import create_model
from kanjirec.train import make_optimizer, make_scheduler


def feature_stats(model, images: torch.Tensor) -> dict:
    """Statistics of what the recurrent part reads (per feature dimension, over samples and steps)."""
    with torch.no_grad():
        feats = model.extract_features(images)
        if model.name == "basic_rnn":
            from kanjirec.data.sequences import grid_cells

            raw = grid_cells(feats[0], model.grid)
            normed = model.cell_norm(raw.transpose(1, 2)).transpose(1, 2)
            return {
                "raw mean/std/max/min per dim: mean": raw.mean((0, 1)).tolist(),
                "raw per dim: std": raw.std((0, 1)).tolist(),
                "normed per dim: |x| max": normed.abs().amax((0, 1)).tolist(),
                "cells with any ink": (raw[..., 2] > 0).float().mean().item(),
            }
        if model.name == "stroke_rnn":
            x, lengths = feats
            mask = torch.arange(x.shape[1])[None] < lengths[:, None]
            valid = x[mask]
            return {
                "strokes per image: mean, min, max": [
                    lengths.float().mean().item(),
                    lengths.min().item(),
                    lengths.max().item(),
                ],
                "feature mean": valid.mean(0).tolist(),
                "feature std": valid.std(0).tolist(),
            }
        if model.name == "radical_attn_rnn":
            comp, nothing = model._slot_logits(feats[0])
            w = torch.softmax(torch.cat([comp, nothing], 2) * model.mixture_scale, 2)
            out = {}
            if hasattr(model, "slot_embeddings"):  # absent before the fix commit
                out["slot embedding std over batch"] = (
                    model.slot_embeddings(comp, nothing).std(0).mean().item()
                )
            return out | {
                "slots whose top weight is 'nothing'": (w.argmax(2) == w.shape[2] - 1).float().mean().item(),
                "mean top slot weight": w.amax(2).mean().item(),
                "distinct top components over the batch": int(w.argmax(2).unique().numel()),
            }
    return {}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("model")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--set", nargs="*", default=[], help="model config overrides, key=python-literal")
    p.add_argument(
        "--fill", nargs="*", default=[], help="experiments: parameter=value, e.g. nothing_detector.bias=-2"
    )
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ds = PackedDataset.open(a.data)
    train_idx, val_idx = ds.indices("train"), ds.indices("val")
    images = torch.from_numpy(np.stack([np.array(ds.images[int(i)]) for i in range(len(ds))]))[:, None]
    labels = torch.from_numpy(ds.labels.astype(np.int64))
    config = dict(DEMO_CONFIGS.get(a.model, {}))
    config.update({k: ast.literal_eval(v) for k, v in (s.split("=", 1) for s in a.set)})
    model = create_model(a.model, len(ds.classes), classes=list(ds.classes), **config)
    with torch.no_grad():
        for item in a.fill:
            name, value = item.split("=", 1)
            model.get_parameter(name).fill_(float(value))
    cfg = TrainConfig(model=a.model, epochs=a.epochs, batch_size=64, lr=2e-3)
    steps_per_epoch = len(train_idx) // cfg.batch_size
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch * cfg.epochs)
    print(
        json.dumps(
            {
                "model": a.model,
                "config": config,
                "train": len(train_idx),
                "val": len(val_idx),
                "classes": len(ds.classes),
                "params": sum(q.numel() for q in model.parameters()),
            }
        )
    )
    model.eval()
    print("input stats at init:", json.dumps(feature_stats(model, images[val_idx[:256]]), default=float))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.permutation(train_idx)[: steps_per_epoch * cfg.batch_size].reshape(steps_per_epoch, -1)
        losses, norms, extras_sum = [], defaultdict(list), defaultdict(float)
        for batch in order:
            loss, _, extras = model.training_loss(images[batch], labels[batch], cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for name, module in model.named_children():
                grads = [q.grad.norm() ** 2 for q in module.parameters() if q.grad is not None]
                if grads:
                    norms[name].append(torch.stack(grads).sum().sqrt().item())
            norms["total"].append(nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item())
            optimizer.step()
            scheduler.step()
            losses.append(extras.get("class_loss", loss.item()))
            for k, v in extras.items():
                extras_sum[k] += v / steps_per_epoch
        model.eval()
        with torch.no_grad():
            val_top1 = (model(images[val_idx]).argmax(1) == labels[val_idx]).float().mean().item()
        print(
            json.dumps(
                {
                    "epoch": epoch + 1,
                    "train_class_loss": round(float(np.mean(losses)), 3),
                    **{k: round(v, 3) for k, v in extras_sum.items() if k != "class_loss"},
                    "val_top1": round(val_top1, 4),
                    "grad_norm_median": {k: round(float(np.median(v)), 4) for k, v in norms.items()},
                    "seconds": round(time.perf_counter() - t0),
                }
            ),
            flush=True,
        )
    print(
        "input stats after training:", json.dumps(feature_stats(model, images[val_idx[:256]]), default=float)
    )


if __name__ == "__main__":
    main()
