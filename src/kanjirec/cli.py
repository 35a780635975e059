"""The `kanjirec` command line.

Thin by design: each command parses its arguments and calls one function of a
module below; no logic lives here. Heavy modules are imported inside the
handlers so that `kanjirec --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path


class CliError(Exception):
    """An error the user can fix; printed without a traceback."""


# ---------------------------------------------------------------- data


def _data_prepare(a: argparse.Namespace) -> None:
    from kanjirec.data.etl import prepare_etl

    prepare_etl(
        etl_dir=a.etl_dir,
        sets=a.sets,
        out=a.out,
        image_size=a.image_size,
        crop=a.crop,
        split=a.split,
        seed=a.seed,
        skip_bad_records=a.skip_bad_records,
    )


def _data_info(a: argparse.Namespace) -> None:
    from kanjirec.data.store import PackedDataset

    print(PackedDataset.open(a.dir).describe())


def _data_show(a: argparse.Namespace) -> None:
    from kanjirec.data.store import PackedDataset

    out = PackedDataset.open(a.dir).save_grid(a.out, char=a.char, count=a.count, split=a.split)
    print(f"wrote {out}")


def _data_import(a: argparse.Namespace) -> None:
    from kanjirec.data.importer import import_images

    import_images(a.src, a.out, image_size=a.image_size, crop=a.crop, split=a.split, seed=a.seed)


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="prepare, inspect and synthesise packed datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)

    p = dsub.add_parser("prepare", help="decode ETL files into a packed dataset")
    p.add_argument("--etl-dir", type=Path, required=True, help="folder with the ETL files (any nesting)")
    p.add_argument("--sets", nargs="+", required=True, help="ETL sets, e.g. ETL9G ETL8G ETL7L ETL6")
    p.add_argument("--out", type=Path, required=True)
    _add_pack_options(p)
    p.add_argument(
        "--skip-bad-records",
        action="store_true",
        help="skip records that fail a check of their format (each one is reported) instead of stopping; "
        "a file with more than 5%% bad records is still refused whole",
    )
    p.set_defaults(func=_data_prepare)

    p = dsub.add_parser("info", help="classes, samples per class, writers and splits")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=_data_info)

    p = dsub.add_parser("show", help="write a PNG grid of samples")
    p.add_argument("dir", type=Path)
    p.add_argument("--char", help="only samples of this character")
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--split", choices=["train", "val", "test"])
    p.add_argument("--out", type=Path, default=Path("samples.png"))
    p.set_defaults(func=_data_show)

    p = dsub.add_parser("import", help="import your own labelled images (folder per character, or CSV)")
    p.add_argument("src", type=Path, help="a folder with one sub-folder per character, or a CSV path,char")
    p.add_argument("--out", type=Path, required=True)
    _add_pack_options(p)
    p.set_defaults(func=_data_import)

    _add_data_synth(dsub)
    _add_data_fonts(dsub)


def _add_pack_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--crop", action="store_true", help="crop each image to its ink's bounding box")
    p.add_argument("--split", choices=["writer", "random"], default="writer")
    p.add_argument("--seed", type=int, default=0)


# ---------------------------------------------------------------- synthetic data (data/synth.py)


def _add_data_synth(dsub: argparse._SubParsersAction) -> None:
    """`data synth` and `data charsets`."""

    def synth(a: argparse.Namespace) -> None:
        from kanjirec.charset import get_charset, spread_subset
        from kanjirec.data.synth import synthesize

        charset = spread_subset(get_charset(a.charset), a.classes) if a.classes else a.charset
        out = synthesize(
            charset,
            a.per_class,
            a.out,
            seed=a.seed,
            image_size=a.image_size,
            font_fraction=a.font_fraction,
            fonts=a.fonts,
            default_fonts=not a.no_default_fonts,
            workers=a.workers,
            with_strokes=a.with_strokes,
            skip_missing=a.skip_missing,
            split=a.split,
        )
        print(f"wrote {out}")

    def charsets(a: argparse.Namespace) -> None:
        from kanjirec.data.synth import charset_report

        print(charset_report(a.names or None))

    p = dsub.add_parser("synth", help="render synthetic handwriting (KanjiVG strokes) and print fonts")
    p.add_argument("--charset", default="etl9g", help="a set name (see `data charsets`) or a file")
    p.add_argument("--classes", type=int, help="only this many characters, spread evenly over the set")
    p.add_argument("--per-class", type=int, required=True, help="samples per character")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0, help="same seed, same dataset, any --workers")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--font-fraction", type=float, default=0.2, help="share of each class drawn from fonts")
    p.add_argument("--fonts", nargs="+", default=[], help="more font files (path or path#face-index)")
    p.add_argument("--no-default-fonts", action="store_true", help="skip the installed Noto / IPA fonts")
    p.add_argument("--workers", type=int, default=1, help="processes to render with")
    p.add_argument("--with-strokes", action="store_true", help="store each sample's stroke sequences too")
    p.add_argument(
        "--skip-missing", action="store_true", help="skip (and list) characters no stroke data or font covers"
    )
    p.add_argument("--split", choices=["writer", "random"], default="writer")
    p.set_defaults(func=synth)

    p = dsub.add_parser("charsets", help="size of each class set and its coverage by KanjiVG and fonts")
    p.add_argument("names", nargs="*", help="sets to report (default: all)")
    p.set_defaults(func=charsets)


def _add_data_fonts(dsub: argparse._SubParsersAction) -> None:
    """`data fonts`: the registry of print faces, their roles and coverage (data/fonts.py)."""

    def fonts(a: argparse.Namespace) -> None:
        from kanjirec.data.fonts import font_report

        print(font_report(a.charsets))

    p = dsub.add_parser("fonts", help="print faces: role (default / training / held out), package, coverage")
    p.add_argument("charsets", nargs="*", default=["kana", "jis1"], help="sets to count (default: kana jis1)")
    p.set_defaults(func=fonts)


# ---------------------------------------------------------------- models


def _add_models(sub: argparse._SubParsersAction) -> None:
    """`models`: list every registered model with its parameters and FLOPs."""

    def _models_list(a: argparse.Namespace) -> None:
        from kanjirec.models import describe_models

        print(describe_models(num_classes=a.num_classes, charset=a.charset))

    p = sub.add_parser("models", help="list every model with parameters and forward FLOPs (batch 1)")
    p.add_argument("--num-classes", type=int, default=3036, help="the first N classes of --charset")
    p.add_argument("--charset", default="etl9g", help="class set the radical models decompose")
    p.set_defaults(func=_models_list)


# ---------------------------------------------------------------- training


def _add_train(sub: argparse._SubParsersAction) -> None:
    """`train`: the one training loop for every registered model (kanjirec.train)."""
    from kanjirec.config import add_train_arguments

    def run(a: argparse.Namespace) -> None:
        from kanjirec.config import config_from_args, resume_from_args
        from kanjirec.train import train

        train(config_from_args(a), resume=resume_from_args(a))

    p = sub.add_parser(
        "train",
        help="train a registered model on a packed dataset",
        description="Train NAME on a packed dataset. Precedence: defaults < --config file < flags < --set. "
        "Writes <out-dir>/<run-name>/{checkpoints,results,config}; resumes from the run's latest "
        "checkpoint unless --no-resume. Runs unchanged under torchrun --nproc-per-node N (DDP).",
    )
    add_train_arguments(p)
    p.set_defaults(func=run)


# ---------------------------------------------------------------- evaluation


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    """`evaluate`, `compare`, `ensemble` (evaluation/, ensemble.py)."""

    def given(**options: object) -> dict:
        # Options left unset keep the library's defaults (not repeated here, and --help stays torch-free).
        return {k: v for k, v in options.items() if v is not None}

    def run_evaluate(a: argparse.Namespace) -> None:
        from kanjirec.evaluation.report import evaluate, report_markdown

        report = evaluate(
            a.model,
            a.data,
            split=None if a.split == "all" else a.split,
            out=a.out,
            **given(batch_size=a.batch_size),
        )
        print(report_markdown(report))
        if a.out:
            print(f"wrote report.json, report.md, confusions.png, reliability.png to {a.out}")

    def run_compare(a: argparse.Namespace) -> None:
        from kanjirec.evaluation.compare import compare, compare_markdown

        result = compare(
            a.runs,
            a.data,
            split=a.split,
            out=a.out,
            latency_runs=a.latency_runs,
            memory=not a.no_memory,
            root=a.root,
            **given(batch_size=a.batch_size, robustness_samples=a.robustness_samples),
        )
        print(compare_markdown(result))
        print(f"wrote compare.md, compare.json and charts to {a.out}")

    def run_ensemble(a: argparse.Namespace) -> None:
        from kanjirec.ensemble import build_ensemble, ensemble_markdown

        report = build_ensemble(
            a.runs,
            a.data,
            a.out,
            weighting=a.weighting,
            fit_split=a.fit_split,
            test_split=a.split,
            latency_runs=a.latency_runs,
            **given(batch_size=a.batch_size),
        )
        print(ensemble_markdown(report))

    p = sub.add_parser(
        "evaluate", help="accuracy, confusions, calibration and per-writer accuracy of a model"
    )
    p.add_argument(
        "model",
        type=Path,
        nargs="?",
        help="a run directory, a checkpoint, an .onnx file or an ensemble .json (default: the shipped model)",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="a packed dataset (any: its classes are matched to the model's by character)",
    )
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test")
    p.add_argument("--out", type=Path, help="folder for report.json, report.md and the PNG charts")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 64)")
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("compare", help="one table of accuracy, size, FLOPs, speed, memory and robustness")
    p.add_argument("runs", nargs="*", type=Path, help="runs or checkpoints (default: every run under --root)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--root", type=Path, default=Path("model_training"))
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--out", type=Path, default=Path("comparison"))
    p.add_argument(
        "--robustness-samples",
        type=int,
        help="samples per distortion x severity (default sized for the time target, printed in "
        "the report; 0 skips the robustness suite; -1 uses the whole split)",
    )
    p.add_argument("--latency-runs", type=int, default=50, help="batch-1 runs whose median is the latency")
    p.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory probe (a subprocess per model)"
    )
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 64)")
    p.set_defaults(func=run_compare)

    p = sub.add_parser("ensemble", help="average several models' probabilities; save and score the ensemble")
    p.add_argument("runs", nargs="+", type=Path, help="two or more runs or checkpoints with one class list")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="the ensemble manifest to write (.json)")
    p.add_argument(
        "--weighting",
        choices=["best", "fitted", "mean"],
        default="best",
        help="fitted: members calibrated by temperature, then weights minimising NLL on --fit-split "
        "(L-BFGS); mean: equal weights, raw probabilities; best: whichever of the two is more "
        "accurate on --fit-split",
    )
    p.add_argument("--fit-split", choices=["train", "val", "test"], default="val")
    p.add_argument("--split", choices=["train", "val", "test"], default="test", help="split to score on")
    p.add_argument("--latency-runs", type=int, default=50)
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 64)")
    p.set_defaults(func=run_ensemble)


# ---------------------------------------------------------------- benchmarks


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    _add_bench_data(bsub)
    _add_bench_synth(bsub)
    _add_bench_train(bsub)
    _add_bench_compare(bsub)
    _add_bench_styles(bsub)
    _add_bench_serve(bsub)
    _add_bench_peers(bsub)
    _add_bench_web(bsub)


def _add_bench_data(bsub: argparse._SubParsersAction) -> None:
    """`bench data`: ETL9G decoding throughput and prepare's peak memory."""

    def run(a: argparse.Namespace) -> None:
        from kanjirec.benchmarks.data import bench_data

        bench_data(
            records=a.records, baseline_records=a.baseline_records, image_size=a.image_size, workdir=a.workdir
        )

    p = bsub.add_parser(
        "data", help="ETL9G decoding speed vs a per-record struct+Pillow baseline, and prepare's peak memory"
    )
    p.add_argument(
        "--records",
        type=int,
        default=50_000,
        help="records in the generated ETL9G files (12,144 a file, as the real ones)",
    )
    p.add_argument(
        "--baseline-records",
        type=int,
        default=2_000,
        help="records the per-record baseline decodes; its time is extrapolated per record",
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--workdir", type=Path, help="folder for the temporary files (default: system temp)")
    p.set_defaults(func=run)


def _add_bench_synth(bsub: argparse._SubParsersAction) -> None:
    """`bench synth`."""

    def bench(a: argparse.Namespace) -> None:
        from kanjirec.benchmarks.synth import bench_synth

        bench_synth(charset=a.charset, writers=a.writers, image_size=a.image_size, seed=a.seed)

    p = bsub.add_parser("synth", help="synthetic samples per second per core, stage by stage")
    p.add_argument("--charset", default="etl9g")
    p.add_argument("--writers", type=int, default=2, help="writers, each writing every class once")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=bench)


def _add_bench_train(bsub: argparse._SubParsersAction) -> None:
    """`bench train`: training samples/s beside the machine's matmul GFLOP/s and the model's FLOPs."""

    def run(a: argparse.Namespace) -> None:
        from kanjirec.benchmarks.train import bench_train
        from kanjirec.config import parse_value

        overrides = {}
        for item in a.set_items:
            key, sep, value = item.partition("=")
            if not sep:
                raise CliError(f"--set {item!r}: expected key=value")
            overrides[key.removeprefix("model.")] = parse_value(value)
        bench_train(
            models=None if a.all else [a.model],
            batch_size=a.batch_size,
            steps=a.steps,
            num_classes=a.num_classes,
            model_config=overrides,
            threads=a.threads,
        )

    p = bsub.add_parser("train", help="training samples/s vs this machine's measured compute bound")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a registered model name")
    which.add_argument("--all", action="store_true", help="every registered model")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed training steps (after 3 warm-up steps)")
    p.add_argument("--num-classes", type=int, default=3036, help="classes of the head (ETL9G has 3,036)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--set",
        dest="set_items",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model keyword argument, e.g. hidden_size=128; repeatable",
    )
    p.set_defaults(func=run)


def _add_bench_compare(bsub: argparse._SubParsersAction) -> None:
    """`bench compare`: the time `kanjirec compare` takes for six default-size models on ~30,000 images."""

    def run(a: argparse.Namespace) -> None:
        from kanjirec.benchmarks.compare import bench_compare

        bench_compare(data=a.data, per_class=a.per_class, workers=a.workers, workdir=a.workdir)

    p = bsub.add_parser(
        "compare", help="time `kanjirec compare` on a 3,036-class test split (untrained default-size models)"
    )
    p.add_argument("--data", type=Path, help="a packed dataset (default: synthesise ETL9G, --per-class each)")
    p.add_argument("--per-class", type=int, default=100, help="synthetic samples per class (default 100)")
    p.add_argument("--workers", type=int, default=2, help="processes for the synthesis")
    p.add_argument(
        "--workdir", type=Path, help="where the temporary data and runs go (default: the system's)"
    )
    p.set_defaults(func=run)


def _add_bench_styles(bsub: argparse._SubParsersAction) -> None:
    """`bench styles`: top-1 per held-out style family (leave-styles-out)."""

    def run(a: argparse.Namespace) -> None:
        from kanjirec.benchmarks.styles import report_markdown, run

        if a.data is not None and a.keep_data is not None:
            raise CliError("bench styles: give --data (reuse rendered families) or --keep-data, not both")
        result = run(
            a.model, classes=a.classes, per_class=a.per_class, data=a.data, out=a.out, keep=a.keep_data
        )
        print(report_markdown(result))

    p = bsub.add_parser("styles", help="top-1 on style families no training data contains, per family")
    p.add_argument("--model", help="run folder, checkpoint, .onnx or ensemble (default: the shipped model)")
    p.add_argument("--classes", help="class set to render (default: the model's own classes)")
    p.add_argument("--per-class", type=int, default=1, help="samples per class and family (default 1)")
    p.add_argument("--data", type=Path, help="reuse held-out families rendered before (a packed dataset)")
    p.add_argument("--keep-data", type=Path, help="keep the rendered families here, for later --data")
    p.add_argument("--out", type=Path, help="write styles.json and styles.md here")
    p.set_defaults(func=run)


def _add_bench_serve(bsub: argparse._SubParsersAction) -> None:
    """`bench serve`: a bounded load test of `kanjirec serve` on loopback."""

    def run(a: argparse.Namespace) -> None:
        from kanjirec.benchmarks.serve import bench_serve

        bench_serve(
            model=a.model,
            requests=a.requests,
            seconds=a.seconds,
            junk_every=a.junk_every,
            max_wait_ms=a.max_wait_ms,
            workdir=a.workdir,
        )

    p = bsub.add_parser(
        "serve",
        help="load test of `kanjirec serve` on loopback: req/s and p50/p95/p99 at 1, 8, 32 clients, "
        "with and without batching, junk mixed in",
    )
    p.add_argument(
        "--model",
        type=Path,
        help="the model to serve (default: the shipped model, else an untrained default-size CNN)",
    )
    p.add_argument("--requests", type=int, default=400, help="requests per row at most (default 400)")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds per row at most (default 20)")
    p.add_argument("--junk-every", type=int, default=10, help="every Nth request is junk (0: none)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="the batching wait (default 2)")
    p.add_argument("--workdir", type=Path, help="where the temporary files go (default: the system's)")
    p.set_defaults(func=run)


def _add_bench_peers(bsub: argparse._SubParsersAction) -> None:
    """`bench peers`: the same drawn strokes given to our model, zinnia and kanjidraw."""

    def run(a: argparse.Namespace) -> None:
        from kanjirec.benchmarks.peers import report_markdown, run

        result = run(a.model, chars=a.chars, writers=a.writers, seed=a.seed, out=a.out)
        print(report_markdown(result, misses=False))

    from kanjirec.benchmarks.peers import DEFAULT_CHARS, DEFAULT_WRITERS, SEED

    p = bsub.add_parser(
        "peers",
        help="top-1/top-10 of our model, zinnia (Tegaki Japanese model) and kanjidraw on the same "
        "KanjiVG strokes distorted by a writer model",
    )
    p.add_argument("--model", help="run folder, checkpoint, .onnx or ensemble (default: the shipped model)")
    p.add_argument("--chars", type=int, default=DEFAULT_CHARS, help=f"characters (default {DEFAULT_CHARS})")
    p.add_argument(
        "--writers", type=int, default=DEFAULT_WRITERS, help=f"writers (default {DEFAULT_WRITERS})"
    )
    p.add_argument("--seed", type=int, default=SEED, help=f"writers and drawings (default {SEED})")
    p.add_argument("--out", type=Path, help="write peers.json and peers.md here")
    p.set_defaults(func=run)


def _add_bench_web(bsub: argparse._SubParsersAction) -> None:
    """`bench web`: the drawing page in headless Chromium."""

    def run(a: argparse.Namespace) -> None:
        from kanjirec.benchmarks.web import bench_web

        bench_web(model=a.model, chars=a.chars, server_chars=a.server_chars, seed=a.seed)

    p = bsub.add_parser(
        "web",
        help="the drawing page in headless Chromium: latency per stroke (p50/p95), download size, "
        "top-1/top-10 on characters drawn from KanjiVG",
    )
    p.add_argument("--model", type=Path, help="an .onnx file (default: the shipped model)")
    p.add_argument("--chars", type=int, default=100, help="characters drawn, recognised in the browser")
    p.add_argument(
        "--server-chars", type=int, default=20, help="of those, drawn again with recognition on the server"
    )
    p.add_argument("--seed", type=int, default=0, help="which characters are drawn")
    p.set_defaults(func=run)


# ---------------------------------------------------------------- export


def _export(a: argparse.Namespace) -> None:
    from kanjirec.export import export_run

    export_run(
        a.run,
        a.out,
        int8=a.int8,
        int8_modes=a.int8_mode,
        max_loss=a.max_loss,
        prune=a.prune,
        finetune_epochs=a.finetune_epochs,
        finetune_lr=a.finetune_lr,
        data=a.data,
        calibration_samples=a.calibration_samples,
    )


def _add_export(sub: argparse._SubParsersAction) -> None:
    from kanjirec.quantize import QUANT_MODES

    p = sub.add_parser(
        "export",
        help="export a trained model or an ensemble to ONNX (checked against PyTorch), "
        "optionally pruned and INT8",
    )
    p.add_argument(
        "run", type=Path, help="a run directory, a checkpoint file or an ensemble manifest (.json)"
    )
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    p.add_argument(
        "--int8",
        action="store_true",
        help="write the INT8 model (ONNX Runtime quantizer), only if it is as fast as fp32 and loses "
        "at most --max-loss points of test top-1; prints size, latency, throughput and top-1 of both",
    )
    p.add_argument(
        "--int8-mode",
        nargs="+",
        choices=QUANT_MODES,
        help="INT8 kinds to try (default: all; the fastest that passes is written)",
    )
    p.add_argument("--max-loss", type=float, default=1.0, help="top-1 points INT8 may lose (default 1)")
    p.add_argument(
        "--prune",
        type=float,
        metavar="AMOUNT",
        help="remove this fraction (0-1) of every channel / hidden width, then fine-tune in a run "
        "folder <run>-pruned<percent> next to the run; prints size, speed and top-1 before and after",
    )
    p.add_argument("--finetune-epochs", type=int, default=2, help="epochs of fine-tuning after pruning")
    p.add_argument("--finetune-lr", type=float, help="fine-tuning learning rate (default: the run's / 10)")
    p.add_argument(
        "--data", type=Path, help="packed dataset to calibrate and measure on (default: the run's)"
    )
    p.add_argument(
        "--calibration-samples", type=int, default=256, help="training images for static INT8 calibration"
    )
    p.set_defaults(func=_export)


# ---------------------------------------------------------------- using a model


def _add_predict(sub: argparse._SubParsersAction) -> None:
    """`predict`: top candidates for image files (predict.py)."""

    def run(a: argparse.Namespace) -> None:
        from kanjirec.predict import run_predict

        run_predict(a.images, a.model, a.top_k, a.json)

    p = sub.add_parser(
        "predict",
        help="top candidates for images (files, folders or globs; any size, polarity and format)",
        description="Print the top candidates with probabilities for each image. An input that cannot "
        "be read is named on stderr, the others are still answered, and the exit status is then 2.",
    )
    p.add_argument("images", nargs="+", help="image files, folders of images, or glob patterns ('*.png')")
    p.add_argument(
        "--model",
        type=Path,
        help="a run folder, a checkpoint, an .onnx file or an ensemble .json (default: the shipped model)",
    )
    p.add_argument("--top-k", type=int, default=10, help="candidates per image (default 10)")
    p.add_argument("--json", action="store_true", help="one JSON list: {file, candidates: [{char, prob}]}")
    p.set_defaults(func=run)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    """`serve`: the HTTP recognition service (serve/)."""

    def run(a: argparse.Namespace) -> None:
        from kanjirec.serve.app import ServeConfig, run_server

        run_server(
            a.model,
            host=a.host,
            port=a.port,
            config=ServeConfig(
                max_batch=a.max_batch,
                max_wait_ms=a.max_wait_ms,
                max_upload_bytes=int(a.max_upload_mb * 2**20),
                max_pixels=a.max_megapixels * 1_000_000,
            ),
        )

    p = sub.add_parser(
        "serve",
        help="HTTP service: the drawing page at /, POST /recognize (images or pen strokes), GET /health",
        description="Serve a model over HTTP with FastAPI and uvicorn; concurrent requests are batched. "
        "See docs/SERVE.md.",
    )
    p.add_argument(
        "--model",
        type=Path,
        help="a run folder, a checkpoint, an .onnx file or an ensemble .json (default: the shipped model)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--max-batch", type=int, default=32, help="requests answered by one model call (1: no batching)"
    )
    p.add_argument(
        "--max-wait-ms", type=float, default=2.0, help="how long a batch waits for more requests (default 2)"
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest accepted upload (default 10 MB)"
    )
    p.add_argument(
        "--max-megapixels", type=float, default=40.0, help="largest accepted image (default 40 megapixels)"
    )
    p.set_defaults(func=run)


def _add_export_web(sub: argparse._SubParsersAction) -> None:
    """`export-web`: the drawing page as static files (serve/web.py)."""

    def run(a: argparse.Namespace) -> None:
        from kanjirec.serve.web import export_web

        export_web(a.out_dir, a.model)

    p = sub.add_parser(
        "export-web",
        help="write the drawing page, the model and its runtime as static files for any web host",
        description="Write the 'Draw a kanji' page with the model and onnxruntime-web into OUT_DIR; it "
        "recognises in the browser, with no server. See docs/WEB.md.",
    )
    p.add_argument("out_dir", type=Path, help="a new or empty folder")
    p.add_argument("--model", type=Path, help="an exported .onnx file (default: the shipped model)")
    p.set_defaults(func=run)


# ---------------------------------------------------------------- the main job


def _demo(a: argparse.Namespace) -> None:
    from kanjirec.demo import run_demo

    run_demo(a.out, classes=a.classes, per_class=a.per_class, epochs=a.epochs, models=a.models, seed=a.seed)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthesise a small dataset, train every model briefly, compare them")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--classes", type=int, default=100, help="ETL9G classes, spread over the set")
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--models", nargs="+", help="default: every registered model")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)


# ---------------------------------------------------------------- zero-shot


def _add_zeroshot(sub: argparse._SubParsersAction) -> None:
    """`zeroshot`: train the radical models on the first m kanji, rank the last 1,000 (zeroshot.py)."""

    def run(a: argparse.Namespace) -> None:
        from kanjirec.zeroshot import report_markdown, run_zeroshot

        result = run_zeroshot(
            a.work,
            a.out or a.work / "results",
            models=a.models,
            ms=a.m,
            budget=a.budget,
            epochs=a.epochs,
            size=a.size,
            unseen=a.unseen,
            test_writers=a.test_writers,
            evaluate_only=a.evaluate_only,
            seed=a.seed,
        )
        print(report_markdown(result))
        print(f"wrote zeroshot.json, zeroshot.md and zeroshot.png to {a.out or a.work / 'results'}")

    p = sub.add_parser(
        "zeroshot",
        help="zero-shot: train the radical models on the first m kanji, rank the last 1,000 by components",
        description="Train radical_rnn and radical_attn_rnn on ETL9G's hiragana plus the first m JIS level-1 "
        "kanji (fresh synthetic samples, the same budget at every m), then rank the last --unseen kanji "
        "by their KanjiVG decompositions on synthetic writers never seen in training. Runs go to "
        "<work>/runs/<model>_m<m> and resume if interrupted.",
    )
    p.add_argument("--work", type=Path, default=Path("runs/zeroshot"), help="folder for data and runs")
    p.add_argument("--out", type=Path, help="folder for zeroshot.json/.md/.png (default: <work>/results)")
    p.add_argument(
        "--models", nargs="+", default=["radical_rnn", "radical_attn_rnn"], help="radical models to test"
    )
    p.add_argument("--m", type=int, nargs="+", default=[500, 1000, 1965], help="seen kanji counts")
    p.add_argument(
        "--budget", type=int, default=19_200, help="training samples seen per run (default 19,200)"
    )
    p.add_argument("--epochs", type=int, default=3, help="validation points the budget is split into")
    p.add_argument(
        "--size", choices=["cpu", "default"], default="cpu", help="model width: CPU scale or the registry's"
    )
    p.add_argument("--unseen", type=int, default=1000, help="unseen kanji: the last N in JIS order")
    p.add_argument("--test-writers", type=int, default=5, help="synthetic writers of the unseen test data")
    p.add_argument("--evaluate-only", action="store_true", help="score the runs under --work, train nothing")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


# ---------------------------------------------------------------- entry point


def _add_ship(sub: argparse._SubParsersAction) -> None:
    def run(a: argparse.Namespace) -> None:
        from kanjirec.ship import ship

        ship(a.run, a.data, styles_data=a.styles_data)

    p = sub.add_parser(
        "ship", help="make a trained run the model inside the package (ONNX, manifest, model card)"
    )
    p.add_argument("run", help="training run folder or checkpoint")
    p.add_argument("--data", required=True, type=Path, help="packed dataset whose test split is reported")
    p.add_argument("--styles-data", type=Path, help="held-out families rendered by an earlier `bench styles`")
    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kanjirec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data(sub)
    _add_models(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_export(sub)
    _add_predict(sub)
    _add_serve(sub)
    _add_export_web(sub)
    _add_bench(sub)
    _add_ship(sub)
    _add_demo(sub)
    _add_zeroshot(sub)
    return parser


_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning of ours reads as one line of ours, not as a source excerpt with a file path."""
    file = sys.stderr if file is None else file
    if str(Path(filename).resolve()).startswith(_PACKAGE_DIR):
        print(f"kanjirec: warning: {message}", file=file)
    else:
        file.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    # PyTorch reads this once, at its first allocation, so it is set before torch is imported:
    # tensors of 2 MB and more (a batch's activations) then sit on transparent huge pages instead
    # of being page-faulted 4 KiB at a time on every forward pass. THP_MEM_ALLOC_ENABLE=0 opts out.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    from kanjirec.errors import KanjirecError

    warnings.showwarning = _show_warning
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CliError, KanjirecError) as e:
        print(f"kanjirec: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
