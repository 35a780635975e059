"""The model inside the package: its hash is checked before it loads, and it reads characters."""

import json

import numpy as np
import pytest

from kanjirec.weights import (
    MANIFEST_FILE,
    MODEL_FILE,
    ShippedModelError,
    read_manifest,
    sha256_file,
    shipped_model_path,
)


def _fake_model(tmp_path, payload=b"onnx bytes"):
    model, manifest = tmp_path / "kanjirec.onnx", tmp_path / "kanjirec.json"
    model.write_bytes(payload)
    manifest.write_text(json.dumps({"file": model.name, "sha256": sha256_file(model)}))
    return model, manifest


def test_a_damaged_or_missing_shipped_model_is_refused_by_name(tmp_path):
    model, manifest = _fake_model(tmp_path)
    assert shipped_model_path(model, manifest) == model
    data = bytearray(model.read_bytes())
    data[3] ^= 0xFF  # one flipped byte
    model.write_bytes(bytes(data))
    with pytest.raises(ShippedModelError, match=r"kanjirec.onnx: SHA-256 .* does not match"):
        shipped_model_path(model, manifest)
    model.unlink()
    with pytest.raises(ShippedModelError, match=r"no model ships in this install \(looked for "):
        shipped_model_path(model, manifest)
    manifest.write_text("{not json")
    with pytest.raises(ShippedModelError, match="unreadable manifest"):
        read_manifest(manifest)
    manifest.write_text("{}")
    with pytest.raises(ShippedModelError, match="no 'sha256' field"):
        read_manifest(manifest)
    with pytest.raises(ShippedModelError, match="no model ships"):
        read_manifest(tmp_path / "absent.json")


def test_the_shipped_model_loads_by_default_and_reads_characters():
    from kanjirec.data.fonts import GlyphCache, default_fonts
    from kanjirec.data.synth import draw_writer_styles, font_images
    from kanjirec.recognizer import Recognizer

    manifest = read_manifest(MANIFEST_FILE)
    rec = Recognizer.load()
    assert rec.path == MODEL_FILE and len(rec.classes) == manifest["classes"] == 3134
    chars = list("日本語あカ学")
    rng = np.random.default_rng(0)
    style = {
        **draw_writer_styles(rng, len(chars)),
        "size": np.full(len(chars), 0.9),
        "mess": np.zeros(len(chars)),
    }
    images = font_images(GlyphCache(default_fonts()[0], 128, smooth=True), chars, style, rng)
    read = [rec(image)[0][0] for image in images]
    assert sum(r == c for r, c in zip(read, chars, strict=True)) >= 5, read
