"""The "Draw a kanji" page: where its files are, what it is told about the model, and
`kanjirec export-web`.

The page (``web/``: index.html, style.css, app.mjs, render.mjs) recognises in the browser with
onnxruntime-web; that runtime is not in the repository: ``bash scripts/web_assets.sh`` fetches the
version pinned in package-lock.json from the npm registry into ``web/vendor/`` (git-ignored), and
nothing is fetched at run time. The page reads ``model.json`` (`page_config`) beside it: the classes,
the input size, the ONNX file to run (``model.onnx``) and whether a server answers POST /recognize.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from kanjirec.errors import KanjirecError
from kanjirec.loading import LoadedModel, OnnxModel, load_any

WEB_DIR = Path(__file__).with_name("web")
VENDOR_DIR = WEB_DIR / "vendor"
PAGE_FILES = ("index.html", "style.css", "app.mjs", "render.mjs")
RUNTIME_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
FETCH_COMMAND = "bash scripts/web_assets.sh"


class WebAssetsError(KanjirecError):
    """The page's runtime is missing, the model cannot run in a browser, or the output is in the way."""


def missing_runtime() -> list[Path]:
    """The onnxruntime-web files the page needs that are not in ``web/vendor/``."""
    return [VENDOR_DIR / f for f in RUNTIME_FILES if not (VENDOR_DIR / f).is_file()]


def runtime_missing_message() -> str:
    missing = missing_runtime()
    return (
        f"the browser page's runtime (onnxruntime-web) is missing: {', '.join(str(p) for p in missing)}; "
        f"run `{FETCH_COMMAND}` in the kanjirec checkout (it needs npm) to fetch it"
    )


def browser_model(loaded: LoadedModel) -> tuple[Path | None, str]:
    """(the ONNX file the page can run, "") or (None, why the page cannot run this model)."""
    if not isinstance(loaded.model, OnnxModel):
        return None, f"the model {loaded.name} is not an ONNX file (export it with `kanjirec export`)"
    if loaded.model.preprocessing != "images":
        return None, (
            f"the model {loaded.name} reads {loaded.model.preprocessing!r} features, "
            "which only the server computes"
        )
    return loaded.model.path, ""


def page_config(loaded: LoadedModel, *, server: bool) -> dict:
    """What ``model.json`` tells the page: the model, its classes and input size, where it runs."""
    onnx, note = browser_model(loaded)
    return {
        "name": loaded.name,
        "classes": loaded.classes,
        "image_size": loaded.image_size,
        "model": "model.onnx" if onnx is not None else None,
        "model_note": note,
        "runtime": not missing_runtime(),
        "server": server,
    }


def export_web(out_dir: str | Path, model: str | Path | None = None) -> Path:
    """Write the page, ``model`` (an .onnx file; None: the shipped model) and the runtime into
    ``out_dir`` (new or empty), for any static file host. Returns ``out_dir``."""
    out_dir = Path(out_dir)
    if missing_runtime():
        raise WebAssetsError(runtime_missing_message())
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise WebAssetsError(f"{out_dir}: exists and is not an empty folder; name a new one")
    loaded = load_any(model)
    onnx, note = browser_model(loaded)
    if onnx is None:
        raise WebAssetsError(f"cannot export the page for this model: {note}")
    config = page_config(loaded, server=False)
    # Written beside the destination and renamed at the end, so a failure leaves nothing half-written.
    tmp = out_dir.parent / f".{out_dir.name}.tmp{os.getpid()}"
    try:
        (tmp / "vendor").mkdir(parents=True)
        for name in PAGE_FILES:
            shutil.copyfile(WEB_DIR / name, tmp / name)
        for name in RUNTIME_FILES:
            shutil.copyfile(VENDOR_DIR / name, tmp / "vendor" / name)
        shutil.copyfile(onnx, tmp / "model.onnx")
        (tmp / "model.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    print(
        f"wrote {out_dir}: {len(files)} files, {total / 2**20:.1f} MiB "
        f"({loaded.name}, {len(loaded.classes):,} classes)"
    )
    print(f"serve it with any static file host, e.g. `python -m http.server -d {out_dir}`")
    return out_dir
