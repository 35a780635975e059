"""The model zoo: registry, shapes, gradients, overfitting, radical scoring, stroke extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import shifted_renders
from kanjirec.cli import main
from kanjirec.data.sequences import contour_strokes, grid_cells, skeleton_strokes
from kanjirec.errors import ModelConfigError
from kanjirec.models import create_model, list_models
from kanjirec.models.base import count_flops
from kanjirec.models.stroke_rnn import LengthMaskedBiLSTM

ALL_MODELS = [
    "basic_rnn",
    "cnn",
    "hybrid_cnn_rnn",
    "mobile_cnn",
    "radical_attn_rnn",
    "radical_rnn",
    "stroke_rnn",
]
# Small widths keep each test to a second or two; the architecture is the registered one.
SMALL = {
    "cnn": dict(channels=(8, 16, 16, 32), head_hidden=32, dropout=0.0),
    "mobile_cnn": dict(stem=8, stages=((16, 1), (32, 1)), embedding=16, dropout=0.0),
    "basic_rnn": dict(hidden_size=64, dropout=0.0),
    "stroke_rnn": dict(hidden_size=64, num_heads=4, head_hidden=64, dropout=0.0),
    "hybrid_cnn_rnn": dict(
        channels=(8, 16, 16, 32), global_dim=32, hidden_size=32, head_hidden=32, dropout=0.0
    ),
    "radical_attn_rnn": dict(embed_dim=16, hidden_size=16, channels=(8, 16, 32), dropout=0.0),
    "radical_rnn": dict(embed_dim=16, hidden_size=16, channels=(8, 16, 32), detector_hidden=32, dropout=0.0),
}
CLASSES = list("明林語川")


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """8 samples, 4 classes: two shifted renders of each."""
    return shifted_renders(CLASSES)


def build(name: str, classes: list[str] = CLASSES, **extra) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, len(classes), classes=classes, **{**SMALL.get(name, {}), **extra})


def test_registry_lists_every_family() -> None:
    assert list_models() == ALL_MODELS


def test_unknown_model_and_unknown_config_key_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="available models: basic_rnn, cnn"):
        create_model("resnet", 10)
    with pytest.raises(ModelConfigError, match="hidden_sise"):
        create_model("basic_rnn", 10, hidden_sise=3)
    with pytest.raises(ValueError, match="needs classes="):
        create_model("radical_rnn", 10)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_config_rebuilds_the_same_architecture(name: str) -> None:
    model = build(name)
    assert model.name == name
    rebuilt = create_model(name, len(CLASSES), classes=CLASSES, **model.config)
    rebuilt.load_state_dict(model.state_dict())  # strict: same names and shapes
    assert rebuilt.config == model.config


@pytest.mark.parametrize("name", ALL_MODELS)
def test_output_shape_for_uint8_and_float_images(name: str, batch) -> None:
    images, _ = batch
    model = build(name).eval()
    with torch.no_grad():
        from_uint8 = model(images)
        from_float = model(images.float() / 255)
    assert from_uint8.shape == (8, len(CLASSES))
    torch.testing.assert_close(from_uint8, from_float)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_parameter_receives_a_gradient(name: str, batch) -> None:
    images, labels = batch
    model = build(name).train()
    loss, logits, _ = model.training_loss(images, labels, label_smoothing=0.1)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_overfits_a_tiny_batch(name: str, batch) -> None:
    torch.set_num_threads(1)
    images, labels = batch
    model = build(name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(80):
        optimizer.zero_grad()
        loss, _, _ = model.training_loss(images, labels)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    # Batch-norm running statistics lag weights that still move ~1e-2 a step (Adam); settle them on
    # the final weights, so eval mode tests what was learned rather than that lag.
    with torch.no_grad():
        for _ in range(30):
            model(images)
    model.eval()
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)
    assert predicted.tolist() == labels.tolist()


def test_masked_bilstm_equals_packed_sequences() -> None:
    torch.manual_seed(0)
    reference = nn.LSTM(5, 7, num_layers=2, batch_first=True, bidirectional=True)
    masked = LengthMaskedBiLSTM(5, 7, num_layers=2, dropout=0.0)
    with torch.no_grad():
        for layer in range(2):
            for direction, lstms in (("", masked.forward_lstms), ("_reverse", masked.backward_lstms)):
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(lstms[layer], f"{kind}_l0").copy_(
                        getattr(reference, f"{kind}_l{layer}{direction}")
                    )
    x = torch.randn(3, 6, 5)
    lengths = torch.tensor([6, 2, 4])
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expected, _ = nn.utils.rnn.pad_packed_sequence(reference(packed)[0], batch_first=True)
    got = masked(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(got[b, :n], expected[b, :n])


def test_grid_cells_statistics() -> None:
    image = torch.zeros(1, 1, 64, 64)
    image[0, 0, :8, :4] = 1.0  # left half of the first cell
    cells = grid_cells(image)
    assert cells.shape == (1, 64, 4)
    torch.testing.assert_close(cells[0, 0], torch.tensor([0.5, 0.5, 1.0, 0.0]))
    assert cells[0, 1:].abs().sum() == 0


def test_contour_strokes_of_rectangles() -> None:
    image = np.zeros((1, 64, 64), np.uint8)
    image[0, 40:44, 10:30] = 255  # lower bar, 20x4
    image[0, 4:24, 40:44] = 255  # upper right bar, 4x20
    image[0, 5:9, 2:10] = 255  # upper left bar, 8x4
    features, lengths = contour_strokes(image)
    assert features.shape == (1, 30, 8)
    assert lengths.tolist() == [3]
    # Writing order: the upper band left to right, then the lower bar.
    assert features[0, :3, 2].tolist() == pytest.approx([2 / 64, 40 / 64, 10 / 64])
    lower = features[0, 2]
    expected = [20 / 64, 42 / 64, 10 / 64, 40 / 64, 20 / 64, 4 / 64, np.sqrt(80) / 64, (2 * 20 + 2 * 2) / 256]
    assert lower.tolist() == pytest.approx(expected, rel=1e-5)
    assert features[0, 3:].sum() == 0


def test_skeleton_strokes_split_a_cross_into_oriented_segments() -> None:
    image = np.zeros((2, 64, 64), np.uint8)
    image[0, 30:34, 8:56] = 255  # 一
    image[1, 30:34, 8:56] = 255  # 十
    image[1, 8:56, 30:34] = 255
    features, lengths = skeleton_strokes(image)
    assert features.shape == (2, 30, 9)
    assert lengths.tolist() == [1, 4]
    assert features[0, 0, 7] == pytest.approx(1.0, abs=1e-3)  # cos 2t: horizontal
    orientation = sorted(np.round(features[1, :4, 7]).tolist())
    assert orientation == [-1.0, -1.0, 1.0, 1.0]  # two vertical, two horizontal arms


def test_stroke_rnn_extractors_and_blank_images(batch) -> None:
    images, _ = batch
    blank = torch.zeros(2, 1, 64, 64, dtype=torch.uint8)
    for extractor in ("contour", "skeleton"):
        model = build("stroke_rnn", extractor=extractor).eval()
        with torch.no_grad():
            assert torch.isfinite(model(torch.cat([images, blank]))).all()
    with pytest.raises(ValueError, match="skeleton"):
        build("stroke_rnn", extractor="hough")


def test_flops_include_lstm_gate_matmuls() -> None:
    model = create_model("basic_rnn", 10, embed_dim=8, hidden_size=16, num_layers=1)
    embed = 2 * 8 * 32 * 8  # 8 row steps of 8 cells x 4 statistics -> 8
    lstm = 2 * 8 * 2 * 4 * 16 * (8 + 16)  # directions x steps x 2 FLOPs x gates x hidden x (in + hidden)
    head = 2 * 32 * 10
    assert count_flops(model) == embed + lstm + head


def test_models_command_lists_every_model(capsys) -> None:
    assert main(["models", "--num-classes", "30"]) == 0
    out = capsys.readouterr().out
    for name in ALL_MODELS:
        assert name in out
    assert "strokes:contour:30" in out
