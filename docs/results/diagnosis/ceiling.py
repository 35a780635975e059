"""How much a sequence model's input holds: an MLP on the same numbers, flattened, same steps as probe.py.

    PYTHONPATH=src python docs/results/diagnosis/ceiling.py DATA {basic_rnn,stroke_rnn} [--epochs N]
        [--set extractor="'skeleton'"]

basic_rnn reads the 8x8 cells' (mean, std, max, min); stroke_rnn the padded (30, F) stroke features.
"""

from __future__ import annotations

import argparse
import ast

import numpy as np
import torch
from torch import nn

from kanjirec.config import TrainConfig
from kanjirec.data.sequences import grid_cells
from kanjirec.data.store import PackedDataset
from kanjirec.models import create_model, to_float
from kanjirec.train import make_optimizer, make_scheduler


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("model", choices=["basic_rnn", "stroke_rnn"])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--set", nargs="*", default=[], help="model config overrides, key=python-literal")
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ds = PackedDataset.open(a.data)
    train_idx, val_idx = ds.indices("train"), ds.indices("val")
    images = torch.from_numpy(np.stack([np.array(ds.images[int(i)]) for i in range(len(ds))]))[:, None]
    if a.model == "basic_rnn":
        x = grid_cells(to_float(images)).flatten(1)  # (N, 256): the basic_rnn's whole input
    else:
        config = {k: ast.literal_eval(v) for k, v in (s.split("=", 1) for s in a.set)}
        x = create_model("stroke_rnn", len(ds.classes), **config).extract_features(images)[0].flatten(1)
    x = (x - x[train_idx].mean(0)) / (x[train_idx].std(0) + 1e-6)
    y = torch.from_numpy(ds.labels.astype(np.int64))
    model = nn.Sequential(
        nn.Linear(x.shape[1], 512), nn.ReLU(), nn.Dropout(0.3), nn.Linear(512, len(ds.classes))
    )
    cfg = TrainConfig(epochs=a.epochs, batch_size=64, lr=2e-3)
    steps = len(train_idx) // cfg.batch_size
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    scheduler = make_scheduler(optimizer, cfg, steps * cfg.epochs)
    rng = np.random.default_rng(0)
    for epoch in range(cfg.epochs):
        model.train()
        for batch in rng.permutation(train_idx)[: steps * cfg.batch_size].reshape(steps, -1):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch], label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        with torch.no_grad():
            top1 = (model(x[val_idx]).argmax(1) == y[val_idx]).float().mean().item()
        print(f"epoch {epoch + 1}: train loss {loss.item():.3f}, val top-1 {top1:.4f}", flush=True)


if __name__ == "__main__":
    main()
