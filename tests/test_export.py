"""ONNX export of every model and the Recognizer that runs it."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import onnx
import pytest
import torch
from PIL import Image, ImageDraw

from helpers import SMALL
from kanjirec.data.kanjivg import load_kanjivg
from kanjirec.errors import CheckpointError
from kanjirec.export import _quiet_exporter, export_onnx
from kanjirec.models import create_model, list_models
from kanjirec.recognizer import Recognizer, to_convention

CLASSES = list("明林語川")


def render(char: str, shift: tuple[float, float] = (0, 0)) -> np.ndarray:
    """KanjiVG strokes drawn as 255 on 0 at 64x64."""
    image = Image.new("L", (64, 64), 0)
    draw = ImageDraw.Draw(image)
    for stroke in load_kanjivg()[char].strokes:
        points = (stroke.points - 54.5) * 0.85 * 64 / 109 + 32 + np.asarray(shift)
        draw.line([tuple(p) for p in points], fill=255, width=3, joint="curve")
    return np.asarray(image)


@pytest.mark.parametrize("name", list_models())
def test_onnx_runtime_matches_pytorch(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model(name, len(CLASSES), classes=CLASSES, **SMALL.get(name, {})).eval()
    # The user sees our message only: no warning or log record of torch's exporter gets through.
    logged: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = logged.append
    exporter_log = logging.getLogger("torch.onnx")
    exporter_log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = export_onnx(model, tmp_path / f"{name}.onnx")
    finally:
        exporter_log.removeHandler(handler)
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in logged if r.levelno >= logging.WARNING] == []

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["kanjirec.classes"]) == CLASSES
    assert meta["kanjirec.preprocessing"] == model.feature_kind
    assert json.loads(meta["kanjirec.config"]) == model.config

    recognizer = Recognizer.load(path)
    # Five images against a graph traced with three: the batch axis is dynamic.
    images = np.stack([render(c, (1, -1)) for c in [*CLASSES, "日"]])
    with torch.no_grad():
        expected = model(torch.from_numpy(images)[:, None]).numpy()
    np.testing.assert_allclose(recognizer.logits(images), expected, atol=1e-4, rtol=0)


def test_recognizer_reads_any_polarity_and_format(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("cnn", len(CLASSES), classes=CLASSES, **SMALL["cnn"]).eval()
    recognizer = Recognizer.load(export_onnx(model, tmp_path / "cnn.onnx"), top_k=3)
    ink_on_black = render("明")
    paper = 255 - ink_on_black  # dark ink on white paper, as a scan or photo
    Image.fromarray(paper).convert("RGB").save(tmp_path / "scan.png")

    reference = to_convention(ink_on_black)
    assert np.array_equal(to_convention(paper), reference)
    assert np.array_equal(to_convention(np.stack([paper] * 3, axis=2)), reference)
    assert np.array_equal(to_convention(tmp_path / "scan.png"), reference)

    result = recognizer(tmp_path / "scan.png")
    assert len(result) == 3
    assert {c for c, _ in result} <= set(CLASSES)
    probs = recognizer.probabilities(reference[None])[0]
    assert result[0] == (CLASSES[int(probs.argmax())], pytest.approx(float(probs.max())))
    assert result == recognizer(Image.fromarray(paper))


def test_export_needs_the_class_list(tmp_path) -> None:
    model = create_model("cnn", 4, **SMALL["cnn"])
    with pytest.raises(ValueError, match="class characters"):
        export_onnx(model, tmp_path / "m.onnx")


def test_recognizer_rejects_a_foreign_onnx_file(tmp_path) -> None:
    path = tmp_path / "plain.onnx"
    with _quiet_exporter():  # torch's own FutureWarnings, as in every export of ours
        torch.onnx.export(
            torch.nn.Linear(3, 2).eval(), (torch.zeros(1, 3),), str(path), dynamo=True, verbose=False
        )
    with pytest.raises(CheckpointError, match="not a kanjirec export"):
        Recognizer.load(path)


def test_recognizer_on_one_thread_reads_as_the_default_session(tmp_path) -> None:
    from kanjirec.inference import torch_threads
    from kanjirec.loading import load_any

    torch.manual_seed(0)
    model = create_model("cnn", len(CLASSES), classes=CLASSES, **SMALL["cnn"]).eval()
    path = export_onnx(model, tmp_path / "cnn.onnx")
    one = Recognizer.load(path, threads=1)
    assert one.model.session(1).get_session_options().intra_op_num_threads == 1
    images = np.stack([render(c) for c in CLASSES])
    expected = Recognizer.load(path).logits(images)
    np.testing.assert_allclose(one.logits(images), expected, atol=1e-5, rtol=0)
    # Evaluation runs an exported model on as many threads as torch is set to use.
    onnx_model = load_any(path).model
    with torch_threads(1):
        np.testing.assert_allclose(onnx_model(torch.from_numpy(images)[:, None]).numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="threads"):
        Recognizer.load(path, threads=0)
