"""Seeded fuzzing of everything that reads user files on the data side.

Random and mutated ETL records of every set, random and damaged image files for `data import`, and
damaged packed-dataset folders. Each case must end in one of our typed errors (KanjirecError) or a
correct result: never another exception, never a sample that differs from what the intact file
holds. The seeds are fixed, so a failure reproduces; the case counts keep the file within ~30 s.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from functools import cache
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from etl_records import b_dummy, b_record, c_record, g_record, k_record, m_record
from kanjirec.data.etl import SETS, read_etl_file, set_of_file
from kanjirec.data.importer import import_images, load_ink_high
from kanjirec.data.store import DatasetWriter, PackedDataset
from kanjirec.errors import DatasetFormatError, EtlFormatError, ImageInputError, KanjirecError

CO59 = {(16, 1): "亜", (4, 2): "あ", (5, 2): "ア"}
GOOD_RECORDS = 40


# ---------------------------------------------------------------- ETL records


def _good_records(name: str) -> list[bytes]:
    """GOOD_RECORDS valid records for file ``name``, with varied codes, sheets and images."""
    rng = np.random.default_rng(sum(map(ord, name)))
    n = GOOD_RECORDS
    if name.startswith(("ETL1", "ETL6")):
        codes = [0x30, 0x41, 0xB1, 0xB6]
        return [m_record(codes[k % 4], 1 + k // 4, rng.integers(0, 16, (63, 64))) for k in range(n)]
    if name.startswith("ETL7"):
        return [m_record(0xB1 + k % 20, 1 + k // 4, rng.integers(0, 16, (63, 64))) for k in range(n)]
    if name.startswith("ETL2"):
        c = [(16, 1, "KANJI ", "A"), (4, 2, "HRKANA", "B"), (5, 2, "KTKANA", "C")]
        img = rng.integers(0, 64, (60, 60))
        return [k_record(*c[k % 3][:2], c[k % 3][2], c[k % 3][3], img, serial=k + 1) for k in range(n)]
    if name.startswith(("ETL3", "ETL4", "ETL5")):
        flags = {"ETL3": [(0x30, "N  0"), (0x41, "A  A")], "ETL4": [(0xB1, "H  A"), (0xB6, "H KA")]}
        pairs = flags.get(name[:4], [(0xB1, "K  A"), (0xB6, "K KA")])
        img = rng.integers(0, 16, (76, 72))
        return [c_record(*pairs[k % 2], sheet=1 + k // 2, image=img, serial=k + 1) for k in range(n)]
    codes = [0x2422, 0x3021, 0x303D, 0x2F21 - 0x0B00]  # あ 亜 綾 and 0x2421 ぁ
    if name.startswith("ETL8B"):
        recs = [b_record(codes[k % 4], 1 + k, rng.integers(0, 2, (63, 64))) for k in range(n)]
        return [b_dummy()] + recs
    if name.startswith("ETL9B"):
        recs = [b_record(codes[k % 4], 1 + 7 * k, rng.integers(0, 2, (63, 64)), True) for k in range(n)]
        return [b_dummy(True)] + recs
    etl9g = name.startswith("ETL9G")
    return [g_record(codes[k % 4], 1 + k, rng.integers(0, 16, (127, 128)), etl9g) for k in range(n)]


EVERY_SET = ("ETL1C_01", "ETL2_1", "ETL3C_1", "ETL4C", "ETL5C", "ETL6C_01", "ETL7LC_1", "ETL7SC_1")
EVERY_SET += ("ETL8B2C1", "ETL8G_01", "ETL9B_1", "ETL9G_01")


@cache
def _good_file(name: str) -> tuple[bytes, int]:
    records = _good_records(name)
    return b"".join(records), len(records[0])


def _read(path, skip):
    return read_etl_file(path, skip_bad_records=skip, co59_table=CO59)


def _mutations(data: bytes, size: int, rng: np.random.Generator, first: int):
    """(label, damaged bytes, numbers of the records touched) for one file."""
    n = len(data) // size
    for _ in range(6):  # a few bytes flipped anywhere in one record
        r = int(rng.integers(first, n))
        buf = bytearray(data)
        for at in rng.integers(0, size, int(rng.integers(1, 9))):
            buf[r * size + int(at)] ^= int(rng.integers(1, 256))
        yield "flip", bytes(buf), {r}
    for _ in range(3):  # one header byte set to an extreme
        r, at = int(rng.integers(first, n)), int(rng.integers(0, 64))
        buf = bytearray(data)
        buf[r * size + at] = int(rng.choice([0, 255]))
        yield "header", bytes(buf), {r}
    r = int(rng.integers(first, n))  # one record of random bytes
    junk = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    yield "random-record", data[: r * size] + junk + data[(r + 1) * size :], {r}
    cut = int(rng.integers(1, len(data)))  # truncated anywhere
    yield "truncated", data[:cut], set(range(cut // size, n))
    yield "appended", data + rng.integers(0, 256, int(rng.integers(1, size)), dtype=np.uint8).tobytes(), {n}


@pytest.mark.parametrize("name", EVERY_SET)
def test_fuzz_etl_records(tmp_path, name):
    data, size = _good_file(name)
    path = tmp_path / name
    path.write_bytes(data)
    intact = _read(path, skip=False)
    assert len(intact) == GOOD_RECORDS
    by_record = {int(r): k for k, r in enumerate(intact.records)}
    first = 1 if SETS[set_of_file(name)].layout.dummy_first else 0
    rng = np.random.default_rng(sum(map(ord, name)) + 1)
    for label, damaged, touched in _mutations(data, size, rng, first):
        path.write_bytes(damaged)
        for skip in (False, True):
            try:
                got = _read(path, skip)
            except EtlFormatError:
                continue  # a typed error naming the file: a correct outcome
            bad = {b.record for b in got.bad}
            if label == "random-record":
                assert touched <= bad, f"{name}: a record of random bytes passed as a sample"
            for k, r in enumerate(got.records.tolist()):
                assert r not in bad
                if r in touched:
                    continue  # a still-valid damaged record decodes to what its bytes say
                j = by_record[r]  # every other sample is exactly the intact file's
                assert got.chars[k] == intact.chars[j] and got.writers[k] == intact.writers[j], (
                    name,
                    label,
                    r,
                )
                np.testing.assert_array_equal(got.images[k], intact.images[j])


@pytest.mark.parametrize("name", EVERY_SET)
def test_fuzz_random_files_write_nothing(tmp_path, name):
    size = SETS[set_of_file(name)].layout.record_size
    rng = np.random.default_rng(sum(map(ord, name)) + 2)
    for n in (1, 3, 25):
        (tmp_path / name).write_bytes(rng.integers(0, 256, n * size, dtype=np.uint8).tobytes())
        for skip in (False, True):
            with pytest.raises(EtlFormatError, match=name):
                _read(tmp_path / name, skip)


# ---------------------------------------------------------------- image files for `data import`


def _image_bytes(fmt: str, rng: np.random.Generator) -> bytes:
    img = Image.fromarray(rng.integers(0, 256, (24, 20), dtype=np.uint8))
    if fmt == "P":
        img, fmt = img.convert("P"), "PNG"
    buf = BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "P")


def _damaged_images(rng: np.random.Generator):
    for fmt in FORMATS:
        good = _image_bytes(fmt, rng)
        yield f"{fmt}-intact", good
        for _ in range(10):
            buf = bytearray(good)
            for at in rng.integers(0, len(buf), int(rng.integers(1, 6))):
                buf[int(at)] ^= int(rng.integers(1, 256))
            yield f"{fmt}-flipped", bytes(buf)
        for _ in range(3):
            yield f"{fmt}-truncated", good[: int(rng.integers(0, len(good)))]
        yield f"{fmt}-header+random", good[:16] + rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
    for n in (0, 1, 7, 100, 5000):
        yield "random", rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    # Headers that claim a huge canvas over next to no data: refused from the header alone.
    for width, height in ((20000, 20000), (8000, 6000), (1, 40_000_001), (65535, 65535)):
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
        crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
        yield "huge-header", b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + crc


def test_fuzz_image_files(tmp_path):
    rng = np.random.default_rng(7)
    outcomes = {"ok": 0, "refused": 0}
    for k, (label, content) in enumerate(_damaged_images(rng)):
        path = tmp_path / f"{k}.png"
        path.write_bytes(content)
        try:
            canvas = load_ink_high(path)
        except ImageInputError as e:
            assert str(path) in str(e), label
            outcomes["refused"] += 1
            continue
        assert canvas.shape == (256, 256) and canvas.dtype == np.uint8, label
        assert not label.startswith(("huge", "random")), f"{label} was read as an image"
        outcomes["ok"] += 1
    assert outcomes["ok"] >= len(FORMATS) and outcomes["refused"] >= 50, outcomes


def test_fuzz_import_command_ends_in_our_error(tmp_path, capsys):
    from kanjirec.cli import main

    rng = np.random.default_rng(8)
    bad = [content for label, content in _damaged_images(rng) if label in ("random", "huge-header")]
    for k, content in enumerate(bad[1:6]):  # bad[0] is empty
        src = tmp_path / f"src{k}"
        for ch in "明日月":
            (src / ch).mkdir(parents=True)
            (src / ch / "a.png").write_bytes(_image_bytes("PNG", rng))
        (src / "月" / "b.png").write_bytes(content)
        assert main(["data", "import", str(src), "--out", str(tmp_path / f"out{k}")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("kanjirec: error: ") and "b.png" in err and "Traceback" not in err
        assert not (tmp_path / f"out{k}").exists() and not (tmp_path / f"out{k}.partial").exists()
    with pytest.raises(KanjirecError):
        import_images(tmp_path / "nothing-here", tmp_path / "out")


# ---------------------------------------------------------------- packed-dataset folders


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    rng = np.random.default_rng(3)
    out = tmp_path_factory.mktemp("fuzz") / "ds"
    with DatasetWriter(out, image_size=8, shard_size=5) as w:
        w.add(
            rng.integers(0, 256, (12, 8, 8), dtype=np.uint8),
            list("あいうえお亜明日月火水木"),
            [f"w{k % 4}" for k in range(12)],
            "fuzz",
            strokes=[[rng.random((3, 2)) * 8] for _ in range(12)],
        )
        w.finish(split="random")
    return out


def _meta_mutations(meta: dict, rng: np.random.Generator):
    wrong = [None, -1, 0, 1.5, True, "x", "", [], {}, [1, "a"], {"file": "../meta.json", "count": 1}, 10**12]
    for key in list(meta):
        yield {k: v for k, v in meta.items() if k != key}
        for value in wrong:
            yield {**meta, key: value}
    for k in range(len(meta["shards"])):
        for field in ("file", "count"):
            for value in wrong:
                shards = [dict(s) for s in meta["shards"]]
                shards[k][field] = value
                yield {**meta, "shards": shards}
    yield {**meta, "classes": meta["classes"][:-1]}
    yield {**meta, "classes": meta["classes"][:-1] + ["ab"]}
    yield {**meta, "classes": [meta["classes"][0]] * len(meta["classes"])}
    yield {**meta, "writers": meta["writers"][:1]}
    yield {**meta, "split": {"kind": "writer"}}
    yield {**meta, "has_strokes": False}
    yield [meta]


def _check_opened(path):
    try:
        ds = PackedDataset.open(path)
    except DatasetFormatError as e:
        assert str(path) in str(e)
        return "refused"
    # Opened: then every part of it reads, or says which file is at fault.
    assert ds.images[np.arange(len(ds))].shape == (len(ds), ds.image_size, ds.image_size)
    ds.describe()
    for split in ("train", "val", "test"):
        ds.indices(split)
    if ds.has_strokes:
        try:
            for i in range(len(ds)):
                ds.strokes_of(i)
        except DatasetFormatError:
            return "refused"
    return "ok"


def test_fuzz_packed_dataset_folders(tmp_path, packed):
    rng = np.random.default_rng(11)
    files = sorted(p.name for p in packed.iterdir())
    meta = json.loads((packed / "meta.json").read_text(encoding="utf-8"))
    outcomes = {"ok": 0, "refused": 0}
    case = 0

    def trial(damage):
        nonlocal case
        case += 1
        path = tmp_path / f"c{case}"
        shutil.copytree(packed, path)
        damage(path)
        outcomes[_check_opened(path)] += 1

    for name in files:
        trial(lambda p, n=name: (p / n).unlink())
        for _ in range(4):
            size = (packed / name).stat().st_size
            cut = int(rng.integers(0, size))
            trial(lambda p, n=name, c=cut: (p / n).write_bytes((packed / n).read_bytes()[:c]))
        for _ in range(6):
            raw = bytearray((packed / name).read_bytes())
            for at in rng.integers(0, len(raw), int(rng.integers(1, 5))):
                raw[int(at)] ^= int(rng.integers(1, 256))
            trial(lambda p, n=name, r=bytes(raw): (p / n).write_bytes(r))
        if name.endswith(".npy") and not name.startswith("images"):
            arr = np.load(packed / name)
            for other in (
                arr.astype(np.float64),
                arr[:-1],
                arr.reshape(1, -1),
                np.full_like(arr, np.iinfo(arr.dtype).max),
                arr[::-1],
            ):
                trial(lambda p, n=name, o=other: np.save(p / n, o))
    for bad_meta in _meta_mutations(meta, rng):
        trial(lambda p, m=bad_meta: (p / "meta.json").write_text(json.dumps(m), encoding="utf-8"))
    for text in (b"", b"{", b"\xff\xfe", b"null", b"[]", b'{"format": 1}'):
        trial(lambda p, t=text: (p / "meta.json").write_bytes(t))
    assert outcomes["refused"] > 100 and outcomes["ok"] > 5, outcomes
