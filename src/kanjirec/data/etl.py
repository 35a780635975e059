"""Every ETL record layout as a table of fields, and one vectorised decoder for all of them.

The layouts follow AIST's published record formats (see
``shared/reference/ETL_FORMATS.md``): M-type (ETL1, ETL6, ETL7), K-type (ETL2),
C-type (ETL3-5), B-type (ETL8B2, ETL9B) and G-type (ETL8G, ETL9G). A layout is
data: fields are (name, bit offset, bit width) in a fixed-length record, with
bits counted MSB first, so the 6-bit units of ETL2-ETL5 and the bytes of the
other formats go through the same extractor. `decode_records` reads any layout
over a whole block of records with numpy; labels are decoded through lookup
tables built once from Python's codecs (`kanjirec.charset`).

Checks: each field's table entry carries what the format allows (``Valid``:
ranges, constants, printable ASCII readings, dates), a set adds its files' own
ranges (ETL2 serials, ETL8B2 codes, ETL9B sheets), and the label and writer key
add theirs; all run vectorised over a block. A record failing one is a bad
record named by file, record and field; a file with more than BAD_RECORD_LIMIT
of them is refused whole, even when bad records are skipped.

Writer identity: every sample gets a writer key ``"<GROUP>/<id>"``. Sets made
from the same sheets share a group (ETL8B/ETL8G -> ETL8, ETL9B/ETL9G -> ETL9,
ETL7L/ETL7S -> ETL7) and, for ETL8 and ETL9, the same data-set numbers (see
SETS), so that a combined dataset never puts one writer's samples on both sides
of a writer-disjoint split.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path

import numpy as np

from kanjirec.charset import jis0201_table, jis0208_table
from kanjirec.errors import EtlFormatError

__all__ = [
    "BAD_RECORD_LIMIT",
    "LAYOUTS",
    "SETS",
    "BadRecord",
    "EtlFormatError",
    "EtlSamples",
    "Field",
    "ImageField",
    "Layout",
    "Valid",
    "decode_records",
    "encode_records",
    "find_etl_files",
    "iter_etl_file",
    "load_co59_table",
    "prepare_etl",
    "read_etl_file",
]

# ---------------------------------------------------------------- layouts as data


@dataclass(frozen=True)
class Valid:
    """The values a field may take (every unit, for text): sorted, disjoint, inclusive ranges."""

    label: str  # for messages: "0..3", "printable ASCII", ...
    ranges: tuple[tuple[int, int], ...]

    @cached_property
    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = (np.array(b, np.int64) for b in zip(*self.ranges, strict=True))
        if np.any(lo > hi) or np.any(lo[1:] <= hi[:-1]):
            raise AssertionError(f"ranges of {self.label!r} are not sorted and disjoint")
        return lo, hi

    def inside(self, values: np.ndarray) -> np.ndarray:
        """Elementwise: is each value in one of the ranges."""
        lo, hi = self._bounds
        v = values.astype(np.int64)
        k = np.searchsorted(lo, v, side="right") - 1  # the range that starts at or before v
        return (k >= 0) & (v <= hi[np.maximum(k, 0)])

    def bad(self, values: np.ndarray) -> np.ndarray:
        """(n,) or (n, count) values -> (n,) mask of records with a value outside every range."""
        ok = self.inside(values)
        return ~ok if ok.ndim == 1 else ~ok.all(axis=1)


def _between(lo: int, hi: int) -> Valid:
    return Valid(f"{lo}" if lo == hi else f"{lo}..{hi}", ((lo, hi),))


_ANY_57_BITS = (1 << 57) - 1
_POSITIVE = Valid(">= 1", ((1, _ANY_57_BITS),))
_ASCII = Valid("printable ASCII", ((0x20, 0x7E),))
_SEX = Valid("0, 1, 2 or 9 (JIS X 0303: unknown, male, female, not applicable)", ((0, 2), (9, 9)))
# Dates as the formats store them: (19)YYMM in M and G, (19)YYMMDD in C; 0 is read as "not recorded".
_YYMM = Valid("a YYMM date (or 0)", ((0, 0), *((y * 100 + 1, y * 100 + 12) for y in range(100))))
_YYMMDD = Valid(
    "a YYMMDD date (or 0)",
    (
        (0, 0),
        *((y * 10000 + m * 100 + 1, y * 10000 + m * 100 + 31) for y in range(100) for m in range(1, 13)),
    ),
)


@dataclass(frozen=True)
class Field:
    """A big-endian unsigned integer of ``bits`` bits at bit ``bit`` of the record.

    ``count > 1`` makes it ``count`` consecutive units of ``bits`` bits each: text, ASCII bytes
    (``text="ascii"``) or T56 (``text="t56"``). ``valid`` is what the published format allows;
    a record with any field outside it is a bad record.
    """

    name: str
    bit: int
    bits: int
    count: int = 1
    valid: Valid | None = None
    text: str = ""


@dataclass(frozen=True)
class ImageField:
    """A row-major image, top row first, ``depth`` bits per pixel MSB first, ink high."""

    byte: int
    width: int
    height: int
    depth: int

    @property
    def nbytes(self) -> int:
        return self.width * self.height * self.depth // 8

    @property
    def max_level(self) -> int:
        return (1 << self.depth) - 1


@dataclass(frozen=True)
class Layout:
    name: str
    record_size: int  # bytes
    fields: tuple[Field, ...]
    image: ImageField
    codec: str  # "jis0201" (field jis0201), "jis0208" (field jis0208) or "co59" (fields co59_c1/c2)
    dummy_first: bool = False  # B-type: record 0 of every file is a dummy

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"layout {self.name} has no field {name!r}")


def _byte(name: str, offset: int, size: int = 1, valid: Valid | None = None) -> Field:
    return Field(name, offset * 8, size * 8, valid=valid)


def _text(name: str, offset: int, size: int) -> Field:
    """``size`` bytes of ASCII text (a reading), decoded as a (n, size) uint8 array."""
    return Field(name, offset * 8, 8, count=size, valid=_ASCII, text="ascii")


def _unit(name: str, first: int, units: int = 1, valid: Valid | None = None) -> Field:
    """An integer made of 6-bit units ``first``..``first+units-1`` (1-based, as AIST numbers them)."""
    return Field(name, (first - 1) * 6, units * 6, valid=valid)


def _t56(name: str, first: int, chars: int, valid: Valid | None = None) -> Field:
    return Field(name, (first - 1) * 6, 6, count=chars, valid=valid, text="t56")


# T56 (6-bit text in K/C headers), index -> character; '\0' marks the unused positions.
_T56 = "0123456789[#@:>?\0ABCDEFGHI&.](<\0\0JKLMNOPQR-$*);'|/STUVWXYZ\0,%=\"!"
_T56_INDEX = {c: i for i, c in enumerate(_T56) if c != "\0"}
_T56_INDEX[" "] = 16  # the blank the headers are padded with
assert len(_T56) == 64
_T56_BLANK = Valid("blank", ((16, 16), (31, 32), (58, 58)))  # all four unused positions read as a blank

# Constraints (``valid``) are those AIST's format pages state; a field without one is either free
# (age, industry codes, the EBCDIC byte we ignore) or checked with the label or writer key below.
_M = Layout(
    "M",
    2052,
    (
        _byte("data_number", 0, 2, _POSITIVE),
        _text("reading", 2, 2),
        _byte("sheet", 4, 2),  # the form page allows 0, the ETL1 page says >= 1
        _byte("jis0201", 6),
        _byte("ebcdic", 7),
        _byte("quality", 8, 1, _between(0, 3)),
        _byte("group_quality", 9, 1, _between(0, 2)),
        _byte("sex", 10, 1, _SEX),
        _byte("age", 11),
        _byte("serial", 12, 4, _POSITIVE),
        _byte("industry", 16, 2),
        _byte("occupation", 18, 2),
        _byte("gathered", 20, 2, _YYMM),
        _byte("scanned", 22, 2, _YYMM),
        _byte("pos_y", 24, 1, _between(1, 255)),
        _byte("pos_x", 25, 1, _between(1, 255)),
        _byte("min_level", 26),  # min <= max is checked with the labels
        _byte("max_level", 27),
    ),
    ImageField(32, 64, 63, 4),
    "jis0201",
)

_K = Layout(
    "K",
    2745,
    (
        _unit("serial", 1, 6, _POSITIVE),  # and the file's serial range, see ETL2 in SETS
        _t56("source", 7, 1, Valid("A, B, C or D", ((_T56_INDEX["A"], _T56_INDEX["D"]),))),
        _t56("spaces", 8, 5, _T56_BLANK),
        _t56("class_word", 13, 6),
        _t56("typeface", 19, 6),
        _unit("zeros", 25, 4, _between(0, 0)),
        _unit("co59_c1", 29),
        _unit("co59_c2", 30),
    ),
    ImageField(45, 60, 60, 6),
    "co59",
)

_C_INTS = (
    ("quality", _between(0, 3)),
    ("group_quality", _between(0, 2)),
    ("pos_y", None),
    ("pos_x", None),
    ("sex", _SEX),
    ("age", None),
    ("industry", None),
    ("occupation", None),
    ("gathered", _YYMMDD),
    ("scanned", _YYMMDD),
    # The image's own statistics, stated in every record: 72 x 76 sampling points, 16 levels.
    ("x_points", _between(72, 72)),
    ("y_points", _between(76, 76)),
    ("levels", _between(16, 16)),
    ("magnification", None),  # 133 in the ETL4 sample; not stated for ETL3/ETL5
    ("old_serial", None),
)
_C = Layout(
    "C",
    2952,
    (
        _unit("serial", 1, 6, _POSITIVE),
        _unit("sheet", 7, 6),
        Field("jis0201", 72, 8),  # left 8 bits of units 13-18
        Field("ebcdic", 108, 8),  # left 8 bits of units 19-24
        _t56("class_code", 25, 4),
        _t56("spaces", 29, 2, _T56_BLANK),
        *(_unit(name, 31 + 6 * k, 6, valid) for k, (name, valid) in enumerate(_C_INTS)),
    ),
    ImageField(216, 72, 76, 4),
    "jis0201",
)


def _b_layout(name: str, record_size: int) -> Layout:
    return Layout(
        name,
        record_size,
        (_byte("sheet", 0, 2, _POSITIVE), _byte("jis0208", 2, 2), _text("reading", 4, 4)),
        ImageField(8, 64, 63, 1),
        "jis0208",
        dummy_first=True,
    )


def _g_layout(name: str, image_byte: int) -> Layout:
    return Layout(
        name,
        8199,
        (
            _byte("sheet", 0, 2, _POSITIVE),
            _byte("jis0208", 2, 2),
            _text("reading", 4, 8),
            _byte("serial", 12, 4, _POSITIVE),
            _byte("quality", 16),
            _byte("group_quality", 17),
            _byte("sex", 18, 1, _SEX),
            _byte("age", 19),
            _byte("industry", 20, 2),
            _byte("occupation", 22, 2),
            _byte("gathered", 24, 2, _YYMM),
            _byte("scanned", 26, 2, _YYMM),
            _byte("pos_x", 28),
            _byte("pos_y", 29),
        ),
        # 30 undefined bytes before the image in ETL8G, 34 in ETL9G.
        ImageField(image_byte, 128, 127, 4),
        "jis0208",
    )


LAYOUTS: dict[str, Layout] = {
    "M": _M,
    "K": _K,
    "C": _C,
    "B8": _b_layout("B8", 512),
    "B9": _b_layout("B9", 576),
    "G8": _g_layout("G8", 60),
    "G9": _g_layout("G9", 64),
}


def _check_layout(layout: Layout) -> None:
    limit = layout.record_size * 8
    for f in layout.fields:
        if f.bits > 57 or f.bit + f.bits * f.count > limit:
            raise AssertionError(f"layout {layout.name}: field {f.name} does not fit")
    im = layout.image
    if (im.width * im.depth) % 8 or im.byte + im.nbytes > layout.record_size:
        raise AssertionError(f"layout {layout.name}: image rows are not byte-aligned or overflow")


for _layout in LAYOUTS.values():
    _check_layout(_layout)


# ---------------------------------------------------------------- sets and their files


@dataclass(frozen=True)
class EtlSet:
    name: str
    layout: Layout
    pattern: str  # the real file names, matched in full and case-sensitively
    examples: str  # for error messages
    writer_group: str
    sheets_per_writer: int = 1  # sheets grouped into one writer key (a data set), from the sheet field
    data_set_records: int = 0  # > 0: the writer key is the data set, from the record's position
    data_sets_per_file: int = 0  # (with data_set_records) file n holds data sets k(n-1)+1 .. kn
    files: int = 0  # > 0: the number ending a file's name must lie in 1..files
    hiragana: str = "never"  # "never", "always" (ETL7) or "flag" (ETL4: class code H)
    kana_only: bool = False
    model_tail: tuple[tuple[str, int], ...] = ()  # (file name, trailing model/reference records)
    file_valid: tuple[tuple[str, str, Valid], ...] = ()  # (file name, field, valid) for writer samples


# ETL9: 200 data sets (writers) of 3,036 records. AIST's ETL9 page: ETL9G file n holds data sets
# 4(n-1)+1 .. 4n in order (ETL9G_11 holds 41-44), and ETL9G's sheet field restarts (ETL9G_01 record 1
# and ETL9G_11 record 101 both have sheet 1), so an ETL9G key comes from the record's position.
# ETL9B's sheet field is global (ETL9B_2 record 100 has sheet 801): 20 sheets per data set, 800 per
# file, so ETL9B_n holds sheets 800(n-1)+1 .. 800n = data sets 40(n-1)+1 .. 40n, and data set 41 is
# "ETL9/ds041" in both ETL9B_2 and ETL9G_11.
_ETL9B_SHEETS = tuple((f"ETL9B_{n}", "sheet", _between(800 * (n - 1) + 1, 800 * n)) for n in range(1, 6))
# ETL8: 956 classes x 160 writers. ETL8G_01 .. _32 hold 4,780 = 5 x 956 records (public unpackers;
# unverified), read as 5 data sets in order like ETL9G: the same G form, whose sheet field ETL9G showed
# to be no writer key, so ETL8G is keyed by position too; ETL8G_33 (956 records, probably the model
# sheet: unverified) gets its own key, ds161, so it splits no writer either way. ETL8B2 files are
# ordered by class, not writer ([F8B]: C1, C2, C3 hold JIS ranges), so its sheet field is its only
# writer key, at 10 sheets per data set (public unpackers quoting the spec; unverified). ETL8B and
# ETL8G keys agree if ETL8B's sheets count the data sets in ETL8G's file order: the one link of the
# ETL8 keys not confirmed on an AIST page (ETL8's sample rows were cut off in the stored copies).
_ETL8B_CODES = tuple(
    (f"ETL8B2C{k}", "jis0208", Valid(f"in {lo:#06x}..{hi:#06x}, the codes of ETL8B2C{k}", ((lo, hi),)))
    for k, (lo, hi) in enumerate(((0x2122, 0x384D), (0x384E, 0x4250), (0x4253, 0x4F43)), start=1)
)
# ETL2's serial data numbers per file (AIST's ETL2 page).
_ETL2_SERIALS = tuple(
    (f"ETL2_{k}", "serial", Valid(f"in {label}, the serial numbers of ETL2_{k}", ranges))
    for k, ranges in enumerate(
        (
            ((1, 11520),),
            ((11521, 23040),),
            ((28801, 40320),),
            ((40321, 51840),),
            ((23041, 28800), (51841, 57600)),
        ),
        start=1,
    )
    for label in [" or ".join(f"{a}..{b}" for a, b in ranges)]
)

SETS: dict[str, EtlSet] = {
    s.name: s
    for s in (
        EtlSet("ETL1", _M, r"ETL1C_\d\d", "ETL1C_01 ... ETL1C_13", "ETL1", files=13),
        EtlSet("ETL2", _K, r"ETL2_\d", "ETL2_1 ... ETL2_5", "ETL2", files=5, file_valid=_ETL2_SERIALS),
        EtlSet("ETL3", _C, r"ETL3C_\d", "ETL3C_1, ETL3C_2", "ETL3"),
        EtlSet("ETL4", _C, r"ETL4C", "ETL4C", "ETL4", hiragana="flag"),
        EtlSet("ETL5", _C, r"ETL5C", "ETL5C", "ETL5"),
        EtlSet("ETL6", _M, r"ETL6C_\d\d", "ETL6C_01 ... ETL6C_12", "ETL6"),
        EtlSet("ETL7L", _M, r"ETL7LC_\d", "ETL7LC_1, ETL7LC_2", "ETL7", hiragana="always", kana_only=True),
        EtlSet("ETL7S", _M, r"ETL7SC_\d", "ETL7SC_1, ETL7SC_2", "ETL7", hiragana="always", kana_only=True),
        EtlSet(
            "ETL8B",
            LAYOUTS["B8"],
            r"ETL8B2C\d",
            "ETL8B2C1 ... ETL8B2C3",
            "ETL8",
            sheets_per_writer=10,
            files=3,
            model_tail=(("ETL8B2C3", 956),),
            file_valid=_ETL8B_CODES,
        ),
        EtlSet(
            "ETL8G",
            LAYOUTS["G8"],
            r"ETL8G_\d\d",
            "ETL8G_01 ... ETL8G_33",
            "ETL8",
            data_set_records=956,
            data_sets_per_file=5,
            files=33,
        ),
        EtlSet(
            "ETL9B",
            LAYOUTS["B9"],
            r"ETL9B_\d",
            "ETL9B_1 ... ETL9B_5",
            "ETL9",
            sheets_per_writer=20,
            files=5,
            model_tail=(("ETL9B_5", 3036),),
            file_valid=_ETL9B_SHEETS,
        ),
        EtlSet(
            "ETL9G",
            LAYOUTS["G9"],
            r"ETL9G_\d\d",
            "ETL9G_01 ... ETL9G_50",
            "ETL9",
            data_set_records=3036,
            data_sets_per_file=4,
            files=50,
        ),
    )
}
_ALIASES = {"ETL7": ("ETL7L", "ETL7S"), "ETL8B2": ("ETL8B",)}


def _resolve_sets(sets: list[str] | tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Requested name -> the sets it stands for (ETL7 = ETL7L + ETL7S)."""
    out: dict[str, tuple[str, ...]] = {}
    for name in sets:
        key = name.upper()
        names = _ALIASES.get(key, (key,))
        for n in names:
            if n not in SETS:
                raise EtlFormatError(
                    f"unknown ETL set {name!r}: use {', '.join(SETS)} (ETL7 = ETL7L + ETL7S, ETL8B2 = ETL8B)"
                )
        out[key] = names
    return out


def set_of_file(path: str | Path) -> str:
    """The ETL set a file belongs to, from its real name (e.g. ETL9G_07 -> ETL9G)."""
    name = Path(path).name
    for s in SETS.values():
        if re.fullmatch(s.pattern, name):
            return s.name
    raise EtlFormatError(f"{path}: not an ETL data file name (expected e.g. ETL9G_01, ETL8B2C1, ETL1C_01)")


def find_etl_files(root: str | Path, sets: list[str] | tuple[str, ...]) -> dict[str, list[Path]]:
    """The data files of each requested set under ``root`` (a folder per set, all in one, or nested).

    Files are recognised by their real names only (ETLnINFO and anything else is ignored).
    """
    root = Path(root)
    if not root.is_dir():
        raise EtlFormatError(f"{root}: ETL folder not found")
    requested = _resolve_sets(sets)
    names = list(dict.fromkeys(n for group in requested.values() for n in group))
    found: dict[str, dict[str, Path]] = {n: {} for n in names}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fname in filenames:
            for n in names:
                if re.fullmatch(SETS[n].pattern, fname):
                    path = Path(dirpath) / fname
                    if fname in found[n]:
                        raise EtlFormatError(f"{fname} found twice: {found[n][fname]} and {path}; keep one")
                    found[n][fname] = path
    # A requested set needs files; of an alias (ETL7) one member is enough.
    missing = [r for r, group in requested.items() if not any(found[n] for n in group)]
    if missing:
        wanted = "; ".join(
            f"{n}: {SETS[n].examples} (pattern {SETS[n].pattern})" for r in missing for n in requested[r]
        )
        raise EtlFormatError(f"no files found under {root} for {', '.join(missing)}; looked for {wanted}")
    return {n: [found[n][f] for f in sorted(found[n])] for n in names if found[n]}


# ---------------------------------------------------------------- the decoder


def _bitfield(recs: np.ndarray, bit: int, bits: int) -> np.ndarray:
    """Big-endian unsigned integer of ``bits`` bits at bit ``bit`` of every row, as uint64."""
    first, last = bit // 8, (bit + bits - 1) // 8
    value = np.zeros(len(recs), np.uint64)
    for k in range(first, last + 1):  # over the (at most 8) bytes of the field, not over records
        value = (value << np.uint64(8)) | recs[:, k].astype(np.uint64)
    shift = (last + 1) * 8 - (bit + bits)
    return (value >> np.uint64(shift)) & np.uint64((1 << bits) - 1)


def _nibbles(packed: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(n, k) bytes -> (n, 2k) 4-bit pixels, high nibble first (written into ``out`` if given)."""
    # As little-endian uint16: b * 0x1001 = b | (b & 15) << 12 (mod 2**16); >> 4 leaves byte 0 =
    # b >> 4 and byte 1 = b & 15, i.e. the two pixels in order, in two contiguous passes.
    if out is None:
        out = np.empty((len(packed), 2 * packed.shape[1]), np.uint8)
    wide = out.view("<u2")
    np.multiply(packed, np.uint16(0x1001), out=wide, dtype="<u2")
    np.right_shift(wide, 4, out=wide)
    return out


def _units6(packed: np.ndarray) -> np.ndarray:
    """(n, 3k) bytes -> (n, 4k) 6-bit values, MSB first."""
    t = packed.reshape(len(packed), -1, 3).astype(np.uint32)
    v = (t[..., 0] << 16) | (t[..., 1] << 8) | t[..., 2]
    out = np.stack([v >> 18, (v >> 12) & 63, (v >> 6) & 63, v & 63], axis=-1)
    return out.reshape(len(packed), -1).astype(np.uint8)


def decode_images(recs: np.ndarray, image: ImageField) -> np.ndarray:
    """(n, record_size) uint8 -> (n, height, width) uint8 levels 0..max_level, ink high.

    Blocks are split across a persistent pool of threads writing into one output: numpy
    releases the GIL in these passes, and one core cannot unpack as fast as the bytes arrive.
    """
    n = len(recs)
    out = np.empty((n, image.height, image.width), np.uint8)
    workers = max(1, min(_DECODE_THREADS, n // _MIN_ROWS_PER_THREAD))
    if workers == 1:
        _decode_image_rows(recs, image, out)
        return out
    bounds = np.linspace(0, n, workers + 1).astype(int)
    spans = list(zip(bounds[:-1], bounds[1:], strict=True))
    list(_pool().map(lambda ab: _decode_image_rows(recs[ab[0] : ab[1]], image, out[ab[0] : ab[1]]), spans))
    return out


_DECODE_THREADS = os.cpu_count() or 1
_MIN_ROWS_PER_THREAD = 128


@cache
def _pool() -> ThreadPoolExecutor:
    # One pool for the process: starting threads for every block cost more than decoding it.
    return ThreadPoolExecutor(_DECODE_THREADS, thread_name_prefix="kanjirec-etl")


if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_pool.cache_clear)


def _decode_image_rows(recs: np.ndarray, image: ImageField, out: np.ndarray) -> None:
    raw = recs[:, image.byte : image.byte + image.nbytes]
    flat = out.reshape(len(recs), -1)
    if image.depth == 4:
        _nibbles(raw, flat)
    elif image.depth == 1:
        flat[:] = np.unpackbits(raw, axis=1)  # MSB = leftmost pixel
    elif image.depth == 6:
        flat[:] = _units6(raw)
    else:
        raise AssertionError(f"unsupported pixel depth {image.depth}")


def decode_records(recs: np.ndarray, layout: Layout, images: bool = True) -> dict[str, np.ndarray]:
    """Every field of the layout (plus ``"image"``) for a block of raw records, vectorised.

    Integer fields come back as uint64 arrays (n,), repeated units (T56 text) as uint8 (n, count).
    """
    if recs.ndim != 2 or recs.shape[1] != layout.record_size:
        raise ValueError(f"expected (n, {layout.record_size}) records, got {recs.shape}")
    out: dict[str, np.ndarray] = {}
    for f in layout.fields:
        if f.count == 1:
            out[f.name] = _bitfield(recs, f.bit, f.bits)
        else:
            out[f.name] = np.stack(
                [_bitfield(recs, f.bit + k * f.bits, f.bits) for k in range(f.count)], axis=1
            ).astype(np.uint8)
    if images:
        out["image"] = decode_images(recs, layout.image)
    return out


def encode_records(layout: Layout, values: dict[str, np.ndarray], images: np.ndarray) -> np.ndarray:
    """The inverse of `decode_records`: (n, record_size) uint8 records from field values and images.

    Fields not given are zero. Used to generate spec-conformant files for the benchmark.
    """
    n = len(images)
    im = layout.image
    if images.shape != (n, im.height, im.width):
        raise ValueError(f"images must be (n, {im.height}, {im.width}), got {images.shape}")
    recs = np.zeros((n, layout.record_size), np.uint8)
    for f in layout.fields:
        if f.name not in values:
            continue
        vals = np.asarray(values[f.name], np.uint64).reshape(n, f.count)
        for k in range(f.count):
            _put_bitfield(recs, f.bit + k * f.bits, f.bits, vals[:, k])
    pix = images.reshape(n, -1).astype(np.uint8)
    if im.depth == 4:
        packed = (pix[:, 0::2] << 4) | pix[:, 1::2]
    elif im.depth == 1:
        packed = np.packbits(pix, axis=1)
    else:
        u = pix.reshape(n, -1, 4).astype(np.uint32)
        v = (u[..., 0] << 18) | (u[..., 1] << 12) | (u[..., 2] << 6) | u[..., 3]
        packed = np.stack([v >> 16, (v >> 8) & 255, v & 255], axis=-1).reshape(n, -1).astype(np.uint8)
    recs[:, im.byte : im.byte + im.nbytes] = packed
    return recs


def _put_bitfield(recs: np.ndarray, bit: int, bits: int, values: np.ndarray) -> None:
    if np.any(values >> np.uint64(bits)):
        raise ValueError(f"a value does not fit in {bits} bits")
    first, last = bit // 8, (bit + bits - 1) // 8
    shifted = values << np.uint64((last + 1) * 8 - (bit + bits))
    for k in range(last, first - 1, -1):
        recs[:, k] |= (shifted & np.uint64(255)).astype(np.uint8)
        shifted = shifted >> np.uint64(8)


# ---------------------------------------------------------------- labels

_K_CLASS_WORDS = ("KANJI ", "EIJI  ", "HRKANA", "KTKANA", "KIGO  ", "SUUJI ")
_C_CLASS_FLAGS = "NASKH"


def _t56_codes(text: str) -> np.ndarray:
    return np.array([_T56_INDEX[c] for c in text], np.uint8)


@cache
def _jis0201_lut(hiragana: bool) -> np.ndarray:
    return np.array(jis0201_table(hiragana), dtype=object)


@cache
def _jis0208_lut() -> np.ndarray:
    return jis0208_table().reshape(-1).astype(object)


def load_co59_table(path: str | Path, encoding: str = "euc_jp") -> dict[tuple[int, int], str]:
    """Read a CO-59 table (ETL2's code) as AIST ships it in unpack.zip: ``euc_co59.dat``.

    Expected format: text in EUC-JP (``encoding``) of whitespace-separated tokens
    ``<char>:<c1>,<c2>``, with c1 and c2 the two 6-bit CO-59 units in decimal (0-63).
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode(encoding)
    except OSError as e:
        raise EtlFormatError(f"{path}: cannot read the CO-59 table ({e})") from e
    except UnicodeDecodeError as e:
        raise EtlFormatError(f"{path}: CO-59 table is not {encoding} text ({e})") from e
    table: dict[tuple[int, int], str] = {}
    for k, token in enumerate(text.split()):
        m = re.fullmatch(r"(.):(\d+),(\d+)", token)
        if not m or int(m[2]) > 63 or int(m[3]) > 63:
            raise EtlFormatError(
                f"{path}: token {k + 1} {token!r} is not <char>:<c1>,<c2> with c1, c2 in 0..63"
            )
        key = (int(m[2]), int(m[3]))
        if table.get(key, m[1]) != m[1]:
            raise EtlFormatError(f"{path}: CO-59 code {key} is given twice ({table[key]!r} and {m[1]!r})")
        table[key] = m[1]
    if not table:
        raise EtlFormatError(f"{path}: CO-59 table holds no entries")
    return table


_CO59_HELP = (
    "ETL2 labels are CO-59 codes, for which Python has no codec. AIST ships the table as euc_co59.dat "
    "inside unpack.zip (the sample unpacking code on http://etlcdb.db.aist.go.jp/file-formats-and-"
    "sample-unpacking-code). Put euc_co59.dat in the ETL folder or pass its path (co59_table); it is "
    "EUC-JP text of whitespace-separated tokens <char>:<c1>,<c2> (c1, c2 decimal 6-bit units)."
)


@dataclass
class BadRecord:
    path: Path
    record: int  # 0-based record number in the file
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: record {self.record}: {self.reason}"


@dataclass
class EtlSamples:
    """Decoded samples of one ETL file (or one block of it)."""

    set_name: str
    path: Path
    images: np.ndarray  # (n, h, w) uint8 levels 0..max_level, ink high
    chars: np.ndarray  # (n,) object array of one-character str: the class
    codes: np.ndarray  # (n,) int32: the code the file stored (JIS X 0208/0201, CO-59 c1*64+c2)
    writers: np.ndarray  # (n,) object array of writer keys "<GROUP>/<id>"
    records: np.ndarray  # (n,) int64 record numbers in the file (0-based, dummy = 0)
    max_level: int
    bad: list[BadRecord] = field(default_factory=list)
    model: np.ndarray | None = None  # (n,) bool: model/reference images (kept on request)

    def __len__(self) -> int:
        return len(self.chars)


# A check is (bad mask over the block, message for record i); the first failing one is reported.
Check = tuple[np.ndarray, Callable[[int], str]]

# A file with more bad records than this share is not a damaged ETL file but a different or corrupt
# one: AIST's files decode whole (the known gaps, two missing ETL1 frames, are absent records, not
# bad ones), while a record of random bytes passes every check below with a probability well under
# 1e-3. 5% leaves room for a few damaged sectors and none for a file of the wrong kind.
BAD_RECORD_LIMIT = 0.05


def _labels(
    s: EtlSet, f: dict[str, np.ndarray], co59: dict[tuple[int, int], str] | None
) -> tuple[np.ndarray, np.ndarray, list[Check]]:
    """(chars, codes, checks): the class of every record and the checks on the code behind it."""
    n = len(next(iter(f.values())))
    checks: list[Check] = []
    layout = s.layout

    def with_code(mask: np.ndarray, template: str) -> Check:
        return mask, lambda i: template.format(code=int(code[i]))

    if layout.codec == "jis0208":
        code = f["jis0208"].astype(np.int64)
        hi, lo = code >> 8, code & 0xFF
        inside = (hi >= 0x21) & (hi <= 0x7E) & (lo >= 0x21) & (lo <= 0x7E)
        idx = np.where(inside, (hi - 0x21) * 94 + (lo - 0x21), 0)
        chars = _jis0208_lut()[idx]
        checks.append(with_code(~inside | (chars == ""), "JIS X 0208 code {code:#06x} is not in the table"))
    elif layout.codec == "jis0201":
        code = f["jis0201"].astype(np.int64)
        if s.hiragana == "flag":
            hira = f["class_code"][:, 0] == _T56_INDEX["H"]
        else:
            hira = np.full(n, s.hiragana == "always")
        chars = np.where(hira, _jis0201_lut(True)[code], _jis0201_lut(False)[code])
        checks.append(with_code(chars == "", "JIS X 0201 code {code:#04x} has no character"))
        kana = (code >= 0xA6) & (code <= 0xDF)
        if s.kana_only:
            checks.append(with_code(~kana, "JIS X 0201 code {code:#04x} is not a kana in a kana-only set"))
        if layout.name == "C":
            flag = f["class_code"][:, 0]
            known = np.isin(flag, _t56_codes(_C_CLASS_FLAGS))
            checks.append((~known, lambda i: "class code does not start with N, A, S, K or H"))
            expect = {"N": (0x30, 0x39), "A": (0x41, 0x5A), "K": (0xA6, 0xDF), "H": (0xA6, 0xDF)}
            for letter, (a, b) in expect.items():
                wrong = (flag == _T56_INDEX[letter]) & ~((code >= a) & (code <= b))
                checks.append(with_code(wrong, f"class code {letter} but JIS X 0201 code {{code:#04x}}"))
        if layout.name == "M":  # the sample's minimum scanned level cannot exceed its maximum
            low = f["min_level"] > f["max_level"]
            checks.append(
                (low, lambda i: f"min level {f['min_level'][i]} above max level {f['max_level'][i]}")
            )
    elif layout.codec == "co59":
        if co59 is None:
            raise EtlFormatError(_CO59_HELP)
        c1, c2 = f["co59_c1"].astype(np.int64), f["co59_c2"].astype(np.int64)
        code = c1 * 64 + c2
        lut = np.full(4096, "", dtype=object)
        for (a, b), ch in co59.items():
            lut[a * 64 + b] = ch
        chars = lut[code]
        words = np.stack([_t56_codes(w) for w in _K_CLASS_WORDS])
        word = np.where(_T56_BLANK.inside(f["class_word"]), 16, f["class_word"])
        known = (word[:, None, :] == words[None]).all(axis=2).any(axis=1)
        checks.append(
            (~known, lambda i: "class word is none of " + "/".join(w.strip() for w in _K_CLASS_WORDS))
        )
        # Sources A and C are Mincho type, B and D Gothic (AIST's ETL2 page).
        mincho = np.isin(f["source"], _t56_codes("AC"))
        face = np.where(mincho[:, None], _t56_codes("MINCHO"), _t56_codes("GOTHIC"))
        wrong_face = (f["typeface"] != face).any(axis=1)
        checks.append(
            (wrong_face, lambda i: f"typeface {_show_t56(f['typeface'][i])!r} does not match the source")
        )
        checks.append(with_code(chars == "", "CO-59 code {code} is not in the CO-59 table"))
    else:
        raise AssertionError(layout.codec)
    return chars, code.astype(np.int32), checks


def _show_t56(units: np.ndarray) -> str:
    return "".join(_T56[u] if _T56[u] != "\0" else " " for u in np.atleast_1d(units).tolist())


def _show(fld: Field, value: np.ndarray) -> str:
    if fld.text == "ascii":
        return repr(bytes(value.tolist()))
    if fld.text == "t56":
        return repr(_show_t56(value))
    return str(int(value))


def _field_checks(s: EtlSet, path: Path, f: dict[str, np.ndarray], model: np.ndarray) -> list[Check]:
    """Every field against what the format allows (the layout's table), then the file's own ranges."""

    def check(fld: Field, valid: Valid, bad: np.ndarray) -> Check:
        return bad, lambda i: f"{fld.name} {_show(fld, f[fld.name][i])} is not {valid.label}"

    checks = [check(fld, fld.valid, fld.valid.bad(f[fld.name])) for fld in s.layout.fields if fld.valid]
    for fname, name, valid in s.file_valid:
        if fname == path.name:  # model images come from their own sheet, outside the file's ranges
            fld = s.layout.field(name)
            checks.append(check(fld, valid, valid.bad(f[name]) & ~model))
    return checks


def _file_number(s: EtlSet, path: Path) -> int:
    """The number ending the file's name (ETL9G_07 -> 7), checked against the set's file count."""
    m = re.search(r"(\d+)$", path.name)
    number = int(m[1]) if m else 0
    if s.files and not 1 <= number <= s.files:
        raise EtlFormatError(f"{path}: {s.name} files are {s.examples}; {path.name} is not one of them")
    return number


def _writer_keys(
    s: EtlSet, path: Path, f: dict[str, np.ndarray], numbers: np.ndarray
) -> tuple[np.ndarray, list[Check]]:
    checks: list[Check] = []
    if s.layout.name == "K":
        # Printed type, no writers: the typeface source (A-D, checked by the field table) plays the writer.
        ids, fmt = f["source"].astype(np.int64), "{}/{}"
        uniq, inv = np.unique(ids, return_inverse=True)
        names = np.array([fmt.format(s.writer_group, _show_t56(u)) for u in uniq], object)
        return names[inv], checks
    if s.data_set_records:
        # The data set from the position: file n holds data sets k(n-1)+1 .. kn, in order.
        capacity = s.data_sets_per_file * s.data_set_records
        beyond = numbers >= capacity
        checks.append(
            (
                beyond,
                lambda i: (
                    f"beyond the {capacity:,} records ({s.data_sets_per_file} data sets of "
                    f"{s.data_set_records:,}) an {s.name} file holds"
                ),
            )
        )
        first = (_file_number(s, path) - 1) * s.data_sets_per_file
        ids, fmt = first + np.minimum(numbers, capacity - 1) // s.data_set_records + 1, "{}/ds{:03d}"
    elif s.sheets_per_writer > 1:
        sheet = f["sheet"].astype(np.int64)
        ids, fmt = (np.maximum(sheet, 1) - 1) // s.sheets_per_writer + 1, "{}/ds{:03d}"
    else:
        ids, fmt = f["sheet"].astype(np.int64), "{}/s{:05d}"
    uniq, inv = np.unique(ids, return_inverse=True)
    names = np.array([fmt.format(s.writer_group, int(u)) for u in uniq], object)
    return names[inv], checks


def _first_failure(n: int, checks: list[Check]) -> tuple[np.ndarray, np.ndarray]:
    """(bad mask, index of the first failing check per record)."""
    if not checks:
        return np.zeros(n, bool), np.zeros(n, np.int64)
    stack = np.stack([np.broadcast_to(m, (n,)) for m, _ in checks])
    return stack.any(axis=0), stack.argmax(axis=0)


def _check_dummy(s: EtlSet, path: Path, rec: np.ndarray) -> str | None:
    f = decode_records(rec[None], s.layout, images=False)
    if int(f["jis0208"][0]) != 0:
        return f"record 0 should be the dummy record (code 0x0000), found code {int(f['jis0208'][0]):#06x}"
    if s.name == "ETL9B" and rec.any():
        return "record 0 should be the all-zero dummy record of ETL9B"
    return None


def iter_etl_file(
    path: str | Path,
    set_name: str | None = None,
    *,
    chunk_records: int = 2048,
    skip_bad_records: bool = False,
    keep_model_images: bool = False,
    co59_table: dict[tuple[int, int], str] | None = None,
) -> Iterator[EtlSamples]:
    """Decode an ETL file block by block (``chunk_records`` at a time), so memory stays bounded.

    Every record is checked against everything its format states (the field tables' ``valid``, the
    file's own ranges, the code tables, the writer key). A bad record raises EtlFormatError naming
    the file, record and field; with ``skip_bad_records`` it is dropped and listed in its block's
    ``bad`` instead, unless more than BAD_RECORD_LIMIT of the file is bad: such a file is refused
    whole, as soon as that is certain. B-type dummy records and (unless ``keep_model_images``) the
    model images at the end of ETL8B2C3 / ETL9B_5 are not returned.
    """
    path = Path(path)
    s = SETS[set_name] if set_name else SETS[set_of_file(path)]
    layout = s.layout
    _file_number(s, path)
    size = path.stat().st_size
    L = layout.record_size
    n_records, rest = divmod(size, L)
    pending_bad: list[BadRecord] = []
    limit = _BadShare(s, path, n_records + (1 if rest else 0))
    if rest:
        msg = (
            f"{size} bytes is not a whole number of {L}-byte {s.name} records "
            f"({n_records} records and {rest} bytes over): truncated, or not an {s.name} file"
        )
        if not skip_bad_records or n_records == 0:
            raise EtlFormatError(f"{path}: record {n_records}: {msg}")
        pending_bad.append(BadRecord(path, n_records, f"truncated record ({rest} of {L} bytes)"))
        limit.add(pending_bad)
    if n_records == 0:
        raise EtlFormatError(f"{path}: empty file, no {s.name} records")
    first = 1 if layout.dummy_first else 0
    model_count = dict(s.model_tail).get(path.name, 0)
    if n_records - first < model_count:
        raise EtlFormatError(
            f"{path}: {n_records} records, but {path.name} ends with {model_count} model images "
            f"after its samples: truncated, or not an {s.name} file"
        )
    model_start = n_records - model_count
    end = n_records if keep_model_images else model_start
    max_level = layout.image.max_level

    with open(path, "rb", buffering=0) as fh:
        if layout.dummy_first:
            dummy = np.frombuffer(fh.read(L), np.uint8)
            problem = _check_dummy(s, path, dummy)
            if problem and not skip_bad_records:
                raise EtlFormatError(f"{path}: record 0: {problem}; not an {s.name} file?")
            if problem:
                pending_bad.append(BadRecord(path, 0, problem))
                limit.add(pending_bad[-1:])
        buf = np.empty(min(chunk_records, max(end - first, 1)) * L, np.uint8)
        for start in range(first, end, chunk_records):
            count = min(chunk_records, end - start)
            fh.seek(start * L)
            got = fh.readinto(memoryview(buf)[: count * L])
            if got != count * L:
                raise EtlFormatError(f"{path}: record {start + got // L}: file shrank while being read")
            recs = buf[: count * L].reshape(count, L)
            numbers = np.arange(start, start + count, dtype=np.int64)
            model = numbers >= model_start
            f = decode_records(recs, layout, images=False)
            chars, codes, checks = _labels(s, f, co59_table)
            checks += _field_checks(s, path, f, model)
            writers, writer_checks = _writer_keys(s, path, f, numbers)
            checks += writer_checks
            bad_mask, which = _first_failure(count, checks)
            bad = [BadRecord(path, int(numbers[i]), checks[which[i]][1](i)) for i in np.flatnonzero(bad_mask)]
            limit.add(bad)
            if bad and not skip_bad_records:
                more = (
                    f" ({len(bad)} bad records in records {start}-{start + count - 1})"
                    if len(bad) > 1
                    else ""
                )
                raise EtlFormatError(
                    f"{bad[0]}{more}; not an {s.name} file? (skip_bad_records drops bad records instead)"
                )
            if bad:
                keep = ~bad_mask
                recs, chars, codes, writers, numbers, model = (
                    recs[keep],
                    chars[keep],
                    codes[keep],
                    writers[keep],
                    numbers[keep],
                    model[keep],
                )
            images = decode_images(recs, layout.image)
            if model.any():
                writers = writers.copy()
                writers[model] = f"{s.writer_group}/model"
            yield EtlSamples(
                set_name=s.name,
                path=path,
                images=images,
                chars=chars,
                codes=codes,
                writers=writers,
                records=numbers,
                max_level=max_level,
                bad=pending_bad + bad,
                model=model,
            )
            pending_bad = []
        if pending_bad:  # a file whose only content was the dummy or bad tail
            yield _empty_samples(s, path, pending_bad)


class _BadShare:
    """Counts a file's bad records and refuses the file once more than BAD_RECORD_LIMIT are bad."""

    def __init__(self, s: EtlSet, path: Path, total: int):
        self.s, self.path, self.total = s, path, total
        self.allowed = int(total * BAD_RECORD_LIMIT)
        self.count = 0
        self.first: BadRecord | None = None

    def add(self, bad: list[BadRecord]) -> None:
        if bad and self.first is None:
            self.first = bad[0]
        self.count += len(bad)
        if self.count > self.allowed:
            raise EtlFormatError(
                f"{self.first}; {self.count} of the file's {self.total:,} records are bad (more than "
                f"{BAD_RECORD_LIMIT:.0%}): not a damaged {self.s.name} file but a different or corrupt "
                f"one, refused whole even when bad records are skipped"
            )


def _empty_samples(s: EtlSet, path: Path, bad: list[BadRecord]) -> EtlSamples:
    im = s.layout.image
    return EtlSamples(
        s.name,
        path,
        np.zeros((0, im.height, im.width), np.uint8),
        np.zeros(0, object),
        np.zeros(0, np.int32),
        np.zeros(0, object),
        np.zeros(0, np.int64),
        im.max_level,
        bad,
        np.zeros(0, bool),
    )


def read_etl_file(
    path: str | Path,
    set_name: str | None = None,
    *,
    skip_bad_records: bool = False,
    keep_model_images: bool = False,
    co59_table: dict[tuple[int, int], str] | None = None,
) -> EtlSamples:
    """All samples of one ETL file (see `iter_etl_file`); the set comes from the file name if not given."""
    path = Path(path)
    parts = list(
        iter_etl_file(
            path,
            set_name,
            chunk_records=1 << 30,
            skip_bad_records=skip_bad_records,
            keep_model_images=keep_model_images,
            co59_table=co59_table,
        )
    )
    if not parts:
        return _empty_samples(SETS[set_name] if set_name else SETS[set_of_file(path)], path, [])
    if len(parts) == 1:
        return parts[0]
    return EtlSamples(
        set_name=parts[0].set_name,
        path=path,
        images=np.concatenate([p.images for p in parts]),
        chars=np.concatenate([p.chars for p in parts]),
        codes=np.concatenate([p.codes for p in parts]),
        writers=np.concatenate([p.writers for p in parts]),
        records=np.concatenate([p.records for p in parts]),
        max_level=parts[0].max_level,
        bad=[b for p in parts for b in p.bad],
        model=np.concatenate([p.model for p in parts]),
    )


# ---------------------------------------------------------------- prepare: ETL -> packed dataset


def prepare_etl(
    etl_dir: str | Path,
    sets: list[str] | tuple[str, ...],
    out: str | Path,
    image_size: int = 64,
    crop: bool = False,
    split: str = "writer",
    seed: int = 0,
    skip_bad_records: bool = False,
    *,
    keep_model_images: bool = False,
    co59_table: str | Path | None = None,
    chunk_records: int = 256,
    quiet: bool = False,
) -> Path:
    """Decode the ETL sets found under ``etl_dir`` into one packed dataset at ``out``.

    Files are streamed block by block through `normalize_images` into a `DatasetWriter`;
    samples of the same character from different sets share one class.
    """
    from tqdm import tqdm

    from kanjirec.data.preprocess import normalize_images
    from kanjirec.data.store import DatasetWriter

    files = find_etl_files(etl_dir, sets)
    co59 = None
    if "ETL2" in files:
        table = Path(co59_table) if co59_table else _find_co59(Path(etl_dir))
        co59 = load_co59_table(table)
    all_files = [(n, p) for n, paths in files.items() for p in paths]
    counts: dict[str, int] = dict.fromkeys(files, 0)
    bad_total = 0
    model_total = 0
    report = sys.stderr
    bar = tqdm(all_files, unit="file", desc="ETL files", disable=quiet or bool(os.environ.get("CI")))
    with DatasetWriter(out, image_size=image_size) as writer, bar:
        for set_name, path in bar:
            for block in iter_etl_file(
                path,
                set_name,
                chunk_records=chunk_records,
                skip_bad_records=skip_bad_records,
                keep_model_images=keep_model_images,
                co59_table=co59,
            ):
                for b in block.bad:
                    tqdm.write(f"skipped {b}", file=report)
                bad_total += len(block.bad)
                if not len(block):
                    continue
                images = normalize_images(block.images, max_level=block.max_level, size=image_size, crop=crop)
                writer.add(images, list(block.chars), list(block.writers), set_name, codes=block.codes)
                counts[set_name] += len(block)
                model_total += int(block.model.sum())
        path = writer.finish(
            split=split,
            seed=seed,
            preprocess={"image_size": image_size, "crop": crop, "normalize": "normalize_images", "margin": 2},
            provenance={
                "source": "ETL Character Database (AIST)",
                "etl_dir": str(etl_dir),
                "sets": list(files),
                "files": [p.name for _, p in all_files],
                "samples_per_set": counts,
                "bad_records_skipped": bad_total,
                "model_images_kept": model_total,
            },
        )
    if not quiet:
        from kanjirec.data.store import PackedDataset

        ds = PackedDataset.open(path)
        per_set = ", ".join(f"{n} {c:,}" for n, c in counts.items())
        print(
            f"wrote {path}: {len(ds):,} samples ({per_set}), {len(ds.classes):,} classes, "
            f"{len(ds.writers):,} writers; {bad_total} bad records skipped"
            + (f"; {model_total} model images kept" if keep_model_images else "")
        )
    return path


def _find_co59(root: Path) -> Path:
    for dirpath, _dirs, filenames in os.walk(root):
        if "euc_co59.dat" in filenames:
            return Path(dirpath) / "euc_co59.dat"
    raise EtlFormatError(f"no euc_co59.dat under {root}. {_CO59_HELP}")
