"""`evaluate`: one model on a packed dataset split, and its report (JSON, Markdown, charts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kanjirec.errors import KanjirecError
from kanjirec.evaluation.metrics import confused_pairs, metrics_report, percent
from kanjirec.evaluation.predict import BATCH_SIZE, map_classes, predict, split_indices
from kanjirec.inference import inference_copy, torch_threads
from kanjirec.loading import LoadedModel, load_any


def evaluate(
    model_path: str | Path | LoadedModel | None,
    data: str | Path,
    *,
    split: str | None = "test",
    out: str | Path | None = None,
    batch_size: int = BATCH_SIZE,
    top_pairs: int = 12,
    threads: int | None = None,
) -> dict:
    """Evaluate one model (run dir, checkpoint or ensemble) on a packed dataset split.

    Returns the report dict; with ``out`` also writes report.json, report.md,
    confusions.png and reliability.png there. ``threads``: torch intra-op threads for the pass
    (None: torch's setting).
    """
    from kanjirec.data.store import PackedDataset

    lm = model_path if isinstance(model_path, LoadedModel) else load_any(model_path)
    ds = PackedDataset.open(data)
    idx = split_indices(ds, split)
    mapping = map_classes(ds.classes, lm.classes, ds.labels[idx])
    if mapping.unknown_count == len(idx):
        raise KanjirecError(
            f"{ds.path}: none of the {len(idx)} {split or 'all'} samples has a character that model "
            f"{lm.name} knows (dataset characters e.g. {''.join(list(mapping.unknown)[:10])})"
        )
    with torch_threads(threads):
        pred = predict(
            {lm.name: inference_copy(lm.model)},
            ds.images,
            idx,
            {lm.name: mapping.targets},
            batch_size=batch_size,
            desc=f"evaluate {lm.name}",
        )[lm.name]
    report = metrics_report(pred, lm.classes, ds.writer_ids[idx], ds.writers, top_pairs=top_pairs)
    report.update(
        model=lm.name,
        model_path=str(lm.path) if lm.path else None,
        dataset=str(ds.path),
        split=split or "all",
        samples=int(len(idx)),
        known_samples=int(pred.known.sum()),
        unknown={"samples": mapping.unknown_count, "characters": mapping.unknown},
    )
    if out is not None:
        from kanjirec.evaluation import plots

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        (out / "report.md").write_text(report_markdown(report), encoding="utf-8")
        pairs = confused_pairs(pred, top=top_pairs)
        plots.plot_confusions(
            out / "confusions.png", pairs, lm.classes, ds.images, idx, pred.topk_prob[:, 0], title=lm.name
        )
        plots.plot_reliability(out / "reliability.png", report["calibration"], title=lm.name)
    return report


def report_markdown(r: dict) -> str:
    lines = [
        f"# Evaluation of {r['model']}",
        "",
        f"Dataset `{r['dataset']}`, split {r['split']}: {r['samples']:,} samples, "
        f"{r['known_samples']:,} with a character the model knows.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| top-1 | {percent(r['top1'])} |",
        f"| top-5 | {percent(r['top5'])} |",
        f"| mean per-class top-1 | {percent(r['mean_class_accuracy'])} |",
        f"| expected calibration error ({r['calibration']['bins']} bins) | {100 * r['ece']:.2f} points |",
        "",
    ]
    unk = r["unknown"]
    if unk["samples"]:
        chars = sorted(unk["characters"].items(), key=lambda kv: -kv[1])
        lines += [
            f"**{unk['samples']:,} samples of {len(chars)} characters the model does not know** were not "
            "scored: " + ", ".join(f"{c} ({n})" for c, n in chars[:30]) + (" ..." if len(chars) > 30 else ""),
            "",
        ]
    if r["confused_pairs"]:
        lines += ["## Most confused pairs", "", "| true | read as | count |", "|---|---|---|"]
        lines += [f"| {p['true']} | {p['predicted']} | {p['count']} |" for p in r["confused_pairs"]]
        lines.append("")
    worst = sorted(r["per_class"], key=lambda c: (c["top1"], -c["samples"]))[:20]
    lines += ["## Worst classes", "", "| char | samples | top-1 |", "|---|---|---|"]
    lines += [f"| {c['char']} | {c['samples']} | {percent(c['top1'])} |" for c in worst]
    writers = r["per_writer"]
    if writers:
        accs = np.array([w["top1"] for w in writers])
        lines += [
            "",
            "## Writers",
            "",
            f"{len(writers)} writers; top-1 per writer: min {percent(accs.min())}, median "
            f"{percent(float(np.median(accs)))}, max {percent(accs.max())}.",
            "",
            "| writer | samples | top-1 |",
            "|---|---|---|",
        ]
        lines += [
            f"| {w['writer']} | {w['samples']} | {percent(w['top1'])} |"
            for w in sorted(writers, key=lambda w: w["top1"])[:10]
        ]
    return "\n".join(lines) + "\n"
