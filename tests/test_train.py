"""The training loop: outputs, config precedence, bitwise resume after SIGKILL, the seed's scripts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from kanjirec.checkpoint import load_model, read_checkpoint
from kanjirec.cli import main as cli_main
from kanjirec.config import ConfigError, TrainConfig, load_config_file
from kanjirec.data.store import DatasetWriter, PackedDataset
from kanjirec.models import list_models
from kanjirec.train import train

REPO = Path(__file__).resolve().parents[1]
TINY_CNN = {"channels": [8, 16], "convs_per_block": 1, "head_hidden": 32, "dropout": 0.2}
TIMING_KEYS = {"epoch_time_s", "samples_per_s", "train_time_s"}


def make_tiny_dataset(out: Path, writers: int = 8, per_writer: int = 2, chars: str = "一二三十") -> Path:
    """4 classes x 16 samples of drawn bars at 64x64, 8 writers (6 train, 1 val, 1 test)."""
    rng = np.random.default_rng(0)
    bars = {"一": [32], "二": [22, 42], "三": [16, 32, 48], "十": [32], "口": [14, 50]}
    images, labels, writer_keys = [], [], []
    for w in range(writers):
        for c in chars:
            for _ in range(per_writer):
                img = np.zeros((64, 64), np.uint8)
                dy, dx, t = rng.integers(-4, 5), rng.integers(-4, 5), rng.integers(2, 4)
                for r in bars[c]:
                    img[r + dy - t : r + dy + t, 12 + dx : 52 + dx] = 255
                if c in "十口":
                    for col in [32] if c == "十" else [14, 50]:
                        img[12 + dy : 52 + dy, col + dx - t : col + dx + t] = 255
                images.append(img)
                labels.append(c)
                writer_keys.append(f"tiny/w{w:02d}")
    writer = DatasetWriter(out)
    writer.add(np.stack(images), labels, writer_keys, source="tiny")
    return writer.finish(split="writer", seed=0)


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    fields = dict(
        model="cnn",
        data=str(data),
        out_dir=str(out),
        epochs=2,
        batch_size=8,
        eval_batch_size=16,
        workers=0,
        save_every=4,
        model_config=dict(TINY_CNN),
    )
    fields.update(overrides)
    return TrainConfig(**fields)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(autouse=True)
def one_thread():
    # Tests compare runs bit for bit and the test machine has few cores: one thread everywhere.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


# The killed run: train() in a subprocess whose augmentation blocks at call PAUSE_AT, so the
# process dies mid-epoch with steps done after its last checkpoint.
_KILLED_RUN = """
import sys, time, torch
torch.set_num_threads(1)
import kanjirec.train as T
from kanjirec.config import TrainConfig
config = TrainConfig(**{config!r})
calls = 0
real_augment = T.augment_batch
def augment_then_block(*args, **kwargs):
    global calls
    calls += 1
    if calls == {pause_at}:
        print("PAUSED", flush=True)
        time.sleep(600)
    return real_augment(*args, **kwargs)
T.augment_batch = augment_then_block
T.train(config)
"""


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run_bitwise(tiny_data, tmp_path):
    # 48 train samples / batch 8 = 6 steps per epoch, 2 epochs; checkpoints at steps 4, 6 (epoch end), 8.
    full = tiny_config(tiny_data, tmp_path / "full")
    final_full = train(full)

    killed = tiny_config(tiny_data, tmp_path / "killed")
    script = _KILLED_RUN.format(config=killed.to_dict(), pause_at=10)  # blocks inside step 10
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            if line.strip() == "PAUSED":
                break
        else:
            pytest.fail(f"the training subprocess ended (rc {proc.wait()}) before pausing")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    ckpts = killed.run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*.pt"))[-1] == "step-00000008.pt"
    mid = read_checkpoint(ckpts / "step-00000008.pt")
    assert (mid["epoch"], mid["step_in_epoch"]) == (1, 2)  # the kill came in the middle of epoch 2

    final_resumed = train(killed)  # resume="auto": continues from step-00000008.pt

    a = read_checkpoint(full.run_dir / "checkpoints" / "step-00000012.pt")
    b = read_checkpoint(ckpts / "step-00000012.pt")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _without_timing(a["history"]) == _without_timing(b["history"])
    drop = TIMING_KEYS | {"checkpoint"}
    assert {k: v for k, v in final_full.items() if k not in drop} == {
        k: v for k, v in final_resumed.items() if k not in drop
    }


def test_cli_train_writes_run_folders_and_resolved_config(tiny_data, tmp_path, capsys):
    config_file = tmp_path / "run.toml"
    config_file.write_text(
        textwrap.dedent(
            """
            model = "cnn"
            epochs = 5
            batch_size = 16
            lr = 0.003
            workers = 0
            [model_config]
            channels = [8, 16]
            convs_per_block = 1
            head_hidden = 64
            [augment]
            p = 0.3
            rotation = 0.5
            """
        ),
        encoding="utf-8",
    )
    out = tmp_path / "out"
    rc = cli_main(
        ["train", "--data", str(tiny_data), "--config", str(config_file), "--out-dir", str(out),
         "--epochs", "2", "--batch-size", "8", "--set", "head_hidden=32", "--set", "augment.noise=0.2",
         "--set", "save_every=100", "--schedule", "onecycle"]
    )  # fmt: skip
    assert rc == 0
    run = out / "cnn"
    resolved = load_config_file(run / "config" / "config.yaml")
    # file < flags < --set; model_config holds every constructor argument, defaults included
    assert (resolved["epochs"], resolved["batch_size"], resolved["lr"]) == (2, 8, 0.003)
    assert resolved["schedule"] == "onecycle" and resolved["save_every"] == 100
    assert resolved["model_config"]["head_hidden"] == 32 and resolved["model_config"]["channels"] == [8, 16]
    assert resolved["model_config"]["se_reduction"] == 8
    assert resolved["augment"] == {"p": 0.3, "rotation": 0.5, "noise": 0.2}

    history = json.loads((run / "results" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr"} <= set(history[0])
    assert (run / "results" / "training_curves.png").stat().st_size > 1000
    final = json.loads((run / "results" / "final_metrics.json").read_text())
    assert final["test_samples"] == 8 and 0 <= final["test_top1"] <= final["test_top5"] <= 1
    # epoch-end checkpoints only (save_every=100 > steps): 2 epochs x 6 steps
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.pt", "step-00000006.pt", "step-00000012.pt"
    ]  # fmt: skip

    model, info = load_model(run)
    assert info.path.name == "best.pt" and info.model_name == "cnn"
    assert info.classes == PackedDataset.open(tiny_data).classes
    assert info.metrics["test_top1"] == final["test_top1"]
    assert not model.training
    ds = PackedDataset.open(tiny_data)
    test_idx = ds.indices("test")
    with torch.no_grad():
        pred = model(torch.from_numpy(ds.images[test_idx])[:, None]).argmax(1).numpy()
    assert np.mean(pred == ds.labels[test_idx]) == pytest.approx(final["test_top1"])


def test_training_learns_the_tiny_task(tiny_data, tmp_path):
    # 10 epochs of 6 steps: the head's batch norm needs a few dozen steps before its running
    # statistics (what evaluation uses) settle; after 4 epochs val accuracy was still at chance.
    config = tiny_config(tiny_data, tmp_path, epochs=10, lr=3e-2, augment={}, label_smoothing=0.0)
    config.model_config["dropout"] = 0.0
    final = train(config)
    history = json.loads((config.run_dir / "results" / "history.json").read_text())
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]  # 1.38 = ln 4 at the start
    assert final["val_acc"] >= 0.5  # chance is 0.25


def test_early_stopping_stops_after_patience_epochs(tiny_data, tmp_path):
    # lr so small nothing changes: val accuracy never improves after epoch 1
    final = train(tiny_config(tiny_data, tmp_path, epochs=10, patience=2, lr=1e-9, augment={}))
    assert final["stopped_early"] and final["epochs_trained"] == 3 and final["best_epoch"] == 1


def test_config_file_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: cnn\nepoch: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'epoch'"):
        load_config_file(bad)
    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text('batch_size = "big"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"wrong\.toml.*'batch_size' must be int"):
        load_config_file(wrong_type)


@pytest.mark.parametrize(
    ("item", "named"),
    [
        ("augment.bogus=0.5", "augment.bogus: unknown distortion"),
        ("augment.rotation=2", "augment.rotation: 2 is not a number in [0, 1]"),
        ("augment.p=-0.1", "augment.p: -0.1 is not a number in [0, 1]"),
        ("augment.noise=nan", "augment.noise: nan is not a number in [0, 1]"),
        ("lr=inf", "'lr' must be a finite number"),
        ("weight_decay=-1", "'weight_decay' must be 0 or more"),
        ("seed=-1", "'seed' must be in [0, 2**32)"),
        ("run_name=../elsewhere", "'run_name' must be a plain folder name"),
        ("amp=fp8", "'amp' must be auto, bf16, fp16 or off"),
        ("epochs=2.5", "'epochs' must be int"),
        ("head_hidden=big", "model 'cnn': config key 'head_hidden' must be like its default 512, got 'big'"),
    ],
)
def test_bad_config_values_fail_before_anything_is_written(item, named, tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train", "--model", "cnn", "--data", str(tiny_data), "--out-dir", str(out), "--batch-size", "8"]
    argv += ["--set", item]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not out.exists()


def test_train_checks_the_config_before_it_writes(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path / "out", augment={"rotation": 0.5, "swirl": 0.2})
    with pytest.raises(ConfigError, match=r"augment\.swirl: unknown distortion"):
        train(config)
    assert not (tmp_path / "out").exists()


def test_seed_script_without_dataset_says_how_to_make_one(tmp_path):
    env = {**os.environ, "CI": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train_rnn.py"), "--data-dir", str(tmp_path / "dataset"),
         "--model-type", "basic_rnn", "--epochs", "1"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "kanjirec data synth" in result.stderr and "kanjirec data prepare" in result.stderr


@pytest.mark.parametrize(
    ("script", "args", "model", "model_config"),
    [
        ("train_cnn_model.py", [], "cnn", {}),
        (
            "train_radical_rnn.py",
            ["--batch-size", "8", "--learning-rate", "0.002", "--hidden-size", "16", "--num-layers", "1"],
            "radical_attn_rnn",
            {"hidden_size": 16, "num_layers": 1},
        ),
        ("train_rnn.py", ["--model-type", "radical_rnn"], "radical_rnn", {}),
    ],
)
def test_seed_scripts_map_their_flags_to_the_config(script, args, model, model_config, tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        module = __import__(script.removesuffix(".py"))
    finally:
        sys.path.remove(str(REPO / "scripts"))
    config = module.build_config(
        module.parse_args(["--data-dir", str(tmp_path), "--epochs", "3", "--output-dir", "o", *args])
    )
    assert (config.model, config.epochs, config.data, config.out_dir) == (model, 3, str(tmp_path), "o")
    assert model_config.items() <= config.model_config.items()
    if script == "train_radical_rnn.py":
        assert (config.batch_size, config.lr) == (8, 0.002)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_example_configs_load_and_build_their_model(path):
    from kanjirec.charset import get_charset
    from kanjirec.models import create_model

    config = TrainConfig(**load_config_file(path))
    config.data = "dataset"
    config.validate()
    classes = get_charset("etl9g")[:20]
    model = create_model(config.model, len(classes), classes=classes, **config.model_config)
    assert model.name == config.model


# Small versions of each model so that one epoch takes about a second; new models run at defaults.
SMALL_MODELS = {
    "cnn": TINY_CNN,
    "basic_rnn": {"hidden_size": 16, "num_layers": 1},
    "hybrid_cnn_rnn": {
        "hidden_size": 16,
        "num_layers": 1,
        "channels": [8, 16],
        "global_dim": 16,
        "head_hidden": 16,
    },
    "radical_attn_rnn": {"hidden_size": 16, "num_layers": 1, "embed_dim": 16, "channels": [8, 16, 16]},
    "radical_rnn": {"hidden_size": 16, "embed_dim": 16, "channels": [8, 16, 16], "detector_hidden": 32},
    "stroke_rnn": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "head_hidden": 16},
}


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_through_the_one_loop_and_reloads(name, tiny_data, tmp_path):
    model_config = dict(SMALL_MODELS.get(name, {}))
    config = tiny_config(tiny_data, tmp_path, model=name, epochs=1, save_every=0, model_config=model_config)
    final = train(config)
    assert final["test_samples"] == 8
    model, info = load_model(config.run_dir)
    assert info.model_name == name and info.classes == ["一", "三", "二", "十"]
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 64, 64, dtype=torch.uint8)).shape == (2, 4)
