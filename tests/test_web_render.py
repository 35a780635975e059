"""The page's JavaScript renderer (serve/web/render.mjs, run by node) draws the same strokes into the
same model input as `data.pen.strokes_to_image`, the renderer of the server and of training."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from kanjirec.data.kanjivg import load_kanjivg
from kanjirec.data.pen import PenInputError, strokes_to_image
from kanjirec.serve.web import WEB_DIR

RUN_RENDERER = f"""
import {{ strokesToImage }} from {json.dumps((WEB_DIR / "render.mjs").as_uri())};
let input = "";
process.stdin.on("data", (chunk) => (input += chunk)).on("end", () => {{
  const out = JSON.parse(input).map((d) => {{
    try {{ return Array.from(strokesToImage(d.strokes, d.width, d.height, d.size)); }}
    catch (error) {{ return error.message; }}
  }});
  process.stdout.write(JSON.stringify(out));
}});
"""


def _javascript(drawings: list[dict]) -> list:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (Debian: apt-get install nodejs; bash scripts/setup.sh does)")
    done = subprocess.run(
        [node, "--input-type=module", "-e", RUN_RENDERER],
        input=json.dumps(drawings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _drawings() -> list[dict]:
    """KanjiVG characters at several sizes and places, hand-like scribbles, dots, odd canvases."""
    kanjivg = load_kanjivg()
    rng = np.random.default_rng(7)
    out = []
    for char, scale, offset, canvas, size in (
        ("永", 3.0, (10, 10), (340, 340), 64),
        ("鬱", 1.2, (200, 40), (400, 300), 64),
        ("あ", 0.5, (3, 60), (120, 200), 64),
        ("一", 4.0, (0, 0), (436, 436), 64),
        ("田", 2.0, (31.7, 5.2), (260, 260), 48),
        ("書", 5.5, (0, 0), (600, 600), 96),
    ):
        strokes = [(s.points * scale + offset).tolist() for s in kanjivg[char].strokes]
        out.append({"strokes": strokes, "width": canvas[0], "height": canvas[1], "size": size})
    for _ in range(4):  # wobbly random walks, some with repeated points
        strokes = []
        for _ in range(rng.integers(1, 6)):
            steps = rng.normal(0, 6, (rng.integers(1, 40), 2)) * rng.integers(0, 2, (1, 1))
            strokes.append((rng.uniform(50, 250, 2) + np.cumsum(steps, axis=0)).tolist())
        out.append({"strokes": strokes, "width": 300, "height": 300, "size": 64})
    out.append({"strokes": [[[40.0, 40.0]]], "width": 100, "height": 100, "size": 64})  # one dot
    out.append(
        {"strokes": [[[10, 10], [10, 10], [90, 60]], [[70, 20]]], "width": 400, "height": 200, "size": 64}
    )
    return out


def test_javascript_renderer_draws_the_same_image_as_python():
    drawings = _drawings()
    for drawing, js in zip(drawings, _javascript(drawings), strict=True):
        python = strokes_to_image(
            [np.array(s) for s in drawing["strokes"]], drawing["width"], drawing["height"], drawing["size"]
        ).astype(np.int16)
        js = np.array(js, np.int16).reshape(python.shape)
        assert python.max() == 255  # an image with ink, so that the comparison means something
        differ = np.abs(python - js)
        # float32 (numpy) against float64 (JavaScript) may move a pixel across a grey level boundary
        assert (differ > 0).mean() < 0.005 and differ.mean() < 0.5, (drawing["size"], differ.max())


def test_javascript_renderer_refuses_what_python_refuses():
    bad = [
        {"strokes": [], "width": 10, "height": 10, "size": 64},
        {"strokes": [[]], "width": 10, "height": 10},
    ]
    for drawing, js in zip(bad, _javascript(bad), strict=True):
        with pytest.raises(PenInputError):
            strokes_to_image(drawing["strokes"], drawing["width"], drawing["height"])
        assert js == "expected at least one stroke, each with at least one point"
