"""INT8 (ONNX Runtime's quantizer) and structured pruning, on a tiny model trained here."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from helpers import SMALL
from kanjirec.checkpoint import load_model
from kanjirec.cli import main
from kanjirec.config import TrainConfig
from kanjirec.data.store import DatasetWriter, PackedDataset
from kanjirec.export import export_onnx
from kanjirec.models import create_model
from kanjirec.models.base import SqueezeExcite
from kanjirec.prune import PRUNERS, PruneError, prune_and_finetune, prune_model
from kanjirec.quantize import (
    QUANT_MODES,
    Measurement,
    calibration_images,
    int8_faults,
    quantize_onnx,
)
from kanjirec.recognizer import Recognizer
from kanjirec.train import train

CHARS = "一二三十口"


def _shapes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str]]:
    """Five easy classes (one, two, three bars, a cross, a box), jittered, 64x64, ink 255 on 0."""
    images = np.zeros((n, 64, 64), np.uint8)
    labels = []
    for i in range(n):
        k = i % len(CHARS)
        dy, dx = rng.integers(-6, 7, 2)
        img = images[i]
        rows = {0: [32], 1: [24, 40], 2: [18, 32, 46], 3: [32], 4: [16, 48]}[k]
        for r in rows:
            img[r + dy - 2 : r + dy + 2, 14 + dx : 50 + dx] = 255
        if k == 3:
            img[14 + dy : 50 + dy, 30 + dx : 34 + dx] = 255
        if k == 4:
            img[16 + dy : 50 + dy, 14 + dx : 18 + dx] = 255
            img[16 + dy : 50 + dy, 46 + dx : 50 + dx] = 255
        labels.append(CHARS[k])
    return images, labels


def _train_on_shapes(root, model: str, model_config: dict):
    """``model`` trained for two epochs on the five shapes: (run folder, dataset folder)."""
    images, chars = _shapes(np.random.default_rng(0), 300)
    writer = DatasetWriter(root / "ds", image_size=64)
    writer.add(images, chars, [f"w{i % 10}" for i in range(len(chars))], "T")
    data = writer.finish(split="random", fractions=(0.6, 0.2, 0.2), seed=0)
    config = TrainConfig(
        model=model,
        data=str(data),
        out_dir=str(root / "runs"),
        epochs=2,
        batch_size=32,
        lr=3e-3,
        workers=0,
        augment={},
        model_config=model_config,
    )
    torch.manual_seed(0)
    train(config, resume="none")
    return config.run_dir, data


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A small cnn trained on the five shapes: (run folder, dataset folder)."""
    config = dict(channels=[8, 16, 16, 32], convs_per_block=1, head_hidden=32)
    return _train_on_shapes(tmp_path_factory.mktemp("quantize"), "cnn", config)


@pytest.fixture(scope="module")
def fp32_export(trained_run, tmp_path_factory):
    run, _ = trained_run
    model, info = load_model(run)
    return export_onnx(model, tmp_path_factory.mktemp("fp32") / "cnn.onnx", classes=info.classes)


@pytest.mark.parametrize("mode", QUANT_MODES)
def test_int8_model_agrees_with_fp32(mode, trained_run, fp32_export, tmp_path) -> None:
    _, data = trained_run
    int8 = quantize_onnx(fp32_export, tmp_path / "int8.onnx", mode, calibration_images(data, 64))
    ds = PackedDataset.open(data)
    images = ds.images[ds.indices("test")]
    fp32, quantized = Recognizer.load(fp32_export), Recognizer.load(int8)
    assert quantized.classes == fp32.classes
    agree = (fp32.logits(images).argmax(1) == quantized.logits(images).argmax(1)).mean()
    assert agree >= 0.9, f"{mode}: INT8 top-1 agrees with fp32 on only {agree:.0%} of the test images"
    assert int8.stat().st_size < fp32_export.stat().st_size


def test_int8_refused_when_it_loses_accuracy_and_nothing_is_written(trained_run, tmp_path, capsys) -> None:
    run, _ = trained_run
    out = tmp_path / "deploy" / "model.onnx"
    # A tolerance of -1 point: even a perfect copy loses "too much".
    argv = ["export", str(run), "--out", str(out), "--int8", "--int8-mode", "static-qdq", "--max-loss", "-1"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert re.search(r"no INT8 model written .*static-qdq: .*loses -?\d+\.\d+ points of top-1", captured.err)
    assert "test top-1" in captured.out  # the measurements were printed
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_int8_verdict_names_what_fails() -> None:
    base = Measurement("fp32", None, 4.0, latency_ms=1.0, throughput_per_s=1000, top1=0.90)
    good = Measurement("static-qdq", None, 1.0, latency_ms=0.5, throughput_per_s=2000, top1=0.895)
    assert int8_faults(base, good, max_loss=1.0) == []
    slow = Measurement("dynamic", None, 1.0, latency_ms=1.5, throughput_per_s=900, top1=0.88)
    faults = int8_faults(base, slow, max_loss=1.0)
    assert [f.split(":")[0] for f in faults] == [
        "slower at batch 1",
        "slower at batch 64",
        "loses 2.00 points of top-1 (more than 1)",
    ]


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_pruning_nothing_keeps_the_function(name) -> None:
    # An amount too small to remove a unit must copy every weight to its place: same logits.
    torch.manual_seed(0)
    classes = list("明林語川")
    model = create_model(name, len(classes), classes=classes, **SMALL[name]).eval()
    images = (torch.rand(3, 1, 64, 64) > 0.7).to(torch.uint8) * 255
    same = prune_model(model, 0.01)
    assert same.num_parameters() == model.num_parameters()
    with torch.no_grad():
        torch.testing.assert_close(same(images), model(images), atol=1e-5, rtol=0)
    half = prune_model(model, 0.5)
    assert half.num_parameters() < 0.6 * model.num_parameters()
    assert half.classes == model.classes and half(images).shape == (3, len(classes))


def test_pruned_and_finetuned_model_is_smaller_and_loads_as_onnx(trained_run, fp32_export, tmp_path) -> None:
    run, data = trained_run
    model, info = load_model(run)
    pruned_run = prune_and_finetune(run, 0.5, epochs=1, lr=1e-9, log=lambda *a: None)
    pruned, pruned_info = load_model(pruned_run)
    assert pruned_info.classes == info.classes
    assert pruned.num_parameters() < model.num_parameters()
    assert pruned.config["channels"] == [4, 8, 8, 16] and pruned.config["head_hidden"] == 16
    # The fine-tune started from the pruned weights (at lr 1e-9 it barely moved them).
    start = prune_model(model, 0.5)
    for (key, p), q in zip(pruned.named_parameters(), start.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=key)
    path = export_onnx(pruned, tmp_path / "pruned.onnx", classes=pruned_info.classes)
    assert path.stat().st_size < fp32_export.stat().st_size
    recognizer = Recognizer.load(path)
    assert recognizer.classes == info.classes
    ds = PackedDataset.open(data)
    assert recognizer.logits(ds.images[:4]).shape == (4, len(CHARS))


def test_prune_rejects_a_bad_amount() -> None:
    model = create_model("cnn", 4, classes=list("明林語川"), **SMALL["cnn"])
    with pytest.raises(PruneError, match="between 0 and 1"):
        prune_model(model, 1.5)


def test_pruning_removes_exactly_the_dead_units() -> None:
    # Half the channels of every conv and half the head's hidden units are dead (batch norm scale
    # and shift 0: they output 0 after ReLU): pruning half of every width must drop exactly those,
    # reading every kept weight from the right place, so the logits do not change.
    torch.manual_seed(0)
    model = create_model("cnn", 4, classes=list("明林語川"), **SMALL["cnn"]).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        layers = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d))]
        for layer in layers:
            if isinstance(layer, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                layer.running_mean.normal_(generator=generator)
                layer.running_var.uniform_(0.5, 2.0, generator=generator)
            width = layer.weight.shape[0]
            dead = torch.randperm(width, generator=generator)[: width // 2]
            layer.weight[dead] = 0.0
            layer.bias[dead] = 0.0
    images = (torch.rand(3, 1, 64, 64, generator=generator) > 0.7).to(torch.uint8) * 255
    pruned = prune_model(model, 0.5)
    assert pruned.config["channels"] == [4, 8, 8, 16] and pruned.config["head_hidden"] == 16
    with torch.no_grad():
        torch.testing.assert_close(pruned(images), model(images), atol=1e-5, rtol=0)


# The shipped family, with a second block in the last stage and an SE bottleneck wide enough to prune.
MOBILE = dict(stem=8, stages=[[16, 1], [64, 2]], embedding=16)
MOBILE_HALF = dict(stem=4, stages=[[8, 1], [32, 2]], embedding=8)


def _widths(model) -> dict:
    return {key: model.config[key] for key in MOBILE}


def test_mobile_cnn_pruning_removes_exactly_the_dead_channels() -> None:
    # Half of every channel group, SE bottleneck and embedding is dead where it is read: the batch norm
    # scale of the depthwise filter reading it (of the unit itself where an SE or the head reads it) is 0,
    # so it feeds on a constant (a random shift). Pruning half of every width must drop exactly those,
    # read every kept weight from its place and move the constants the dropped units fed into what
    # read them: the logits must not change.
    torch.manual_seed(0)
    model = create_model("mobile_cnn", 4, classes=list("明林語川"), **MOBILE).eval()
    generator = torch.Generator().manual_seed(1)

    def dead(width: int) -> torch.Tensor:
        return torch.randperm(width, generator=generator)[: width // 2]

    with torch.no_grad():
        for bn in [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]:
            bn.bias.normal_(generator=generator)
            bn.running_mean.normal_(generator=generator)
            bn.running_var.uniform_(0.5, 2.0, generator=generator)
        blocks = [m for m in model.features if isinstance(m, nn.Sequential)]
        gates = [m for m in model.features if isinstance(m, SqueezeExcite)]
        # Each group's batch norm, the depthwise one reading it (the head reads the last group), and
        # whether an SE reads it too: SE ends stage 1 (one block) and stage 2 (two blocks).
        made = [model.features[1]] + [b[4] for b in blocks]
        read = [b[1] for b in blocks] + [None]
        for bn, depthwise, gated in zip(made, read, [False, True, False, True], strict=True):
            gone = dead(len(bn.weight))
            if gated or depthwise is None:
                bn.weight[gone] = 0.0
            if depthwise is not None:
                depthwise.weight[gone] = 0.0
            else:  # a constant gate, so what these channels feed the head is a constant too
                gates[-1].fc2.weight[gone] = 0.0
        gates[-1].fc1.weight[dead(gates[-1].fc1.out_features)] = 0.0
        model.head[1].weight[dead(len(model.head[1].weight))] = 0.0
    images = (torch.rand(3, 1, 64, 64, generator=generator) > 0.7).to(torch.uint8) * 255
    pruned = prune_model(model, 0.5)
    assert _widths(pruned) == MOBILE_HALF
    assert pruned.features[-1].fc1.out_features == gates[-1].fc1.out_features // 2
    with torch.no_grad():
        torch.testing.assert_close(pruned(images), model(images), atol=1e-5, rtol=0)


def test_pruned_mobile_cnn_checkpoint_and_onnx_reproduce_it(tmp_path) -> None:
    run, data = _train_on_shapes(tmp_path, "mobile_cnn", MOBILE)
    model, info = load_model(run)
    pruned_run = prune_and_finetune(run, 0.5, epochs=1, lr=1e-3, log=lambda *a: None)
    ds = PackedDataset.open(data)
    images = ds.images[ds.indices("test")]
    batch = torch.from_numpy(images)[:, None]
    # The pruned model the fine-tune started from, through the one checkpoint format and loader.
    start, start_info = load_model(pruned_run / "init" / "pruned.pt")
    expected = prune_model(model, 0.5)
    assert _widths(start) == _widths(expected) == MOBILE_HALF
    assert start.num_parameters() < 0.6 * model.num_parameters()
    assert start_info.classes == info.classes
    with torch.no_grad():
        torch.testing.assert_close(start(batch), expected(batch), atol=0, rtol=0)
    # The fine-tuned run loads as the narrower model, and its ONNX export computes what PyTorch does.
    tuned, tuned_info = load_model(pruned_run)
    assert _widths(tuned) == MOBILE_HALF
    path = export_onnx(tuned, tmp_path / "pruned.onnx", classes=tuned_info.classes)
    with torch.no_grad():
        reference = tuned(batch).numpy()
    logits = Recognizer.load(path).logits(images)
    assert logits.shape == (len(images), len(CHARS))
    np.testing.assert_allclose(logits, reference, atol=1e-4, rtol=0)


def test_export_prune_int8_reports_all_four(trained_run, tmp_path, capsys, monkeypatch) -> None:
    # Timings decide INT8's verdict (tested above); here every INT8 model passes, so the run is steady.
    monkeypatch.setattr("kanjirec.quantize.int8_faults", lambda *a: [])
    run, _ = trained_run
    out = tmp_path / "pruned.int8.onnx"
    argv = ["export", str(run), "--out", str(out), "--int8", "--int8-mode", "static-qdq", "--prune", "0.25"]
    assert main([*argv, "--finetune-epochs", "1"]) == 0
    row = re.compile(r"^(.+?) +(\d+\.\d\d) +\d+\.\d{3} +\d+ +(\d+\.\d\d)% +(reference|[+-]\d+\.\d\d points)$")
    rows = [m.groups() for m in map(row.match, capsys.readouterr().out.splitlines()) if m]
    four = rows[-4:]  # the last table: before and after pruning, fp32 and INT8
    assert [label for label, *_ in four] == [
        "unpruned",
        "unpruned static-qdq",
        "pruned 25%",
        "pruned 25% static-qdq",
    ]
    base = float(four[0][2])
    for _, _, top1, change in four[1:]:  # each change is from the unpruned fp32 model
        assert abs(float(change.split()[0]) - (float(top1) - base)) <= 0.011
    assert Recognizer.load(out).classes == load_model(run)[1].classes
