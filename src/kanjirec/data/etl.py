"""Every ETL record layout as a table of fields, and one vectorised decoder for all of them.

The layouts follow AIST's published record formats (see
``shared/reference/ETL_FORMATS.md``): M-type (ETL1, ETL6, ETL7), K-type (ETL2),
C-type (ETL3-5), B-type (ETL8B2, ETL9B) and G-type (ETL8G, ETL9G). A layout is
data: fields are (name, bit offset, bit width) in a fixed-length record, with
bits counted MSB first, so the 6-bit units of ETL2-ETL5 and the bytes of the
other formats go through the same extractor. `decode_records` reads any layout
over a whole block of records with numpy; labels are decoded through lookup
tables built once from Python's codecs (`kanjirec.charset`).

Writer identity: every sample gets a writer key ``"<GROUP>/<id>"``. Sets made
from the same sheets share a group (ETL8B/ETL8G -> ETL8, ETL9B/ETL9G -> ETL9,
ETL7L/ETL7S -> ETL7) so that a combined dataset never puts one writer's samples
on both sides of a writer-disjoint split.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from kanjirec.charset import jis0201_table, jis0208_table
from kanjirec.errors import EtlFormatError

__all__ = [
    "LAYOUTS",
    "SETS",
    "BadRecord",
    "EtlFormatError",
    "EtlSamples",
    "Field",
    "ImageField",
    "Layout",
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
class Field:
    """A big-endian unsigned integer of ``bits`` bits at bit ``bit`` of the record.

    ``count > 1`` makes it ``count`` consecutive units of ``bits`` bits each (T56 text).
    """

    name: str
    bit: int
    bits: int
    count: int = 1


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


def _byte(name: str, offset: int, size: int = 1) -> Field:
    return Field(name, offset * 8, size * 8)


def _text(name: str, offset: int, size: int) -> Field:
    """``size`` bytes of ASCII text (a reading), decoded as a (n, size) uint8 array."""
    return Field(name, offset * 8, 8, count=size)


def _unit(name: str, first: int, units: int = 1) -> Field:
    """An integer made of 6-bit units ``first``..``first+units-1`` (1-based, as AIST numbers them)."""
    return Field(name, (first - 1) * 6, units * 6)


def _t56(name: str, first: int, chars: int) -> Field:
    return Field(name, (first - 1) * 6, 6, count=chars)


_M = Layout(
    "M",
    2052,
    (
        _byte("data_number", 0, 2),
        _text("reading", 2, 2),
        _byte("sheet", 4, 2),
        _byte("jis0201", 6),
        _byte("ebcdic", 7),
        _byte("quality", 8),
        _byte("group_quality", 9),
        _byte("sex", 10),
        _byte("age", 11),
        _byte("serial", 12, 4),
        _byte("industry", 16, 2),
        _byte("occupation", 18, 2),
        _byte("gathered", 20, 2),
        _byte("scanned", 22, 2),
        _byte("pos_y", 24),
        _byte("pos_x", 25),
        _byte("min_level", 26),
        _byte("max_level", 27),
    ),
    ImageField(32, 64, 63, 4),
    "jis0201",
)

_K = Layout(
    "K",
    2745,
    (
        _unit("serial", 1, 6),
        _t56("source", 7, 1),
        _t56("class_word", 13, 6),
        _t56("typeface", 19, 6),
        _unit("co59_c1", 29),
        _unit("co59_c2", 30),
    ),
    ImageField(45, 60, 60, 6),
    "co59",
)

_C_INTS = (
    "quality",
    "group_quality",
    "pos_y",
    "pos_x",
    "sex",
    "age",
    "industry",
    "occupation",
    "gathered",
    "scanned",
    "x_points",
    "y_points",
    "levels",
    "magnification",
    "old_serial",
)
_C = Layout(
    "C",
    2952,
    (
        _unit("serial", 1, 6),
        _unit("sheet", 7, 6),
        Field("jis0201", 72, 8),  # left 8 bits of units 13-18
        Field("ebcdic", 108, 8),  # left 8 bits of units 19-24
        _t56("class_code", 25, 4),
        *(_unit(name, 31 + 6 * k, 6) for k, name in enumerate(_C_INTS)),
    ),
    ImageField(216, 72, 76, 4),
    "jis0201",
)


def _b_layout(name: str, record_size: int) -> Layout:
    return Layout(
        name,
        record_size,
        (_byte("sheet", 0, 2), _byte("jis0208", 2, 2), _text("reading", 4, 4)),
        ImageField(8, 64, 63, 1),
        "jis0208",
        dummy_first=True,
    )


def _g_layout(name: str, image_byte: int) -> Layout:
    return Layout(
        name,
        8199,
        (
            _byte("sheet", 0, 2),
            _byte("jis0208", 2, 2),
            _text("reading", 4, 8),
            _byte("serial", 12, 4),
            _byte("quality", 16),
            _byte("group_quality", 17),
            _byte("sex", 18),
            _byte("age", 19),
            _byte("industry", 20, 2),
            _byte("occupation", 22, 2),
            _byte("gathered", 24, 2),
            _byte("scanned", 26, 2),
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
    sheets_per_writer: int = 1  # sheets grouped into one writer key (a data set)
    hiragana: str = "never"  # "never", "always" (ETL7) or "flag" (ETL4: class code H)
    kana_only: bool = False
    model_tail: tuple[tuple[str, int], ...] = ()  # (file name, trailing model/reference records)


SETS: dict[str, EtlSet] = {
    s.name: s
    for s in (
        EtlSet("ETL1", _M, r"ETL1C_\d\d", "ETL1C_01 ... ETL1C_13", "ETL1"),
        EtlSet("ETL2", _K, r"ETL2_\d", "ETL2_1 ... ETL2_5", "ETL2"),
        EtlSet("ETL3", _C, r"ETL3C_\d", "ETL3C_1, ETL3C_2", "ETL3"),
        EtlSet("ETL4", _C, r"ETL4C", "ETL4C", "ETL4", hiragana="flag"),
        EtlSet("ETL5", _C, r"ETL5C", "ETL5C", "ETL5"),
        EtlSet("ETL6", _M, r"ETL6C_\d\d", "ETL6C_01 ... ETL6C_12", "ETL6"),
        EtlSet("ETL7L", _M, r"ETL7LC_\d", "ETL7LC_1, ETL7LC_2", "ETL7", hiragana="always", kana_only=True),
        EtlSet("ETL7S", _M, r"ETL7SC_\d", "ETL7SC_1, ETL7SC_2", "ETL7", hiragana="always", kana_only=True),
        # ETL8: 10 sheets per data set (public unpackers quoting the spec; not seen on an AIST page).
        EtlSet(
            "ETL8B",
            LAYOUTS["B8"],
            r"ETL8B2C\d",
            "ETL8B2C1 ... ETL8B2C3",
            "ETL8",
            10,
            model_tail=(("ETL8B2C3", 956),),
        ),
        EtlSet("ETL8G", LAYOUTS["G8"], r"ETL8G_\d\d", "ETL8G_01 ... ETL8G_33", "ETL8", 10),
        # ETL9: 20 sheets per data set (AIST's ETL9 page).
        EtlSet(
            "ETL9B",
            LAYOUTS["B9"],
            r"ETL9B_\d",
            "ETL9B_1 ... ETL9B_5",
            "ETL9",
            20,
            model_tail=(("ETL9B_5", 3036),),
        ),
        EtlSet("ETL9G", LAYOUTS["G9"], r"ETL9G_\d\d", "ETL9G_01 ... ETL9G_50", "ETL9", 20),
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

# T56 (6-bit text in K/C headers), index -> character; '\0' marks the unused positions.
_T56 = "0123456789[#@:>?\0ABCDEFGHI&.](<\0\0JKLMNOPQR-$*);'|/STUVWXYZ\0,%=\"!"
_T56_INDEX = {c: i for i, c in enumerate(_T56) if c != "\0"}
_T56_INDEX[" "] = 16  # the blank the headers are padded with
_T56_BLANKS = np.array([16, 31, 32, 58], np.uint8)  # all four unused positions read as a blank
assert len(_T56) == 64
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


def _labels(
    s: EtlSet, f: dict[str, np.ndarray], co59: dict[tuple[int, int], str] | None
) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, str]]]:
    """(chars, codes, checks): checks are (bad mask, reason) pairs evaluated in order."""
    n = len(next(iter(f.values())))
    checks: list[tuple[np.ndarray, str]] = []
    layout = s.layout
    if layout.codec == "jis0208":
        code = f["jis0208"].astype(np.int64)
        hi, lo = code >> 8, code & 0xFF
        inside = (hi >= 0x21) & (hi <= 0x7E) & (lo >= 0x21) & (lo <= 0x7E)
        idx = np.where(inside, (hi - 0x21) * 94 + (lo - 0x21), 0)
        chars = _jis0208_lut()[idx]
        checks.append((~inside | (chars == ""), "JIS X 0208 code {code:#06x} is not in the table"))
    elif layout.codec == "jis0201":
        code = f["jis0201"].astype(np.int64)
        if s.hiragana == "flag":
            hira = f["class_code"][:, 0] == _T56_INDEX["H"]
        else:
            hira = np.full(n, s.hiragana == "always")
        chars = np.where(hira, _jis0201_lut(True)[code], _jis0201_lut(False)[code])
        checks.append((chars == "", "JIS X 0201 code {code:#04x} has no character"))
        kana = (code >= 0xA6) & (code <= 0xDF)
        if s.kana_only:
            checks.append((~kana, "JIS X 0201 code {code:#04x} is not a kana in a kana-only set"))
        if layout.name == "C":
            flag = f["class_code"][:, 0]
            known = np.isin(flag, _t56_codes(_C_CLASS_FLAGS))
            checks.append((~known, "class code does not start with N, A, S, K or H"))
            expect = {"N": (0x30, 0x39), "A": (0x41, 0x5A), "K": (0xA6, 0xDF), "H": (0xA6, 0xDF)}
            for letter, (a, b) in expect.items():
                wrong = (flag == _T56_INDEX[letter]) & ~((code >= a) & (code <= b))
                checks.append((wrong, f"class code {letter} but JIS X 0201 code {{code:#04x}}"))
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
        word = np.where(np.isin(f["class_word"], _T56_BLANKS), 16, f["class_word"])
        known = (word[:, None, :] == words[None]).all(axis=2).any(axis=1)
        checks.append((~known, "class word is none of " + "/".join(w.strip() for w in _K_CLASS_WORDS)))
        checks.append((chars == "", "CO-59 code {code} is not in the CO-59 table"))
    else:
        raise AssertionError(layout.codec)
    return chars, code.astype(np.int32), checks


def _writer_keys(s: EtlSet, f: dict[str, np.ndarray]) -> tuple[np.ndarray, list[tuple[np.ndarray, str]]]:
    checks: list[tuple[np.ndarray, str]] = []
    if s.layout.name == "K":
        # Printed type, no writers: the typeface source (A-D) plays the writer.
        ids = f["source"].astype(np.int64)
        letters = _t56_codes("ABCD")
        checks.append((~np.isin(ids, letters), "source is not A, B, C or D"))
        uniq, inv = np.unique(ids, return_inverse=True)
        names = np.array([f"{s.writer_group}/{_T56[u] if u < len(_T56) else u}" for u in uniq], object)
        return names[inv], checks
    sheet = f["sheet"].astype(np.int64)
    if s.layout.name in ("B8", "B9", "G8", "G9"):
        checks.append((sheet < 1, "serial sheet number 0 (sheets start at 1)"))
    if s.sheets_per_writer > 1:
        ids, fmt = (np.maximum(sheet, 1) - 1) // s.sheets_per_writer + 1, "{}/ds{:03d}"
    else:
        ids, fmt = sheet, "{}/s{:05d}"
    uniq, inv = np.unique(ids, return_inverse=True)
    names = np.array([fmt.format(s.writer_group, int(u)) for u in uniq], object)
    return names[inv], checks


def _first_failure(n: int, checks: list[tuple[np.ndarray, str]]) -> tuple[np.ndarray, np.ndarray]:
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

    Raises EtlFormatError naming the file and record for a truncated or foreign file, or a record
    whose code does not decode; with ``skip_bad_records`` such records are dropped and listed in
    each block's ``bad``. B-type dummy records and (unless ``keep_model_images``) the model images
    at the end of ETL8B2C3 / ETL9B_5 are not returned.
    """
    path = Path(path)
    s = SETS[set_name] if set_name else SETS[set_of_file(path)]
    layout = s.layout
    size = path.stat().st_size
    L = layout.record_size
    n_records, rest = divmod(size, L)
    pending_bad: list[BadRecord] = []
    if rest:
        msg = (
            f"{size} bytes is not a whole number of {L}-byte {s.name} records "
            f"({n_records} records and {rest} bytes over): truncated, or not an {s.name} file"
        )
        if not skip_bad_records or n_records == 0:
            raise EtlFormatError(f"{path}: record {n_records}: {msg}")
        pending_bad.append(BadRecord(path, n_records, f"truncated record ({rest} of {L} bytes)"))
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
        buf = np.empty(min(chunk_records, max(end - first, 1)) * L, np.uint8)
        for start in range(first, end, chunk_records):
            count = min(chunk_records, end - start)
            fh.seek(start * L)
            got = fh.readinto(memoryview(buf)[: count * L])
            if got != count * L:
                raise EtlFormatError(f"{path}: record {start + got // L}: file shrank while being read")
            recs = buf[: count * L].reshape(count, L)
            f = decode_records(recs, layout, images=False)
            chars, codes, checks = _labels(s, f, co59_table)
            writers, writer_checks = _writer_keys(s, f)
            bad_mask, which = _first_failure(count, checks + writer_checks)
            reasons = [r for _, r in checks + writer_checks]
            numbers = np.arange(start, start + count, dtype=np.int64)
            bad = [
                BadRecord(path, int(numbers[i]), reasons[which[i]].format(code=int(codes[i])))
                for i in np.flatnonzero(bad_mask)
            ]
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
                recs, chars, codes, writers, numbers = (
                    recs[keep],
                    chars[keep],
                    codes[keep],
                    writers[keep],
                    numbers[keep],
                )
            images = decode_images(recs, layout.image)
            model = numbers >= model_start
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
    writer = DatasetWriter(out, image_size=image_size)
    all_files = [(n, p) for n, paths in files.items() for p in paths]
    counts: dict[str, int] = dict.fromkeys(files, 0)
    bad_total = 0
    model_total = 0
    report = sys.stderr
    for set_name, path in tqdm(
        all_files, unit="file", desc="ETL files", disable=quiet or bool(os.environ.get("CI"))
    ):
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
