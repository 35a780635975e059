"""CheckpointManager: atomic writes, pruning, load_model, and loud errors instead of fresh starts."""

from __future__ import annotations

import pytest
import torch

from kanjirec.checkpoint import (
    CheckpointManager,
    atomic_torch_save,
    load_model,
    read_checkpoint,
)
from kanjirec.errors import CheckpointError
from kanjirec.train import train
from test_train import make_tiny_dataset, tiny_config


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
    train(config)
    return config


def test_keeps_last_n_and_best(trained):
    names = sorted(p.name for p in (trained.run_dir / "checkpoints").iterdir())
    assert names == ["best.pt", "step-00000004.pt", "step-00000006.pt"]
    state = read_checkpoint(trained.run_dir / "checkpoints" / "step-00000006.pt")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, 6)
    assert set(state) >= {"optimizer", "scheduler", "scaler", "rng", "history", "classes", "config"}
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}


def test_atomic_save_leaves_old_file_intact_when_writing_fails(tmp_path):
    target = tmp_path / "step-00000001.pt"
    atomic_torch_save({"weights": torch.ones(3)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        atomic_torch_save({"weights": torch.zeros(3), "bad": Unpicklable()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["weights"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001.pt"]  # no temporary file left


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
    torch.save(state, foreign)
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
    torch.save(state, truncated)
    with pytest.raises(CheckpointError, match=r"missing-head\.pt: weights do not fit model 'cnn'"):
        load_model(truncated)
