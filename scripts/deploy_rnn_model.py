"""The seed's inference tool; a thin wrapper over `kanjirec predict`.

python scripts/deploy_rnn_model.py --model model_training/stroke_rnn image.png [more images, folders, globs]
    [--top-k 5] [--json]
(--model: a run folder, a checkpoint, an .onnx file or an ensemble .json; default: the shipped model)
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", help="image files, folders of images, or glob patterns")
    p.add_argument("--model", "--model-path", dest="model", help="default: the shipped model")
    p.add_argument("--top-k", type=int, default=5, help="candidates per image (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON list instead of text lines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from kanjirec.cli import main as kanjirec

    a = parse_args(argv)
    model = ["--model", a.model] if a.model else []
    return kanjirec(["predict", *a.images, *model, "--top-k", str(a.top_k), *(["--json"] if a.json else [])])


if __name__ == "__main__":
    sys.exit(main())
