"""`kanjirec zeroshot`: how well the radical models read kanji they were never trained on.

The protocol mirrors the one used for Chinese on CASIA-HWDB (seen = the first m classes of the
level-1 set, unseen = the last 1,000):

- the unseen classes are the last 1,000 ETL9G (JIS level-1) kanji in JIS order;
- each radical model trains on the first m kanji in JIS order plus ETL9G's 71 hiragana, with the one
  training loop (`train.train`) on fresh synthetic batches (``synth_per_epoch``): every model sees
  the same number of samples at every m (the budget);
- at test time it ranks the 1,000 unseen classes by their KanjiVG decompositions
  (`evaluation.zeroshot`) on synthetic writers rendered for the test alone (a fixed seed), each
  writing every unseen class once;
- top-1/top-5 are reported at each m beside what the vocabulary can reach (the share of unseen
  classes whose every component occurs among the seen classes').

Everything goes under one work folder: ``data/`` (the seen classes' validation data, the unseen test
data) and ``runs/<model>_m<m>`` (ordinary training runs, resumed if interrupted). ``evaluate_only``
scores runs made before without training. Results: ``zeroshot.json``, ``zeroshot.md`` and
``zeroshot.png`` in the output folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kanjirec.errors import KanjirecError

UNSEEN = 1000
SEEN_COUNTS = (500, 1000, 1965)
MODELS = ("radical_rnn", "radical_attn_rnn")
BATCH_SIZE = 64
SEEN_WRITERS = 3  # per seen class: one writer each for the run's train (unused), val and test splits
TEST_SEED = 20261215  # fixed: every run is scored on the same unseen writers
# CPU scale: the demo's half-width models (a single LSTM layer for the attention model) and an equal
# weight on the component loss, the part zero-shot relies on. "default": the registry's full size.
MODEL_SIZES: dict[str, dict[str, dict]] = {
    "cpu": {
        "radical_rnn": dict(channels=(16, 32, 64), embed_dim=64, hidden_size=96, detector_hidden=128),
        "radical_attn_rnn": dict(
            channels=(16, 32, 64), embed_dim=64, hidden_size=64, num_layers=1, component_weight=1.0
        ),
    },
    "default": {"radical_rnn": {}, "radical_attn_rnn": dict(component_weight=1.0)},
}
# ACPM on CASIA-HWDB (unseen = the last 1,000 level-1 Chinese characters): seen classes -> top-1.
ACPM_TOP1 = {500: 0.097, 1500: 0.277, 2755: 0.424}


class ZeroShotSetupError(KanjirecError):
    """Options that do not describe a zero-shot experiment (m, models, budget), or runs that are missing."""


@dataclass(frozen=True)
class ClassSplit:
    """The classes of one setting: ``seen`` trains (kana + the first m kanji), ``unseen`` is tested."""

    m: int
    seen: tuple[str, ...]
    unseen: tuple[str, ...]


def class_split(m: int, unseen: int = UNSEEN) -> ClassSplit:
    """Seen = ETL9G's hiragana + the first ``m`` JIS level-1 kanji; unseen = the last ``unseen`` kanji."""
    from kanjirec.charset import get_charset, jis1_kanji

    kanji = jis1_kanji()
    if not 1 <= unseen < len(kanji):
        raise ZeroShotSetupError(f"--unseen must be between 1 and {len(kanji) - 1}, got {unseen}")
    most = len(kanji) - unseen
    if not 1 <= m <= most:
        raise ZeroShotSetupError(
            f"m = {m}: the seen kanji must number between 1 and {most} (the {len(kanji)} level-1 kanji "
            f"less the {unseen} unseen)"
        )
    kanji_set = set(kanji)
    kana = [c for c in get_charset("etl9g") if c not in kanji_set]
    return ClassSplit(m, tuple(kana + kanji[:m]), tuple(kanji[-unseen:]))


def _dataset(chars: Sequence[str], per_class: int, out: Path, seed: int, split: str) -> Path:
    """Handwriting-only synthetic data (no print faces) of ``chars``; reused if already rendered."""
    from kanjirec.data.store import PackedDataset
    from kanjirec.data.synth import synthesize

    if (out / "meta.json").is_file():
        ds = PackedDataset.open(out)
        if ds.classes != sorted(chars, key=ord) or len(ds) != per_class * len(chars):
            raise ZeroShotSetupError(
                f"{out} holds other data ({len(ds.classes)} classes, {len(ds)} samples) than this "
                f"experiment needs ({len(chars)} classes x {per_class}); remove it or choose another --work"
            )
        return out
    return synthesize(
        list(chars), per_class, out, seed=seed, font_fraction=0.0, split=split, log=lambda *a: None
    )


def run_name(model: str, m: int) -> str:
    return f"{model}_m{m}"


def train_run(
    model: str,
    split: ClassSplit,
    work: Path,
    budget: int,
    epochs: int,
    size: str,
    seed: int,
) -> Path:
    """Train ``model`` on the seen classes of ``split`` for ``budget`` fresh samples; the run folder."""
    from kanjirec.config import TrainConfig
    from kanjirec.train import train

    val_data = _dataset(split.seen, SEEN_WRITERS, work / "data" / f"seen_m{split.m}", seed, "writer")
    config = TrainConfig(
        model=model,
        data=str(val_data),
        out_dir=str(work / "runs"),
        run_name=run_name(model, split.m),
        epochs=epochs,
        batch_size=BATCH_SIZE,
        lr=2e-3,
        seed=seed,
        workers=0,  # rendering a batch costs a few % of a training step: no worker processes
        save_every=0,
        patience=0,
        synth_per_epoch=budget // epochs,
        synth_font_fraction=0.2,
        synth_fonts="default",
        model_config=dict(MODEL_SIZES[size][model]),
    )
    train(config, resume="auto")
    return config.run_dir


def steps_per_epoch(budget: int, epochs: int) -> int:
    steps = budget // (epochs * BATCH_SIZE)
    if steps < 1:
        raise ZeroShotSetupError(
            f"--budget {budget} is less than one batch of {BATCH_SIZE} per epoch over {epochs} epochs"
        )
    return steps


def evaluate_run(run_dir: Path, split: ClassSplit, test_data: Path) -> dict:
    """Zero-shot accuracy of the run's best checkpoint on the unseen classes, plus its seen-class figures."""
    from kanjirec.checkpoint import CheckpointManager, load_model, read_checkpoint
    from kanjirec.evaluation.zeroshot import zero_shot_accuracy

    model, info = load_model(run_dir)  # best.pt: the epoch with the best seen-class val accuracy
    # The budget is what the whole run trained on: its last checkpoint's step, not best.pt's.
    latest = CheckpointManager(Path(run_dir) / "checkpoints", enabled=False).latest()
    steps = read_checkpoint(latest)["global_step"] if latest is not None else info.global_step
    if sorted(info.classes, key=ord) != sorted(split.seen, key=ord):
        raise ZeroShotSetupError(
            f"{run_dir}: trained on {len(info.classes)} classes, not the {len(split.seen)} seen classes "
            f"of m = {split.m}"
        )
    result = zero_shot_accuracy(model, test_data, split.unseen)
    return {
        "model": info.model_name,
        "m": split.m,
        "seen_classes": len(split.seen),
        "run": str(run_dir),
        "samples_seen": steps * int(info.config["batch_size"]),
        "best_epoch": info.epoch,
        "model_config": info.model_config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seen_val_top1": info.metrics.get("val_acc"),
        "seen_test_top1": info.metrics.get("test_top1"),
        **result,
    }


def run_zeroshot(
    work: str | Path,
    out: str | Path,
    *,
    models: Sequence[str] = MODELS,
    ms: Sequence[int] = SEEN_COUNTS,
    budget: int = 19_200,
    epochs: int = 3,
    size: str = "cpu",
    unseen: int = UNSEEN,
    test_writers: int = 5,
    evaluate_only: bool = False,
    seed: int = 0,
    log=print,
) -> dict:
    """Train (unless ``evaluate_only``) and score every model at every m; write the results to ``out``."""
    from kanjirec.plots import plot_zero_shot

    work, out = Path(work), Path(out)
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ZeroShotSetupError(
            f"zero-shot needs a radical model: {', '.join(unknown)} is not one of {MODELS}"
        )
    if size not in MODEL_SIZES:
        raise ZeroShotSetupError(f"--size must be one of {', '.join(MODEL_SIZES)}, got {size!r}")
    if test_writers < 1:
        raise ZeroShotSetupError(f"--test-writers must be at least 1, got {test_writers}")
    splits = [class_split(m, unseen) for m in sorted(set(ms))]
    steps = steps_per_epoch(budget, epochs)
    budget = steps * epochs * BATCH_SIZE  # what the runs really see: whole batches
    runs = {(model, s.m): work / "runs" / run_name(model, s.m) for model in models for s in splits}
    if evaluate_only:
        missing = [str(r) for r in runs.values() if not (r / "checkpoints" / "best.pt").is_file()]
        if missing:
            raise ZeroShotSetupError(f"--evaluate-only: no trained run at {', '.join(missing)}")
    t0 = time.perf_counter()
    test_data = _dataset(
        splits[0].unseen, test_writers, work / "data" / f"unseen_{unseen}", TEST_SEED, "random"
    )
    rows = []
    for model in models:
        for s in splits:
            if not evaluate_only:
                log(
                    f"[zeroshot] training {model} on {len(s.seen):,} seen classes (m = {s.m}), "
                    f"{budget:,} samples"
                )
                train_run(model, s, work, budget, epochs, size, seed)
            row = evaluate_run(runs[model, s.m], s, test_data)
            if row["samples_seen"] != budget:
                raise ZeroShotSetupError(
                    f"{runs[model, s.m]}: trained on {row['samples_seen']:,} samples, not the budget of "
                    f"{budget:,}; train it again (remove the run) or pass its --budget"
                )
            log(
                f"[zeroshot] {model} m = {s.m}: unseen top-1 {100 * row['top1']:.2f}% "
                f"top-5 {100 * row['top5']:.2f}% ({100 * row['reachability']['fully_reachable']:.1f}% of "
                "the unseen classes fully reachable)"
            )
            rows.append(row)
    result = {
        "protocol": {
            "unseen": unseen,
            "unseen_classes": "last in JIS order of the JIS level-1 (ETL9G) kanji",
            "seen": "ETL9G's 71 hiragana + the first m kanji in JIS order",
            "test_writers": test_writers,
            "test_seed": TEST_SEED,
            "test_samples": rows[0]["samples"] if rows else 0,
            "samples_seen": budget,
            "epochs": epochs,
            "size": size,
            "scale": f"{'CPU' if size == 'cpu' else 'full'} scale, {budget:,} samples seen",
        },
        "acpm_top1": {str(k): v for k, v in ACPM_TOP1.items()},
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "zeroshot.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    (out / "zeroshot.md").write_text(report_markdown(result) + "\n", encoding="utf-8")
    plot_zero_shot(result, out / "zeroshot.png")
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def report_markdown(result: dict) -> str:
    p = result["protocol"]
    lines = [
        f"Zero-shot top-1/top-5 on the {p['unseen']:,} unseen kanji ({p['scale']}; "
        f"{p['test_samples']:,} test images, {p['test_writers']} synthetic writers never seen in training):",
        "",
        "| model | m (seen kanji) | unseen top-1 | unseen top-5 | top-1 on fully reachable | fully reachable "
        "| unreachable | indistinguishable | distinct top-1 | seen-class test top-1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        reach = r["reachability"]
        lines.append(
            f"| {r['model']} | {r['m']:,} | {_pct(r['top1'])} | {_pct(r['top5'])} | "
            f"{_pct(r['fully_reachable_top1'])} | {_pct(reach['fully_reachable'])} | "
            f"{_pct(reach['unreachable'])} | {_pct(reach['indistinguishable'])} | {r['distinct_top1']:,} | "
            f"{_pct(r['seen_test_top1'])} |"
        )
    acpm = ", ".join(f"{_pct(v)} with {int(k):,} seen" for k, v in result["acpm_top1"].items())
    lines += [
        "",
        f"Chance: {_pct(1 / p['unseen'])} top-1, {_pct(5 / p['unseen'])} top-5. ACPM (CASIA-HWDB, Chinese, "
        f"1,000 unseen): {acpm}. Distinct top-1: how many unseen classes are some image's first choice "
        "(1: the same ranking for every image).",
    ]
    return "\n".join(lines)
