"""Class sets and JIS -> Unicode through Python's codecs."""

from __future__ import annotations

import unicodedata

import pytest

from kanjirec.charset import (
    CHARSET_NAMES,
    CharsetError,
    get_charset,
    jis0201_to_char,
    jis0208_table,
    jis0208_to_char,
)
from kanjirec.errors import KanjirecError


def test_jis0208_real_characters():
    assert jis0208_to_char(0x3021) == "亜"  # a linear formula gives 㱁 here
    assert jis0208_to_char(0x2422) == "あ"
    assert jis0208_to_char(0x4F53) == "腕"  # last JIS level-1 kanji
    assert jis0208_to_char(0x303D) == "綾"
    assert jis0208_to_char(0x2572) == "ヲ"
    assert jis0208_to_char(0x7426) == "熙"  # last level-2 kanji


def test_jis0208_unassigned_and_out_of_range_raise():
    with pytest.raises(CharsetError, match="0x2F21"):
        jis0208_to_char(0x2F21)
    with pytest.raises(CharsetError, match="0x0000"):
        jis0208_to_char(0x0000)
    assert issubclass(CharsetError, KanjirecError)


def test_jis0208_table_counts_every_assigned_code():
    table = jis0208_table()
    assert table.shape == (94, 94)
    assert int((table != "").sum()) == 6879  # the JIS X 0208 repertoire
    assert table[0x30 - 0x21, 0x21 - 0x21] == "亜"


def test_jis0201_katakana_hiragana_latin():
    assert jis0201_to_char(0xB1) == "ア"
    assert jis0201_to_char(0xB1, hiragana=True) == "あ"
    assert jis0201_to_char(0xDD, hiragana=True) == "ん"
    assert jis0201_to_char(0xA6) == "ヲ"
    assert jis0201_to_char(0x41) == "A" and jis0201_to_char(0x39) == "9"
    assert jis0201_to_char(0xB0) == "ー"


def test_jis0201_voicing_marks_are_spacing():
    for byte, mark in ((0xDE, "゛"), (0xDF, "゜")):
        char = jis0201_to_char(byte, hiragana=True)
        assert char == mark and unicodedata.combining(char) == 0


def test_jis0201_byte_without_character_raises():
    with pytest.raises(CharsetError, match="0x80"):
        jis0201_to_char(0x80)
    with pytest.raises(CharsetError, match="0xE0"):
        jis0201_to_char(0xE0)


def test_etl9g_charset():
    chars = get_charset("etl9g")
    assert len(chars) == 3036
    kanji = [c for c in chars if c >= "\u4e00"]
    hira = [c for c in chars if "\u3040" <= c <= "\u309f"]
    assert len(kanji) == 2965 and len(hira) == 71
    assert {"亜", "腕", "あ", "ん", "を"} <= set(chars)
    assert not set("ぁぃぅぇぉっゃゅょゎゐゑ") & set(chars)
    assert chars == sorted(chars, key=ord)


def test_other_named_charsets():
    joyo = get_charset("joyo")
    assert len(joyo) == 2136 and "亜" in joyo and "𠮟" in joyo
    assert len(get_charset("jis1")) == 2965
    assert len(get_charset("jis12")) == 6355
    kana = get_charset("kana")
    assert len(kana) == 83 + 86 and {"あ", "ア", "ヴ", "ぁ"} <= set(kana)
    assert get_charset("ETL9G") == get_charset("etl9g")


def test_etl8g_charset_is_not_invented():
    with pytest.raises(CharsetError, match="etl8g.*not shipped"):
        get_charset("etl8g")


def test_kanjivg_charset_uses_the_kanjivg_loader(monkeypatch):
    import kanjirec.data.kanjivg as kv

    monkeypatch.setattr(kv, "load_kanjivg", lambda: {"亜": None, "あ": None, "A": None})
    assert get_charset("kanjivg") == ["A", "あ", "亜"]
    assert "kanjivg" in CHARSET_NAMES


def test_charset_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("亜 腕\nあ\n亜\n", encoding="utf-8")
    assert get_charset(path) == ["あ", "亜", "腕"]
    assert get_charset(str(path)) == ["あ", "亜", "腕"]


def test_charset_errors(tmp_path):
    with pytest.raises(CharsetError, match="unknown charset 'nope'.*etl9g"):
        get_charset("nope")
    bad = tmp_path / "bad.txt"
    bad.write_bytes("亜".encode("euc_jp"))
    with pytest.raises(CharsetError, match="not UTF-8"):
        get_charset(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n", encoding="utf-8")
    with pytest.raises(CharsetError, match="no characters"):
        get_charset(empty)
