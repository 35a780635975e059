"""Train the Radical RNN (the seed's command); a thin wrapper over `kanjirec train --model radical_attn_rnn`.

    python scripts/train_radical_rnn.py --data-dir dataset --epochs 50 --batch-size 32 \
        --learning-rate 0.001 --hidden-size 256 --num-layers 2
"""

from __future__ import annotations

import argparse
import sys

from kanjirec.config import TrainConfig, add_seed_script_arguments, seed_script_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_seed_script_arguments(p)
    p.add_argument("--hidden-size", type=int, help="LSTM hidden size")
    p.add_argument("--num-layers", type=int, help="LSTM layers")
    p.add_argument("--encoding", choices=["one_hot", "binary_tree", "learned"], help="component encoding")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> TrainConfig:
    model_config = {"hidden_size": args.hidden_size, "num_layers": args.num_layers, "encoding": args.encoding}
    return seed_script_config(args, "radical_attn_rnn", model_config)


def main(argv: list[str] | None = None) -> int:
    from kanjirec.train import run_seed_script

    args = parse_args(argv)
    return run_seed_script(build_config(args), args)


if __name__ == "__main__":
    sys.exit(main())
