"""KanjiVG decompositions, the component vocabulary and its encodings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kanjirec.charset import get_charset
from kanjirec.data.kanjivg import load_kanjivg
from kanjirec.decompose import (
    ComponentTable,
    DecompositionError,
    decompose,
    pack_strings,
    unpack_strings,
)


def test_known_decompositions_follow_kanjivg_tree_order() -> None:
    assert decompose("明") == ["日", "月"]
    assert decompose("語") == ["言", "口", "吾", "五", "二", "口"]
    assert decompose("林") == ["木", "木"]
    # Visual forms as KanjiVG draws them, not their originals (⻏ is 邑, 氵 is 水).
    assert decompose("部") == ["咅", "立", "亠", "口", "⻏"]
    assert decompose("海")[0] == "氵"


def test_characters_without_components_are_their_own_component() -> None:
    assert decompose("あ") == ["あ"]
    assert decompose("一") == ["一"]
    assert decompose("日") == ["日"]


def test_unknown_character_is_a_clear_error() -> None:
    with pytest.raises(DecompositionError, match="U\\+AC00"):
        decompose("\uac00")  # Hangul: KanjiVG has no entry


def test_table_targets_and_sequences_keep_every_component() -> None:
    classes = list("明語林日月あ")
    table = ComponentTable.build(classes)
    index = {c: i for i, c in enumerate(table.vocabulary)}
    assert set(table.vocabulary) == {"日", "月", "あ", "言", "口", "吾", "五", "二", "木"}
    row = table.targets[classes.index("明")]
    assert set(np.flatnonzero(row)) == {index["日"], index["月"]}
    # 口 occurs twice in 語 and once counts in the multi-hot; the sequence keeps tree order, whole.
    assert table.sequences.shape == (6, 6)  # the longest decomposition, 語's
    seq = table.sequences[classes.index("語")]
    assert [table.vocabulary[i] for i in seq] == ["言", "口", "吾", "五", "二", "口"]
    assert table.lengths[classes.index("語")] == 6
    assert list(table.sequences[classes.index("あ")]) == [index["あ"], -1, -1, -1, -1, -1]


def test_vocabulary_is_ranked_by_class_frequency_then_code_point() -> None:
    # 口 is in 語 (twice, counted once), 唄, 品 and 叶; every other component is in one class.
    table = ComponentTable.build(list("語唄品叶林"))
    assert table.vocabulary == ("口", "二", "五", "八", "十", "吾", "木", "目", "言", "貝")


def test_etl9g_table_gives_every_class_its_whole_decomposition() -> None:
    classes = get_charset("etl9g")
    kanjivg = load_kanjivg()
    table = ComponentTable.build(classes, kanjivg)
    decomposed = [decompose(c, kanjivg) for c in classes]
    assert set(table.vocabulary) == {x for d in decomposed for x in d}
    assert table.targets.shape == (3036, len(table.vocabulary))
    index = {x: i for i, x in enumerate(table.vocabulary)}
    for row, d in enumerate(decomposed):
        assert set(np.flatnonzero(table.targets[row])) == {index[x] for x in d}
        assert table.sequences[row, : table.lengths[row]].tolist() == [index[x] for x in d]
    assert table.lengths.min() >= 1  # no class without a target
    # The components a 500-entry vocabulary used to drop.
    parts = {
        c: {table.vocabulary[i] for i in np.flatnonzero(table.targets[classes.index(c)])} for c in "語働羽"
    }
    assert "吾" in parts["語"] and "動" in parts["働"] and parts["羽"] == {"习"}
    assert all(table.lengths[classes.index(k)] == 1 for k in "あいうを")


def test_one_hot_codes_decode_to_each_component() -> None:
    table = ComponentTable.build(list("語唄品叶林"))
    codes = table.encoding("one_hot")
    assert codes.shape == (10, 10)
    assert codes.sum(axis=1).tolist() == [1.0] * 10
    assert codes.argmax(axis=1).tolist() == list(range(10))


def test_binary_tree_codes_are_frequency_ranks_in_binary() -> None:
    table = ComponentTable.build(list("語唄品叶林"))
    codes = table.encoding("binary_tree")
    vocab = list(table.vocabulary)
    assert codes.shape == (10, 4)  # ceil(log2 10) bits
    # 口 (rank 0) is the all-left path; 吾 is rank 5 = 0101, 貝 rank 9 = 1001, most significant bit first.
    assert codes[vocab.index("口")].tolist() == [-1, -1, -1, -1]
    assert codes[vocab.index("吾")].tolist() == [-1, 1, -1, 1]
    assert codes[vocab.index("貝")].tolist() == [1, -1, -1, 1]
    decoded = ((codes > 0).astype(int) * (2 ** np.arange(3, -1, -1))).sum(axis=1)
    assert decoded.tolist() == list(range(10))


def test_binary_tree_width_for_the_etl9g_vocabulary() -> None:
    table = ComponentTable.build(get_charset("etl9g"))
    v = len(table.vocabulary)
    codes = table.encoding("binary_tree")
    assert codes.shape == (v, math.ceil(math.log2(v)))
    decoded = ((codes > 0).astype(np.int64) << np.arange(codes.shape[1] - 1, -1, -1)).sum(axis=1)
    assert decoded.tolist() == list(range(v))


def test_learned_and_unknown_encodings() -> None:
    table = ComponentTable.build(list("明林"))
    assert table.encoding("learned") is None
    with pytest.raises(ValueError, match="one_hot"):
        table.encoding("hash")


def test_multi_hot_of_a_character_outside_the_classes() -> None:
    table = ComponentTable.build(list("日月木"))
    row = table.multi_hot(["明"])[0]
    assert {table.vocabulary[i] for i in np.flatnonzero(row)} == {"日", "月"}
    with pytest.raises(DecompositionError, match="語.*no component in the vocabulary"):
        table.multi_hot(["語"])


def test_pack_strings_round_trip_with_long_elements() -> None:
    strings = ["口", "CDP-8CB8", "⿱日隹"]
    assert unpack_strings(pack_strings(strings)) == strings
