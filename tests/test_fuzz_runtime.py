"""Seeded random fuzzing of what users hand the runtime: training configs (TOML, YAML, --set items),
ensemble manifests, and image files for the Recognizer.

Each case must end in one of our typed errors (a `KanjirecError`) or in a correct result: a
config that validates also builds its model, optimizer, schedule and augmentation; a manifest
that loads scores a batch; an image that reads becomes a 64x64 uint8 image. Anything else (a
traceback from a dependency, a hang) fails the test with the seed and the input that caused it.
Every part stops after its case count or its time budget, whichever comes first.
"""

from __future__ import annotations

import io
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from helpers import CHARS, save_run, tiny_cnn
from kanjirec.augment import augment_batch
from kanjirec.config import TrainConfig, apply_set, load_config_file
from kanjirec.errors import KanjirecError
from kanjirec.loading import load_any, save_ensemble
from kanjirec.models import create_model
from kanjirec.models.ensemble import Pooling
from kanjirec.recognizer import to_convention
from kanjirec.train import make_optimizer, make_scheduler

BUDGET_S = 5.0  # per part (4 parts): about 1-3 s of CPU on one core for the counts below


def budget(cases: int):
    """Case numbers until ``cases`` or the time budget runs out."""
    start = time.perf_counter()
    for k in range(cases):
        if time.perf_counter() - start > BUDGET_S:
            return
        yield k


def random_value(rng: random.Random, small: bool = False):
    ints = [-3, -1, 0, 1, 2, 7, 40] if small else [-3, -1, 0, 1, 2, 7, 2**31, 2**40]
    return rng.choice(
        [
            lambda: rng.choice(ints),
            lambda: rng.choice([math.nan, math.inf, -math.inf, -0.5, 0.0, 0.3, 1.0, 1.5, 1e-9]),
            lambda: rng.choice(["", "x", "cnn", "cosine", "onecycle", "../up", "cuda:1", "fp16", "真"]),
            lambda: rng.choice([True, False]),
            lambda: None,
            lambda: [rng.choice(ints), 8][: rng.randint(0, 2)],
            lambda: {"a": 1},
        ]
    )()


# ---------------------------------------------------------------- configs

BASE_CONFIG = {
    "model": "cnn",
    "data": "dataset",
    "epochs": 2,
    "batch_size": 8,
    "lr": 0.001,
    "schedule": "cosine",
    "workers": 0,
    "augment": {"p": 0.5, "rotation": 0.5, "noise": 0.2},
    "model_config": {"channels": [8, 16], "convs_per_block": 1, "head_hidden": 16},
}
FIELDS = list(TrainConfig.__dataclass_fields__)
AUGMENT_KEYS = ["p", "rotation", "scale", "elastic", "noise", "swirl"]
CNN_KEYS = ["channels", "convs_per_block", "se_reduction", "head_hidden", "dropout", "depth"]


def mutate_config(rng: random.Random) -> dict:
    config = json.loads(json.dumps(BASE_CONFIG))
    for _ in range(rng.randint(1, 3)):
        where = rng.random()
        if where < 0.4:
            config[rng.choice(FIELDS + ["epoch", "bogus"])] = random_value(rng)
        elif where < 0.6 and isinstance(config.get("augment"), dict):
            config["augment"][rng.choice(AUGMENT_KEYS)] = random_value(rng)
        elif where < 0.85 and isinstance(config.get("model_config"), dict):
            config["model_config"][rng.choice(CNN_KEYS)] = random_value(rng, small=True)
        elif config:
            config.pop(rng.choice(list(config)))
    return config


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    return json.dumps(value, ensure_ascii=False)


def write_config(rng: random.Random, config: dict, folder: Path, k: int) -> Path:
    if rng.random() < 0.5:
        path = folder / f"c{k}.yaml"
        text = yaml.safe_dump(config, allow_unicode=True).encode()
    else:
        path = folder / f"c{k}.toml"
        text = "".join(f"{key} = {toml_value(v)}\n" for key, v in config.items() if v is not None).encode()
    if rng.random() < 0.25:  # damaged bytes: flipped, cut short, invalid UTF-8
        data = bytearray(text)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        text = bytes(data[: rng.randint(1, len(data))])
    path.write_bytes(text)
    return path


def exercise_config(config: TrainConfig) -> None:
    """What `train` does with a config before the first batch, minus the data."""
    config.validate()
    model = create_model(config.model, len(CHARS), classes=list(CHARS), **config.model_config)
    optimizer = make_optimizer(model, config, torch.device("cpu"))
    make_scheduler(optimizer, config, total_steps=8)
    images = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    images[:, :, 4:12, 8] = 255
    out = augment_batch(images, config.augment, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8


def test_fuzzed_config_files_end_in_a_typed_error_or_a_working_setup(tmp_path):
    exercise_config(TrainConfig(**json.loads(json.dumps(BASE_CONFIG))))  # valid; imports outside the budget
    rng = random.Random(1234)
    outcomes = {"ok": 0, "refused": 0}
    for k in budget(300):
        path = write_config(rng, mutate_config(rng), tmp_path, k)
        try:
            config = TrainConfig(**load_config_file(path))
            exercise_config(config)
            outcomes["ok"] += 1
        except KanjirecError as e:
            assert str(e), path
            outcomes["refused"] += 1
        except Exception as e:  # anything else is a bug: say which input
            pytest.fail(f"case {k}: {type(e).__name__}: {e}\n{path.read_bytes()!r}")
    assert outcomes["ok"] >= 2 and outcomes["refused"] >= 10, outcomes


def test_fuzzed_set_items_end_in_a_typed_error_or_a_working_setup():
    rng = random.Random(99)
    keys = [*FIELDS, "augment.rotation", "augment.p", "augment.swirl", "model.head_hidden", "dropout", "x.y"]
    texts = ["2", "-1", "0.5", "nan", "inf", "true", "none", "[1, 2]", "{", "{}", "cosine", "", "1e400"]
    for k in budget(300):
        items = [f"{rng.choice(keys)}={rng.choice(texts)}" for _ in range(rng.randint(1, 3))]
        try:
            config = TrainConfig(**json.loads(json.dumps(BASE_CONFIG)))
            apply_set(config, items)
            exercise_config(config)
        except KanjirecError:
            pass
        except Exception as e:
            pytest.fail(f"case {k}: --set {items}: {type(e).__name__}: {e}")


# ---------------------------------------------------------------- ensemble manifests


def mutate_manifest(rng: random.Random, manifest: dict, junk: list[str]) -> dict:
    m = json.loads(json.dumps(manifest))
    for _ in range(rng.randint(1, 3)):
        where = rng.random()
        if where < 0.3:
            m[rng.choice([*m, "extra"])] = random_value(rng)
        elif where < 0.5 and isinstance(m.get("members"), list) and m["members"]:
            m["members"][rng.randrange(len(m["members"]))] = rng.choice(
                [random_value(rng), {"path": rng.choice(junk)}, {"name": "x"}, {"path": random_value(rng)}]
            )
        elif where < 0.7 and isinstance(m.get("members"), list) and m["members"]:
            m["members"][rng.randrange(len(m["members"]))] = {"path": rng.choice(junk), "name": "m"}
        elif where < 0.85:
            m["weights"] = [random_value(rng) for _ in range(rng.randint(0, 3))]
        elif m:
            m.pop(rng.choice(list(m)))
    return m


def test_fuzzed_ensemble_manifests_end_in_a_typed_error_or_a_working_ensemble(tmp_path):
    runs = [save_run(tmp_path / f"run{i}", tiny_cnn(i), CHARS) for i in range(2)]
    base = save_ensemble(tmp_path / "ens.json", runs, Pooling.mean(2), CHARS, weighting="mean")
    manifest = json.loads(base.read_text(encoding="utf-8"))
    (tmp_path / "text.onnx").write_text("not onnx", encoding="utf-8")
    (tmp_path / "text.pt").write_bytes(b"PK\x03\x04 not a zip")
    (tmp_path / "empty").mkdir()
    junk = ["ens.json", "case.json", "text.onnx", "text.pt", "empty", ".", "..", "run0", "run1/checkpoints",
            "missing.pt", "", "/"]  # fmt: skip
    load_any(base)  # imports outside the budget
    rng = random.Random(7)
    loaded = 0
    for k in budget(200):
        path = tmp_path / "case.json"
        text = json.dumps(mutate_manifest(rng, manifest, junk)).encode()
        if rng.random() < 0.2:
            data = bytearray(text)
            data[rng.randrange(len(data))] = rng.randrange(256)
            text = bytes(data[: rng.randint(1, len(data))])
        path.write_bytes(text)
        try:
            model = load_any(path).model
            with torch.no_grad():
                assert model(torch.zeros(2, 1, 16, 16, dtype=torch.uint8)).shape == (2, len(CHARS))
            loaded += 1
        except KanjirecError:
            pass
        except Exception as e:
            pytest.fail(f"case {k}: {type(e).__name__}: {e}\n{text!r}")
    assert loaded >= 3


# ---------------------------------------------------------------- image files


def test_fuzzed_image_files_end_in_a_typed_error_or_a_convention_image(tmp_path):
    image = Image.new("L", (120, 90), 255)
    ImageDraw.Draw(image).line([(20, 45), (100, 45)], fill=0, width=6)
    seeds = []
    for fmt in ("PNG", "JPEG", "BMP", "GIF", "TIFF"):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        seeds.append(buffer.getvalue())
    to_convention(image)  # imports outside the budget
    rng = random.Random(5)
    path = tmp_path / "input.img"
    for k in budget(300):
        data = bytearray(rng.choice(seeds))
        kind = rng.random()
        if kind < 0.15:
            data = bytearray(rng.randbytes(rng.randint(0, 400)))
        elif kind < 0.6:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            data = data[: rng.randint(0, len(data))]
        path.write_bytes(bytes(data))
        try:
            out = to_convention(path)
            assert out.shape == (64, 64) and out.dtype == np.uint8
        except KanjirecError:
            pass
        except Exception as e:
            pytest.fail(f"case {k}: {type(e).__name__}: {e}\n{bytes(data[:64])!r}...")
