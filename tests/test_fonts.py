import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from kanjirec.data.font_registry import ALLOWED_PACKAGES, FACES
from kanjirec.data.fonts import (
    HELD_OUT_FONT_FAMILIES,
    FontError,
    GlyphCache,
    _cmap,
    chinese_form_agreement,
    default_fonts,
    font_report,
    held_out_faces,
    install_hint,
    missing_packages,
    registry_faces,
    stroke_width,
    training_faces,
)
from kanjirec.data.sequences import thin

RES = 128
CHARS = list("明書国永語愛川")


def _face(name: str):
    return next(f for f in registry_faces() if f.name == name)


# ---------------------------------------------------------------- Chinese forms


def test_chinese_forms_follow_the_faces_standard_per_character():
    # Noto CJK's regional faces: 角 has its Japanese form in Taiwan, not in mainland China; 骨 直 写 have
    # other forms in both; 国 and 川 are one form everywhere.
    tc, sc = chinese_form_agreement(("TC",)), chinese_form_agreement(("SC",))
    assert [ord(c) in tc for c in "角骨直写国川"] == [True, False, False, False, True, True]
    assert [ord(c) in sc for c in "角骨直写国川"] == [False, False, False, False, True, True]
    assert chinese_form_agreement(("SC", "TC", "HK")) <= tc & sc

    # TW-Kai (Taiwan's standard) has glyphs for all of them, yet may draw only the agreeing ones.
    tw = _face("TW-Kai Regular")
    assert all(ord(c) in _cmap(tw.path, tw.index) for c in "角骨直写川")
    assert tw.covers(list("角骨直写川")).tolist() == [True, False, False, False, True]
    # 円 agrees everywhere in Noto, but is in neither Big5 nor GB 2312: cwTeX Kai's glyph for it is an
    # extension drawn like 冄, so no Chinese face draws it.
    cwtex = _face("cwTeXKai Medium")
    assert ord("円") in _cmap(cwtex.path, cwtex.index)
    assert ord("円") in chinese_form_agreement(("SC", "TC", "HK"))
    assert not any(f.covers(["円"])[0] for f in registry_faces() if f.forms)
    # UKai's standard is mixed (Big5 and GB glyphs): a character must agree with every region.
    ukai = _face("AR PL UKai TW MBE Book")
    assert ord("角") in _cmap(ukai.path, ukai.index) and not ukai.covers(["角"])[0]
    assert ukai.covers(["国"])[0]
    with pytest.raises(FontError, match="has no glyph for '骨'"):
        GlyphCache(ukai, 32).get(["国", "骨"])
    # Japanese faces are not restricted.
    assert default_fonts()[0].covers(list("角骨直写")).all()


def test_chinese_faces_draw_a_minority_of_jis1():
    from kanjirec.charset import get_charset

    jis1 = get_charset("jis1")
    chinese = [f for f in registry_faces() if f.forms]
    assert {f.design_family for f in chinese} == {"AR PL UKai", "AR PL UMing", "cwTeX Kai", "TW-Kai"}
    for face in chinese:
        drawn = int(face.covers(jis1).sum())
        assert 500 < drawn < 0.4 * len(jis1), (face.name, drawn)
    with pytest.raises(FontError, match="unknown regions"):
        chinese_form_agreement(("JP",))


# ---------------------------------------------------------------- weights


def _stroke_width(ink: np.ndarray) -> float:
    """Median stroke width (pixels) of one glyph: twice the distance transform on its skeleton."""
    mask = ink >= 0.5
    return 2 * float(np.median(ndimage.distance_transform_edt(mask)[thin(mask[None])[0]]))


def test_weight_grows_ink_monotonically_from_hairline_to_beyond_black():
    regular = GlyphCache(_face("Noto Sans CJK JP Regular"), RES)
    weights = np.linspace(-0.12, 0.1, 12, dtype=np.float32)
    ink = regular.get([c for c in CHARS for _ in weights], np.tile(weights, len(CHARS)))
    area = ink.reshape(len(CHARS), len(weights), -1).sum(-1)
    # Non-decreasing; thinning stops once the thinnest strokes are hairlines, thickening where the
    # counters would close (test below).
    assert (np.diff(area, axis=1) >= 0).all() and (area[:, 8] > 1.4 * area[:, 6]).all()
    assert (area[:, -1] > 3 * area[:, 0]).all()
    # Weight 0 is the face as drawn.
    assert np.abs(regular.get(CHARS, np.zeros(len(CHARS))) - regular.get(CHARS)).max() < 2e-3

    black = GlyphCache(_face("Noto Sans CJK JP Black Regular"), RES).get(CHARS)
    heavy = regular.get(CHARS, np.full(len(CHARS), 0.08))
    hairline = regular.get(CHARS, np.full(len(CHARS), -0.12))
    # As heavy as black print on these (heavier where a character's counters allow: test below).
    assert np.median([_stroke_width(g) for g in heavy]) >= np.median([_stroke_width(g) for g in black])
    assert np.median([_stroke_width(g) for g in hairline]) <= 2.0  # 1/64 em: a hairline at 64 px
    with pytest.raises(FontError, match="weight: want 7 finite numbers"):
        regular.get(CHARS, np.zeros(3))


def test_weighted_glyphs_stay_recognisable_and_keep_every_stroke():
    for name in ("Noto Sans CJK JP Regular", "IPAMincho Regular"):
        cache = GlyphCache(_face(name), RES)
        plain = cache.get(CHARS)
        skeletons = thin(plain >= 0.5)
        near = ndimage.binary_dilation(skeletons, np.ones((1, 5, 5), bool))
        for w in (-0.12, -0.03, 0.03, 0.06):
            ink = cache.get(CHARS, np.full(len(CHARS), w, np.float32))
            # Thinning stops at a hairline centre line: every stroke, a mincho face's thin ones too, is
            # still there (within 2 px of the face's own skeleton).
            reach = ndimage.binary_dilation(ink >= 0.3, np.ones((1, 5, 5), bool))
            kept = [r[s].mean() for r, s in zip(reach, skeletons, strict=True)]
            assert min(kept) > 0.95, (name, w, kept)
            # Each weighted glyph's skeleton lies nearest its own character's skeleton.
            own = ndimage.binary_dilation(thin(ink >= 0.5), np.ones((1, 5, 5), bool))
            iou = (own[:, None] & near[None]).sum((2, 3)) / (own[:, None] | near[None]).sum((2, 3))
            assert (iou.argmax(1) == np.arange(len(CHARS))).all(), (name, w)


def _open_background(ink: np.ndarray, own: np.ndarray) -> float:
    """The fraction of the character's own bounding box that is still background (its counters and
    the gaps between its strokes)."""
    rows, cols = np.nonzero(own >= 0.5)
    return float((ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] < 0.5).mean())


def test_thickening_keeps_the_counters_of_dense_characters_open():
    cache = GlyphCache(_face("Noto Sans CJK JP Regular"), RES)
    dense, simple = list("鷹驚襲議曜"), list("三川口")
    own = cache.get(dense)
    heavy = cache.get(
        dense + simple, np.full(len(dense + simple), 0.15 - stroke_width(cache.face), np.float32)
    )
    # A uniform dilation to 0.15 em leaves 5-13% of these boxes blank (a solid blot; the face itself:
    # 50-56%); the cap keeps a fifth or more, the gaps between strokes that make them readable.
    open_ = [_open_background(g, o) for g, o in zip(heavy[: len(dense)], own, strict=True)]
    assert min(open_) >= 0.2, open_
    # Simple characters still go heavier than black print.
    black = stroke_width(_face("Noto Sans CJK JP Black Regular")) * RES
    assert min(_stroke_width(g) for g in heavy[len(dense) :]) > black


def test_stroke_width_orders_weights_and_sets_a_target_width():
    names = ("Thin Regular", "Regular", "Bold", "Black Regular")
    widths = [stroke_width(_face(f"Noto Sans CJK JP {n}")) for n in names]
    assert widths == sorted(widths) and widths[0] < 0.03 and widths[-1] > 0.12
    # A weight of target - stroke_width(face) gives IPA Mincho strokes about as wide as Noto Sans Bold's.
    mincho = _face("IPAMincho Regular")
    ink = GlyphCache(mincho, RES).get(CHARS, np.full(len(CHARS), widths[2] - stroke_width(mincho)))
    bold = GlyphCache(_face("Noto Sans CJK JP Bold"), RES).get(CHARS)
    measured = [np.median([_stroke_width(g) for g in glyphs]) / RES for glyphs in (ink, bold)]
    assert abs(measured[0] - measured[1]) < 0.015, measured


def test_smoothed_weighted_glyphs_match_the_unweighted_path():
    cache = GlyphCache(default_fonts()[0], 64, smooth=True)
    assert np.abs(cache.get(CHARS, np.zeros(len(CHARS))) - cache.get(CHARS)).max() < 2e-3


# ---------------------------------------------------------------- registry, leave-styles-out


def test_held_out_and_training_faces_are_disjoint_families_covering_the_registry():
    held, train = held_out_faces(), training_faces()
    assert {f.design_family for f in held} == HELD_OUT_FONT_FAMILIES
    assert not {f.design_family for f in held} & {f.design_family for f in train}
    assert set(held) | set(train) == set(registry_faces()) and not set(held) & set(train)
    assert {f.writer for f in held}.isdisjoint(f.writer for f in train)
    # Bold weights are held out too, and every kind of style is kept out once.
    names = {f.name for f in held}
    assert {"BIZ UDMincho Regular", "BIZ UDGothic Bold", "TW-Kai Regular"} <= names
    assert len({f.writer for f in registry_faces()}) == len(FACES)


def test_only_allow_listed_registry_files_are_ever_resolved(tmp_path, capsys):
    assert {spec.package for spec in FACES} <= set(ALLOWED_PACKAGES)
    files = {spec.file for spec in FACES}
    for face in (*registry_faces(), *default_fonts(), *training_faces(), *held_out_faces()):
        assert face.path.name in files and face.package in ALLOWED_PACKAGES
    # A folder with one package's registry files and a font under a name the registry does not know;
    # then a registry file name holding another font.
    ipag, ipam = _face("IPAGothic Regular").path, _face("IPAMincho Regular").path
    shutil.copy(ipag, tmp_path / "ipag.ttf")
    shutil.copy(ipam, tmp_path / "ipam.ttf")
    shutil.copy(ipag, tmp_path / "SomeHandwriting-Regular.ttf")
    dirs = (tmp_path,)
    expected = ["IPAGothic Regular", "IPAMincho Regular"]
    assert [f.name for f in registry_faces(dirs)] == [f.name for f in default_fonts(dirs)] == expected
    assert "fonts-ipafont" not in missing_packages(dirs=dirs)
    assert missing_packages(dirs=dirs)[0] == "fonts-noto-cjk-extra"
    assert [f.name for f in training_faces(dirs)] == expected
    warning = capsys.readouterr().err
    assert "font packages missing (install them with: apt-get install fonts-noto-cjk-extra" in warning
    with pytest.raises(FontError, match="held-out font families need .* install fonts-motoya-l-cedar"):
        held_out_faces(dirs)
    with pytest.raises(FontError, match="needs NotoSansCJK-Regular.ttc"):
        chinese_form_agreement(("TC",), dirs)
    decoy = tmp_path / "other"
    decoy.mkdir()
    shutil.copy(ipag, decoy / "ipam.ttf")
    with pytest.raises(FontError, match="has no face 'IPAMincho' 'Regular'"):
        registry_faces((decoy,))
    assert install_hint(["fonts-ipafont", "ttf-not-listed"]).endswith("apt-get install fonts-ipafont")


def test_font_report_lists_every_face_with_its_role(tmp_path):
    for name in ("IPAGothic Regular", "BIZ UDGothic Bold", "Konatu Regular"):
        (tmp_path / _face(name).path.name).symlink_to(_face(name).path)
    report = font_report(["kana"], dirs=(tmp_path,)).splitlines()
    rows = {line[:36].strip(): line.split() for line in report[1 : 1 + len(FACES)]}
    assert len(rows) == len(FACES)
    assert rows["BIZ UDGothic Bold"][-4:] == ["held", "out", "fonts-morisawa-bizud-gothic", "169"]
    assert rows["IPAGothic Regular"][-3:] == ["default", "fonts-ipafont", "169"]
    assert rows["Konatu Regular"][-3:] == ["training", "fonts-konatu", "169"]
    assert rows["TW-Kai Regular"][-4:] == ["held", "out", "fonts-cns11643-kai", "-"]
    assert report[-1].startswith("20 packages missing: install them with: apt-get install fonts-noto-cjk")


def test_setup_script_installs_the_registrys_packages_only():
    script = (Path(__file__).parents[1] / "scripts" / "setup.sh").read_text()
    named = set(re.findall(r"\bfonts-[a-z0-9-]+", script))
    assert named == {spec.package for spec in FACES} and named <= set(ALLOWED_PACKAGES)
