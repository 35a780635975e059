"""`kanjirec bench serve`: a load test of `kanjirec serve` on loopback that stops by itself.

The service runs in its own process (as users run it), once with batching and once without
(``--max-batch 1``). For each of 1, 8 and 32 concurrent clients, each on its own keep-alive
connection, requests go out until ``requests`` are answered or ``seconds`` have passed, whichever
comes first. Valid requests alternate between image uploads (PNG) and pen strokes; every
``junk_every``-th request is junk (malformed JSON, empty strokes, a non-image upload, a wrong
content type, an unknown field, deeply nested JSON), which must be answered 4xx. The figures:
requests/s and the latency percentiles of the valid requests; the counts that must be 0: crashes
(the service process gone, or a connection failing), 5xx answers, and answers with the wrong
status. Each service gets a short warm-up (four clients, every valid request four times over)
before the rows are measured.

The model: ``--model``, else the shipped model, else an untrained default-size CNN at 3,036 classes
(speed does not depend on what the weights learned; its answers mean nothing).
"""

from __future__ import annotations

import io
import itertools
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

LEVELS = (1, 8, 32)
JUNK = (
    ("malformed JSON", "application/json", b'{"width": 100, "strokes": [[[1,'),
    ("empty strokes", "application/json", b'{"width": 100, "height": 100, "strokes": []}'),
    ("not an image", "multipart", b"%PDF-1.4 not an image at all"),
    ("wrong content type", "text/plain", b"hello"),
    ("unknown field", "application/json", b'{"width": 100, "height": 100, "points": [[1, 2]]}'),
    ("deeply nested JSON", "application/json", b"[" * 50_000),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _valid_requests(classes: list[str]) -> list[tuple[str, bytes, str]]:
    """(kind, body, content type): PNG uploads and strokes of the model's first characters KanjiVG has."""
    from PIL import Image

    from kanjirec.data.kanjivg import load_kanjivg
    from kanjirec.data.synth import StrokeBank, draw_writer_styles, stroke_images
    from kanjirec.serve.client import multipart_image

    kanjivg = load_kanjivg()
    chars = [c for c in classes if c in kanjivg][:8] or ["田"]
    rng = np.random.default_rng(0)
    style = {k: np.repeat(v, len(chars)) for k, v in draw_writer_styles(rng, 1).items()}
    images, _ = stroke_images(
        StrokeBank.build([kanjivg[c] for c in chars]), np.arange(len(chars)), style, rng
    )
    out = []
    for char, image in zip(chars, images, strict=True):
        png = io.BytesIO()
        Image.fromarray(255 - image).resize((256, 256)).save(png, format="PNG")
        out.append(("image", *multipart_image(png.getvalue())))
        strokes = [np.round(s.points * 3).tolist() for s in kanjivg[char].strokes]
        body = json.dumps({"width": 327, "height": 327, "strokes": strokes}).encode()
        out.append(("strokes", body, "application/json"))
    return out


def _junk_requests() -> list[tuple[str, bytes, str]]:
    from kanjirec.serve.client import multipart_image

    return [
        (name, *multipart_image(body)) if kind == "multipart" else (name, body, kind)
        for name, kind, body in JUNK
    ]


def _load(port: int, clients: int, requests: int, seconds: float, valid, junk, junk_every: int) -> dict:
    """``clients`` threads sending requests until ``requests`` are done or ``seconds`` pass."""
    from kanjirec.serve.client import Client

    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"junk": 0, "junk_4xx": 0, "5xx": 0, "wrong_status": 0, "connection_errors": 0}
    problems: list[str] = []
    deadline = time.perf_counter() + seconds

    def client_loop() -> None:
        client = Client(port=port, timeout=60)
        try:
            while time.perf_counter() < deadline:
                n = next(counter)
                if n >= requests:
                    return
                is_junk = junk_every > 0 and n % junk_every == junk_every - 1
                name, body, content_type = junk[n % len(junk)] if is_junk else valid[n % len(valid)]
                t0 = time.perf_counter()
                try:
                    status, answer = client.request("POST", "/recognize", body, content_type)
                except (OSError, ConnectionError) as e:
                    with lock:
                        counts["connection_errors"] += 1
                        problems.append(f"{name}: {type(e).__name__}: {e}")
                    client.close()
                    client = Client(port=port, timeout=60)
                    continue
                elapsed = time.perf_counter() - t0
                with lock:
                    if status >= 500:
                        counts["5xx"] += 1
                        problems.append(f"{name}: {status} {answer}")
                    if is_junk:
                        counts["junk"] += 1
                        if 400 <= status < 500:
                            counts["junk_4xx"] += 1
                        elif status < 500:
                            counts["wrong_status"] += 1
                            problems.append(f"{name}: answered {status}, expected 4xx")
                    elif status == 200:
                        latencies.append(elapsed)
                    elif status < 500:
                        counts["wrong_status"] += 1
                        problems.append(f"{name}: answered {status} {answer}")
        finally:
            client.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    done = len(latencies) + counts["junk"]
    return {
        "clients": clients,
        "requests": done,
        "seconds": wall,
        "requests_per_s": done / wall,
        **{f"p{q}_ms": float(np.percentile(ms, q)) if len(ms) else float("nan") for q in (50, 95, 99)},
        **counts,
        "problems": problems[:10],
    }


class ServiceProcess:
    """`kanjirec serve` in a subprocess on a free loopback port, its output in ``log``; a context
    manager that waits for /health on entry and stops the service on exit (also used by the tests)."""

    def __init__(
        self, model: Path, log: Path, max_batch: int | None = None, max_wait_ms: float | None = None
    ):
        self.port = _free_port()
        self.log = log
        self._log = open(log, "w")  # noqa: SIM115 - closed in __exit__
        command = [
            sys.executable,
            "-m",
            "kanjirec.cli",
            "serve",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
        ]
        command += ["--port", str(self.port)]
        if max_batch is not None:  # otherwise the command's defaults
            command += ["--max-batch", str(max_batch)]
        if max_wait_ms is not None:
            command += ["--max-wait-ms", str(max_wait_ms)]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)

    def __enter__(self) -> ServiceProcess:
        from kanjirec.errors import KanjirecError
        from kanjirec.serve.client import Client

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise KanjirecError(f"the service exited at start-up:\n{self.log.read_text()[-2000:]}")
            try:
                client = Client(port=self.port, timeout=5)
                status, _ = client.health()
                client.close()
                if status == 200:
                    return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise KanjirecError("the service did not answer /health within 180 s")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _untrained_model(root: Path) -> Path:
    """A run holding a freshly initialised default-size CNN over the ETL9G classes."""
    import torch

    from kanjirec.charset import get_charset
    from kanjirec.checkpoint import CheckpointManager
    from kanjirec.models import create_model

    classes = list(get_charset("etl9g"))
    torch.manual_seed(0)
    model = create_model("cnn", len(classes), classes=classes)
    state = {
        "model_name": "cnn",
        "model_config": model.config,
        "classes": classes,
        "config": {},
        "model": model.state_dict(),
    }
    CheckpointManager(root / "cnn" / "checkpoints").save(state, 1, is_best=True)
    return root / "cnn"


def bench_serve(
    model: str | Path | None = None,
    requests: int = 400,
    seconds: float = 20.0,
    levels: tuple[int, ...] = LEVELS,
    junk_every: int = 10,
    max_wait_ms: float = 2.0,
    workdir: str | Path | None = None,
) -> dict:
    """Run the load test, print its table and return the figures."""
    from kanjirec.errors import KanjirecError
    from kanjirec.loading import NoShippedModelError, load_any, shipped_model_path

    with tempfile.TemporaryDirectory(dir=workdir, prefix="kanjirec-bench-serve-") as tmp:
        tmp = Path(tmp)
        note = ""
        if model is None:
            try:
                model = shipped_model_path()
            except NoShippedModelError:
                model = _untrained_model(tmp / "runs")
                note = (
                    " (untrained default-size CNN, 3,036 classes: the answers mean nothing, the times do not)"
                )
        loaded = load_any(model)
        print(f"model {model}{note}: {loaded.kind}, {len(loaded.classes):,} classes")
        valid, junk = _valid_requests(loaded.classes), _junk_requests()
        del loaded
        results = []
        crashes = 0
        for mode, max_batch in (("batching", 32), ("no batching", 1)):
            log = tmp / f"serve-{max_batch}.log"
            with ServiceProcess(Path(model), log, max_batch, max_wait_ms) as service:
                _load(service.port, 4, 4 * len(valid), seconds, valid, junk, 0)  # warm-up, not counted
                for clients in levels:
                    r = _load(service.port, clients, requests, seconds, valid, junk, junk_every)
                    r["mode"] = mode
                    results.append(r)
                    if not service.alive:
                        crashes += 1
                        print(f"the service ({mode}) died:\n{service.log.read_text()[-2000:]}")
                        break
    print(serve_table(results, requests, seconds, max_wait_ms, junk_every))
    connection_errors = sum(r["connection_errors"] for r in results)
    fivexx = sum(r["5xx"] for r in results)
    wrong = sum(r["wrong_status"] for r in results)
    junk_total = sum(r["junk"] for r in results)
    junk_4xx = sum(r["junk_4xx"] for r in results)
    print(
        f"crashes: {crashes + connection_errors} (service exits {crashes}, connection errors "
        f"{connection_errors}); 5xx answers: {fivexx}; wrong status: {wrong}; junk requests answered 4xx: "
        f"{junk_4xx} of {junk_total}"
    )
    for r in results:
        for problem in r["problems"]:
            print(f"  {r['mode']}, {r['clients']} clients: {problem}")
    if crashes or connection_errors or fivexx or wrong:
        raise KanjirecError("the service crashed or answered wrongly (listed above)")
    return {"results": results, "crashes": crashes + connection_errors, "5xx": fivexx, "wrong_status": wrong}


def serve_table(
    results: list[dict], requests: int, seconds: float, max_wait_ms: float, junk_every: int
) -> str:
    lines = [
        f"kanjirec serve on loopback, up to {requests} requests or {seconds:g} s per row; valid requests "
        f"alternate PNG uploads (256x256) and pen strokes, every {junk_every}th request is junk; batching: "
        f"up to 32 requests per model call, {max_wait_ms:g} ms wait. Latency over the valid requests.",
        "",
        "| mode | clients | requests | req/s | p50 ms | p95 ms | p99 ms | junk (4xx) | 5xx | wrong status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['clients']} | {r['requests']} | {r['requests_per_s']:.0f} | "
            f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['junk']} ({r['junk_4xx']}) | "
            f"{r['5xx']} | {r['wrong_status']} |"
        )
    return "\n".join(lines)
