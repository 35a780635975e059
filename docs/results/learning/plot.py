"""Before/after learning curves of the demo's models (issue 15 item 2).

    python docs/results/learning/plot.py BEFORE_RUNS AFTER_RUNS [--out docs/results/learning]

BEFORE_RUNS / AFTER_RUNS: folders of run folders named like the models (optionally prefixed
``before_``), each with results/history.json as `kanjirec train` writes it. Writes curves.png
(val top-1 per epoch, solid; train top-1 under augmentation and dropout, dotted) and
histories.json (the per-epoch figures plotted).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODELS = ["cnn", "hybrid_cnn_rnn", "basic_rnn", "radical_attn_rnn", "radical_rnn", "stroke_rnn", "mobile_cnn"]


def history(root: Path, model: str) -> list[dict] | None:
    for name in (model, f"before_{model}"):
        path = root / name / "results" / "history.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--out", type=Path, default=Path("docs/results/learning"))
    a = p.parse_args()
    fig, axes = plt.subplots(2, 4, figsize=(16, 7), sharey=True)
    kept = {}
    for ax, model in zip(axes.flat[: len(MODELS)], MODELS, strict=True):  # 8 panels, 7 models
        for label, root, colour in (("before", a.before, "tab:red"), ("after", a.after, "tab:blue")):
            h = history(root, model)
            if h is None:
                continue
            epochs = [r["epoch"] for r in h]
            ax.plot(epochs, [r["val_acc"] for r in h], "-o", color=colour, label=f"{label}: val")
            ax.plot(epochs, [r["train_acc"] for r in h], ":", color=colour, label=f"{label}: train")
            kept.setdefault(model, {})[label] = [
                {k: r[k] for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")} for r in h
            ]
        ax.set_title(model)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("top-1")
    axes.flat[0].legend(fontsize=8)
    axes.flat[-1].axis("off")
    fig.suptitle("kanjirec demo: 100 ETL9G classes x 40 samples, 6 epochs (before / after issue 15 item 2)")
    fig.tight_layout()
    a.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out / "curves.png", dpi=80)
    (a.out / "histories.json").write_text(json.dumps(kept, indent=1), encoding="utf-8")
    print(f"wrote {a.out / 'curves.png'}")


if __name__ == "__main__":
    main()
