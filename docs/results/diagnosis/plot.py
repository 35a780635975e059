"""Val top-1 per epoch from the probe logs: docs/results/diagnosis/curves.png.

    python docs/results/diagnosis/plot.py
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
PANELS = {
    "radical_attn_rnn": {
        "before (edfdb26)": "attn_before.log",
        "whole targets (915b89f)": "attn_after.log",
        "+ nothing bias -2 (b2598d4)": "attn_fixed.log",
    },
    "basic_rnn": {
        "before: a cell per step": "basic.log",
        "+ position embedding": "basic_pos.log",
        "a row per step (c92449d)": "basic_fixed.log",
        "MLP on the same numbers": "ceiling_basic.log",
    },
    "stroke_rnn (not changed)": {
        "contour": "stroke.log",
        "skeleton": "stroke_skel.log",
        "contour + LayerNorm": "stroke_ln.log",
        "contour + LayerNorm + mean pool": "stroke_ln_mean.log",
        "MLP on the same numbers (contour)": "ceiling_stroke_contour.log",
    },
}


def curve(path: Path) -> list[float]:
    values = []
    for line in path.read_text().splitlines():
        if line.startswith("{") and '"epoch"' in line:
            values.append(json.loads(line)["val_top1"])
        elif line.startswith("epoch "):  # ceiling.py
            values.append(float(line.rsplit(" ", 1)[1]))
    return values


fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
for ax, (title, runs) in zip(axes, PANELS.items(), strict=True):
    for label, name in runs.items():
        values = curve(HERE / "logs" / name)
        ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
    ax.set_title(title)
    ax.set_xlabel("epoch (20 steps of 64)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
axes[0].set_ylabel("val top-1, 40 classes")
fig.tight_layout()
fig.savefig(HERE / "curves.png", dpi=90)
