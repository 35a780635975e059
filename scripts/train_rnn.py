"""Train one of the seed's RNN models; a thin wrapper over `kanjirec train --model MODEL_TYPE`.

python scripts/train_rnn.py --data-dir dataset --model-type basic_rnn --epochs 50
(model types: basic_rnn, stroke_rnn, radical_rnn, hybrid_cnn_rnn)
"""

from __future__ import annotations

import argparse
import sys

from kanjirec.config import TrainConfig, add_seed_script_arguments, seed_script_config

MODEL_TYPES = ("basic_rnn", "stroke_rnn", "radical_rnn", "hybrid_cnn_rnn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_seed_script_arguments(p)
    p.add_argument("--model-type", choices=MODEL_TYPES, required=True)
    p.add_argument("--hidden-size", type=int, help="LSTM hidden size")
    p.add_argument("--num-layers", type=int, help="LSTM layers")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> TrainConfig:
    model_config = {"hidden_size": args.hidden_size, "num_layers": args.num_layers}
    return seed_script_config(args, args.model_type, model_config)


def main(argv: list[str] | None = None) -> int:
    from kanjirec.train import run_seed_script

    args = parse_args(argv)
    return run_seed_script(build_config(args), args)


if __name__ == "__main__":
    sys.exit(main())
