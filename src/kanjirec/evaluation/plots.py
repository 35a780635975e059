"""PNG charts for the evaluation reports: confused pairs, reliability diagram, trade-offs, robustness."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import font_manager  # noqa: E402


@cache
def _cjk_font() -> font_manager.FontProperties | None:
    """A font with Japanese glyphs if one is installed; without it characters are shown as U+XXXX."""
    for f in font_manager.fontManager.ttflist:
        if "CJK JP" in f.name or f.name.startswith("IPA") or "Gothic" in f.name:
            return font_manager.FontProperties(fname=f.fname)
    return None


def _char_label(c: str) -> tuple[str, dict]:
    font = _cjk_font()
    code = f"U+{ord(c):04X}"
    return (f"{c}\n{code}", {"fontproperties": font}) if font is not None else (code, {})


def plot_confusions(
    out: Path,
    pairs: Sequence,
    classes: Sequence[str],
    images,
    indices: np.ndarray,
    confidence: np.ndarray,
    title: str = "",
) -> Path:
    """One row per confused pair: true char, read-as char, count, then misread samples with confidence."""
    n_rows = max(len(pairs), 1)
    n_samples = max((len(p.rows) for p in pairs), default=0)
    cols = 3 + max(n_samples, 1)
    fig, axes = plt.subplots(n_rows, cols, figsize=(1.3 * cols, 1.3 * n_rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not pairs:
        axes[0, 0].text(0, 0.5, "no misread samples", fontsize=12, va="center")
    for r, p in enumerate(pairs):
        for c, (head, ch) in enumerate((("true", classes[p.true]), ("read as", classes[p.predicted]))):
            text, kw = _char_label(ch)
            axes[r, c].text(0.5, 0.5, text, ha="center", va="center", fontsize=16, **kw)
            if r == 0:
                axes[r, c].set_title(head, fontsize=9)
        axes[r, 2].text(0.5, 0.5, f"x{p.count}", ha="center", va="center", fontsize=12)
        if r == 0:
            axes[r, 2].set_title("count", fontsize=9)
        samples = images[np.asarray(indices)[p.rows]]
        for j, (img, row) in enumerate(zip(samples, p.rows, strict=True)):
            ax = axes[r, 3 + j]
            ax.imshow(255 - img, cmap="gray", vmin=0, vmax=255)  # dark ink on white, as people read it
            ax.set_title(f"p={confidence[row]:.2f}", fontsize=7)
    fig.suptitle(f"Most confused pairs {title}".strip(), fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_reliability(out: Path, calibration: dict, title: str = "") -> Path:
    """Accuracy per confidence bin against the diagonal, with the sample count per bin below."""
    table = calibration["table"]
    lows = np.array([b["low"] for b in table])
    width = table[0]["high"] - table[0]["low"] if table else 1.0
    acc = np.array([b["accuracy"] if b["accuracy"] is not None else 0.0 for b in table])
    conf = np.array([b["confidence"] if b["confidence"] is not None else np.nan for b in table])
    count = np.array([b["count"] for b in table])
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.bar(lows, acc, width=width, align="edge", edgecolor="black", label="accuracy")
    ax.plot(conf, conf, "o", color="tab:red", ms=3, label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"Reliability {title}".strip())
    ax_n.bar(lows, count, width=width, align="edge", color="gray")
    ax_n.set_yscale("log" if count.max(initial=0) > 0 else "linear")
    ax_n.set_xlabel("confidence (top-1 probability)")
    ax_n.set_ylabel("samples")
    ax_n.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_tradeoff(out: Path, rows: Sequence[dict], key: str, xlabel: str) -> Path:
    """Top-1 accuracy against a cost (latency, size), one labelled point per model."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row in rows:
        x = row.get(key)
        if x is None:
            continue
        ax.scatter(x, 100 * row["top1"])
        ax.annotate(
            row["name"], (x, 100 * row["top1"]), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_robustness(out: Path, robustness: dict) -> Path:
    """Per distortion, each model's mean top-1 over the three severities relative to clean."""
    names = list(robustness)
    dists = list(next(iter(robustness.values()))["accuracy"])
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(dists) * max(1, len(names)) / 2), 4.5))
    width = 0.8 / len(names)
    x = np.arange(len(dists))
    for k, name in enumerate(names):
        r = robustness[name]
        clean = r["clean_top1"] or 1.0
        rel = [np.mean(r["accuracy"][d]) / clean for d in dists]
        ax.bar(x + k * width - 0.4 + width / 2, rel, width=width, label=f"{name} ({r['score']:.2f})")
    ax.set_xticks(x, dists, rotation=30, ha="right")
    ax.set_ylabel("top-1 relative to clean (mean of 3 severities)")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
