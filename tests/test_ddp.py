"""DDP: `kanjirec train` as 2 CPU ranks (gloo) matches the same command in one process.

The ranks are started the way torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the
environment) but forked from the test process, which saves the launcher's and each rank's
seconds of importing torch.

Tolerance: with the same global batch (8), data order and initial weights, DDP averages the
two ranks' mean gradients, which equals the one-process mean gradient up to float summation
order, so a model without BatchNorm (basic_rnn; dropout and augmentation off because each rank
draws its own) ends within 1e-4 after 6 AdamW steps (measured: 1e-7). Models with BatchNorm
normalise each rank's 4 samples instead of all 8; for the tiny CNN of these tests that moves
the weights by about a third of the training update after 6 steps, which is BatchNorm's known
per-rank statistics, not an error (SyncBatchNorm removes it), so no tolerance is asserted for them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sys

import torch

from kanjirec.checkpoint import read_checkpoint
from kanjirec.cli import main as cli_main
from kanjirec.models import create_model
from test_train import make_tiny_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, argv: list[str]) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CI="1",
    )  # fmt: skip
    torch.set_num_threads(1)
    sys.exit(cli_main(argv))


def _train_argv(data, out) -> list[str]:
    return [
        "train", "--model", "basic_rnn", "--data", str(data), "--out-dir", str(out), "--epochs", "1",
        "--batch-size", "8", "--eval-batch-size", "16", "--lr", "0.01", "--workers", "0", "--save-every", "0",
        "--no-augment", "--set", "hidden_size=16", "--set", "num_layers=1", "--set", "dropout=0.0",
    ]  # fmt: skip


def test_two_rank_ddp_run_matches_one_process_run(tmp_path, monkeypatch):
    data = make_tiny_dataset(tmp_path / "tiny")
    monkeypatch.setenv("CI", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(_train_argv(data, tmp_path / "single")) == 0
    finally:
        torch.set_num_threads(before)

    port = _free_port()
    fork = multiprocessing.get_context("fork")
    ranks = [
        fork.Process(target=_rank_main, args=(r, 2, port, _train_argv(data, tmp_path / "ddp")))
        for r in range(2)
    ]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(timeout=120)
    assert [p.exitcode for p in ranks] == [0, 0]

    one = read_checkpoint(tmp_path / "single" / "basic_rnn" / "checkpoints" / "step-00000006.pt")
    two = read_checkpoint(tmp_path / "ddp" / "basic_rnn" / "checkpoints" / "step-00000006.pt")
    assert two["global_step"] == 6  # 48 samples / global batch 8, not / per-rank batch 4
    torch.manual_seed(0)
    initial = create_model("basic_rnn", 4, **one["model_config"]).state_dict()
    for key, value in one["model"].items():
        assert not torch.allclose(value, initial[key], atol=1e-3), f"{key} did not train"
        torch.testing.assert_close(two["model"][key], value, atol=1e-4, rtol=1e-4, msg=key)

    final = json.loads((tmp_path / "ddp" / "basic_rnn" / "results" / "final_metrics.json").read_text())
    assert final["test_samples"] == 8  # each rank scored 4 test samples; the counts were summed
    assert [h["val_acc"] for h in two["history"]] == [h["val_acc"] for h in one["history"]]
