"""The packed dataset: round trip, class merging, splits, bad input, import of a user's images."""

import json

import numpy as np
import pytest
from PIL import Image

from kanjirec.data.importer import import_images
from kanjirec.data.preprocess import normalize_images
from kanjirec.data.store import DatasetWriter, PackedDataset, make_split
from kanjirec.errors import DatasetFormatError, ImageInputError


def _write(path, batches, image_size=8, shard_size=7, **finish):
    w = DatasetWriter(path, image_size=image_size, shard_size=shard_size)
    for b in batches:
        w.add(**b)
    return w.finish(**finish)


def _batch(chars, writers, source, seed=0, s=8, strokes=False):
    rng = np.random.default_rng(seed)
    n = len(chars)
    return dict(
        images=rng.integers(0, 256, (n, s, s), dtype=np.uint8),
        chars=list(chars),
        writers=list(writers),
        source=source,
        codes=np.arange(n),
        strokes=[[rng.random((3, 2)) * s, rng.random((2, 2)) * s] for _ in range(n)] if strokes else None,
    )


def test_round_trip_across_shards_keeps_every_sample(tmp_path):
    a = _batch("あいう亜明", [f"A/w{i}" for i in range(5)], "A", seed=1, strokes=True)
    b = _batch("明日月亜亜亜", [f"B/w{i}" for i in range(6)], "B", seed=2, strokes=True)
    ds = PackedDataset.open(_write(tmp_path / "ds", [a, b]))
    assert len(ds) == 11 and len(ds.meta["shards"]) == 2  # shard_size 7 splits 11 samples
    np.testing.assert_array_equal(ds.images[np.arange(11)], np.concatenate([a["images"], b["images"]]))
    np.testing.assert_array_equal(ds.images[9], b["images"][4])
    chars = [ds.classes[i] for i in ds.labels]
    assert "".join(chars) == "あいう亜明明日月亜亜亜"
    assert ds.sources == ["A", "B"] and ds.writers[ds.writer_ids[6]] == "B/w1"
    np.testing.assert_allclose(ds.strokes_of(7)[1], b["strokes"][2][1], atol=0.01)  # float16 on disk


def test_same_character_from_two_sources_is_one_class(tmp_path):
    ds = PackedDataset.open(
        _write(tmp_path / "ds", [_batch("亜あ", ["A/1", "A/2"], "A"), _batch("亜い", ["B/1", "B/2"], "B")])
    )
    assert ds.classes == ["あ", "い", "亜"]  # by code point, merged
    assert np.bincount(ds.labels).tolist() == [1, 1, 2]


def test_writer_split_never_shares_a_writer():
    writers = np.repeat(np.arange(50), 30)
    labels = np.tile(np.arange(30), 50)
    split = make_split(labels, writers, "writer", (0.8, 0.1, 0.1), seed=3)
    owners = [set(writers[split == k]) for k in range(3)]
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    assert [len(o) for o in owners] == [40, 5, 5]
    assert not np.array_equal(split, make_split(labels, writers, "writer", (0.8, 0.1, 0.1), seed=4))


def test_random_split_is_stratified_per_class():
    labels = np.repeat(np.arange(7), 20)
    split = make_split(labels, np.zeros_like(labels), "random", (0.8, 0.1, 0.1), seed=0)
    for c in range(7):
        assert np.bincount(split[labels == c], minlength=3).tolist() == [16, 2, 2]


def test_split_is_stored_and_identical_on_reopen(tmp_path):
    chars = "あいうえお" * 8
    writers = [f"A/w{i // 5}" for i in range(40)]
    path = _write(tmp_path / "ds", [_batch(chars, writers, "A")], seed=7)
    first = PackedDataset.open(path).split.copy()
    np.testing.assert_array_equal(first, PackedDataset.open(path).split)
    assert set(first.tolist()) == {0, 1, 2}


def test_bad_datasets_name_the_file(tmp_path):
    with pytest.raises(DatasetFormatError, match="no meta.json"):
        PackedDataset.open(tmp_path)
    path = _write(tmp_path / "ds", [_batch("あいう", ["A/1", "A/2", "A/3"], "A")])
    (path / "labels.npy").write_bytes(b"garbage")
    with pytest.raises(DatasetFormatError, match="labels.npy"):
        PackedDataset.open(path)
    meta = json.loads((path / "meta.json").read_text())
    meta["version"] = 99
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetFormatError, match="version 99"):
        PackedDataset.open(path)


def test_writer_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetFormatError, match="not empty"):
        DatasetWriter(tmp_path / "x")


def test_normalize_keeps_aspect_and_centres():
    img = np.zeros((1, 127, 128), np.uint8)
    img[0, 10:110, 60:70] = 15  # a tall bar: 100 x 10
    out = normalize_images(img, max_level=15, size=64, crop=True)[0]
    ys, xs = np.nonzero(out > 128)
    assert ys.min() == 2 and ys.max() == 61  # longer side fills size - 2*margin
    assert 5 <= xs.max() - xs.min() + 1 <= 7  # aspect 10:1 kept
    assert abs((xs.min() + xs.max()) / 2 - 31.5) <= 1


def test_normalize_stretches_faint_ink_to_full_range():
    img = np.zeros((1, 32, 32), np.uint8)
    img[0, 8:24, 8:24] = 5  # faint 4-bit ink
    out = normalize_images(img, max_level=15, size=32)
    assert out.max() == 255 and out[0, 0, 0] == 0


def test_import_folder_per_character_and_csv(tmp_path):
    src = tmp_path / "mine"
    for ch in "明日":
        (src / ch).mkdir(parents=True)
        for k in range(3):
            im = np.full((40, 30), 255, np.uint8)  # dark ink on white paper
            im[5:35, 10 + k : 14 + k] = 0
            Image.fromarray(im).save(src / ch / f"{k}.png")
    ds = PackedDataset.open(import_images(src, tmp_path / "a", split="random"))
    assert ds.classes == ["日", "明"] and len(ds) == 6
    assert ds.images[0][0, 0] == 0 and ds.images[0].max() == 255  # inverted into ink-bright

    rows = ["path,character,writer"] + [f"mine/明/{k}.png,明,w{k}" for k in range(3)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    ds = PackedDataset.open(import_images(tmp_path / "labels.csv", tmp_path / "b"))
    assert ds.classes == ["明"] and len(ds.writers) == 3

    (tmp_path / "bad.csv").write_text("path,character\nmine/明/0.png,明日\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="line 2"):
        import_images(tmp_path / "bad.csv", tmp_path / "c")


# ---------------------------------------------------------------- nothing half-written, bad images named


def png_bytes(width, height, data=b""):
    """A PNG of 8-bit grey pixels whose header says width x height; ``data`` is the raw IDAT payload."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(data))
        + chunk(b"IEND", b"")
    )


def test_a_failed_write_leaves_no_partial_folder(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), DatasetWriter(tmp_path / "ds", image_size=8) as w:
        w.add(**_batch("あい", ["A/1", "A/2"], "A"))
        assert (tmp_path / "ds.partial").is_dir()  # the shard being written lives here
        raise RuntimeError("boom")
    # finish() refusing (2 writers cannot make a writer-disjoint split) cleans up the same way.
    with (
        pytest.raises(DatasetFormatError, match="at least 3 writers"),
        DatasetWriter(tmp_path / "ds", 8) as w,
    ):
        w.add(**_batch("あい", ["A/1", "A/2"], "A"))
        w.finish()
    assert list(tmp_path.iterdir()) == []


def _good_tree(src):
    for ch in "明日":
        (src / ch).mkdir(parents=True)
        for k in range(3):
            im = np.full((40, 30), 255, np.uint8)
            im[5:35, 10 + k : 14 + k] = 0
            Image.fromarray(im).save(src / ch / f"{k}.png")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (png_bytes(20000, 20000), r"400 megapixels is over the limit of 40 megapixels"),  # Pillow: a bomb
        (png_bytes(8000, 6000), r"8000 x 6000 pixels \(48 megapixels\) is over the limit of 40 megapixels"),
        (png_bytes(64, 64, bytes(64 * 65))[:-30], "truncated or damaged"),
        (np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "not an image file"),
        (b"", "not an image file"),
    ],
    ids=["bomb", "over-limit", "truncated", "random", "empty"],
)
def test_import_refuses_a_bad_image_naming_it(tmp_path, capsys, content, message):
    from kanjirec.cli import main

    src = tmp_path / "mine"
    _good_tree(src)
    (src / "日" / "bad.png").write_bytes(content)
    with pytest.raises(ImageInputError, match=rf"日/bad.png: {message}"):
        import_images(src, tmp_path / "a", split="random")
    # The command line: our message, exit status 2, no traceback, and nothing left behind.
    assert main(["data", "import", str(src), "--out", str(tmp_path / "b"), "--split", "random"]) == 2
    err = capsys.readouterr().err
    assert "bad.png" in err and "Traceback" not in err and "DecompressionBomb" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_open_image_limit_is_one_constant(monkeypatch, tmp_path):
    from kanjirec.data import preprocess

    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(path)
    assert preprocess.open_image(path).size == (40, 30)
    monkeypatch.setattr(preprocess, "MAX_IMAGE_PIXELS", 40 * 30 - 1)
    with pytest.raises(ImageInputError, match="x.png: 40 x 30 pixels"):
        preprocess.open_image(path)
    with pytest.raises(ImageInputError, match="no such image file"):
        preprocess.open_image(tmp_path / "missing.png")


def test_import_csv_errors_name_the_line(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("path,character\nx.png,\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetFormatError, match="latin1.csv: not UTF-8 text"):
        import_images(tmp_path / "latin1.csv", tmp_path / "a")
    (tmp_path / "short.csv").write_text("path,character\nx.png\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="short.csv, line 2: character '' is not one character"):
        import_images(tmp_path / "short.csv", tmp_path / "b")
    (tmp_path / "nopath.csv").write_text("path,character\n,明\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="nopath.csv, line 2: no image path"):
        import_images(tmp_path / "nopath.csv", tmp_path / "c")
    (tmp_path / "missing.csv").write_text("path,character,writer\nnone.png,明,w1\n", encoding="utf-8")
    with pytest.raises(ImageInputError, match="none.png: no such image file"):
        import_images(tmp_path / "missing.csv", tmp_path / "d", split="random")
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".csv"] * 4
