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
