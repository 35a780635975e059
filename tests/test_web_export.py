"""`kanjirec export-web`: the page, the model and the runtime as static files; clear errors (and
nothing written) when the runtime is missing, the folder is in the way or the model cannot run in a
browser; `kanjirec serve` says how to fetch a missing runtime. (The exported page at work in a
browser: tests/test_web_page.py.)"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from kanjirec.cli import main
from kanjirec.loading import LoadedModel, shipped_model_path
from kanjirec.serve import web
from kanjirec.serve.web import FETCH_COMMAND, PAGE_FILES, RUNTIME_FILES, browser_model


@pytest.fixture()
def no_runtime(tmp_path, monkeypatch):
    """The page's runtime as on a checkout where scripts/web_assets.sh has not run."""
    monkeypatch.setattr(web, "VENDOR_DIR", tmp_path / "vendor-not-fetched")


def test_export_writes_the_page_the_model_and_the_runtime(tmp_path, capsys):
    out = tmp_path / "site"
    assert main(["export-web", str(out)]) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(
        [*PAGE_FILES, *(f"vendor/{f}" for f in RUNTIME_FILES), "model.onnx", "model.json"]
    )
    assert (out / "model.onnx").read_bytes() == shipped_model_path().read_bytes()
    config = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert config["model"] == "model.onnx" and config["runtime"] is True and config["server"] is False
    assert len(config["classes"]) == 3134 and config["image_size"] == 64
    # Every URL the page names is relative: it works from any folder of any host, and fetches nothing
    # from elsewhere.
    for name in PAGE_FILES:
        assert not re.search(r"https?://|//cdn|@import", (out / name).read_text(encoding="utf-8")), name
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["site"]  # no temporary folder left behind


def test_export_refuses_a_folder_in_use(tmp_path, capsys):
    out = tmp_path / "site"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export-web", str(out)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_export_without_the_runtime_names_the_command_that_fetches_it(tmp_path, capsys, no_runtime):
    assert main(["export-web", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime-web" in err and FETCH_COMMAND in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    copy = shutil.copyfile

    def failing_copy(src, dst):
        if str(dst).endswith("model.onnx"):
            raise OSError(28, "No space left on device")
        return copy(src, dst)

    monkeypatch.setattr(web.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError):
        web.export_web(tmp_path / "site")
    assert list(tmp_path.iterdir()) == []


def test_only_an_onnx_model_of_images_runs_in_the_browser():
    torch_model = LoadedModel("run", torch.nn.Identity(), ["a"], kind="cnn")
    onnx, note = browser_model(torch_model)
    assert onnx is None and "not an ONNX file" in note


def test_serve_without_the_runtime_says_how_to_fetch_it(monkeypatch, capsys, no_runtime):
    import uvicorn

    from kanjirec.serve.app import run_server

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    run_server()
    out = capsys.readouterr().out
    assert len(served) == 1 and FETCH_COMMAND in out and "the page recognises on the server" in out
