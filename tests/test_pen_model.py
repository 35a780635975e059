"""The online stroke model: pen trajectories in, from the stored synthetic strokes to the Recognizer,
the ONNX export and the service."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kanjirec.config import ConfigError, TrainConfig
from kanjirec.data.sequences import PEN_POINTS, pen_strokes
from kanjirec.data.store import PackedDataset
from kanjirec.errors import DatasetFormatError
from kanjirec.models import create_model
from kanjirec.models.stroke_rnn import PenModelInputError
from kanjirec.train import train

CHARS = "一二三十口日"
PEN = dict(extractor="pen", hidden_size=32, num_layers=1, num_heads=2, head_hidden=32, dropout=0.0)


@pytest.fixture(scope="module")
def pen_data(tmp_path_factory):
    from kanjirec.data.synth import synthesize

    out = tmp_path_factory.mktemp("pen") / "data"
    return synthesize(list(CHARS), 20, out, seed=1, with_strokes=True, log=lambda *a: None)


@pytest.fixture(scope="module")
def pen_run(pen_data, tmp_path_factory):
    config = TrainConfig(
        model="stroke_rnn",
        data=str(pen_data),
        out_dir=str(tmp_path_factory.mktemp("pen_runs")),
        epochs=8,
        batch_size=16,
        lr=5e-3,
        workers=0,
        save_every=0,
        patience=0,
        model_config=dict(PEN),
    )
    final = train(config, resume="none")
    return config.run_dir, final


def test_pen_rows_are_the_trajectory_in_its_own_frame() -> None:
    stroke_a = np.array([[10.0, 10.0], [30.0, 10.0]])  # left to right
    stroke_b = np.array([[20.0, 0.0], [20.0, 40.0]])  # top to bottom
    feats, lengths = pen_strokes([[stroke_a, stroke_b]], max_strokes=4)
    assert lengths.tolist() == [2] and feats.shape == (1, 4, 2 * PEN_POINTS + 3)
    points = feats[0, 0, : 2 * PEN_POINTS].reshape(PEN_POINTS, 2)
    # box x 10..30, y 0..40: centre (20, 20), half the longer side 20
    np.testing.assert_allclose(points[0], [-0.5, -0.5], atol=1e-6)
    np.testing.assert_allclose(points[-1], [0.5, -0.5], atol=1e-6)
    np.testing.assert_allclose(np.diff(points[:, 0]), 1.0 / (PEN_POINTS - 1), atol=1e-6)  # even spacing
    assert feats[0, 0, 2 * PEN_POINTS] == pytest.approx(1.0)  # arc length
    np.testing.assert_allclose(feats[0, 0, -2:], [0.0, 0.0])  # no pen-up move before the first stroke
    np.testing.assert_allclose(feats[0, 1, -2:], [0.0 - 0.5, -1.0 + 0.5], atol=1e-6)  # end of a -> start of b
    assert not feats[0, 2:].any()  # padding
    # The same drawing in other units and another place gives the same rows.
    moved, _ = pen_strokes([[stroke_a * 7 + 100, stroke_b * 7 + 100]], max_strokes=4)
    np.testing.assert_allclose(moved, feats, atol=1e-5)
    # Writing order matters: the strokes the other way round are other rows.
    swapped, _ = pen_strokes([[stroke_b, stroke_a]], max_strokes=4)
    assert not np.allclose(swapped, feats)
    # A dot is a row of one repeated point; more strokes than rows keep the first ones.
    dots, lengths = pen_strokes([[np.array([[5.0, 5.0]])] * 6], max_strokes=4)
    assert lengths.tolist() == [4] and np.isfinite(dots).all()


def test_a_pen_model_refuses_images() -> None:
    model = create_model("stroke_rnn", 3, **PEN)
    with pytest.raises(PenModelInputError, match="pen trajectories"):
        model(torch.zeros(2, 1, 64, 64, dtype=torch.uint8))


def test_pen_model_trains_on_stored_trajectories_and_tests_on_written_samples(pen_data, pen_run) -> None:
    ds = PackedDataset.open(pen_data)
    written = ds.stroke_counts() > 0
    assert (~written).any()  # the data holds print-font samples, which have no trajectories
    run_dir, final = pen_run
    test = ds.indices("test")
    assert final["test_samples"] == int(written[test].sum())
    # Learns: far above chance (1/6) on writers it never saw.
    assert final["test_top1"] > 0.6, final


def test_pen_model_needs_stored_strokes(tmp_path) -> None:
    from kanjirec.data.synth import synthesize

    data = synthesize(list(CHARS[:3]), 6, tmp_path / "no_strokes", seed=0, log=lambda *a: None)
    config = TrainConfig(
        model="stroke_rnn",
        data=str(data),
        out_dir=str(tmp_path / "runs"),
        epochs=1,
        batch_size=4,
        workers=0,
        model_config=dict(PEN),
    )
    with pytest.raises(DatasetFormatError, match="--with-strokes"):
        train(config, resume="none")
    assert not (tmp_path / "runs").exists()


def test_fresh_pen_batches_and_their_font_fraction(pen_data, tmp_path) -> None:
    from kanjirec.data.stream import SynthBatches

    batches = SynthBatches(
        list(CHARS), seed=0, epoch=0, rank=0, steps=2, batch_size=5, font_fraction=0.0, pen_rows=30
    )
    (features, lengths), labels = batches[1]
    assert features.shape == (5, 30, 2 * PEN_POINTS + 3) and labels.shape == (5,)
    # Each sample's strokes are its class's KanjiVG strokes: 一 has 1, 日 has 4.
    from kanjirec.data.kanjivg import load_kanjivg

    kvg = load_kanjivg()
    assert lengths.tolist() == [len(kvg[CHARS[c]].strokes) for c in labels]
    again, _ = batches[1]
    assert torch.equal(again[0], features)  # a step's batch depends on nothing else
    # Order variation: the same strokes, permuted only within KanjiVG components (語: 言 then 吾).
    from kanjirec.data.kanjivg import component_stroke_groups

    def batch(shuffle: float):
        return SynthBatches(
            ["語"],
            seed=0,
            epoch=0,
            rank=0,
            steps=1,
            batch_size=8,
            font_fraction=0.0,
            pen_rows=30,
            pen_order_shuffle=shuffle,
        )[0][0]

    (shuffled, _), (plain, n) = batch(1.0), batch(0.0)
    groups = component_stroke_groups(kvg["語"])
    assert [len(g) for g in groups] == [7, 7]  # 言, 吾
    assert not torch.equal(shuffled, plain) and n.tolist() == [14] * 8

    def rows(x, b, g):
        return sorted(tuple(r) for r in x[b, g, : 2 * PEN_POINTS].numpy().round(4))

    for b in range(8):  # each component's strokes stay in its own rows, in some order
        assert all(rows(shuffled, b, g) == rows(plain, b, g) for g in groups)
    config = TrainConfig(
        model="stroke_rnn",
        data=str(pen_data),
        out_dir=str(tmp_path / "runs"),
        epochs=1,
        batch_size=4,
        workers=0,
        synth_per_epoch=8,
        model_config=dict(PEN),
    )
    with pytest.raises(ConfigError, match="synth_font_fraction"):
        train(config, resume="none")
    config.synth_per_epoch, config.pen_order_shuffle = 0, 0.5
    with pytest.raises(ConfigError, match="synth_per_epoch"):
        train(config, resume="none")
    config.model, config.model_config, config.synth_per_epoch = "cnn", {}, 8
    with pytest.raises(ConfigError, match="reads images"):
        train(config, resume="none")


def _drawing(ds: PackedDataset, i: int, scale: float = 5.0) -> list[np.ndarray]:
    """Sample i's stored strokes on a canvas of other units, as the browser page would send them."""
    return [s * scale + 3.0 for s in ds.strokes_of(i)]


def test_recognizer_gives_a_pen_model_the_strokes(pen_data, pen_run, tmp_path) -> None:
    from kanjirec.export import export_onnx
    from kanjirec.loading import load_any
    from kanjirec.recognizer import Recognizer, RecognizerError

    ds = PackedDataset.open(pen_data)
    run_dir, _ = pen_run
    rec = Recognizer.load(run_dir, top_k=3)
    assert rec.reads_pen
    test = [int(i) for i in ds.indices("test") if ds.stroke_counts()[i] > 0]
    right = sum(rec.read_strokes(_drawing(ds, i), 320, 320)[0][0] == ds.classes[ds.labels[i]] for i in test)
    assert right / len(test) > 0.6
    with pytest.raises(RecognizerError, match="pen strokes"):
        rec(ds.images[test[0]])
    # The ONNX export reads the same strokes to the same probabilities.
    loaded = load_any(run_dir)
    onnx_rec = Recognizer.load(export_onnx(loaded.model, tmp_path / "pen.onnx", classes=loaded.classes))
    assert onnx_rec.reads_pen
    drawings = [_drawing(ds, i) for i in test[:8]]
    np.testing.assert_allclose(
        onnx_rec.stroke_probabilities(drawings), rec.stroke_probabilities(drawings), atol=1e-4
    )


def test_service_sends_a_drawing_to_a_pen_model_as_strokes(pen_data, pen_run) -> None:
    import threading
    import time

    import uvicorn

    from kanjirec.recognizer import Recognizer
    from kanjirec.serve.app import create_app
    from kanjirec.serve.client import Client

    ds = PackedDataset.open(pen_data)
    run_dir, _ = pen_run
    rec = Recognizer.load(run_dir)
    i = next(int(i) for i in ds.indices("test") if ds.stroke_counts()[i] > 0)
    strokes = _drawing(ds, i)
    server = uvicorn.Server(uvicorn.Config(create_app(rec), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    client = Client(port=server.servers[0].sockets[0].getsockname()[1])
    try:
        status, answer = client.recognize_strokes([s.tolist() for s in strokes], 320, 320, top_k=3)
        assert status == 200, answer
        got = [(c["char"], c["prob"]) for c in answer["candidates"]]
        want = rec.read_strokes(strokes, 320, 320, top_k=3)
        assert [c for c, _ in got] == [c for c, _ in want]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in want], rtol=1e-5)
        status, answer = client.recognize_strokes([[]], 1, 1)
        assert status == 422 and "strokes[0]" in json.dumps(answer)
        status, answer = client.recognize_image(b"\x89PNG")
        assert status == 422 and "pen strokes" in json.dumps(answer)
    finally:
        client.close()
        server.should_exit = True
        thread.join(10)
