"""CheckpointManager: atomic writes, pruning, content hashes, load_model, and loud errors instead of
fresh starts, including after a kill in the middle of a checkpoint write."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import kanjirec.checkpoint as checkpoint_module
from kanjirec.checkpoint import (
    CheckpointManager,
    atomic_torch_save,
    load_model,
    read_checkpoint,
)
from kanjirec.cli import main as cli_main
from kanjirec.digest import sha256_bytes, sha256_file, state_sha256
from kanjirec.errors import CheckpointError
from kanjirec.train import train
from test_train import make_tiny_dataset, tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished 1-epoch run (6 steps, checkpoints at steps 2, 4 and 6); tests copy what they change."""
    root = tmp_path_factory.mktemp("ckpt")
    data = make_tiny_dataset(root / "tiny")
    config = tiny_config(data, root / "out", epochs=1, save_every=2, keep_last=2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as every test here: runs are compared bit for bit
    try:
        train(config)
    finally:
        torch.set_num_threads(before)
    return config


def test_keeps_last_n_and_best(trained):
    names = sorted(p.name for p in (trained.run_dir / "checkpoints").iterdir())
    assert names == ["best.pt", "step-00000004.pt", "step-00000006.pt"]
    state = read_checkpoint(trained.run_dir / "checkpoints" / "step-00000006.pt")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, 6)
    assert set(state) >= {"optimizer", "scheduler", "scaler", "rng", "history", "classes", "config"}
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}


def test_atomic_save_leaves_old_file_intact_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "step-00000001.pt"
    atomic_torch_save({"weights": torch.ones(3)}, target)

    def save_then_fail(obj, f):
        f.write(b"the first bytes")
        raise RuntimeError("serialisation failed (simulated)")

    monkeypatch.setattr(checkpoint_module.torch, "save", save_then_fail)
    with pytest.raises(RuntimeError, match="simulated"):
        atomic_torch_save({"weights": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.equal(read_checkpoint_weights(target), torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001.pt"]  # no temporary file left


def read_checkpoint_weights(path: Path) -> torch.Tensor:
    state = torch.load(path, weights_only=True)
    assert state["sha256"] == state_sha256({"weights": state["weights"]})
    return state["weights"]


def test_manager_removes_stale_temporary_files(tmp_path):
    (tmp_path / ".step-00000009.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    CheckpointManager(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_truncated_checkpoint_is_an_error_not_a_fresh_start(trained, tmp_path):
    config = tiny_config(trained.data, tmp_path, epochs=1, save_every=2)
    ckpts = config.run_dir / "checkpoints"
    ckpts.mkdir(parents=True)
    good = (trained.run_dir / "checkpoints" / "step-00000004.pt").read_bytes()
    (ckpts / "step-00000004.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(
        CheckpointError, match=r"step-00000004\.pt: unreadable checkpoint, truncated or corrupt"
    ):
        train(config)  # resume="auto" finds the damaged latest checkpoint


def test_garbage_file_is_reported(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"model\.pt: unreadable"):
        read_checkpoint(bad)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.ones(2)}, plain)
    with pytest.raises(CheckpointError, match=r"plain\.pt: not a kanjirec checkpoint"):
        read_checkpoint(plain)


def test_resume_with_other_config_names_the_differences(trained):
    config = tiny_config(trained.data, trained.out_dir, epochs=1, save_every=2, lr=5e-4, label_smoothing=0.2)
    config.model_config["head_hidden"] = 48
    with pytest.raises(CheckpointError) as err:
        train(config)
    message = str(err.value)
    assert "step-00000006.pt" in message
    assert "lr: 0.001 in the checkpoint, 0.0005 now" in message
    assert "label_smoothing: 0.1 in the checkpoint, 0.2 now" in message
    assert "model_config.head_hidden: 32 in the checkpoint, 48 now" in message


def test_resume_with_other_class_list_is_an_error(trained, tmp_path):
    other = make_tiny_dataset(tmp_path / "other", chars="一二三口")
    config = tiny_config(other, trained.out_dir, epochs=1, save_every=2)
    with pytest.raises(
        CheckpointError, match=r"another class list: class 3 is '十' in the checkpoint but '口'"
    ):
        train(config, resume=str(trained.run_dir / "checkpoints" / "step-00000004.pt"))


def test_resume_from_another_models_checkpoint_is_an_error(trained, tmp_path):
    state = read_checkpoint(trained.run_dir / "checkpoints" / "step-00000004.pt")
    state["model_name"] = "basic_rnn"
    foreign = tmp_path / "foreign.pt"
    atomic_torch_save(state, foreign)
    config = tiny_config(trained.data, tmp_path / "out", epochs=1)
    with pytest.raises(CheckpointError, match=r"foreign\.pt: checkpoint belongs to model 'basic_rnn'"):
        train(config, resume=str(foreign))


def test_no_resume_starts_afresh_and_removes_old_checkpoints(trained, tmp_path):
    config = tiny_config(trained.data, tmp_path, epochs=1, save_every=0)
    ckpts = config.run_dir / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "step-00000099.pt").write_bytes(b"stale")
    train(config, resume="none")
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "step-00000006.pt"]


def test_load_model_rebuilds_the_trained_model_strictly(trained, tmp_path):
    model, info = load_model(trained.run_dir)
    best = read_checkpoint(trained.run_dir / "checkpoints" / "best.pt")
    assert info.model_name == "cnn" and info.classes == ["一", "三", "二", "十"]
    assert info.model_config == best["model_config"] and info.config["lr"] == trained.lr
    assert {"val_acc", "test_top1", "test_top5"} <= set(info.metrics)
    for key, value in model.state_dict().items():
        assert torch.equal(value, best["model"][key])

    state = dict(best)
    state["model"] = {k: v for k, v in best["model"].items() if not k.startswith("head.")}
    truncated = tmp_path / "missing-head.pt"
    atomic_torch_save(state, truncated)
    with pytest.raises(CheckpointError, match=r"missing-head\.pt: weights do not fit model 'cnn'"):
        load_model(truncated)


# ---------------------------------------------------------------- content hashes


def _flip_bytes_inside(path: Path, tensor: torch.Tensor, count: int = 4000) -> None:
    """Invert ``count`` bytes in the middle of the zip entry holding ``tensor``'s bytes (stored, not
    compressed), leaving the archive itself readable: torch checks no CRC."""
    raw = tensor.contiguous().numpy().tobytes()
    with zipfile.ZipFile(path) as z:
        (entry,) = [i for i in z.infolist() if i.file_size == len(raw) and z.read(i) == raw]
    with open(path, "r+b") as f:
        f.seek(entry.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        start = entry.header_offset + 30 + name_len + extra_len + (entry.file_size - count) // 2
        f.seek(start)
        flipped = bytes(b ^ 0xFF for b in f.read(count))
        f.seek(start)
        f.write(flipped)


def test_flipped_bytes_in_a_weight_tensor_fail_evaluate_naming_the_file(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained.run_dir, run)
    best = run / "checkpoints" / "best.pt"
    weights = read_checkpoint(best)["model"]
    name = max(weights, key=lambda k: weights[k].numel())
    assert weights[name].numel() * 4 >= 4000
    _flip_bytes_inside(best, weights[name])
    assert torch.load(best, weights_only=True)["model"][name].ne(weights[name]).any()  # torch loads it

    rc = cli_main(["evaluate", str(run), "--data", str(trained.data)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{best}: checkpoint is corrupt" in err and "Traceback" not in err
    with pytest.raises(CheckpointError, match=r"best\.pt: checkpoint is corrupt"):
        load_model(run)


def test_hash_covers_every_value_and_survives_a_round_trip(trained, tmp_path):
    path = trained.run_dir / "checkpoints" / "step-00000006.pt"
    state = read_checkpoint(path)
    body = {k: v for k, v in state.items() if k != "sha256"}
    assert state["sha256"] == state_sha256(body)
    for change in (
        lambda s: s["history"][0].update(val_acc=s["history"][0]["val_acc"] + 1e-12),
        lambda s: s["config"].update(lr=s["config"]["lr"] * 2),
        lambda s: s["rng"]["numpy"]["keys"].add_(1),
    ):
        altered = torch.load(path, weights_only=True)
        change(altered)
        altered.pop("sha256")
        assert state_sha256(altered) != state["sha256"]
    assert sha256_file(path) == sha256_bytes(path.read_bytes())


def test_checkpoints_without_a_hash_are_refused(trained, tmp_path):
    state = torch.load(trained.run_dir / "checkpoints" / "best.pt", weights_only=True)
    state.pop("sha256")
    no_hash = tmp_path / "no-hash.pt"
    torch.save(state, no_hash)
    with pytest.raises(CheckpointError, match=r"no-hash\.pt: checkpoint has no content hash"):
        read_checkpoint(no_hash)
    old = tmp_path / "version-1.pt"
    torch.save({**state, "version": 1}, old)
    with pytest.raises(CheckpointError, match=r"version-1\.pt: checkpoint version 1, written by an earlier"):
        load_model(old)


# ---------------------------------------------------------------- failures while writing a checkpoint

# train() in a subprocess whose write of step-00000004.pt stops after its first 4 KiB have reached
# the disk, then waits to be killed: a SIGKILL in the middle of writing a checkpoint's bytes.
_KILLED_WHILE_WRITING = """
import os, tempfile, time, torch
torch.set_num_threads(1)
import kanjirec.checkpoint as C
from kanjirec.config import TrainConfig
from kanjirec.train import train

real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen
temporary = {{}}

def mkstemp(*args, **kwargs):
    fd, name = real_mkstemp(*args, **kwargs)
    temporary[fd] = name
    return fd, name

class StallingFile:
    def __init__(self, f):
        self.f, self.written = f, 0
    def write(self, data):
        if self.written + len(data) > 4096:
            self.f.write(bytes(data)[: 4096 - self.written])
            self.f.flush()
            os.fsync(self.f.fileno())
            print("WRITING", flush=True)
            time.sleep(600)
        self.written += len(data)
        return self.f.write(data)
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

def fdopen(fd, *args, **kwargs):
    f = real_fdopen(fd, *args, **kwargs)
    return StallingFile(f) if "step-00000004.pt" in temporary.get(fd, "") else f

C.tempfile.mkstemp, C.os.fdopen = mkstemp, fdopen
train(TrainConfig(**{config!r}))
"""


def _uninterrupted(trained) -> dict:
    """The last checkpoint of the module's run: the same config, 6 steps, nothing interrupted."""
    return read_checkpoint(trained.run_dir / "checkpoints" / "step-00000006.pt")


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_sigkill_while_a_checkpoint_is_written_keeps_the_previous_one_and_resumes(trained, tmp_path):
    config = tiny_config(trained.data, tmp_path, epochs=1, save_every=2, keep_last=2)
    script = _KILLED_WHILE_WRITING.format(config=config.to_dict())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            if line.strip() == "WRITING":
                break
        else:
            pytest.fail(f"the training subprocess ended (rc {proc.wait()}) before writing step 4")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    ckpts = config.run_dir / "checkpoints"
    (partial,) = ckpts.glob(".step-00000004.pt.*.tmp")
    assert partial.stat().st_size == 4096  # killed with part of the bytes on disk
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.endswith(".tmp")) == ["step-00000002.pt"]
    assert read_checkpoint(ckpts / "step-00000002.pt")["global_step"] == 2

    train(config)  # resume="auto": from step 2; the partial file is removed, never read
    assert not list(ckpts.glob(".*.tmp"))
    _assert_same_weights(read_checkpoint(ckpts / "step-00000006.pt"), _uninterrupted(trained))


def test_failure_before_a_checkpoint_write_keeps_the_previous_one_and_resumes(trained, tmp_path, monkeypatch):
    real_mkstemp = checkpoint_module.tempfile.mkstemp

    def disk_full_at_step_4(*args, **kwargs):
        if "step-00000004.pt" in kwargs.get("prefix", ""):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(*args, **kwargs)

    config = tiny_config(trained.data, tmp_path, epochs=1, save_every=2, keep_last=2)
    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", disk_full_at_step_4)
    with pytest.raises(
        CheckpointError, match=r"step-00000004\.pt: cannot write checkpoint \(.*No space left"
    ):
        train(config)
    monkeypatch.undo()
    ckpts = config.run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000002.pt"]  # no temporary file either

    train(config)
    _assert_same_weights(read_checkpoint(ckpts / "step-00000006.pt"), _uninterrupted(trained))
