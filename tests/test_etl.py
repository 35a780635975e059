"""ETL readers against byte-exact synthetic records (tests/etl_records.py)."""

from __future__ import annotations

import numpy as np
import pytest

from etl_records import (
    b_dummy,
    b_record,
    c_record,
    g_record,
    k_record,
    m_record,
    pattern,
    t56,
    write,
)
from kanjirec.data.etl import (
    LAYOUTS,
    SETS,
    decode_records,
    encode_records,
    find_etl_files,
    load_co59_table,
    prepare_etl,
    read_etl_file,
    set_of_file,
)
from kanjirec.errors import EtlFormatError

# ---------------------------------------------------------------- G-type


def test_etl9g_characters_writers_and_pixels(tmp_path):
    path = write(
        tmp_path / "ETL9G_01",
        [g_record(0x3021, 1), g_record(0x2422, 20), g_record(0x4F53, 21), g_record(0x303D, 801)],
    )
    s = read_etl_file(path)
    assert list(s.chars) == ["亜", "あ", "腕", "綾"]
    assert list(s.codes) == [0x3021, 0x2422, 0x4F53, 0x303D]
    # The writer is the data set from the position (ETL9G_01 starts with data set 1), not the sheet.
    assert list(s.writers) == ["ETL9/ds001"] * 4
    assert s.images.shape == (4, 127, 128) and s.images.dtype == np.uint8
    np.testing.assert_array_equal(s.images[0], pattern(127, 128, 16))
    assert s.images[0, 0, :3].tolist() == [0, 1, 2] and s.images[0, 1, 0] == 3
    assert s.max_level == 15


def test_etl8g_image_offset_differs_from_etl9g(tmp_path):
    img = pattern(127, 128, 16)
    s8 = read_etl_file(write(tmp_path / "ETL8G_01", [g_record(0x2422, 11, img, etl9g=False)]))
    np.testing.assert_array_equal(s8.images[0], img)
    assert list(s8.chars) == ["あ"] and list(s8.writers) == ["ETL8/ds001"]
    # ETL8G file n holds data sets 5(n-1)+1 .. 5n: ETL8G_02 starts with data set 6, whatever its sheet.
    s8 = read_etl_file(write(tmp_path / "ETL8G_02", [g_record(0x2422, 11, img, etl9g=False)]))
    assert list(s8.writers) == ["ETL8/ds006"]
    # The same bytes read with the ETL9G layout start 4 bytes (8 pixels) late: the trap the layouts avoid.
    recs = np.frombuffer(g_record(0x2422, 11, img, etl9g=False), np.uint8)[None]
    shifted = decode_records(recs, LAYOUTS["G9"])["image"][0]
    assert not np.array_equal(shifted, img)
    np.testing.assert_array_equal(shifted.reshape(-1)[:-8], img.reshape(-1)[8:])


def test_encoder_writes_the_published_layout_byte_for_byte():
    img = pattern(127, 128, 16)
    recs = encode_records(
        LAYOUTS["G9"],
        {
            "sheet": [7],
            "jis0208": [0x3021],
            "reading": [list(b"A.TSUGU ")],
            "serial": [1],
            "gathered": [8212],
            "scanned": [8310],
        },
        img[None],
    )
    assert recs.tobytes() == g_record(0x3021, 7, img)


# ---------------------------------------------------------------- B-type


def test_etl8b2_drops_dummy_and_decodes_binary_images(tmp_path):
    img = pattern(63, 64, 16) % 2
    path = write(tmp_path / "ETL8B2C1", [b_dummy(), b_record(0x2422, 1, img), b_record(0x3021, 12, img)])
    s = read_etl_file(path)
    assert list(s.chars) == ["あ", "亜"]
    assert list(s.records) == [1, 2]
    assert list(s.writers) == ["ETL8/ds001", "ETL8/ds002"]
    assert s.max_level == 1
    np.testing.assert_array_equal(s.images[1], img)


def test_etl9b_record_size_and_tail_bytes_are_not_image(tmp_path):
    img = pattern(63, 64, 16) % 2
    path = write(
        tmp_path / "ETL9B_2",
        [b_dummy(True), b_record(0x2422, 801, img, True), b_record(0x303D, 1600, img, True)],
    )
    s = read_etl_file(path)
    assert list(s.chars) == ["あ", "綾"]
    assert list(s.writers) == ["ETL9/ds041", "ETL9/ds080"]  # 20 sheets per data set
    np.testing.assert_array_equal(s.images[0], img)


def test_etl9b_sheet_must_lie_in_its_files_range(tmp_path):
    # ETL9B_n holds sheets 800(n-1)+1 .. 800n; sheet 801 belongs to ETL9B_2, not ETL9B_1.
    path = write(
        tmp_path / "ETL9B_1",
        [b_dummy(True), b_record(0x2422, 1, etl9b=True), b_record(0x2422, 801, etl9b=True)],
    )
    with pytest.raises(EtlFormatError, match=r"ETL9B_1: record 2: sheet 801 is not 1..800"):
        read_etl_file(path)


# ---------------------------------------------------------------- writer keys (AIST's ETL9 sample rows)


def _etl9g_file(path, sample_index, sheet, records=None):
    """An ETL9G file whose record ``sample_index`` has ``sheet``, as in AIST's sample rows."""
    records = records or sample_index + 1
    return write(path, [g_record(0x3021, sheet if k == sample_index else 1) for k in range(records)])


def test_etl9g_writer_is_the_data_set_of_aists_sample_rows(tmp_path):
    # AIST's ETL9 page: ETL9G_01 record 1 has sheet 1, ETL9G_11 record 101 sheet 1, ETL9G_21 record 201
    # sheet 2, ETL9G_41 record 401 sheet 3; ETL9G_11 holds data sets 41-44 (4 of 3,036 records a file).
    rows = [("ETL9G_01", 0, 1, "ETL9/ds001"), ("ETL9G_11", 100, 1, "ETL9/ds041")]
    rows += [("ETL9G_21", 200, 2, "ETL9/ds081"), ("ETL9G_41", 400, 3, "ETL9/ds161")]
    for name, index, sheet, key in rows:
        s = read_etl_file(_etl9g_file(tmp_path / name, index, sheet))
        assert s.writers[index] == key, name
    # The second data set of a file starts at record 3,036.
    s = read_etl_file(_etl9g_file(tmp_path / "b" / "ETL9G_11", 0, 1, records=3037))
    assert (s.writers[:3036] == "ETL9/ds041").all() and s.writers[3036] == "ETL9/ds042"


def test_etl9b_and_etl9g_agree_on_a_writer(tmp_path):
    # ETL9B_2 record 100 has sheet 801 (AIST's sample): data set 41, the first of ETL9G_11.
    b = write(tmp_path / "ETL9B_2", [b_dummy(True)] + [b_record(0x303D, 801, etl9b=True)] * 100)
    g = _etl9g_file(tmp_path / "ETL9G_11", 100, 1)
    assert read_etl_file(b).writers[99] == read_etl_file(g).writers[100] == "ETL9/ds041"


def test_writer_disjoint_split_of_etl9_separates_writers(tmp_path):
    from kanjirec.data.store import PackedDataset

    root = tmp_path / "etl"
    # Sheets 1, 1, 2 as in AIST's samples: keyed by sheet these three writers were one.
    for name, sheet in (("ETL9G_01", 1), ("ETL9G_11", 1), ("ETL9G_21", 2)):
        write(root / name, [g_record(c, sheet) for c in (0x2422, 0x3021, 0x303D)])
    write(root / "ETL9B_2", [b_dummy(True)] + [b_record(c, 801, etl9b=True) for c in (0x2422, 0x3021)])
    ds = PackedDataset.open(prepare_etl(root, ["ETL9G", "ETL9B"], tmp_path / "ds", quiet=True))
    assert sorted(ds.writers) == ["ETL9/ds001", "ETL9/ds041", "ETL9/ds081"]
    for w in range(len(ds.writers)):
        assert len(np.unique(ds.split[ds.writer_ids == w])) == 1
    # ETL9B_2's data set 41 is ETL9G_11's: one writer, whichever set the sample came from.
    ds041 = ds.writers.index("ETL9/ds041")
    assert (
        sorted(ds.sources[k] for k in ds.source_ids[ds.writer_ids == ds041]) == ["ETL9B"] * 2 + ["ETL9G"] * 3
    )


def test_records_beyond_a_files_data_sets_are_refused(tmp_path):
    # ETL8G_32 holds data sets 156-160, 5 x 956 records; a record after them has no writer.
    path = write(tmp_path / "ETL8G_32", [g_record(0x3021, 1, etl9g=False)] * (5 * 956 + 1))
    with pytest.raises(EtlFormatError, match=r"ETL8G_32: record 4780: beyond the 4,780 records"):
        read_etl_file(path)
    s = read_etl_file(path, skip_bad_records=True)
    assert len(s) == 4780 and s.writers[0] == "ETL8/ds156" and s.writers[-1] == "ETL8/ds160"


def test_file_numbers_outside_the_set_are_refused(tmp_path):
    with pytest.raises(EtlFormatError, match=r"ETL9G_51: ETL9G files are ETL9G_01 \.\.\. ETL9G_50"):
        read_etl_file(write(tmp_path / "ETL9G_51", [g_record(0x3021, 1)]))


def test_etl9b_model_images_dropped_by_default(tmp_path):
    sample = b_record(0x3021, 3981, etl9b=True)
    model = b_record(0x3021, 4001, etl9b=True)
    path = write(tmp_path / "ETL9B_5", [b_dummy(True)] + [sample] * 5 + [model] * 3036)
    assert len(read_etl_file(path)) == 5
    kept = read_etl_file(path, keep_model_images=True)
    assert len(kept) == 5 + 3036
    assert kept.model.sum() == 3036 and set(kept.writers[5:]) == {"ETL9/model"}


def test_b_type_dummy_must_be_a_dummy(tmp_path):
    path = write(tmp_path / "ETL9B_2", [b_record(0x2422, 1, etl9b=True), b_record(0x2422, 1, etl9b=True)])
    with pytest.raises(EtlFormatError, match=r"ETL9B_2: record 0: .*dummy"):
        read_etl_file(path)


# ---------------------------------------------------------------- M-type


def test_etl1_katakana_latin_digits(tmp_path):
    img = pattern(63, 64, 16)
    path = write(
        tmp_path / "ETL1C_07",
        [
            m_record(0xB1, 42, img, b" A"),
            m_record(0xB6, 42, img, b"KA"),
            m_record(0x41, 43),
            m_record(0x30, 43),
        ],
    )
    s = read_etl_file(path)
    assert list(s.chars) == ["ア", "カ", "A", "0"]
    assert list(s.writers) == ["ETL1/s00042", "ETL1/s00042", "ETL1/s00043", "ETL1/s00043"]
    assert s.images.shape == (4, 63, 64)
    np.testing.assert_array_equal(s.images[0], img)


def test_etl7_is_hiragana_with_spacing_voicing_marks(tmp_path):
    path = write(
        tmp_path / "ETL7LC_1",
        [m_record(0xB1, 1), m_record(0xA6, 1), m_record(0xDE, 2), m_record(0xDF, 2), m_record(0xDD, 3)],
    )
    s = read_etl_file(path)
    assert list(s.chars) == ["あ", "を", "\u309b", "\u309c", "ん"]
    assert list(s.writers) == ["ETL7/s00001", "ETL7/s00001", "ETL7/s00002", "ETL7/s00002", "ETL7/s00003"]


def test_etl7_rejects_a_non_kana_code(tmp_path):
    path = write(tmp_path / "ETL7SC_2", [m_record(0xB1, 1), m_record(0x41, 1)])
    with pytest.raises(EtlFormatError, match=r"ETL7SC_2: record 1: .*0x41"):
        read_etl_file(path)


def test_etl6_katakana_and_latin(tmp_path):
    s = read_etl_file(write(tmp_path / "ETL6C_01", [m_record(0xB1, 5), m_record(0x5A, 6)]))
    assert list(s.chars) == ["ア", "Z"]


# ---------------------------------------------------------------- C-type


def test_etl4_hiragana_by_class_flag_and_header_fields(tmp_path):
    img = pattern(76, 72, 16)
    path = write(tmp_path / "ETL4C", [c_record(0xB1, "H  A", 5001, img), c_record(0xB6, "H KA", 5002)])
    s = read_etl_file(path)
    assert list(s.chars) == ["あ", "か"]
    assert list(s.writers) == ["ETL4/s05001", "ETL4/s05002"]
    np.testing.assert_array_equal(s.images[0], img)
    recs = np.frombuffer(path.read_bytes(), np.uint8).reshape(-1, 2952)
    f = decode_records(recs, LAYOUTS["C"])
    assert f["sheet"].tolist() == [5001, 5002]
    assert f["jis0201"].tolist() == [0xB1, 0xB6]
    assert f["ebcdic"].tolist() == [0x81, 0x81]
    assert f["class_code"][0].tolist() == t56("H  A")
    assert f["pos_y"].tolist() == [2, 2] and f["pos_x"].tolist() == [5, 5] and f["age"].tolist() == [23, 23]
    assert f["gathered"][0] == 741202 and f["scanned"][0] == 741216
    assert (f["x_points"][0], f["y_points"][0], f["levels"][0], f["magnification"][0]) == (72, 76, 16, 133)


def test_etl5_katakana_and_etl3_digits(tmp_path):
    s5 = read_etl_file(write(tmp_path / "ETL5C", [c_record(0xB6, "K KA", 9)]))
    assert list(s5.chars) == ["カ"]
    s3 = read_etl_file(write(tmp_path / "ETL3C_1", [c_record(0x30, "N  0"), c_record(0x41, "A  A")]))
    assert list(s3.chars) == ["0", "A"]


def test_c_type_class_flag_must_match_the_code(tmp_path):
    path = write(tmp_path / "ETL3C_2", [c_record(0x30, "N  0"), c_record(0xB1, "N  0")])
    with pytest.raises(EtlFormatError, match=r"ETL3C_2: record 1: class code N"):
        read_etl_file(path)


# ---------------------------------------------------------------- K-type


def _co59_file(tmp_path):
    path = tmp_path / "euc_co59.dat"
    path.write_bytes("亜:16,1 あ:4,2\nア:5,2".encode("euc_jp"))
    return path


def test_etl2_with_a_user_co59_table(tmp_path):
    table = load_co59_table(_co59_file(tmp_path))
    img = pattern(60, 60, 64)
    path = write(
        tmp_path / "ETL2_1",
        [k_record(16, 1, image=img), k_record(4, 2, "HRKANA", "B"), k_record(5, 2, "KTKANA", "C")],
    )
    s = read_etl_file(path, co59_table=table)
    assert list(s.chars) == ["亜", "あ", "ア"]
    assert list(s.codes) == [16 * 64 + 1, 4 * 64 + 2, 5 * 64 + 2]
    assert list(s.writers) == ["ETL2/A", "ETL2/B", "ETL2/C"]
    assert s.max_level == 63
    np.testing.assert_array_equal(s.images[0], img)


def test_etl2_without_table_says_where_to_get_it(tmp_path):
    path = write(tmp_path / "ETL2_1", [k_record(16, 1)])
    with pytest.raises(EtlFormatError, match="euc_co59.dat.*unpack.zip"):
        read_etl_file(path)
    with pytest.raises(EtlFormatError, match="euc_co59.dat"):
        prepare_etl(tmp_path, ["ETL2"], tmp_path / "out")


def test_etl2_code_missing_from_table(tmp_path):
    table = load_co59_table(_co59_file(tmp_path))
    path = write(tmp_path / "ETL2_3", [k_record(16, 1, serial=28801), k_record(63, 63, serial=28802)])
    with pytest.raises(EtlFormatError, match=r"ETL2_3: record 1: CO-59 code 4095"):
        read_etl_file(path, co59_table=table)


def test_co59_table_format_errors(tmp_path):
    bad = tmp_path / "bad.dat"
    bad.write_bytes("亜:16,1 あ-4-2".encode("euc_jp"))
    with pytest.raises(EtlFormatError, match=r"token 2 'あ-4-2'"):
        load_co59_table(bad)


# ---------------------------------------------------------------- bad input


def test_truncated_file_names_file_and_record(tmp_path):
    data = g_record(0x3021, 1) + g_record(0x3021, 1)[:5000]
    path = tmp_path / "ETL9G_03"
    path.write_bytes(data)
    with pytest.raises(
        EtlFormatError, match=r"ETL9G_03: record 1: 13199 bytes is not a whole number of 8199"
    ):
        read_etl_file(path)


def test_size_not_a_multiple_of_the_record(tmp_path):
    path = tmp_path / "ETL8B2C2"
    path.write_bytes(bytes(512 * 3 + 7))
    with pytest.raises(EtlFormatError, match=r"ETL8B2C2: record 3: .*512-byte"):
        read_etl_file(path)


def test_unmapped_jis_code_names_the_record(tmp_path):
    # Row 15 (0x2Fxx) of JIS X 0208 is unassigned.
    path = write(tmp_path / "ETL9G_02", [g_record(0x3021, 1), g_record(0x3021, 1), g_record(0x2F21, 1)])
    with pytest.raises(EtlFormatError, match=r"ETL9G_02: record 2: JIS X 0208 code 0x2f21"):
        read_etl_file(path)


# One real file name of every set, so every layout and every set's own checks are tried.
EVERY_SET = ("ETL1C_01", "ETL2_1", "ETL3C_1", "ETL4C", "ETL5C", "ETL6C_01", "ETL7LC_1", "ETL7SC_1")
EVERY_SET += ("ETL8B2C1", "ETL8G_01", "ETL9B_1", "ETL9G_01")


@pytest.mark.parametrize("name", EVERY_SET)
def test_random_bytes_are_refused_for_every_set(tmp_path, name):
    etl = tmp_path / "etl"
    set_name = set_of_file(name)
    size = SETS[set_name].layout.record_size
    path = etl / name
    write(path, [np.random.default_rng(1).integers(0, 256, 30 * size, dtype=np.uint8).tobytes()])
    table = _co59_file(etl)
    with pytest.raises(EtlFormatError, match=rf"{name}: record \d+: "):
        read_etl_file(path, co59_table=load_co59_table(table))
    # With skip_bad_records too: the whole file is refused, and prepare writes nothing.
    with pytest.raises(EtlFormatError, match=rf"{name}: record \d+: .*records are bad .*refused whole"):
        read_etl_file(path, skip_bad_records=True, co59_table=load_co59_table(table))
    with pytest.raises(EtlFormatError, match="refused whole"):
        prepare_etl(etl, [set_name], tmp_path / "ds", skip_bad_records=True, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etl"]  # no dataset, no .partial folder


def _one_good_record(name):
    if name.startswith(("ETL1", "ETL6")):
        return m_record(0x41)
    if name.startswith("ETL7"):
        return m_record(0xB1)
    if name.startswith("ETL2"):
        return k_record(16, 1)
    if name.startswith(("ETL3", "ETL4", "ETL5")):
        return c_record(0xB1, "K  A")
    if name.startswith("ETL8B"):
        return b_record(0x3021, 1)
    if name.startswith("ETL9B"):
        return b_record(0x3021, 1, etl9b=True)
    return g_record(0x3021, 1, etl9g=name.startswith("ETL9G"))


@pytest.mark.parametrize("name", EVERY_SET)
def test_random_records_among_good_ones_are_all_caught(tmp_path, name):
    # 20 records of random bytes among 400 good ones (under 5%): every one must be reported, not
    # decoded. Checking the code alone let 4 of 5 random ETL1 records through.
    size = SETS[set_of_file(name)].layout.record_size
    rng = np.random.default_rng(5)
    records = [_one_good_record(name)] * 400
    where = sorted(rng.choice(np.arange(1, 420), 20, replace=False).tolist())
    for k in where:
        records.insert(k, rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    if name.startswith(("ETL8B", "ETL9B")):
        records.insert(0, b_dummy(name.startswith("ETL9B")))
        where = [k + 1 for k in where]
    table = load_co59_table(_co59_file(tmp_path))
    s = read_etl_file(write(tmp_path / name, records), skip_bad_records=True, co59_table=table)
    assert sorted(b.record for b in s.bad) == where
    assert len(s) == 400 and len(set(s.chars)) == 1


def test_skip_bad_records_reports_each_one(tmp_path):
    good = [g_record(0x3021, 1)] * 30 + [g_record(0x2422, 1)] * 30
    data = b"".join(good[:1] + [g_record(0x2F21, 1)] + good[1:] + [g_record(0x0000, 0)])
    path = tmp_path / "ETL9G_04"
    path.write_bytes(data + b"\x00" * 100)
    s = read_etl_file(path, skip_bad_records=True)
    assert len(s) == 60 and list(s.chars[:1]) + list(s.chars[-1:]) == ["亜", "あ"]
    assert list(s.records[:2]) == [0, 2] and s.records[-1] == 60
    assert [(b.path.name, b.record) for b in s.bad] == [("ETL9G_04", 62), ("ETL9G_04", 1), ("ETL9G_04", 61)]
    assert "truncated" in s.bad[0].reason and "0x2f21" in s.bad[1].reason
    # One bad record more is more than 5% of the file's 62: refused whole.
    path.write_bytes(b"".join([g_record(0x2F21, 1)] * 2 + good[2:] + [g_record(0, 0)]) + b"\x00" * 100)
    with pytest.raises(EtlFormatError, match=r"ETL9G_04: record 61: truncated.* 4 of the file's 62 records"):
        read_etl_file(path, skip_bad_records=True)


# ---------------------------------------------------------------- file discovery


def test_find_files_per_set_folders_and_flat(tmp_path):
    nested = tmp_path / "nested"
    write(nested / "ETL9G" / "ETL9G_02", [g_record(0x3021, 1)])
    write(nested / "ETL9G" / "ETL9G_01", [g_record(0x3021, 1)])
    write(nested / "ETL9G" / "ETL9INFO", [b"info"])
    write(nested / "ETL7" / "ETL7LC_1", [m_record(0xB1)])
    write(nested / "ETL7" / "ETL7SC_1", [m_record(0xB1)])
    write(nested / "ETL7" / "etl7lc_2", [m_record(0xB1)])  # wrong case: not a real name
    found = find_etl_files(nested, ["ETL9G", "ETL7"])
    assert {k: [p.name for p in v] for k, v in found.items()} == {
        "ETL9G": ["ETL9G_01", "ETL9G_02"],
        "ETL7L": ["ETL7LC_1"],
        "ETL7S": ["ETL7SC_1"],
    }
    flat = tmp_path / "flat"
    write(flat / "ETL8B2C1", [b_dummy()])
    write(flat / "ETL1C_01", [m_record(0x41)])
    write(flat / "ETL1INFO", [b"x"])
    write(flat / "ETL7LC_2", [m_record(0xB1)])
    found = find_etl_files(flat, ["etl8b2", "ETL1", "ETL7"])
    # ETL7 stands for ETL7L + ETL7S; one of them present is enough.
    assert {k: [p.name for p in v] for k, v in found.items()} == {
        "ETL8B": ["ETL8B2C1"],
        "ETL1": ["ETL1C_01"],
        "ETL7L": ["ETL7LC_2"],
    }


def test_missing_set_lists_what_was_looked_for(tmp_path):
    write(tmp_path / "ETL9G_01", [g_record(0x3021, 1)])
    with pytest.raises(EtlFormatError, match=r"ETL8G.*ETL8G_01 \.\.\. ETL8G_33"):
        find_etl_files(tmp_path, ["ETL9G", "ETL8G"])
    with pytest.raises(EtlFormatError, match="unknown ETL set 'ETL10'"):
        find_etl_files(tmp_path, ["ETL10"])


# ---------------------------------------------------------------- prepare


def _block(h, w, level):
    """A filled square of full ink in the middle of a blank frame."""
    img = np.zeros((h, w), np.uint8)
    img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = level
    return img


def _combined_tree(root):
    # 4 writers per set so a writer-disjoint split has train, val and test writers.
    m, g = _block(63, 64, 15), _block(127, 128, 15)
    write(root / "ETL6" / "ETL6C_01", [m_record(c, sheet, m) for sheet in range(1, 5) for c in (0xB1, 0x41)])
    write(root / "ETL7" / "ETL7LC_1", [m_record(c, sheet, m) for sheet in range(1, 5) for c in (0xB1, 0xB2)])
    write(
        root / "ETL9G" / "ETL9G_01",
        [g_record(c, sheet, g) for sheet in (1, 21, 41, 61) for c in (0x2422, 0x3021)],
    )


def test_prepare_merges_same_characters_across_sets(tmp_path, capsys):
    from kanjirec.data.store import PackedDataset

    _combined_tree(tmp_path / "etl")
    out = prepare_etl(tmp_path / "etl", ["ETL6", "ETL7L", "ETL9G"], tmp_path / "ds", quiet=True)
    ds = PackedDataset.open(out)
    # ア A (ETL6) + あ い (ETL7) + あ 亜 (ETL9G): あ is one class, so 5 classes, not 6.
    assert ds.classes == ["A", "あ", "い", "ア", "亜"]
    assert len(ds) == 24
    assert sorted(ds.sources) == ["ETL6", "ETL7L", "ETL9G"]
    hira_a = ds.classes.index("あ")
    from_sets = {ds.sources[k] for k in ds.source_ids[ds.labels == hira_a]}
    assert from_sets == {"ETL7L", "ETL9G"}
    assert set(ds.codes[ds.labels == ds.classes.index("亜")]) == {0x3021}
    assert "ETL9/ds001" in ds.writers and "ETL6/s00001" in ds.writers
    # Ink stays bright on a dark background (ETL stores ink high: no inversion).
    imgs = ds.images[np.arange(len(ds))]
    assert imgs.shape == (24, 64, 64) and imgs.dtype == np.uint8
    assert (imgs[:, 32, 32] == 255).all() and (imgs[:, 0, 0] == 0).all()
    # Writer-disjoint: no writer in two splits.
    for w in np.unique(ds.writer_ids):
        assert len(np.unique(ds.split[ds.writer_ids == w])) == 1


def test_prepare_skip_flag_counts_bad_records(tmp_path, capsys):
    root = tmp_path / "etl"
    write(root / "ETL9G_01", [g_record(c, sheet) for sheet in (1, 21, 41, 61) for c in (0x2422, 0x3021)])
    # One corrupt record among 21 (under 5%): skipped and reported with --skip-bad-records.
    write(root / "ETL9G_02", [g_record(0x3021, 81), g_record(0x2F21, 81)] + [g_record(0x2422, 81)] * 19)
    write(root / "ETL9G_03", [g_record(0x3021, 1)])
    with pytest.raises(EtlFormatError, match="ETL9G_02: record 1"):
        prepare_etl(root, ["ETL9G"], tmp_path / "ds1", quiet=True)
    assert not (tmp_path / "ds1").exists() and not (tmp_path / "ds1.partial").exists()
    prepare_etl(root, ["ETL9G"], tmp_path / "ds2", skip_bad_records=True)
    captured = capsys.readouterr()
    assert "ETL9G_02: record 1: JIS X 0208 code 0x2f21" in captured.err
    assert "29 samples" in captured.out and "1 bad records skipped" in captured.out
