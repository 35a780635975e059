"""The renderer's style steps (brush, component proportions, held-out region) and fresh batches."""

import json

import numpy as np
import pytest
import torch

from kanjirec.data.fonts import held_out_faces
from kanjirec.data.kanjivg import load_kanjivg
from kanjirec.data.stream import SynthBatches
from kanjirec.data.synth import (
    HELD_OUT_CURSIVE,
    StrokeBank,
    SynthError,
    _brush_footprints,
    _component_maps,
    draw_writer_styles,
    in_held_out_region,
    render_strokes,
)


@pytest.fixture(scope="module")
def kvg():
    return load_kanjivg()


def test_training_styles_never_enter_the_held_out_region():
    rng = np.random.default_rng(0)
    train = draw_writer_styles(rng, 20_000, region="train")
    held = draw_writer_styles(rng, 2_000, region="held_out")
    whole = draw_writer_styles(rng, 20_000, region="all")
    assert not in_held_out_region(train).any()
    assert in_held_out_region(held).all()
    # The region is a real part of the whole space, and training still has brushes and cursive pens.
    assert 0.01 < in_held_out_region(whole).mean() < 0.2
    assert (train["brush"] > 0).mean() > 0.25
    assert ((train["brush"] == 0) & (train["cursive"] > HELD_OUT_CURSIVE)).any()
    with pytest.raises(SynthError, match="unknown style region"):
        draw_writer_styles(rng, 1, region="bogus")


def test_pen_widths_reach_from_hairline_to_heavier_than_bold():
    pens = draw_writer_styles(np.random.default_rng(1), 5_000)["pen"]
    assert pens.min() < 0.35 and pens.max() > 1.5


def test_brush_footprint_widens_with_pressure():
    # One horizontal stroke of 11 points; pressure profile rising from 0.5 to 1.5.
    x = np.arange(11, dtype=np.float32)
    y = np.zeros(11, np.float32)
    t = np.linspace(0, 1, 11, dtype=np.float32)
    profile = np.linspace(0.5, 1.5, 11, dtype=np.float32)
    pressure = np.ones(11, np.float32)
    args = (x, y, t, np.zeros(11, np.int64), pressure, profile, np.array([0]), np.array([11]))
    bx, by, sample, weight = _brush_footprints(
        *args, np.array([2.0]), np.array([0.0]), np.random.default_rng(0)
    )
    lines = by.reshape(4, 11)
    # The outer lines sit at the half-width, brush size x pressure profile, either side of the stroke.
    np.testing.assert_allclose(np.abs(lines[0]), 2.0 * profile, rtol=1e-5)
    np.testing.assert_allclose(np.abs(lines[1]), 1.0 * profile, rtol=1e-5)
    np.testing.assert_allclose(bx.reshape(4, 11), np.tile(x, (4, 1)))
    assert (sample == 0).all() and np.allclose(weight, 0.7)  # not dry: no streaks
    # A pen (brush size 0) adds nothing; a dry brush drops ink from its outer lines.
    assert len(_brush_footprints(*args, np.array([0.0]), np.array([0.0]), np.random.default_rng(0))[0]) == 0
    dry = _brush_footprints(*args, np.array([2.0]), np.array([1.0]), np.random.default_rng(0))[3].reshape(
        4, 11
    )
    assert dry[0].sum() < 0.7 * 11 and dry[0].sum() < dry[1].sum() + 1e-6


def test_component_proportion_moves_the_boundary_and_keeps_the_extent(kvg):
    bank = StrokeBank.build([kvg["語"], kvg["草"], kvg["一"]])
    assert list(bank.char_split_axis) == [1, 2, 0]  # left/right, top/bottom, no split
    lo, boundary, hi = bank.char_split[0]
    strokes = np.arange(bank.char_nstrokes[0])
    style = {"proportion": np.array([1.0])}

    class FixedNormal:  # the ratio is exp(normal * proportion): pin the normal draw
        def normal(self, loc, scale, size):
            return np.full(size, np.log(1.2))

    scale, shift = _component_maps(
        bank, np.array([0]), strokes, np.zeros(len(strokes), np.int64), style, FixedNormal()
    )
    part = bank.stroke_part[strokes]
    new = lambda v, rows: scale[rows, 0] * v + shift[rows, 0]  # noqa: E731
    first, second = np.flatnonzero(part == 0), np.flatnonzero(part == 1)
    # The left component (言) gets 1.2x its share; the right one (吾) fills the rest; y is untouched.
    assert new(boundary, first)[0] - new(lo, first)[0] == pytest.approx(1.2 * (boundary - lo))
    assert new(hi, second)[0] == pytest.approx(hi)
    assert new(lo, first)[0] == pytest.approx(lo)
    np.testing.assert_allclose(scale[:, 1], 1.0)
    np.testing.assert_allclose(shift[:, 1], 0.0)


def test_held_out_brush_cursive_writers_join_strokes(kvg):
    # The joins of a cursive hand add ink between strokes: more ink than the same hand without joins.
    bank = StrokeBank.build([kvg[c] for c in "十口日江"])
    style = draw_writer_styles(np.random.default_rng(3), 16, region="held_out")
    plain = {**style, "cursive": np.zeros(16)}
    joined = {**style, "cursive": np.ones(16)}
    idx = np.arange(16) % 4
    a, _ = render_strokes(bank, idx, plain, np.random.default_rng(5))
    b, _ = render_strokes(bank, idx, joined, np.random.default_rng(5))
    assert b.sum() > a.sum() * 1.02


def _batches(**kw):
    args = dict(seed=3, epoch=1, rank=0, steps=4, batch_size=16, font_fraction=0.25)
    return SynthBatches(list("あいう明語国永"), **{**args, **kw})


def test_fresh_batches_depend_only_on_seed_epoch_step():
    first, again = _batches()[2], _batches()[2]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    resumed = _batches(first=2)[0]  # a run resumed at step 2 renders what an uninterrupted one did
    assert torch.equal(first[0], resumed[0])
    other = _batches()[3]
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(_batches(epoch=2)[2][0], first[0])
    images, labels = first
    assert images.shape == (16, 1, 64, 64) and images.dtype == torch.uint8
    assert labels.min() >= 0 and labels.max() < 7


def test_fresh_batches_do_not_depend_on_worker_count():
    loaded = [
        [b for b in torch.utils.data.DataLoader(_batches(), batch_size=None, num_workers=w)] for w in (0, 2)
    ]
    for (x0, y0), (x1, y1) in zip(*loaded, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_leave_styles_out_families_are_rendered_per_family(tmp_path):
    from kanjirec.benchmarks.styles import REGION_FAMILY, render_families, report_markdown
    from kanjirec.data.fonts import default_fonts
    from kanjirec.data.store import PackedDataset

    face = default_fonts()[0]
    out = render_families(list("日本あ"), tmp_path / "held", per_class=2, faces=[face])
    ds = PackedDataset.open(out)
    assert sorted(ds.writers) == sorted([REGION_FAMILY, face.name])
    assert len(ds.labels) == 2 * 3 * 2  # 2 families x 3 classes x 2 per class
    again = PackedDataset.open(render_families(list("日本あ"), tmp_path / "again", per_class=2, faces=[face]))
    assert np.array_equal(np.asarray(ds.images), np.asarray(again.images))  # fixed seed: figures compare
    text = report_markdown(
        {
            "model": "m",
            "classes": "kana",
            "per_class": 1,
            "seed": 1,
            "families": [{"writer": REGION_FAMILY, "samples": 10, "top1": 0.5}],
            "overall_top1": 0.5,
            "worst_family_top1": 0.5,
        }
    )
    assert f"| {REGION_FAMILY} | 10 | 50.00% |" in text


def test_bench_styles_keeps_the_rendered_families_for_later_runs(tmp_path, capsys):
    from helpers import save_run
    from kanjirec.charset import get_charset
    from kanjirec.cli import main
    from kanjirec.models import create_model

    classes = get_charset("kana")
    run = save_run(tmp_path / "run", create_model("mobile_cnn", num_classes=len(classes)), classes)
    first = ["bench", "styles", "--model", str(run), "--classes", "kana"]
    assert main([*first, "--keep-data", str(tmp_path / "held"), "--out", str(tmp_path / "a")]) == 0
    assert main([*first, "--data", str(tmp_path / "held"), "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "styles.json").read_text(encoding="utf-8")) for d in "ab")
    assert a["families"] == b["families"] and len(a["families"]) == 1 + len(held_out_faces())
    assert main([*first, "--data", str(tmp_path / "held"), "--keep-data", str(tmp_path / "c")]) == 2
    assert "not both" in capsys.readouterr().err
    # Without --classes, the families are rendered for the model's own classes (here: kana).
    assert main([*first[:4], "--out", str(tmp_path / "own")]) == 0
    own = json.loads((tmp_path / "own" / "styles.json").read_text(encoding="utf-8"))
    assert own["families"] == a["families"]
