"""`kanjirec bench peers`: the writer model, the zinnia binding, the recognisers and the report."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
from PIL import Image

from kanjirec.benchmarks import peers
from kanjirec.benchmarks import zinnia as zinnia_module
from kanjirec.benchmarks.zinnia import Zinnia, ZinniaError
from kanjirec.cli import main
from kanjirec.data.kanjivg import KANJIVG_BOX, load_kanjivg

CHARS = "語田川汁休機右"


@pytest.fixture(scope="module")
def kanjivg():
    return load_kanjivg()


@pytest.fixture(scope="module")
def zinnia():
    with Zinnia() as z:
        yield z


def clean(entry, writer: int = 0) -> peers.Drawing:
    """The KanjiVG strokes scaled to the canvas, undistorted, as whole units."""
    strokes = tuple(np.rint(s.points * peers.CANVAS / KANJIVG_BOX).astype(np.int64) for s in entry.strokes)
    return peers.Drawing(entry.char, writer, strokes, tuple(range(len(strokes))))


def same(d: peers.Drawing, e: peers.Drawing) -> bool:
    return (
        d.order == e.order
        and len(d.strokes) == len(e.strokes)
        and all(
            a.shape == b.shape and np.array_equal(a, b) for a, b in zip(d.strokes, e.strokes, strict=True)
        )
    )


def test_writers_and_drawings_are_the_same_for_a_seed_and_differ_across_seeds(kanjivg):
    writers = peers.draw_writers(3)
    assert writers == peers.draw_writers(3) and writers[:2] == peers.draw_writers(2)
    assert len(set(writers)) == 3
    again = [peers.write(kanjivg[c], w, i) for i, w in enumerate(peers.draw_writers(3)) for c in CHARS]
    for i, w in enumerate(writers):
        for c in CHARS:
            d = peers.write(kanjivg[c], w, i)
            e = again[i * len(CHARS) + CHARS.index(c)]
            assert same(d, e)
    other = peers.write(kanjivg["語"], peers.draw_writers(1, seed=1)[0], 0, seed=1)
    first = peers.write(kanjivg["語"], writers[0], 0)
    assert not same(other, first)


def arc(points: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(np.asarray(points, np.float64), axis=0), axis=1).sum())


def centroid(points: np.ndarray) -> np.ndarray:
    """The centre of a polyline by arc length, whatever its sampling."""
    points = np.asarray(points, np.float64)
    length = np.linalg.norm(np.diff(points, axis=0), axis=1)
    if length.sum() == 0:
        return points.mean(axis=0)
    return ((points[1:] + points[:-1]) / 2 * length[:, None]).sum(axis=0) / length.sum()


def own_moves(entry, d: peers.Drawing) -> float:
    """RMS distance (KanjiVG units) of the drawn strokes' centroids from their KanjiVG strokes'
    centroids once the best affine map (the writer's hand) is taken out: each stroke's own move."""
    source = np.array([centroid(entry.strokes[k].points) for k in d.order])
    drawn = np.array([centroid(s) for s in d.strokes])
    design = np.hstack([source, np.ones((len(source), 1))])
    fit, *_ = np.linalg.lstsq(design, drawn, rcond=None)
    units = np.sqrt(abs(np.linalg.det(fit[:2])))  # canvas units per KanjiVG unit
    return float(np.sqrt(((design @ fit - drawn) ** 2).sum(axis=1).mean()) / units)


def test_a_drawing_keeps_its_characters_strokes_moved_a_little(kanjivg):
    for i, w in enumerate(peers.draw_writers(3)):
        for c in CHARS:
            entry = kanjivg[c]
            d = peers.write(entry, w, i)
            assert len(d.strokes) == len(entry.strokes) and sorted(d.order) == list(range(len(entry.strokes)))
            assert all(s.dtype == np.int64 and len(s) >= 2 for s in d.strokes)
            assert all(s.min() >= 0 and s.max() < peers.CANVAS for s in d.strokes)
            moved = own_moves(entry, d)
            assert moved < 8.0, (c, i, moved)
            if len(d.strokes) >= 6:  # enough strokes that the affine fit cannot absorb their own moves
                assert moved > 0.3, (c, i, moved)


def test_every_writer_trait_changes_the_drawing_and_the_hand_alone_is_affine(kanjivg):
    entry = kanjivg["機"]  # 16 strokes
    still = dataclasses.replace(
        peers.draw_writers(1)[0], stroke_shift=0.0, stroke_scale=0.0, stroke_turn=0.0, wobble=0.0,
        length=0.0, jitter=0.0, swap_rate=0.0,
    )  # fmt: skip
    base = peers.write(entry, still, 0)
    assert own_moves(entry, base) < 0.5  # only the hand's affine map (and rounding) moved the strokes
    assert own_moves(entry, peers.write(entry, dataclasses.replace(still, stroke_shift=3.0), 0)) > 1.5
    changes = {
        "size": 0.6, "aspect": 1.3, "rotation": 10.0, "slant": 0.3, "stroke_shift": 2.0, "stroke_scale": 0.2,
        "stroke_turn": 8.0, "wobble": 2.0, "length": 0.2, "spacing": 4.0, "jitter": 2.0,
    }  # fmt: skip
    for field, value in changes.items():
        d = peers.write(entry, dataclasses.replace(still, **{field: value}), 0)
        assert not same(d, base), field
    # length: ends are both trimmed and extended (a long stroke's sampled length tells)
    changed = peers.write(entry, dataclasses.replace(still, length=0.2), 0)
    ratios = [arc(a) / arc(b) for a, b in zip(changed.strokes, base.strokes, strict=True) if arc(b) > 50]
    assert min(ratios) < 0.95 and max(ratios) > 1.05
    sparse = peers.write(entry, dataclasses.replace(still, spacing=2 * still.spacing), 0)
    ratio = sum(map(len, base.strokes)) / sum(map(len, sparse.strokes))
    assert 1.6 < ratio < 2.4  # points come at the writer's spacing


def test_strokes_are_swapped_only_in_pairs_within_their_innermost_component(kanjivg):
    w = peers.draw_writers(1)[0]
    never, always = dataclasses.replace(w, swap_rate=0.0), dataclasses.replace(w, swap_rate=1.0)
    for c in CHARS:
        assert peers.write(kanjivg[c], never, 0).order == tuple(range(len(kanjivg[c].strokes)))
    # 汁: 氵 (strokes 0-2) then 十 (3-4); 2 and 3 belong to different components and stay put.
    assert peers.write(kanjivg["汁"], always, 0).order == (1, 0, 2, 4, 3)
    assert peers.write(kanjivg["田"], always, 0).order == (1, 0, 3, 2, 4)  # one component
    swapped = [peers.write(kanjivg[c], w, 0) for c in CHARS]
    assert all(max(abs(k - j) for j, k in enumerate(d.order)) <= 1 for d in swapped)


def test_zinnia_reads_clean_characters_and_names_its_model(kanjivg, zinnia):
    assert len(zinnia.labels) > 6000 and "語" in zinnia.labels
    for c in "木語田":
        answers = zinnia(clean(kanjivg[c]).strokes, peers.CANVAS, peers.CANVAS, top_k=10)
        assert len(answers) == 10 and answers[0][0] == c
        scores = [s for _, s in answers]
        assert scores == sorted(scores, reverse=True)


def test_zinnia_refuses_what_it_cannot_take(tmp_path, monkeypatch, zinnia):
    missing = tmp_path / "none.model"
    with pytest.raises(ZinniaError, match=str(missing)):
        Zinnia(missing)
    broken = tmp_path / "broken.model"
    broken.write_bytes(b"not a zinnia model")
    with pytest.raises(ZinniaError, match="broken.model"):
        Zinnia(broken)
    monkeypatch.setattr(zinnia_module, "LIBRARY", "libzinnia-missing.so.0")
    with pytest.raises(ZinniaError, match="libzinnia0 and tegaki-zinnia-japanese"):
        Zinnia()
    with pytest.raises(ZinniaError, match="at least one stroke"):
        zinnia([], 400, 400)
    with pytest.raises(ZinniaError, match="canvas"):
        zinnia([np.array([[1, 2], [3, 4]])], 0, 400)


def test_the_three_recognisers_read_the_same_clean_strokes(kanjivg):
    recognisers = [peers.Ours(), peers.ZinniaTegaki(), peers.Kanjidraw()]
    assert [r.name for r in recognisers] == list(peers.RECOGNISERS)
    for c in "語田":
        for r in recognisers:
            answers = r(clean(kanjivg[c]))
            assert answers[0] == c and len(answers) == peers.TOP_K, (r.name, c, answers)


def test_kanjidraw_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "kanjidraw", None)  # makes `import kanjidraw` fail
    with pytest.raises(peers.PeersError, match=r"pip install"):
        peers.Kanjidraw()


def test_bench_peers_writes_the_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CI", "1")
    out = tmp_path / "peers"
    assert main(["bench", "peers", "--chars", "4", "--writers", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads((out / "peers.json").read_text(encoding="utf-8"))
    assert r["command"] == f"kanjirec bench peers --chars 4 --writers 2 --seed {peers.SEED} --out {out}"
    assert r["class_set"]["count"] == 4 and len(r["class_set"]["characters"]) == 4
    assert r["class_set"]["named_by_all"] == 2965  # every jis1 kanji: KanjiVG, zinnia and kanjidraw
    assert [w["writer"] for w in r["writers"]] == [0, 1]
    assert list(r["recognisers"]) == list(peers.RECOGNISERS)
    for v in r["recognisers"].values():
        assert v["drawings"] == 8 and 0 <= v["top1"] <= v["top10"] <= 1
        assert len(v["misses"]) == round(8 * (1 - v["top1"]))
        assert all(m["char"] in r["class_set"]["characters"] for m in v["misses"])
        assert [w["drawings"] for w in v["per_writer"]] == [4, 4]
        assert np.mean([w["top1"] for w in v["per_writer"]]) == pytest.approx(v["top1"])
    with Image.open(out / peers.SHEET) as sheet:  # the drawings, 4 a row, a row per writer
        assert sheet.size == (4 * peers.SHEET_CELL, 2 * peers.SHEET_CELL)
        assert 0 < (np.asarray(sheet) == 0).mean() < 0.5
    md = (out / "peers.md").read_text(encoding="utf-8")
    assert r["command"] in md and peers.PROVENANCE in md and "Misses" in md
    assert "| recogniser | what | drawings | top-1 | top-10 |" in printed and "Misses" not in printed
    for name, v in r["recognisers"].items():
        assert f"| {name} | {v['label']} | 8 | {100 * v['top1']:.2f}% | {100 * v['top10']:.2f}% |" in md
        assert v["cpu_ms_per_drawing"] > 0 and v["wall_ms_per_drawing"] > 0


def test_bench_peers_refuses_an_empty_comparison(capsys):
    assert main(["bench", "peers", "--chars", "0"]) == 2
    assert "at least one character" in capsys.readouterr().err
