"""`kanjirec bench train`: training throughput beside this machine's compute bound.

For each model it prints training samples/s (forward, loss, backward, AdamW step on random
uint8 batches, as the training loop runs them, data loading excluded), the model's
training FLOPs per sample (3x the forward FLOPs: the backward pass costs about twice the
forward), the GFLOP/s that implies, and that as a fraction of the machine's measured fp32
matmul GFLOP/s (a large square matmul, the best case for this CPU).
"""

from __future__ import annotations

import time

import torch

from kanjirec.config import TrainConfig


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 GFLOP/s of an n x n matmul (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def training_samples_per_s(
    name: str, classes: list[str], batch_size: int, steps: int, model_config: dict, warmup: int = 3
) -> tuple[float, int, int]:
    """(samples/s, forward FLOPs per sample, parameters) of ``steps`` timed training steps."""
    from kanjirec.models import create_model
    from kanjirec.models.base import count_flops
    from kanjirec.train import LossStep, make_optimizer

    torch.manual_seed(0)
    model = create_model(name, len(classes), classes=classes, **model_config)
    flops_per_sample = count_flops(model, batch=batch_size) // batch_size
    config = TrainConfig(model=name, data="-", batch_size=batch_size)
    optimizer = make_optimizer(model, config, torch.device("cpu"))
    step = LossStep(model).train()
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(batch_size, 1, 64, 64, generator=g) > 0.85).to(torch.uint8) * 255
    labels = torch.randint(0, len(classes), (batch_size,), generator=g)
    t = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t = time.perf_counter()
        loss, _, _ = step(images, labels, config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
    elapsed = time.perf_counter() - t
    return steps * batch_size / elapsed, flops_per_sample, model.num_parameters()


def bench_train(
    models: list[str] | None = None,
    batch_size: int = 64,
    steps: int = 20,
    num_classes: int = 3036,
    model_config: dict | None = None,
    threads: int | None = None,
) -> list[dict]:
    """Print and return one row per model (``models=None``: every registered model)."""
    from kanjirec.charset import get_charset
    from kanjirec.models import list_models

    if threads:
        torch.set_num_threads(threads)
    chars = get_charset("etl9g")
    if not 1 <= num_classes <= len(chars):
        raise ValueError(f"--num-classes must be between 1 and {len(chars)}")
    classes = chars[:num_classes]  # real kanji: the radical models decompose them
    names = models or list_models()
    bound = matmul_gflops()
    print(
        f"CPU: {torch.get_num_threads()} threads, measured fp32 matmul (2048^3): {bound:.1f} GFLOP/s; "
        f"batch {batch_size}, {steps} timed steps, {num_classes} classes"
    )
    header = (
        f"{'model':<18} {'params':>10} {'train MFLOP/sample':>19} {'samples/s':>10} "
        f"{'GFLOP/s':>8} {'of matmul':>9}"
    )
    print(header)
    rows = []
    for name in names:
        samples_s, fwd, params = training_samples_per_s(
            name, classes, batch_size, steps, dict(model_config or {})
        )
        train_flops = 3 * fwd
        achieved = samples_s * train_flops / 1e9
        row = {
            "model": name,
            "parameters": params,
            "train_flops_per_sample": train_flops,
            "samples_per_s": samples_s,
            "gflops": achieved,
            "fraction_of_matmul": achieved / bound,
            "matmul_gflops": bound,
        }
        rows.append(row)
        print(
            f"{name:<18} {params:>10,} {train_flops / 1e6:>19.1f} {samples_s:>10.1f} "
            f"{achieved:>8.2f} {achieved / bound:>9.1%}"
        )
    # Measured again after the models: on a shared machine the better of the two is the bound.
    again = matmul_gflops()
    if again > bound:
        print(f"matmul measured again after the models: {again:.1f} GFLOP/s; fractions against that:")
        for row in rows:
            row["matmul_gflops"], row["fraction_of_matmul"] = again, row["gflops"] / again
            print(f"{row['model']:<18} {row['fraction_of_matmul']:>9.1%}")
    print("(training FLOPs = 3 x forward FLOPs from models.base.count_flops; feature extraction outside it")
    print(" the graph, e.g. the stroke model's contours, is timed but not counted)")
    return rows
