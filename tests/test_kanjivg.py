import numpy as np
import pytest

from kanjirec.data.kanjivg import KANJIVG_BOX, KanjiVGError, load_kanjivg, parse_svg, sample_path


@pytest.fixture(scope="module")
def kanjivg():
    return load_kanjivg()


def test_mei_is_sun_left_moon_right(kanjivg):
    e = kanjivg["明"]
    assert len(e.strokes) == 8
    assert e.root.element == "明"
    left, right = e.root.children
    assert (left.element, left.position, left.stroke_indices) == ("日", "left", (0, 1, 2, 3))
    assert (right.element, right.position, right.stroke_indices) == ("月", "right", (4, 5, 6, 7))
    assert e.root.stroke_indices == tuple(range(8))
    assert e.strokes[0].type == "㇑"
    assert e.strokes[1].type == "㇕a"


def test_go_is_word_plus_five_mouths(kanjivg):
    e = kanjivg["語"]
    assert [c.element for c in e.root.children] == ["言", "吾"]
    assert [c.position for c in e.root.children] == ["left", "right"]
    assert len(e.strokes) == 14
    assert e.root.children[0].stroke_indices == tuple(range(7))


def test_stroke_points_in_box_and_in_writing_direction(kanjivg):
    points = np.concatenate([s.points for e in kanjivg.values() for s in e.strokes])
    assert points.dtype == np.float32
    assert points.min() >= 0 and points.max() <= KANJIVG_BOX
    # 一 is written left to right: its one stroke starts at the left.
    (stroke,) = kanjivg["一"].strokes
    assert stroke.points[0, 0] < stroke.points[-1, 0] - 50
    # 明's first stroke (the left vertical of 日) goes down.
    first = kanjivg["明"].strokes[0].points
    assert first[-1, 1] - first[0, 1] > 30
    # Points are evenly spaced (about 1.5 units), so a long stroke has many of them.
    steps = np.linalg.norm(np.diff(first, axis=0), axis=1)
    assert steps.max() < 2.0 and len(first) > 25


def test_main_files_only_and_split_parts(kanjivg):
    # Variant files (…-Kaisho.svg) are skipped: one entry per character, a few thousand in all.
    assert 6000 < len(kanjivg) < 8000
    assert "ア" in kanjivg and "あ" in kanjivg
    # 衛 is 行 split around its middle: two parts of the same element.
    parts = [c for c in kanjivg["衛"].root.children if c.element == "行"]
    assert [c.part for c in parts] == [1, 2]


def test_path_commands_absolute_relative_and_smooth():
    # Relative cubic with implicit repetition, then smooth shorthand, then a line and close.
    line = sample_path("M10,10 l20,0")
    assert np.allclose(line[0], [10, 10]) and np.allclose(line[-1], [30, 10])
    curve = sample_path("M10,10c0,10 10,10 10,0 s10,-10 10,0")
    assert np.allclose(curve[-1], [30, 10], atol=1e-4)
    # The smooth segment mirrors the first: it dips below y=10 while the first rises above.
    assert curve[:, 1].max() > 15 and curve[:, 1].min() < 5
    closed = sample_path("M0,0H10V10Z")
    assert np.allclose(closed[-1], [0, 0], atol=1e-4)


def test_bad_path_names_the_stroke(tmp_path):
    with pytest.raises(KanjiVGError, match="unsupported SVG path command 'A'"):
        sample_path("M0,0A1,1 0 0 0 5,5", "x.svg stroke s1")
    bad = tmp_path / "04e00.svg"
    bad.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg"><g id="kvg:04e00">'
        '<path id="kvg:04e00-s2" d="M0,0L1,1"/></g></svg>'
    )
    with pytest.raises(KanjiVGError, match="04e00.svg: stroke numbers"):
        parse_svg(bad)
