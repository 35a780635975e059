"""Parallelism does not change what is trained: DDP ranks and DataLoader workers.

DDP: `kanjirec train` started by the real launcher, ``python -m torch.distributed.run
--standalone --nproc-per-node 2`` (what ``torchrun`` runs), as 2 CPU ranks (gloo), ends with
the weights of the same command in one process.

Tolerance: with the same global batch (8), data order and initial weights, DDP averages the two
ranks' mean gradients, which equals the one-process mean gradient up to float summation order, so a
model without BatchNorm (basic_rnn with pooled_norm=False; dropout and augmentation off because each
rank draws its own) ends within 2e-5 after 6 AdamW steps (measured: 1e-7 to 6.3e-6). Models with
BatchNorm normalise each rank's 4 samples instead of all 8; for the tiny CNN of these tests that
moves the weights by about a third of the training update after 6 steps, which is BatchNorm's known
per-rank statistics, not an error (SyncBatchNorm removes it), so no tolerance is asserted for them.

Workers: batches are read by worker processes but augmented in the main process from a
generator seeded by (seed, epoch, step, rank), so 0 and 2 workers train bit-identical weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kanjirec.checkpoint import read_checkpoint
from kanjirec.cli import main as cli_main
from kanjirec.models import create_model
from kanjirec.train import train
from test_train import make_tiny_dataset, tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train_argv(data, out) -> list[str]:
    return [
        "train", "--model", "basic_rnn", "--data", str(data), "--out-dir", str(out), "--epochs", "1",
        "--batch-size", "8", "--eval-batch-size", "16", "--lr", "0.01", "--workers", "0", "--save-every", "0",
        "--no-augment", "--set", "hidden_size=16", "--set", "num_layers=1", "--set", "dropout=0.0",
        "--set", "pooled_norm=false",
    ]  # fmt: skip


def test_torchrun_two_rank_run_matches_one_process_run(tmp_path, monkeypatch):
    data = make_tiny_dataset(tmp_path / "tiny")
    monkeypatch.setenv("CI", "1")
    assert cli_main(_train_argv(data, tmp_path / "single")) == 0

    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    result = subprocess.run(
        [*launcher, "-m", "kanjirec.cli", *_train_argv(data, tmp_path / "ddp")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "device cpu x 2 ranks" in result.stdout

    one = read_checkpoint(tmp_path / "single" / "basic_rnn" / "checkpoints" / "step-00000006.pt")
    two = read_checkpoint(tmp_path / "ddp" / "basic_rnn" / "checkpoints" / "step-00000006.pt")
    assert two["global_step"] == 6  # 48 samples / global batch 8, not / per-rank batch 4
    torch.manual_seed(0)
    initial = create_model("basic_rnn", 4, **one["model_config"]).state_dict()
    for key, value in one["model"].items():
        assert not torch.allclose(value, initial[key], atol=1e-3), f"{key} did not train"
        torch.testing.assert_close(two["model"][key], value, atol=2e-5, rtol=0, msg=key)

    final = json.loads((tmp_path / "ddp" / "basic_rnn" / "results" / "final_metrics.json").read_text())
    assert final["test_samples"] == 8  # each rank scored 4 test samples; the counts were summed
    assert [h["val_acc"] for h in two["history"]] == [h["val_acc"] for h in one["history"]]


def test_dataloader_workers_do_not_change_the_trained_weights(tmp_path):
    data = make_tiny_dataset(tmp_path / "tiny")
    states = []
    for workers in (0, 2):
        config = tiny_config(data, tmp_path / f"workers{workers}", epochs=1, save_every=0, workers=workers)
        train(config)
        states.append(read_checkpoint(config.run_dir / "checkpoints" / "step-00000006.pt"))
    a, b = states
    assert a["config"]["workers"] == 0 and b["config"]["workers"] == 2
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["history"][0]["val_acc"] == b["history"][0]["val_acc"]
