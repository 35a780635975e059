"""The one training loop, for every registered model (nanoGPT style: read it top to bottom).

    kanjirec train --model cnn --data dataset [--config run.toml] [--epochs 5 --set head_hidden=256]
    torchrun --nproc-per-node 4 -m kanjirec.cli train --model cnn --data dataset   # DDP

What differs between models lives in ``model.training_loss``; the loop never names a model.

Determinism: the data order of an epoch is ``randperm`` seeded by (seed, epoch), so the
position in an epoch is just a step index; augmentation draws from a generator seeded by
(seed, epoch, step, rank), in the main process, so workers do not matter. Together with the
RNG states in the checkpoint, a CPU run killed mid-epoch and resumed reaches bit for bit the
weights and metrics of an uninterrupted run.

Scale-out: under ``torchrun`` each rank takes its slice of every global batch (``batch_size``
is the global batch), gradients are averaged by DDP (gloo on CPU, nccl on GPU), validation
counts are summed over ranks, and only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from kanjirec.augment import augment_batch
from kanjirec.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    check_compatible,
    read_checkpoint,
    restore_rng_state,
)
from kanjirec.config import ConfigError, TrainConfig, save_config
from kanjirec.data.store import PackedDataset
from kanjirec.errors import DatasetFormatError

# ---------------------------------------------------------------- building blocks


@dataclass
class Processes:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def writer(self) -> bool:
        return self.rank == 0


def setup_processes(config: TrainConfig) -> Processes:
    """One process, or one DDP rank per process when started by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ConfigError(f"device {config.device!r} asked for, but CUDA is not available")
    if world == 1:
        device = torch.device(
            "cpu" if not want_cuda else "cuda" if config.device == "auto" else config.device
        )
        return Processes(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return Processes(rank=rank, world=world, device=device)


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default; off on CPU (bf16 matmuls there are slow on most chips)."""
    if config.amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[config.amp]


def epoch_order(indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The training order of one epoch: a permutation fixed by (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return indices[torch.randperm(len(indices), generator=g).numpy()]


def step_generator(seed: int, epoch: int, step: int, rank: int) -> torch.Generator:
    """The augmentation generator of one step on one rank."""
    key = np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(key) & 0x7FFF_FFFF_FFFF_FFFF)


class BatchReader(Dataset):
    """Item i is batch i of a precomputed index array: (inputs, int64 labels (b,)), the inputs being
    uint8 images (b,1,S,S), or for a pen model (``pen_rows`` > 0, its ``max_strokes``) the
    (features, lengths) of the samples' stored pen trajectories (`data.sequences.pen_strokes`).

    The packed dataset is opened lazily in each process and never pickled (its memory-mapped
    shards would be copied into every worker).
    """

    def __init__(self, data_path: str | Path, batches: list[np.ndarray], pen_rows: int = 0) -> None:
        self.data_path = Path(data_path)
        self.batches = batches
        self.pen_rows = pen_rows
        self._ds: PackedDataset | None = None

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._ds is None:
            self._ds = PackedDataset.open(self.data_path)
        idx = self.batches[i]
        labels = torch.from_numpy(self._ds.labels[idx].astype(np.int64))
        if self.pen_rows:
            from kanjirec.data.sequences import pen_strokes

            features, lengths = pen_strokes([self._ds.strokes_of(j) for j in idx], self.pen_rows)
            return (torch.from_numpy(features), torch.from_numpy(lengths)), labels
        return torch.from_numpy(self._ds.images[idx])[:, None], labels

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ds": None}


def batch_loader(config: TrainConfig, batches: Dataset, device: torch.device) -> DataLoader:
    """Batches (a `BatchReader` of the train split or fresh `SynthBatches`) loaded in worker processes."""
    # An own generator keeps the DataLoader from drawing on the global torch RNG (bitwise resume).
    return DataLoader(
        batches,
        batch_size=None,
        shuffle=False,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
        persistent_workers=False,
    )


def pen_rows(model: nn.Module) -> int:
    """The rows of a pen model's input (its ``max_strokes``); 0 for a model that reads images."""
    return model.max_strokes if getattr(model, "input_kind", "images") == "pen" else 0


def to_device(inputs, device: torch.device):
    """A batch's model inputs (a tensor, or a tuple of tensors for a pen model) on ``device``."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device, non_blocking=True)
    return tuple(t.to(device, non_blocking=True) for t in inputs)


def pen_samples(
    config: TrainConfig, ds: PackedDataset, splits: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, ...]:
    """A pen model's train, val and test samples: those with stored pen strokes (print-font samples
    have none); clear errors when the data cannot feed it."""
    if not ds.has_strokes:
        raise DatasetFormatError(
            f"{ds.path}: model {config.model!r} reads pen trajectories and this dataset stores none; "
            "synthesise it with `kanjirec data synth --with-strokes`"
        )
    if config.pen_order_shuffle and not config.synth_per_epoch:
        raise ConfigError("pen_order_shuffle varies fresh synthetic samples: set synth_per_epoch too")
    if config.synth_per_epoch and config.synth_font_fraction > 0:
        raise ConfigError(
            f"model {config.model!r} reads pen trajectories, which print fonts do not have: "
            "set synth_font_fraction = 0 for its fresh synthetic batches"
        )
    has = ds.stroke_counts() > 0
    return tuple(idx[has[idx]] for idx in splits)


def epoch_batches(
    config: TrainConfig,
    ds: PackedDataset,
    train_idx: np.ndarray,
    epoch: int,
    first_step: int,
    steps_per_epoch: int,
    procs: Processes,
    pen: int = 0,
) -> Dataset:
    """The rest of an epoch's batches from ``first_step`` on, this rank's slice of each global batch:
    fresh synthetic samples, or the train split in the (seed, epoch) order."""
    local_batch = config.batch_size // procs.world
    if config.synth_per_epoch:
        from kanjirec.data.stream import SynthBatches

        return SynthBatches(
            ds.classes,
            seed=config.seed,
            epoch=epoch,
            rank=procs.rank,
            steps=steps_per_epoch,
            batch_size=local_batch,
            font_fraction=config.synth_font_fraction,
            font_set=config.synth_fonts,
            first=first_step,
            size=ds.images.shape[-1],
            pen_rows=pen,
            pen_order_shuffle=config.pen_order_shuffle,
        )
    order = epoch_order(train_idx, config.seed, epoch)[: steps_per_epoch * config.batch_size]
    batches = order.reshape(steps_per_epoch, config.batch_size)
    batches = batches[first_step:, procs.rank * local_batch : (procs.rank + 1) * local_batch]
    return BatchReader(config.data, list(batches), pen)


class LossStep(nn.Module):
    """Routes ``training_loss`` through ``forward`` so that DDP sees the call and syncs gradients."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs, labels: torch.Tensor, label_smoothing: float):
        return self.model.training_loss(inputs, labels, label_smoothing=label_smoothing)


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and normalisation weights (tensors with fewer than 2 dims)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, fused=device.type == "cuda")


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    warmup = int(config.warmup_fraction * total_steps)
    if config.schedule == "onecycle":
        if total_steps < 4:
            raise ConfigError(f"the one-cycle schedule needs at least 4 steps, this run has {total_steps}")
        # torch's phases need at least 2 rising steps (a shorter phase divides by zero)
        pct_start = min(max(warmup, 2), total_steps - 2) / total_steps
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=pct_start
        )

    def cosine_with_warmup(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup)


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    config: TrainConfig,
    indices: np.ndarray,
    procs: Processes,
    autocast_dtype: torch.dtype | None,
) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy on ``indices``; each rank scores its share, counts are summed."""
    mine = indices[procs.rank :: procs.world]
    batches = [mine[i : i + config.eval_batch_size] for i in range(0, len(mine), config.eval_batch_size)]
    sums = torch.zeros(4, dtype=torch.float64, device=procs.device)  # loss, top1, top5, count
    was_training = model.training
    model.eval()
    reader = BatchReader(config.data, batches, pen_rows(model))
    for inputs, labels in batch_loader(config, reader, procs.device):
        inputs = to_device(inputs, procs.device)
        labels = labels.to(procs.device, non_blocking=True)
        with torch.autocast(procs.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(inputs).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        sums += torch.stack(
            [
                F.cross_entropy(logits, labels, reduction="sum").double(),
                hits[:, 0].sum().double(),
                hits.any(dim=1).sum().double(),
                torch.tensor(float(len(labels)), dtype=torch.float64, device=procs.device),
            ]
        )
    model.train(was_training)
    if procs.world > 1:
        dist.all_reduce(sums)
    loss, top1, top5, count = sums.tolist()
    n = max(count, 1.0)
    return {"loss": loss / n, "top1": top1 / n, "top5": top5 / n, "samples": int(count)}


class RunningSums:
    """Per-epoch sums of the train metrics; loss and hits stay on the device (no sync every step)."""

    def __init__(self, device: torch.device, saved: dict[str, float] | None = None) -> None:
        saved = dict(saved or {"loss": 0.0, "correct": 0.0, "count": 0.0})
        self.on_device = torch.tensor(
            [saved.pop("loss"), saved.pop("correct")], dtype=torch.float64, device=device
        )
        self.host = saved  # count and the model's extras (already floats)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, extras: dict) -> None:
        n = len(labels)
        hits = (logits.argmax(dim=1) == labels).sum()
        self.on_device += torch.stack([loss.detach().double() * n, hits.double()])
        self.host["count"] += n
        for key, value in extras.items():
            self.host[key] = self.host.get(key, 0.0) + float(value) * n

    def totals(self) -> dict[str, float]:
        loss, correct = self.on_device.tolist()
        return {"loss": loss, "correct": correct, **self.host}


def _all_reduce_sums(sums: dict[str, float], procs: Processes) -> dict[str, float]:
    if procs.world == 1:
        return dict(sums)
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=procs.device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def write_results(run_dir: Path, history: list[dict], title: str) -> None:
    from kanjirec.plots import plot_training_curves

    results = run_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
    plot_training_curves(history, results / "training_curves.png", title=title)


def load_initial_weights(model: nn.Module, config: TrainConfig, classes: list[str]) -> None:
    """Start a fresh run from ``config.init_weights`` (e.g. a pruned model to fine-tune).

    The checkpoint must hold this run's model, config and class list; weights load strictly."""
    from kanjirec.checkpoint import load_model

    source, info = load_model(config.init_weights)
    wanted = (config.model, list(classes), config.model_config)
    if (info.model_name, info.classes, info.model_config) != wanted:
        raise ConfigError(
            f"init_weights {config.init_weights}: holds {info.model_name!r} with {len(info.classes)} classes "
            f"and config {info.model_config}; this run trains {config.model!r} with {len(classes)} classes "
            f"and config {config.model_config}"
        )
    model.load_state_dict(source.state_dict(), strict=True)


# ---------------------------------------------------------------- the loop


def train(config: TrainConfig, resume: str = "auto") -> dict[str, Any]:
    """Train ``config.model`` on ``config.data``; returns the final metrics (also in results/).

    ``resume``: ``"auto"`` continues from the run's latest checkpoint if there is one,
    ``"none"`` starts afresh (removing the run's old checkpoints), a path resumes from that file.
    """
    from kanjirec.models import create_model

    config.validate()
    procs = setup_processes(config)
    device = procs.device
    quiet = bool(os.environ.get("CI")) or not procs.writer
    log = print if procs.writer else (lambda *a, **k: None)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    # -- data: uint8 images until the model; the split is stored with the dataset
    ds = PackedDataset.open(config.data)
    train_idx, val_idx, test_idx = ds.indices("train"), ds.indices("val"), ds.indices("test")
    model = create_model(config.model, len(ds.classes), classes=ds.classes, **config.model_config).to(device)
    config.model_config = dict(model.config)  # resolved: every keyword argument, defaults included
    pen = pen_rows(model)
    if pen:
        train_idx, val_idx, test_idx = pen_samples(config, ds, (train_idx, val_idx, test_idx))
    elif config.pen_order_shuffle:
        raise ConfigError(f"pen_order_shuffle: model {config.model!r} reads images, not pen trajectories")
    if config.batch_size % procs.world:
        raise ConfigError(f"batch_size {config.batch_size} does not split evenly over {procs.world} ranks")
    if config.synth_per_epoch:
        steps_per_epoch = config.synth_per_epoch // config.batch_size
        train_count = steps_per_epoch * config.batch_size
    else:
        steps_per_epoch = len(train_idx) // config.batch_size  # the last partial batch is dropped
        train_count = len(train_idx)
    if steps_per_epoch == 0:
        raise DatasetFormatError(
            f"{ds.path}: the train split has {len(train_idx)} samples, fewer than one batch "
            f"of {config.batch_size}; lower --batch-size"
        )
    if len(val_idx) == 0:
        raise DatasetFormatError(f"{ds.path}: the val split is empty; best.pt and early stopping need it")
    total_steps = steps_per_epoch * config.epochs

    # -- optimizer, schedule, precision
    optimizer = make_optimizer(model, config, device)
    scheduler = make_scheduler(optimizer, config, total_steps)
    autocast_dtype = amp_dtype(config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    loss_step = LossStep(model)
    if procs.world > 1:
        loss_step = nn.parallel.DistributedDataParallel(
            loss_step, device_ids=[device.index] if device.type == "cuda" else None
        )

    # -- the run's state, fresh or from a checkpoint
    run_dir = config.run_dir
    manager = CheckpointManager(run_dir / "checkpoints", keep_last=config.keep_last, enabled=procs.writer)
    epoch, step_in_epoch, global_step = 0, 0, 0
    history: list[dict[str, Any]] = []
    best_acc, best_epoch, epochs_since_best, stopped_early = -1.0, 0, 0, False
    sums = RunningSums(device)
    source = None if resume == "none" else (manager.latest() if resume == "auto" else Path(resume))
    if resume == "none":
        removed = manager.clear()
        if removed:
            log(f"--no-resume: removed {removed} old checkpoint(s) from {manager.directory}")
    if source is not None:
        state = read_checkpoint(source)  # on the CPU: RNG states must stay there; weights are copied over
        check_compatible(state, source, config.model, ds.classes, config.to_dict())
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        history = list(state["history"])
        best_acc, best_epoch = state["best_acc"], state["best_epoch"]
        epochs_since_best, stopped_early = state["epochs_since_best"], state["stopped_early"]
        # The saved sums are totals over all ranks: one rank carries them so the epoch's all-reduce adds once.
        saved = state["train_sums"] if procs.writer else dict.fromkeys(state["train_sums"], 0.0)
        sums = RunningSums(device, saved)
        log(f"resumed from {source} (epoch {epoch + 1}, step {step_in_epoch}/{steps_per_epoch})")
    elif config.init_weights:
        load_initial_weights(model, config, ds.classes)
        log(f"starting from the weights of {config.init_weights}")
    if procs.writer:
        save_config(config, run_dir / "config" / "config.yaml")
    log(
        f"training {config.model} ({sum(p.numel() for p in model.parameters()):,} parameters) on "
        f"{train_count:,} {'fresh synthetic ' if config.synth_per_epoch else ''}samples per epoch, "
        f"{len(ds.classes):,} classes; {steps_per_epoch} steps/epoch, "
        f"device {device}{f' x {procs.world} ranks' if procs.world > 1 else ''}, "
        f"amp {autocast_dtype or 'off'}; run folder {run_dir}"
    )

    def save_checkpoint(metrics: dict[str, Any] | None = None, is_best: bool = False) -> None:
        train_sums = _all_reduce_sums(sums.totals(), procs)  # collective: every rank takes part
        if not procs.writer:
            return
        state = {
            "model_name": config.model,
            "model_config": config.model_config,
            "classes": ds.classes,
            "config": config.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": capture_rng_state(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "history": history,
            "train_sums": train_sums,
            "best_acc": best_acc,
            "best_epoch": best_epoch,
            "epochs_since_best": epochs_since_best,
            "stopped_early": stopped_early,
            "metrics": metrics or {},
        }
        manager.save(state, global_step, is_best=is_best)

    t_train = time.perf_counter()
    while epoch < config.epochs and not stopped_early:
        batches = epoch_batches(config, ds, train_idx, epoch, step_in_epoch, steps_per_epoch, procs, pen)
        model.train()
        t_epoch, samples_seen = time.perf_counter(), 0
        bar = tqdm(
            total=steps_per_epoch,
            initial=step_in_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=quiet,
            dynamic_ncols=True,
            leave=False,
        )
        for inputs, labels in batch_loader(config, batches, device):
            inputs = to_device(inputs, device)
            labels = labels.to(device, non_blocking=True)
            if not pen:  # image distortions; a pen model's fresh or stored writers are its variety
                inputs = augment_batch(
                    inputs, config.augment, step_generator(config.seed, epoch, step_in_epoch, procs.rank)
                )
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss, logits, extras = loss_step(inputs, labels, config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            sums.add(loss, logits, labels, extras)
            step_in_epoch += 1
            global_step += 1
            samples_seen += len(labels) * procs.world
            bar.update(1)
            if not quiet and (step_in_epoch % 10 == 0 or step_in_epoch == steps_per_epoch):
                live = sums.totals()  # a device sync: every 10 steps only
                bar.set_postfix(
                    loss=f"{live['loss'] / live['count']:.4f}",
                    acc=f"{live['correct'] / live['count']:.3f}",
                    samples_s=f"{samples_seen / (time.perf_counter() - t_epoch):.0f}",
                )
            if config.save_every and global_step % config.save_every == 0 and step_in_epoch < steps_per_epoch:
                save_checkpoint()
        bar.close()

        # -- epoch end: validate, record, keep the best, maybe stop
        epoch_time = time.perf_counter() - t_epoch
        val = evaluate_split(model, config, val_idx, procs, autocast_dtype)
        total = _all_reduce_sums(sums.totals(), procs)
        count = max(total.pop("count"), 1.0)
        record = {
            "epoch": epoch + 1,
            "step": global_step,
            "lr": scheduler.get_last_lr()[0],
            "train_loss": total.pop("loss") / count,
            "train_acc": total.pop("correct") / count,
            **{f"train_{k}": v / count for k, v in sorted(total.items())},
            "val_loss": val["loss"],
            "val_acc": val["top1"],
            "val_top5": val["top5"],
            "epoch_time_s": epoch_time,
            "samples_per_s": samples_seen / max(epoch_time, 1e-9),
        }
        history.append(record)
        improved = record["val_acc"] > best_acc
        if improved:
            best_acc, best_epoch, epochs_since_best = record["val_acc"], epoch + 1, 0
        else:
            epochs_since_best += 1
        stopped_early = bool(config.patience) and epochs_since_best >= config.patience
        epoch, step_in_epoch = epoch + 1, 0
        sums = RunningSums(device)
        save_checkpoint({"val_acc": val["top1"], "val_top5": val["top5"], "val_loss": val["loss"]}, improved)
        log(
            f"epoch {epoch}/{config.epochs}  train loss {record['train_loss']:.4f}"
            f" acc {record['train_acc']:.4f}"
            f"  val loss {val['loss']:.4f} acc {val['top1']:.4f} top5 {val['top5']:.4f}"
            f"  {record['samples_per_s']:.0f} samples/s{'  (best)' if improved else ''}"
        )
        if procs.writer:
            write_results(run_dir, history, title=f"{config.model} ({run_dir.name})")
        if stopped_early:
            log(
                f"early stop: val accuracy has not improved for {config.patience} epochs"
                f" (best: epoch {best_epoch})"
            )

    # -- final test metrics of the best checkpoint on the stored test split
    if procs.world > 1:
        dist.barrier()  # best.pt is complete on disk before any rank reads it
    best = read_checkpoint(manager.best_path)
    model.load_state_dict(best["model"], strict=True)
    test = evaluate_split(model, config, test_idx, procs, autocast_dtype)
    final = {
        "model": config.model,
        "checkpoint": str(manager.best_path),
        "best_epoch": best_epoch,
        "epochs_trained": epoch,
        "steps": global_step,
        "stopped_early": stopped_early,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_classes": len(ds.classes),
        "val_acc": best_acc,
        # None when the dataset stores no test split
        "test_top1": test["top1"] if test["samples"] else None,
        "test_top5": test["top5"] if test["samples"] else None,
        "test_loss": test["loss"] if test["samples"] else None,
        "test_samples": test["samples"],
        "train_time_s": time.perf_counter() - t_train,
    }
    if procs.writer:
        manager.update_best_metrics(
            {k: final[k] for k in ("test_top1", "test_top5", "test_loss", "test_samples")}
        )
        results = run_dir / "results" / "final_metrics.json"
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(final, indent=1), encoding="utf-8")
        log(
            f"test (best.pt, epoch {best_epoch}): top-1 {test['top1']:.4f}  top-5 {test['top5']:.4f}  "
            f"on {test['samples']:,} samples -> {results}"
            if test["samples"]
            else f"the dataset has no test split; metrics -> {results}"
        )
    if procs.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return final


# ---------------------------------------------------------------- the seed's scripts


def run_seed_script(config: TrainConfig, args: Any) -> int:
    """Train from a seed script (scripts/train_*.py): errors print as one line, exit status 2."""
    import sys

    from kanjirec.errors import KanjirecError

    try:
        data = Path(config.data)
        if args.make_synthetic and not (data / "meta.json").exists():
            from kanjirec.data.synth import synthesize

            synthesize("etl9g", per_class=20, out=data)
        train(config, resume="none" if args.no_resume else "auto")
    except KanjirecError as e:
        hint = "" if (Path(config.data) / "meta.json").exists() else "; or rerun with --make-synthetic"
        print(f"{Path(sys.argv[0]).name}: error: {e}{hint}", file=sys.stderr)
        return 2
    return 0
