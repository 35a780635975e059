"""Class sets and JIS <-> Unicode, through Python's codecs only.

JIS X 0208 codes (ETL8/ETL9) are decoded as EUC-JP (code + 0x8080), JIS X 0201
bytes (ETL1/3-7) as Shift_JIS then NFKC (half-width katakana -> full width).
No code is ever mapped by arithmetic on code points: a linear formula that works
for hiragana turns 0x3021 into 㱁 instead of 亜.

A class set is a sorted list of one-character strings (sorted by code point,
the order a packed dataset stores its classes in).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

from kanjirec.errors import KanjirecError

_DATA = Path(__file__).parent / "charsets"

# JIS X 0201 has no ヰ/ヱ: ETL1/4/5 write them with the codes of ｨ/ｪ (small i / small e), which
# never occur as themselves in those kana sets (public unpackers; not seen on an AIST page).
_JIS0201_WI_WE = {0xA8: "ヰ", 0xAA: "ヱ"}
# NFKC turns the half-width voicing marks into combining U+3099/U+309A; as classes they are the
# spacing marks the writers drew.
_JIS0201_VOICING = {0xDE: "\u309b", 0xDF: "\u309c"}

_SMALL_HIRAGANA = "ぁぃぅぇぉっゃゅょゎ"

CHARSET_NAMES: tuple[str, ...] = ("etl9g", "etl8g", "joyo", "kana", "jis1", "jis12", "kanjivg")


class CharsetError(KanjirecError):
    """An unknown class-set name, an unreadable charset file or an unmapped code."""


# ---------------------------------------------------------------- JIS X 0208


@cache
def jis0208_table() -> np.ndarray:
    """The 94 x 94 JIS X 0208 table as a ``<U1`` array, '' where a code is unassigned.

    Index ``[hi - 0x21, lo - 0x21]``; built once from the EUC-JP codec.
    """
    table = np.full((94, 94), "", dtype="<U1")
    for hi in range(94):
        for lo in range(94):
            char = bytes([hi + 0xA1, lo + 0xA1]).decode("euc_jp", errors="replace")
            # An unassigned cell decodes to U+FFFD and stays '' (callers report it).
            if len(char) == 1 and char != "\ufffd":
                table[hi, lo] = char
    table.flags.writeable = False
    return table


def jis0208_to_char(code: int) -> str:
    """The character of a JIS X 0208 code such as 0x3021 (亜); raises CharsetError if unassigned."""
    hi, lo = code >> 8, code & 0xFF
    if not (0x21 <= hi <= 0x7E and 0x21 <= lo <= 0x7E):
        raise CharsetError(f"JIS X 0208 code 0x{code:04X} is outside the 94x94 table")
    char = str(jis0208_table()[hi - 0x21, lo - 0x21])
    if not char:
        raise CharsetError(f"JIS X 0208 code 0x{code:04X} is unassigned")
    return char


# ---------------------------------------------------------------- JIS X 0201


def _katakana_to_hiragana(char: str) -> str:
    if "\u30a1" <= char <= "\u30f6":
        return chr(ord(char) - 0x60)
    return char


@cache
def jis0201_table(hiragana: bool = False) -> tuple[str, ...]:
    """256 entries, one per JIS X 0201 byte: the character, or '' for a byte with none."""
    out = []
    for byte in range(256):
        if 0x20 <= byte <= 0x7E or 0xA1 <= byte <= 0xDF:
            if byte in _JIS0201_VOICING:
                char = _JIS0201_VOICING[byte]
            elif byte in _JIS0201_WI_WE:
                char = _JIS0201_WI_WE[byte]
            else:
                char = unicodedata.normalize("NFKC", bytes([byte]).decode("shift_jis"))
            out.append(_katakana_to_hiragana(char) if hiragana else char)
        else:
            out.append("")
    return tuple(out)


def jis0201_to_char(byte: int, hiragana: bool = False) -> str:
    """The character of a JIS X 0201 byte: 0xB1 -> ア (あ with ``hiragana=True``), 0x41 -> A.

    Half-width katakana come back full width; 0xDE/0xDF give the spacing ゛/゜; 0xA8/0xAA stand
    for ヰ/ヱ (see module notes). Raises CharsetError for a byte with no character.
    """
    if not 0 <= byte <= 255 or not jis0201_table(hiragana)[byte]:
        raise CharsetError(f"JIS X 0201 code 0x{byte:02X} has no character")
    return jis0201_table(hiragana)[byte]


# ---------------------------------------------------------------- named sets


def _jis_range(first: int, last: int) -> list[str]:
    """Assigned JIS X 0208 characters with codes first..last (row-major)."""
    flat = jis0208_table().reshape(-1)
    a = ((first >> 8) - 0x21) * 94 + (first & 0xFF) - 0x21
    b = ((last >> 8) - 0x21) * 94 + (last & 0xFF) - 0x21
    return [str(c) for c in flat[a : b + 1] if c]


def _hiragana_row() -> list[str]:
    return _jis_range(0x2421, 0x247E)


def _katakana_row() -> list[str]:
    return _jis_range(0x2521, 0x257E)


def jis1_kanji() -> list[str]:
    """The 2,965 JIS level-1 kanji (ETL9G's kanji) in JIS order, not sorted by code point: the order
    in which the zero-shot protocol takes the first m as seen and the last 1,000 as unseen."""
    return _jis_range(0x3021, 0x4F53)


def _etl9g() -> list[str]:
    # ETL9: the 2,965 JIS level-1 kanji and 71 hiragana (row 4 without the small kana and ゐゑ).
    hira = [c for c in _hiragana_row() if c not in _SMALL_HIRAGANA and c not in "ゐゑ"]
    return jis1_kanji() + hira


def _etl8g() -> list[str]:
    raise CharsetError(
        "charset 'etl8g' (881 kyoiku kanji + 75 hiragana of ETL8) is not shipped: no authoritative "
        "machine-readable list of its 956 classes was found. Prepare ETL8G with `kanjirec data "
        "prepare --sets ETL8G` (its classes come from the files' own JIS codes) or pass a UTF-8 file "
        "of the characters instead."
    )


def _joyo() -> list[str]:
    path = _DATA / "joyo.txt"
    chars = _read_chars(path)
    if len(chars) != 2136:
        raise CharsetError(f"{path}: expected the 2,136 joyo kanji, found {len(chars)} characters")
    return chars


def _kanjivg() -> list[str]:
    from kanjirec.data.kanjivg import load_kanjivg

    return [c for c in load_kanjivg() if len(c) == 1]


_BUILDERS = {
    "etl9g": _etl9g,
    "etl8g": _etl8g,
    "joyo": _joyo,
    # Every hiragana and katakana of JIS X 0208 rows 4 and 5, small kana included (83 + 86).
    "kana": lambda: _hiragana_row() + _katakana_row(),
    # JIS X 0208 kanji: level 1 (0x3021-0x4F53) and levels 1+2 (to 0x7426).
    "jis1": jis1_kanji,
    "jis12": lambda: _jis_range(0x3021, 0x7426),
    "kanjivg": _kanjivg,
}


def _read_chars(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CharsetError(f"{path}: not UTF-8 ({e})") from e
    except OSError as e:
        raise CharsetError(f"{path}: cannot read charset file ({e})") from e
    chars = [c for c in text if not c.isspace() and c != "\ufeff"]
    if not chars:
        raise CharsetError(f"{path}: charset file holds no characters")
    return chars


def get_charset(name_or_path: str | Path) -> list[str]:
    """The characters of a named set (see CHARSET_NAMES) or of a UTF-8 file, sorted by code point.

    A charset file is UTF-8 text; every character that is not whitespace is one class (one per
    line or run together; repeats count once).
    """
    key = str(name_or_path).lower()
    if "+" in key and not Path(name_or_path).is_file():
        # A union of named sets, e.g. "kana+jis1" (the shipped model's 3,134 classes).
        return sorted({c for part in key.split("+") for c in get_charset(part)}, key=ord)
    if key in _BUILDERS:
        chars = _BUILDERS[key]()
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise CharsetError(
                f"unknown charset {str(name_or_path)!r}: use one of {', '.join(CHARSET_NAMES)} "
                "or the path of a UTF-8 file of characters"
            )
        chars = _read_chars(path)
    return sorted(set(chars), key=ord)


def spread_subset(chars: Sequence[str], count: int) -> list[str]:
    """``count`` characters spread evenly over ``chars``, so a subset of ETL9G mixes kana and kanji."""
    if count <= 0:
        raise CharsetError(f"a subset needs a positive size, got {count}")
    if count >= len(chars):
        return list(chars)
    step = len(chars) / count
    return [chars[int(i * step)] for i in range(count)]
