"""The recognition service: a FastAPI app over one loaded model.

Routes (docs/SERVE.md has examples):

- ``POST /recognize?top_k=10``: an image upload (multipart, field ``image``) or a drawing as JSON
  ``{"width": W, "height": H, "strokes": [[[x, y], ...], ...]}`` (points in writing order) ->
  ``{"candidates": [{"char": "田", "prob": 0.93}, ...]}``. An image goes through
  `recognizer.to_convention`, a drawing through `data.pen.strokes_to_image` (the training
  renderer's convention); concurrent requests share model calls (`batching.Batcher`). A model
  that reads pen trajectories (an online ``stroke_rnn``) gets the drawing's strokes themselves
  (`Recognizer.stroke_probabilities`) and refuses image uploads (422).
- ``GET /health``: the model's name, kind and classes, and the batching settings.
- ``GET /``: the "Draw a kanji" page (`serve.web`; docs/WEB.md), with its files, ``/model.json``
  (`web.page_config`) and ``/model.onnx`` (when the model is an ONNX file of images, which the page
  then runs in the browser; otherwise the page sends its strokes to ``POST /recognize``).

Bad input is answered 4xx with a message naming the problem, and the service keeps running:
400 malformed JSON or multipart, or no ``image`` field; 413 an upload or image over the limits;
415 a body that is neither; 422 a file that is not a readable image, or a drawing with a bad field.
"""

from __future__ import annotations

import io
import json
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool

from kanjirec.errors import KanjirecError
from kanjirec.serve.batching import Batcher
from kanjirec.serve.web import WEB_DIR, browser_model, missing_runtime, page_config, runtime_missing_message


@dataclass
class ServeConfig:
    max_batch: int = 32  # requests per model call; 1 turns batching off
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for company
    max_upload_bytes: int = 10 * 2**20
    max_pixels: float = 40e6


def _decode_upload(data: bytes, size: int, max_pixels: float) -> np.ndarray:
    """Uploaded bytes -> the image in the convention; HTTPException naming what is wrong."""
    from kanjirec.recognizer import to_convention

    try:
        image = Image.open(io.BytesIO(data))  # reads the header only: the size is known before decoding
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise HTTPException(422, f"the upload is not an image Pillow can read ({e})") from e
    width, height = image.size
    if width * height > max_pixels:
        raise HTTPException(
            413, f"image of {width} x {height} pixels is over the limit of {max_pixels / 1e6:g} megapixels"
        )
    try:
        return to_convention(image, size)
    # A truncated or corrupt file fails only when its pixels are decoded.
    except (KanjirecError, OSError, SyntaxError, ValueError) as e:
        raise HTTPException(422, f"the upload is not a readable image ({e})") from e


def _draw(payload: object, size: int) -> np.ndarray:
    from kanjirec.data.pen import PenInputError, parse_strokes, strokes_to_image

    try:
        strokes, width, height = parse_strokes(payload)
        return strokes_to_image(strokes, width, height, size)
    except PenInputError as e:
        raise HTTPException(422, f"bad drawing: {e}") from e


def _pen_probabilities(recognizer, payload: object) -> np.ndarray:
    """A drawing -> class probabilities of a model that reads pen trajectories."""
    from kanjirec.data.pen import PenInputError, parse_strokes

    try:
        strokes, _, _ = parse_strokes(payload)
    except PenInputError as e:
        raise HTTPException(422, f"bad drawing: {e}") from e
    return recognizer.stroke_probabilities([strokes])[0]


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request of {int(declared):,} bytes is over the limit of {limit:,} bytes")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise HTTPException(413, f"request is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _upload_bytes(request: Request, limit: int) -> bytes:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException

    # The multipart envelope adds headers and boundaries to the file: a little room above the limit.
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise HTTPException(413, f"upload of {int(declared):,} bytes is over the limit of {limit:,} bytes")
    try:
        form = await request.form(max_files=1, max_fields=10)
    except MultiPartException as e:
        raise HTTPException(400, f"malformed multipart upload: {e.message}") from e
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "a multipart upload needs a file field named 'image'")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"uploaded file is over the limit of {limit:,} bytes")
        return data
    finally:
        await form.close()


def create_app(recognizer, config: ServeConfig | None = None) -> FastAPI:
    """The app serving ``recognizer`` (a `recognizer.Recognizer`)."""
    config = config or ServeConfig()
    batcher = Batcher(recognizer.probabilities, config.max_batch, config.max_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not recognizer.reads_pen:  # a pen model reads each drawing's strokes (`_pen_probabilities`)
            await batcher.start(np.zeros((recognizer.image_size, recognizer.image_size), np.uint8))
        yield
        await batcher.stop()

    app = FastAPI(title="kanjirec", summary="Handwritten Japanese character recognition", lifespan=lifespan)
    app.state.batcher = batcher
    classes = recognizer.classes
    loaded = recognizer.loaded

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": loaded.name,
            "kind": loaded.kind,
            "classes": len(classes),
            "image_size": recognizer.image_size,
            "batching": {"max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms},
        }

    @app.post("/recognize")
    async def recognize(request: Request, top_k: int = Query(10, ge=1)) -> dict:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            if recognizer.reads_pen:
                raise HTTPException(422, f"model {loaded.name} reads pen strokes: send a drawing as JSON")
            data = await _upload_bytes(request, config.max_upload_bytes)
            image = await run_in_threadpool(_decode_upload, data, recognizer.image_size, config.max_pixels)
        elif kind == "application/json":
            body = await _read_body(request, config.max_upload_bytes)
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise HTTPException(400, f"malformed JSON: {e}") from e
            except RecursionError as e:
                raise HTTPException(400, "malformed JSON: nested too deeply") from e
            if recognizer.reads_pen:
                probs = await run_in_threadpool(_pen_probabilities, recognizer, payload)
                best = np.argsort(-probs, kind="stable")[:top_k]
                return {"candidates": [{"char": classes[i], "prob": float(probs[i])} for i in best]}
            image = await run_in_threadpool(_draw, payload, recognizer.image_size)
        else:
            raise HTTPException(
                415,
                f"content type {kind or 'none'!r}: send an image as multipart/form-data (field 'image') "
                "or a drawing as application/json",
            )
        probs = await batcher.submit(image)
        best = np.argsort(-probs, kind="stable")[:top_k]
        return {"candidates": [{"char": classes[i], "prob": float(probs[i])} for i in best]}

    config_for_page = page_config(loaded, server=True)
    onnx, _ = browser_model(loaded)

    @app.get("/model.json")
    async def model_json() -> dict:
        return config_for_page

    if onnx is not None:

        @app.get("/model.onnx")
        async def model_onnx() -> FileResponse:
            return FileResponse(onnx, media_type="application/octet-stream")

    # Last, so that the routes above win: the page at / and its files (web/, web/vendor/).
    app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="page")
    return app


def run_server(
    model: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServeConfig | None = None,
) -> None:
    """Load ``model`` (anything `loading.load_any` takes; None: the shipped model) and serve it until
    interrupted."""
    import uvicorn

    from kanjirec.recognizer import Recognizer

    config = config or ServeConfig()
    recognizer = Recognizer.load(model)
    print(
        f"kanjirec: serving {recognizer.loaded.name} ({len(recognizer.classes):,} classes) on "
        f"http://{host}:{port}: the drawing page at /, POST /recognize, GET /health; "
        f"{json.dumps(asdict(config))}",
        flush=True,
    )
    if missing_runtime():
        note = "meanwhile the page recognises on the server"
        print(f"kanjirec: {runtime_missing_message()}; {note}", flush=True)
    uvicorn.run(create_app(recognizer, config), host=host, port=port, log_level="warning")
