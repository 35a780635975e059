import numpy as np
import pytest
import torch

from kanjirec.charset import get_charset
from kanjirec.data.fonts import FontError, GlyphCache, default_fonts, font_from_path
from kanjirec.data.kanjivg import load_kanjivg
from kanjirec.data.preprocess import normalize_images
from kanjirec.data.store import PackedDataset
from kanjirec.data.synth import (
    MAX_LEVEL,
    StrokeBank,
    SynthError,
    _sample_styles,
    charset_report,
    draw_writer_styles,
    finish_images,
    render_strokes,
    scan_finish,
    stroke_images,
    synthesize,
)

CHARS = "明語亜愛あいう永書道国学"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bank():
    kvg = load_kanjivg()
    return StrokeBank.build([kvg[c] for c in CHARS])


def _styles(bank, seed, writers=3, **overrides):
    rng = np.random.default_rng(seed)
    styles = draw_writer_styles(rng, writers)
    styles.update({k: np.full(writers, v, dtype=float) for k, v in overrides.items()})
    n = len(bank.chars)
    return np.tile(np.arange(n), writers), _sample_styles(styles, np.repeat(np.arange(writers), n)), rng


def _render(bank, seed, writers=3, with_strokes=False, **overrides):
    char_index, style, rng = _styles(bank, seed, writers, **overrides)
    ink, strokes = render_strokes(bank, char_index, style, rng, 64, with_strokes)
    return ink, strokes, style, rng


def _images(bank, seed, with_strokes=False):
    char_index, style, rng = _styles(bank, seed)
    return stroke_images(bank, char_index, style, rng, 64, with_strokes)


def test_same_seed_same_images_other_seed_other_images(bank):
    a, strokes_a = _images(bank, seed=5, with_strokes=True)
    b, strokes_b = _images(bank, seed=5, with_strokes=True)
    c, _ = _images(bank, seed=6)
    assert np.array_equal(a, b)
    assert all(
        np.array_equal(p, q)
        for sa, sb in zip(strokes_a, strokes_b, strict=True)
        for p, q in zip(sa, sb, strict=True)
    )
    assert not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == (3 * len(CHARS), 64, 64)
    # Ink bright on dark: the background (median) is dark, the strokes reach full brightness.
    assert np.median(a) < 40 and (a.reshape(len(a), -1).max(axis=1) > 200).all()
    # The fused path gives the ink of render_strokes, finished: strokes sit where its ink is.
    ink, _, _, _ = _render(bank, seed=5)
    assert ((a > 128) <= (ink > 0.05)).mean() > 0.99


def test_finished_images_are_normalize_images_of_the_scan_levels(bank):
    ink, _, style, rng = _render(bank, seed=2)
    state = rng.bit_generator.state
    finished = finish_images(ink, style, rng)
    rng.bit_generator.state = state
    levels = scan_finish(ink, style, rng)
    assert levels.dtype == np.uint8 and levels.max() <= MAX_LEVEL and len(np.unique(levels)) > 8
    reference = normalize_images(levels, max_level=MAX_LEVEL, size=64, margin=0)
    diff = finished.astype(int) - reference
    # normalize_images resamples through grid_sample, whose float32 rounding tips the odd exact .5 of
    # the contrast stretch to the next value; elsewhere the images are equal.
    assert np.abs(diff).max() <= 1 and (diff == 0).mean() > 0.97
    # One output value per grey level of an image: the stretch is a table, not a resampling.
    for img, lev in zip(finished[:5], levels[:5], strict=True):
        assert all(len(np.unique(img[lev == v])) == 1 for v in np.unique(lev))


def _bilinear(img, pts):
    """Sample img (S, S) at continuous (x, y) where pixel centres are at integer + 0.5."""
    x = np.clip(pts[:, 0] - 0.5, 0, img.shape[1] - 1.001)
    y = np.clip(pts[:, 1] - 0.5, 0, img.shape[0] - 1.001)
    x0, y0 = x.astype(int), y.astype(int)
    fx, fy = x - x0, y - y0
    return (
        img[y0, x0] * (1 - fx) * (1 - fy)
        + img[y0, x0 + 1] * fx * (1 - fy)
        + img[y0 + 1, x0] * (1 - fx) * fy
        + img[y0 + 1, x0 + 1] * fx * fy
    )


def _far_from_strokes(strokes, size, distance):
    yy, xx = np.mgrid[:size, :size] + 0.5
    centres = np.stack([xx.ravel(), yy.ravel()], axis=1)
    pts = np.concatenate(strokes)
    d = np.sqrt(((centres[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).min(axis=1)
    return (d > distance).reshape(size, size)


def test_stored_strokes_line_up_with_ink(bank):
    # A pen of ordinary width: a brush or a heavy pen puts ink further than 4 px from the centre line.
    ink, strokes, _, _ = _render(bank, seed=1, with_strokes=True, gap=0.0, cursive=0.0, brush=0.0, pen=0.8)
    assert len(strokes) == len(ink)
    kvg = load_kanjivg()
    for img, sample, char in zip(ink, strokes, bank.chars * 3, strict=True):
        assert len(sample) == len(kvg[char].strokes)
        pts = np.concatenate(sample)
        on = _bilinear(img, pts)
        assert np.median(on) > 0.6, char
        far = _far_from_strokes(sample, 64, 4.0)
        assert img[far].max() < 0.1, char


def test_packed_dataset_writer_disjoint_with_fonts_and_strokes(tmp_path):
    out = synthesize(
        list(CHARS), per_class=5, out=tmp_path / "ds", seed=3, font_fraction=0.4, with_strokes=True
    )
    ds = PackedDataset.open(out)
    assert ds.classes == sorted(CHARS, key=ord)
    assert len(ds) == 5 * len(CHARS)
    assert np.bincount(ds.labels, minlength=len(CHARS)).tolist() == [5] * len(CHARS)
    stroke_writers = [w for w in ds.writers if w.startswith("synth/w")]
    font_writers = [w for w in ds.writers if w.startswith("font:")]
    assert len(stroke_writers) == 3 and len(font_writers) >= 2
    assert set(ds.sources) == {"synth-strokes"} | {w.split("/")[0] for w in font_writers}
    # Writer-disjoint: no writer has samples in two splits.
    splits_per_writer = [set(ds.split[ds.writer_ids == w].tolist()) for w in range(len(ds.writers))]
    assert all(len(s) == 1 for s in splits_per_writer)
    assert {0, 1, 2} <= set().union(*splits_per_writer)
    # Stored strokes line up with the stored (finished, normalised) images.
    assert ds.has_strokes
    kvg = load_kanjivg()
    stroke_source = ds.sources.index("synth-strokes")
    for i in np.flatnonzero(ds.source_ids == stroke_source):
        char = ds.classes[ds.labels[i]]
        sample = ds.strokes_of(int(i))
        assert len(sample) == len(kvg[char].strokes)
        img = ds.images[int(i)].astype(np.float32) / 255
        assert np.median(_bilinear(img, np.concatenate(sample).astype(np.float32))) > 0.4, char
    for i in np.flatnonzero(ds.source_ids != stroke_source):
        assert ds.strokes_of(int(i)) == []


def test_dataset_is_the_same_for_any_worker_count(tmp_path):
    kwargs = dict(per_class=4, seed=11, font_fraction=0.25)
    one = PackedDataset.open(synthesize(list(CHARS[:6]), out=tmp_path / "one", workers=1, **kwargs))
    two = PackedDataset.open(synthesize(list(CHARS[:6]), out=tmp_path / "two", workers=2, **kwargs))
    other = PackedDataset.open(
        synthesize(list(CHARS[:6]), out=tmp_path / "other", workers=1, per_class=4, seed=12)
    )
    assert np.array_equal(one.images[:], two.images[:])
    assert np.array_equal(one.labels, two.labels) and one.writers == two.writers
    assert not np.array_equal(one.images[:], other.images[:])


def test_font_coverage_detected_not_rendered_as_tofu():
    faces = {f.family: f for f in default_fonts()}
    noto, ipa = faces["Noto Sans CJK JP"], faces["IPAGothic"]
    # 𠮷 (U+20BB7) is in Noto CJK, not in IPA Gothic; a private-use code point is in neither.
    assert noto.covers(["明", "𠮷", "\ue000"]).tolist() == [True, True, False]
    assert ipa.covers(["明", "𠮷"]).tolist() == [True, False]
    glyph = GlyphCache(noto, 64).get(["明"])[0]
    assert glyph.max() == 1.0 and glyph.mean() > 0.05
    with pytest.raises(FontError, match="has no glyph for '𠮷'"):
        GlyphCache(ipa, 64).get(["明", "𠮷"])
    # A .ttc given by path yields its JP faces only (of ten: JP, KR, SC, TC, HK, each also Mono).
    assert [f.family for f in font_from_path(noto.path)] == ["Noto Sans CJK JP", "Noto Sans Mono CJK JP"]
    assert [f.family for f in font_from_path(f"{noto.path}#1")] == ["Noto Sans CJK KR"]


def test_missing_characters_font_only_error_or_skip(tmp_path):
    # 〒 has no KanjiVG strokes but every default font has it: font-only samples.
    ds = PackedDataset.open(synthesize(list("明〒あ"), per_class=4, out=tmp_path / "a", font_fraction=0.25))
    post = ds.classes.index("〒")
    assert (ds.labels == post).sum() == 4
    assert all(ds.writers[w].startswith("font:") for w in ds.writer_ids[ds.labels == post])
    # A private-use character has neither strokes nor glyphs.
    with pytest.raises(SynthError, match=r"\ue000\(U\+E000\)"):
        synthesize(list("明あ\ue000"), per_class=3, out=tmp_path / "b", font_fraction=0.0)
    ds = PackedDataset.open(
        synthesize(
            list("明あい\ue000"), per_class=3, out=tmp_path / "c", font_fraction=0.0, skip_missing=True
        )
    )
    assert ds.classes == ["あ", "い", "明"]


def test_charset_report_sizes_and_coverage():
    report = charset_report(["etl9g", "kana"])
    header, etl9g, kana = report.splitlines()[-3:]
    kvg = load_kanjivg()
    faces = default_fonts()
    for row, name in ((etl9g, "etl9g"), (kana, "kana")):
        chars = get_charset(name)
        fields = row.split()
        assert fields[0] == name
        expected = [len(chars), sum(c in kvg for c in chars)] + [int(f.covers(chars).sum()) for f in faces]
        assert [int(v) for v in fields[1:]] == expected
    assert etl9g.split()[1] == "3036"
    assert header.split()[:3] == ["set", "size", "KanjiVG"]
    assert f"font 1: {faces[0].name}" in report


def test_without_fonts_warns_and_renders_strokes_only(tmp_path, capsys):
    out = synthesize(list("明あい"), per_class=3, out=tmp_path / "ds", font_fraction=0.5, default_fonts=False)
    assert "warning: no print fonts found" in capsys.readouterr().err
    ds = PackedDataset.open(out)
    assert ds.sources == ["synth-strokes"] and len(ds) == 9


def test_all_fonts_fraction_needs_fonts_for_every_character(tmp_path):
    ipa = [f for f in default_fonts() if f.family == "IPAGothic"][0]
    # 彐 has KanjiVG strokes but no glyph in IPA Gothic: with every sample from fonts it has none.
    kwargs = dict(per_class=2, font_fraction=1.0, fonts=[ipa.path], default_fonts=False)
    with pytest.raises(SynthError, match="in no font.*彐"):
        synthesize(list("明彐あ"), out=tmp_path / "x", **kwargs)
    with pytest.raises(SynthError, match="writer-disjoint split needs at least 3 writers"):
        synthesize(list("明あ"), out=tmp_path / "y", **kwargs)
    ds = PackedDataset.open(
        synthesize(list("明彐あ"), out=tmp_path / "z", skip_missing=True, split="random", **kwargs)
    )
    assert ds.classes == ["あ", "明"] and ds.writers == ["font:IPAGothic/Regular"]
