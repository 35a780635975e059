"""`kanjirec predict` and the shipped-model default of the loader: real characters read by a small
trained model from files in every format, folders and globs, JSON output, bad files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import READ_CHARS, render_writers
from kanjirec import loading
from kanjirec.cli import main
from kanjirec.loading import NoShippedModelError, load_any, shipped_model_path
from kanjirec.weights import sha256_file


@pytest.fixture(scope="module")
def samples():
    """Eight images (two per character) by writers the reader never saw: (images, chars)."""
    images, labels = render_writers(READ_CHARS, 2, seed=99)
    return images, [READ_CHARS[k] for k in labels]


def _save(path, ink_on_black: np.ndarray, kind: str):
    """One image in a given storage convention; ``ink_on_black`` is the renderer's 64x64 output."""
    paper = 255 - ink_on_black
    if kind == "rgb_paper":  # a scan: dark ink on white, RGB
        Image.fromarray(paper).convert("RGB").save(path)
    elif kind == "large_paper":  # a photo: far larger than the model's input
        Image.fromarray(paper).resize((300, 300), Image.BICUBIC).convert("RGB").save(path)
    elif kind == "grey_dark":  # chalk on a blackboard: light ink on dark, greyscale
        Image.fromarray(ink_on_black).save(path)
    elif kind == "rgba":  # a drawing app: black ink, transparent elsewhere
        rgba = np.zeros((*paper.shape, 4), np.uint8)
        rgba[..., 3] = ink_on_black
        Image.fromarray(rgba, "RGBA").save(path)
    else:
        raise ValueError(kind)
    return path


def _run(capsys, *args) -> tuple[int, str, str]:
    status = main(["predict", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_predict_reads_characters_in_every_format_and_polarity(reader_run, samples, tmp_path, capsys):
    images, chars = samples
    variants = [
        ("rgb_paper", ".png"),
        ("rgb_paper", ".jpg"),
        ("rgb_paper", ".webp"),
        ("grey_dark", ".bmp"),
        ("grey_dark", ".tif"),
        ("rgba", ".png"),
        ("large_paper", ".png"),
    ]
    files = [
        _save(tmp_path / f"{i}_{kind}{suffix}", image, kind)
        for i, image in enumerate(images)
        for kind, suffix in variants
    ]
    status, out, err = _run(capsys, *files, "--model", reader_run, "--json", "--top-k", "3")
    assert status == 0, err
    answers = json.loads(out)
    assert [a["file"] for a in answers] == [str(f) for f in files]
    for a in answers:
        probs = [c["prob"] for c in a["candidates"]]
        assert len(a["candidates"]) == 3 and set(a["candidates"][0]) == {"char", "prob"}
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    read = np.array([a["candidates"][0]["char"] for a in answers]).reshape(len(images), len(variants))
    # Every lossless storage of one sample at its size reads the same: polarity and alpha are undone.
    lossless = [k for k, (_, suffix) in enumerate(variants[:-1]) if suffix not in (".jpg", ".webp")]
    assert (read[:, lossless] == read[:, :1]).all(), read
    # Untrained or broken reading would score near chance (1 in 4).
    assert (read == np.array(chars)[:, None]).mean() >= 0.85, (read, chars)


def test_folders_globs_and_a_bad_file_among_good_ones(reader_run, samples, tmp_path, capsys):
    images, chars = samples
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(3):
        _save(folder / f"{i}.png", images[i], "rgb_paper")
    (folder / "notes.txt").write_text("not an image")  # not an image suffix: a folder skips it
    (folder / "broken.png").write_bytes(b"this is no PNG")

    status, out, err = _run(capsys, folder, "--model", reader_run)
    lines = out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(folder / f"{i}.png") for i in range(3)]
    assert [line.split("\t")[1].split()[0] for line in lines] == chars[:3]
    assert len(lines[0].split("\t")[1].split()) == 2 * len(READ_CHARS)  # top 10 of 4 classes: all 4
    assert status == 2
    assert f"{folder / 'broken.png'}: not an image file Pillow can read" in err and "1 of 4 inputs" in err

    status, out, err = _run(
        capsys, str(folder / "[01].png"), str(tmp_path / "none*.png"), "--model", reader_run
    )
    assert [line.split("\t")[0] for line in out.splitlines()] == [
        str(folder / "0.png"),
        str(folder / "1.png"),
    ]
    assert status == 2 and "none*.png: no file matches this pattern" in err


def test_without_a_model_the_shipped_one_is_used_or_clearly_missing(
    reader_onnx, samples, tmp_path, capsys, monkeypatch
):
    images, chars = samples
    image = _save(tmp_path / "a.png", images[0], "rgb_paper")

    monkeypatch.setattr(loading, "SHIPPED_MODEL", tmp_path / "weights" / "kanjirec.onnx")
    with pytest.raises(NoShippedModelError, match="no model ships in this install"):
        shipped_model_path()
    status, out, err = _run(capsys, image)
    assert status == 2 and "no model ships in this install" in err and out == ""

    # A shipped model comes with its manifest (SHA-256) beside it.
    shipped = tmp_path / "weights" / "kanjirec.onnx"
    shipped.parent.mkdir()
    shutil.copy(reader_onnx, shipped)
    shipped.with_suffix(".json").write_text(json.dumps({"sha256": sha256_file(shipped)}))
    monkeypatch.setattr(loading, "SHIPPED_MODEL", shipped)
    assert load_any(None).path == shipped
    status, out, err = _run(capsys, image, "--top-k", "1")
    assert status == 0 and out == f"{image}\t{chars[0]} " + out.split(" ")[-1]


def test_the_seeds_deploy_script_prints_what_predict_prints(reader_run, samples, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "deploy_rnn_model.py"
    spec = importlib.util.spec_from_file_location("deploy_rnn_model", script)
    deploy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deploy)
    image = _save(tmp_path / "a.png", samples[0][0], "rgb_paper")
    assert deploy.main(["--model-path", str(reader_run), str(image), "--top-k", "2"]) == 0
    via_script = capsys.readouterr().out
    assert _run(capsys, image, "--model", reader_run, "--top-k", "2")[1] == via_script
    assert via_script.startswith(f"{image}\t{samples[1][0]} ") and len(via_script.split("\t")[1].split()) == 4
