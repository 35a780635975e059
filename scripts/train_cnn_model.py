"""Train the plain CNN (the seed's command); a thin wrapper over `kanjirec train --model cnn`.

python scripts/train_cnn_model.py --data-dir dataset --epochs 50
"""

from __future__ import annotations

import argparse
import sys

from kanjirec.config import TrainConfig, add_seed_script_arguments, seed_script_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_seed_script_arguments(p)
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> TrainConfig:
    return seed_script_config(args, "cnn", {})


def main(argv: list[str] | None = None) -> int:
    from kanjirec.train import run_seed_script

    args = parse_args(argv)
    return run_seed_script(build_config(args), args)


if __name__ == "__main__":
    sys.exit(main())
