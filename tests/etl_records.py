"""Byte-exact ETL records for tests, built from AIST's published layouts with struct and explicit
bit packing. Nothing here imports kanjirec.data.etl, so the tests do not check the decoder
against its own tables.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

# T56 as printed in AIST's sample unpacker: 64 characters, blanks at 16, 31, 32 and 58.
T56 = "0123456789[#@:>? ABCDEFGHI&.](<  JKLMNOPQR-$*);'|/STUVWXYZ ,%=\"!"
assert len(T56) == 64


def t56(text: str) -> list[int]:
    return [T56.index(c) for c in text]  # a space gives 16, the first blank


def pattern(h: int, w: int, levels: int) -> np.ndarray:
    """A pixel pattern that changes along rows and columns, so nibble order and offsets show."""
    r, c = np.mgrid[:h, :w]
    return ((3 * r + c) % levels).astype(np.uint8)


def pack4(img: np.ndarray) -> bytes:
    """4-bit pixels, row-major, left pixel in the high nibble."""
    img = img.astype(np.uint8)
    return ((img[:, 0::2] << 4) | img[:, 1::2]).astype(np.uint8).tobytes()


def pack1(img: np.ndarray) -> bytes:
    """1-bit pixels, 8 per byte, leftmost pixel in the most significant bit."""
    out = bytearray()
    for row in img:
        for k in range(0, len(row), 8):
            byte = 0
            for bit in row[k : k + 8]:
                byte = (byte << 1) | int(bit)
            out.append(byte)
    return bytes(out)


class BitWriter:
    """Big-endian bit stream: values appended MSB first."""

    def __init__(self) -> None:
        self.value = 0
        self.nbits = 0

    def put(self, value: int, bits: int) -> None:
        assert 0 <= value < (1 << bits), (value, bits)
        self.value = (self.value << bits) | value
        self.nbits += bits

    def bytes(self) -> bytes:
        assert self.nbits % 8 == 0
        return self.value.to_bytes(self.nbits // 8, "big")


# ---------------------------------------------------------------- M-type: ETL1, ETL6, ETL7 (2052 B)


def m_record(
    jis: int, sheet: int = 1, image: np.ndarray | None = None, reading: bytes = b"  ", serial: int = 1
) -> bytes:
    image = pattern(63, 64, 16) if image is None else image
    rec = struct.pack(
        ">H2sH6BI4H4B4x2016s4x",
        serial,  # data number
        reading,
        sheet,
        jis,
        0x81,  # EBCDIC, ignored
        0,
        0,  # quality of sample / group
        1,
        25,  # sex, age
        serial,
        0,
        0,  # industry, occupation
        7504,
        7505,  # gathered, scanned (YYMM)
        3,
        4,  # position Y, X
        0,
        255,  # min / max scanned level
        pack4(image),
    )
    assert len(rec) == 2052
    return rec


# ---------------------------------------------------------------- C-type: ETL3, ETL4, ETL5 (2952 B)


def c_record(
    jis: int,
    class_code: str,
    sheet: int = 5001,
    image: np.ndarray | None = None,
    serial: int = 1,
    pos_y: int = 2,
    pos_x: int = 5,
    age: int = 23,
) -> bytes:
    image = pattern(76, 72, 16) if image is None else image
    w = BitWriter()
    w.put(serial, 36)  # units 1-6
    w.put(sheet, 36)  # units 7-12
    w.put(jis << 28, 36)  # units 13-18: JIS X 0201 in the left 8 bits
    w.put(0x81 << 28, 36)  # units 19-24: EBCDIC in the left 8 bits
    for u in t56(class_code):  # units 25-28
        w.put(u, 6)
    for u in t56("  "):  # units 29-30
        w.put(u, 6)
    ints = [0, 0, pos_y, pos_x, 2, age, 0, 0, 741202, 741216, 72, 76, 16, 133, serial]
    for v in ints:  # units 31-120
        w.put(v, 36)
    w.put(0, 168 * 6)  # units 121-288 undefined
    for px in image.reshape(-1):  # units 289-3936: 4-bit pixels
        w.put(int(px), 4)
    rec = w.bytes()
    assert len(rec) == 2952
    return rec


# ---------------------------------------------------------------- K-type: ETL2 (2745 B)


def k_record(
    c1: int,
    c2: int,
    class_word: str = "KANJI ",
    source: str = "A",
    image: np.ndarray | None = None,
    serial: int = 1,
    typeface: str | None = None,
) -> bytes:
    image = pattern(60, 60, 64) if image is None else image
    typeface = typeface or ("GOTHIC" if source in "BD" else "MINCHO")  # A, C Mincho; B, D Gothic
    w = BitWriter()
    w.put(serial, 36)  # units 1-6
    w.put(t56(source)[0], 6)  # unit 7
    for u in t56("     "):  # units 8-12
        w.put(u, 6)
    for u in t56(class_word):  # units 13-18
        w.put(u, 6)
    for u in t56(typeface):  # units 19-24
        w.put(u, 6)
    w.put(0, 4 * 6)  # units 25-28
    w.put(c1, 6)  # unit 29
    w.put(c2, 6)  # unit 30
    w.put(0, 30 * 6)  # units 31-60
    for px in image.reshape(-1):  # units 61-3660
        w.put(int(px), 6)
    rec = w.bytes()
    assert len(rec) == 2745
    return rec


# ---------------------------------------------------------------- B-type: ETL8B2 (512 B), ETL9B (576 B)


def b_record(code: int, sheet: int, image: np.ndarray | None = None, etl9b: bool = False) -> bytes:
    image = (pattern(63, 64, 16) % 2) if image is None else image
    if etl9b:
        rec = struct.pack(">HH4s504s64s", sheet, code, b"A.HI", pack1(image), b"\xff" * 64)
        assert len(rec) == 576
    else:
        rec = struct.pack(">HH4s504s", sheet, code, b"AI.M", pack1(image))
        assert len(rec) == 512
    return rec


def b_dummy(etl9b: bool = False) -> bytes:
    return bytes(576 if etl9b else 512)


# ---------------------------------------------------------------- G-type: ETL8G, ETL9G (8199 B)


def g_record(code: int, sheet: int, image: np.ndarray | None = None, etl9g: bool = True) -> bytes:
    image = pattern(127, 128, 16) if image is None else image
    fmt = ">HH8sI4B4H2B34x8128s7x" if etl9g else ">HH8sI4B4H2B30x8128s11x"
    rec = struct.pack(
        fmt,
        sheet,
        code,
        b"A.TSUGU ",
        1,  # serial data number
        0,
        0,
        0,
        0,  # quality, group quality, sex, age
        0,
        0,
        8212,
        8310,  # industry, occupation, gathered, scanned
        0,
        0,  # position X, Y
        pack4(image),
    )
    assert len(rec) == 8199
    return rec


def write(path: Path, records: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(records))
    return path
