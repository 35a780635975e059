"""The `kanjirec` command line.

Thin by design: each command parses its arguments and calls one function of a
module below; no logic lives here. Heavy modules are imported inside the
handlers so that `kanjirec --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
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
        help="skip records that fail to decode (each one is reported) instead of stopping",
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


def _add_pack_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--crop", action="store_true", help="crop each image to its ink's bounding box")
    p.add_argument("--split", choices=["writer", "random"], default="writer")
    p.add_argument("--seed", type=int, default=0)


# ---------------------------------------------------------------- synthetic data (data/synth.py)


def _add_data_synth(dsub: argparse._SubParsersAction) -> None:
    """`data synth` and `data charsets`; filled in by the synthetic-data module."""


# ---------------------------------------------------------------- models


def _add_models(sub: argparse._SubParsersAction) -> None:
    """`models`: list every registered model; filled in by the model zoo."""


# ---------------------------------------------------------------- training


def _add_train(sub: argparse._SubParsersAction) -> None:
    """`train`; filled in by the training loop."""


# ---------------------------------------------------------------- evaluation


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    """`evaluate`, `compare`, `ensemble`; filled in by the evaluation module."""


# ---------------------------------------------------------------- benchmarks


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    _add_bench_data(bsub)
    _add_bench_synth(bsub)
    _add_bench_train(bsub)


def _add_bench_data(bsub: argparse._SubParsersAction) -> None:
    """`bench data`; filled in by the ETL module."""


def _add_bench_synth(bsub: argparse._SubParsersAction) -> None:
    """`bench synth`; filled in by the synthetic-data module."""


def _add_bench_train(bsub: argparse._SubParsersAction) -> None:
    """`bench train`; filled in by the training loop."""


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kanjirec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data(sub)
    _add_models(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from kanjirec.errors import KanjirecError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CliError, KanjirecError) as e:
        print(f"kanjirec: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
