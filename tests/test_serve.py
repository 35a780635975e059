"""`kanjirec serve` on a free loopback port: uploads and pen strokes read by a small trained model,
bad input answered 4xx with the service still up, concurrent requests batched."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from helpers import READ_CHARS, render_writers
from kanjirec.data.kanjivg import load_kanjivg
from kanjirec.recognizer import Recognizer
from kanjirec.serve.app import ServeConfig, create_app
from kanjirec.serve.client import Client

LIMITS = ServeConfig(max_batch=8, max_wait_ms=20, max_upload_bytes=200_000, max_pixels=1e6)


@pytest.fixture(scope="module")
def service(reader_run):
    """(app, port) of the service running in a thread on 127.0.0.1, stopped after the module."""
    import uvicorn

    app = create_app(Recognizer.load(reader_run), LIMITS)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    yield app, server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(10)


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def test_health_and_uploads_read_as_their_characters(service):
    _, port = service
    client = Client(port=port)
    status, health = client.health()
    assert status == 200 and health["classes"] == len(READ_CHARS) and health["model"] == "run"
    images, labels = render_writers(READ_CHARS, 2, seed=99)
    read = []
    for image in images:
        status, answer = client.recognize_image(_png(255 - image), top_k=2)  # dark ink on paper
        assert status == 200 and len(answer["candidates"]) == 2
        assert set(answer["candidates"][0]) == {"char", "prob"} and 0 < answer["candidates"][0]["prob"] <= 1
        read.append(answer["candidates"][0]["char"])
    assert sum(r == READ_CHARS[k] for r, k in zip(read, labels, strict=True)) >= len(labels) - 1, read


def test_pen_strokes_read_as_their_characters(service):
    _, port = service
    client = Client(port=port)
    kanjivg = load_kanjivg()
    read = []
    for char in READ_CHARS:
        # As a browser sends it: a 300 x 240 canvas, the character off-centre, points rounded.
        strokes = [np.round(s.points * 1.8 + [40, 5]).tolist() for s in kanjivg[char].strokes]
        status, answer = client.recognize_strokes(strokes, 300, 240, top_k=4)
        assert status == 200 and len(answer["candidates"]) == len(READ_CHARS)
        read.append(answer["candidates"][0]["char"])
    assert read == list(READ_CHARS)


def test_bad_input_gets_4xx_naming_the_problem_and_the_service_stays_up(service):
    _, port = service
    client = Client(port=port)
    huge = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)  # ~480 KB as PNG
    cases = [
        (client.request("POST", "/recognize", b'{"width": 1,', "application/json"), 400, "malformed JSON"),
        (client.request("POST", "/recognize", b"[" * 100_000, "application/json"), 400, "nested too deeply"),
        (client.recognize_strokes([], 100, 100), 422, "strokes: expected a non-empty list"),
        (client.recognize_strokes([[[1, 2]], []], 100, 100), 422, "strokes[1]"),
        (client.recognize_strokes([[[1, 2]]], 0, 100), 422, "width and height must be positive"),
        (client.recognize_image(b"GIF89a but not really"), 422, "not an image"),
        (client.recognize_image(_png(huge)), 413, "over the limit of 200,000 bytes"),
        (client.recognize_image(_png(np.zeros((1000, 1100), np.uint8))), 413, "1100 x 1000 pixels"),
        (client.request("POST", "/recognize", b"--x\r\nbroken", "multipart/form-data; boundary=x"), 400, ""),
        (client.request("POST", "/recognize", b"hello", "text/plain"), 415, "multipart/form-data"),
        (client.request("POST", "/recognize?top_k=0", b"{}", "application/json"), 422, "top_k"),
    ]
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nxx\r\n--b--\r\n'
    cases.append(
        (client.request("POST", "/recognize", body, "multipart/form-data; boundary=b"), 400, "'image'")
    )
    for (status, answer), expected, message in cases:
        assert status == expected, (expected, message, answer)
        assert message in str(answer["detail"]), (message, answer)
    assert client.health()[0] == 200


def test_concurrent_requests_share_model_calls(service):
    app, port = service
    images, _ = render_writers(READ_CHARS, 4, seed=5)
    uploads = [_png(255 - image) for image in images]
    alone = [Client(port=port).recognize_image(u)[1] for u in uploads[:4]]
    batcher = app.state.batcher
    batches, requests = batcher.batches, batcher.requests

    def ask(upload: bytes):
        client = Client(port=port)
        try:
            return client.recognize_image(upload)
        finally:
            client.close()

    with ThreadPoolExecutor(len(uploads)) as pool:
        answers = list(pool.map(ask, uploads))
    assert all(status == 200 for status, _ in answers)
    assert batcher.requests - requests == len(uploads)
    assert batcher.batches - batches < len(uploads)  # several requests per model call
    # Batched or not, a request gets its own image's answer.
    for (_, answer), single in zip(answers[:4], alone, strict=True):
        assert [c["char"] for c in answer["candidates"]] == [c["char"] for c in single["candidates"]]
        assert [c["prob"] for c in answer["candidates"]] == pytest.approx(
            [c["prob"] for c in single["candidates"]], abs=1e-5
        )


def test_the_serve_command_runs_an_exported_model_and_stops(reader_onnx, tmp_path):
    from kanjirec.benchmarks.serve import ServiceProcess

    with ServiceProcess(reader_onnx, tmp_path / "serve.log") as service:
        client = Client(port=service.port)
        status, health = client.health()
        assert status == 200 and health["kind"] == "onnx" and health["classes"] == len(READ_CHARS)
        status, page = client.request("GET", "/")
        assert status == 200 and '<canvas id="pad"' in page  # the drawing page (test_web_page.py)
        status, config = client.request("GET", "/model.json")
        assert status == 200 and config["model"] == "model.onnx"
        assert sorted(config["classes"]) == sorted(READ_CHARS)
        status, onnx = client.request("GET", "/model.onnx")
        assert status == 200 and len(onnx) > 1000
        client.close()
    assert not service.alive
    assert f"on http://127.0.0.1:{service.port}" in service.log.read_text()
