"""PNG figures (matplotlib, Agg backend: no display needed). Other modules add their plots here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen before pyplot loads)


def save_figure(fig: plt.Figure, out: str | Path) -> Path:
    """Write ``fig`` as PNG (creating folders) and free it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_series(
    ax: plt.Axes, x: Sequence[float], series: dict[str, Sequence[float]], ylabel: str, title: str
) -> None:
    """Several named lines against one x axis."""
    for label, ys in series.items():
        ax.plot(x, ys, marker="o" if len(x) < 30 else None, markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()


def plot_training_curves(history: list[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """Loss, accuracy and learning rate per epoch from a training history (see kanjirec.train)."""
    epochs = [h["epoch"] for h in history]

    def column(key: str) -> list[float]:
        return [h[key] for h in history]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    plot_series(axes[0], epochs, {"train": column("train_loss"), "val": column("val_loss")}, "loss", "loss")
    plot_series(
        axes[1],
        epochs,
        {"train top-1": column("train_acc"), "val top-1": column("val_acc"), "val top-5": column("val_top5")},
        "accuracy",
        "accuracy",
    )
    plot_series(axes[2], epochs, {"lr": column("lr")}, "learning rate", "learning rate (end of epoch)")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out)


def plot_zero_shot(result: dict[str, Any], out: str | Path) -> Path:
    """Unseen-class top-1 and top-5 against the number of seen kanji m, per model, with ACPM's top-1
    (CASIA-HWDB, Chinese) as reference points; titled with the run's scale (`zeroshot.run_zeroshot`)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    models = sorted({r["model"] for r in result["rows"]})
    for i, model in enumerate(models):
        rows = sorted((r for r in result["rows"] if r["model"] == model), key=lambda r: r["m"])
        m = [r["m"] for r in rows]
        color = f"C{i}"
        ax.plot(m, [100 * r["top1"] for r in rows], marker="o", color=color, label=f"{model} top-1")
        ax.plot(m, [100 * r["top5"] for r in rows], marker="o", ls="--", color=color, label=f"{model} top-5")
    acpm = result["acpm_top1"]
    ax.plot(
        [int(k) for k in acpm], [100 * v for v in acpm.values()], "k^", label="ACPM top-1 (HWDB, Chinese)"
    )
    unseen = result["protocol"]["unseen"]
    ax.axhline(100 * 5 / unseen, color="grey", ls=":", label="chance top-5")
    ax.set_xlabel("seen kanji m")
    ax.set_ylabel("accuracy on the unseen classes (%)")
    ax.set_title(f"Zero-shot, {unseen:,} unseen kanji ({result['protocol']['scale']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out)
