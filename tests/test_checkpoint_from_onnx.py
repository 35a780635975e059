"""scripts/checkpoint_from_onnx.py: the shipped model back as a checkpoint that training continues."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from kanjirec.checkpoint import load_model
from kanjirec.data.fonts import GlyphCache, default_fonts
from kanjirec.data.store import DatasetWriter
from kanjirec.data.synth import font_images, font_styles
from kanjirec.recognizer import Recognizer

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "checkpoint_from_onnx.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_the_shipped_model_comes_back_as_a_checkpoint_that_trains_on(tmp_path):
    rec = Recognizer.load()
    rng = np.random.default_rng(0)
    chars = [rec.classes[i] for i in rng.choice(len(rec.classes), 600, replace=False)]
    face = default_fonts()[0]
    images = font_images(GlyphCache(face, 128, smooth=True), chars, font_styles(face, rng, len(chars)), rng)
    writer = DatasetWriter(tmp_path / "ds", image_size=64)
    writer.add(images, chars, ["w"] * len(chars), "font")
    data = writer.finish(split="random", fractions=(0.8, 0.1, 0.1), seed=0)

    out = tmp_path / "shipped.pt"
    done = _run("--data", str(data), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "max logit difference from ONNX Runtime" in done.stdout
    model, info = load_model(out)
    assert info.model_name == "mobile_cnn" and info.classes == rec.classes

    batch = torch.from_numpy(images[:, None])
    with torch.no_grad():
        eval_logits = model.forward_features(*model.extract_features(batch))
        # The same function as the shipped file.
        assert np.abs(eval_logits.numpy() - rec.logits(images)).max() < 1e-3
        # In training mode (batch statistics; dropout off to compare) it reads as it does in eval
        # mode: the batch norms hold the statistics of their inputs, so training continues the model
        # instead of re-normalising every layer.
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.eval()
        train_logits = model.forward_features(*model.extract_features(batch))
    agree = (train_logits.argmax(1) == eval_logits.argmax(1)).float().mean().item()
    assert agree > 0.95, agree


def test_only_a_mobile_cnn_file_is_restored(tmp_path, reader_onnx):
    writer = DatasetWriter(tmp_path / "ds", image_size=64)
    writer.add(np.zeros((10, 64, 64), np.uint8), list("あいうえおかきくけこ"), ["w"] * 10, "font")
    data = writer.finish(split="random", fractions=(0.8, 0.1, 0.1), seed=0)
    done = _run("--onnx", str(reader_onnx), "--data", str(data), "--out", str(tmp_path / "x.pt"))
    assert done.returncode == 1 and "this script restores mobile_cnn" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "x.pt").exists()
