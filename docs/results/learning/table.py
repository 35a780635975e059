"""The before/after table of the main job's models (issue 15 item 2): test top-1 of each run's best
checkpoint on the demo's test split, all 400 samples and split into its written samples (3 stroke
writers) and its print-font samples (Noto Serif CJK JP). A pen model reads the written ones only.

    PYTHONPATH=src python docs/results/learning/table.py DEMO_DATA AFTER_RUNS [--out docs/results/learning]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from kanjirec.data.store import PackedDataset
from kanjirec.loading import load_any

# `kanjirec demo` before these changes (docs/RESULTS.md, the stage-2 run): test top-1 on all 400.
BEFORE = {
    "mobile_cnn": 0.7975,
    "radical_rnn": 0.5925,
    "cnn": 0.3700,
    "basic_rnn": 0.3150,
    "hybrid_cnn_rnn": 0.1950,
    "radical_attn_rnn": 0.1350,
    "stroke_rnn": 0.0600,
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("runs", type=Path)
    p.add_argument("--out", type=Path, default=Path("docs/results/learning"))
    a = p.parse_args()
    torch.set_num_threads(1)
    ds = PackedDataset.open(a.data)
    test = ds.indices("test")
    written = ds.stroke_counts()[test] > 0
    labels = ds.labels[test].astype(np.int64)
    rows = {}
    for model in BEFORE:
        run = a.runs / model
        if not (run / "results" / "final_metrics.json").is_file():
            rows[model] = {"before": BEFORE[model]}
            continue
        loaded = load_any(run)
        net = loaded.model.eval()
        with torch.no_grad():
            if getattr(net, "input_kind", "images") == "pen":
                pred = np.full(len(test), -1)
                samples = [ds.strokes_of(int(i)) for i in test[written]]
                pred[written] = net(net.pen_features(samples)).argmax(1).numpy()
            else:
                pred = net(torch.from_numpy(np.asarray(ds.images[test]))[:, None]).argmax(1).numpy()
        hit = pred == labels
        rows[model] = {
            "before": BEFORE[model],
            "after": None if getattr(net, "input_kind", "images") == "pen" else float(hit.mean()),
            "after_written": float(hit[written].mean()),
            "after_font": None if getattr(net, "input_kind", "images") == "pen" else float(hit[~written].mean()),
            "train_time_s": json.loads((run / "results" / "final_metrics.json").read_text())["train_time_s"],
        }
    best = max(r.get("after") or 0 for r in rows.values())
    pct = lambda x: "-" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    lines = [
        f"| model | before: test top-1 | after: test top-1 (400) | written (300) | print face (100) | >= 60% of best ({pct(0.6 * best)}) |",
        "|---|---|---|---|---|---|",
    ]
    for model, r in rows.items():
        main_figure = r.get("after") if r.get("after") is not None else r.get("after_written")
        ok = "-" if main_figure is None else ("yes" if main_figure >= 0.6 * best else "**no**")
        lines.append(
            f"| {model} | {pct(r['before'])} | {pct(r.get('after'))} | {pct(r.get('after_written'))} | "
            f"{pct(r.get('after_font'))} | {ok} |"
        )
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "after.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    (a.out / "after.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
