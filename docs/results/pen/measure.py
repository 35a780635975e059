"""Issue 15 item 3: the stroke model online (true pen trajectories) and offline (strokes extracted
from the image), on the same written test samples, and how much the online model depends on
stroke order.

    PYTHONPATH=src python docs/results/pen/measure.py DATA ONLINE_RUN OFFLINE_RUN [--out docs/results/pen]

DATA: a packed dataset synthesised with --with-strokes (the demo's: 100 ETL9G classes x 40). The
test samples are its writer-disjoint test split's written samples (print-font samples have no
trajectory). Order perturbations, each drawn 3 times (seeds 0-2) and averaged:

- within components: the strokes of each top-level KanjiVG component (語: 言, 吾) are written in a
  random order, the components still one after the other, each stroke still drawn in its own
  direction: the kind of order variation real writers show;
- all strokes: every stroke in a random order (far beyond what writers do; an upper bound);
- reversed: every stroke drawn from its end to its start, in the usual order.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from kanjirec.data.kanjivg import component_stroke_groups, load_kanjivg
from kanjirec.data.store import PackedDataset
from kanjirec.recognizer import Recognizer


def perturb(strokes, groups, kind: str, rng: np.random.Generator):
    if kind == "true order":
        return strokes
    if kind == "reversed strokes":
        return [s[::-1] for s in strokes]
    if kind == "shuffled, all strokes":
        return [strokes[i] for i in rng.permutation(len(strokes))]
    return [strokes[i] for g in groups for i in rng.permutation(g)]  # within components


def scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    top = np.argsort(-probs, axis=1)[:, :5]
    return {
        "top1": float((top[:, 0] == labels).mean()),
        "top5": float((top == labels[:, None]).any(axis=1).mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("online_run")
    p.add_argument("offline_run")
    p.add_argument("--out", default="docs/results/pen")
    a = p.parse_args()
    ds = PackedDataset.open(a.data)
    kvg = load_kanjivg()
    test = np.array([i for i in ds.indices("test") if ds.stroke_counts()[i] > 0])
    labels = ds.labels[test].astype(np.int64)
    chars = [ds.classes[c] for c in labels]
    strokes = [ds.strokes_of(int(i)) for i in test]
    groups = [component_stroke_groups(kvg[c]) for c in chars]
    assert all(len(s) == len(kvg[c].strokes) for s, c in zip(strokes, chars, strict=True))
    online, offline = Recognizer.load(a.online_run), Recognizer.load(a.offline_run)
    assert online.reads_pen and not offline.reads_pen
    assert list(online.classes) == list(ds.classes) == list(offline.classes)
    rows = {
        "offline (strokes extracted from the image)": scores(offline.probabilities(ds.images[test]), labels)
    }
    for kind in ("true order", "shuffled within components", "shuffled, all strokes", "reversed strokes"):
        runs = []
        for seed in range(1 if kind in ("true order", "reversed strokes") else 3):
            rng = np.random.default_rng(seed)
            drawings = [perturb(s, g, kind, rng) for s, g in zip(strokes, groups, strict=True)]
            runs.append(scores(online.stroke_probabilities(drawings), labels))
        rows[f"online, {kind}"] = {k: float(np.mean([r[k] for r in runs])) for k in ("top1", "top5")}
    multi = sum(len(g) > 1 for gs in groups for g in gs)
    result = {
        "data": str(a.data),
        "test_samples": len(test),
        "online_run": str(a.online_run),
        "offline_run": str(a.offline_run),
        "components_with_several_strokes": multi,
        "rows": rows,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pen.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    lines = ["| input | top-1 | top-5 |", "|---|---|---|"]
    lines += [f"| {k} | {v['top1']:.2%} | {v['top5']:.2%} |" for k, v in rows.items()]
    (out / "pen.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(test)} written test samples of {a.data}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
