"""KanjiVG decompositions, the component vocabulary and its encodings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kanjirec.charset import get_charset
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


def test_table_targets_and_sequences() -> None:
    classes = list("明語林日月あ")
    table = ComponentTable.build(classes, vocab_size=12, max_len=5)
    index = {c: i for i, c in enumerate(table.vocabulary)}
    # Atoms (classes that are their own component) are always in the vocabulary.
    assert {"あ", "日", "月"} <= set(table.vocabulary)
    row = table.targets[classes.index("明")]
    assert set(np.flatnonzero(row)) == {index["日"], index["月"]}
    # 口 occurs twice in 語 and once counts in the multi-hot; the sequence keeps tree order, truncated.
    seq = table.sequences[classes.index("語")]
    assert [table.vocabulary[i] for i in seq[:5]] == ["言", "口", "吾", "五", "二"]
    assert table.lengths[classes.index("語")] == 5
    assert list(table.sequences[classes.index("あ")]) == [index["あ"], -1, -1, -1, -1]
    assert table.uncovered == ()


def test_vocabulary_is_ranked_by_class_frequency() -> None:
    # 口 is in 語 (twice, counted once), 唄, 品, 叶: the most frequent component.
    table = ComponentTable.build(list("語唄品叶林"), vocab_size=3)
    assert table.vocabulary[0] == "口"
    assert len(table.vocabulary) == 3


def test_etl9g_table_covers_kana_and_almost_every_kanji() -> None:
    classes = get_charset("etl9g")
    table = ComponentTable.build(classes, vocab_size=500)
    assert len(table.vocabulary) == 500
    assert table.targets.shape == (3036, 500)
    assert all(table.lengths[classes.index(k)] == 1 for k in "あいうを")
    assert len(table.uncovered) <= 3


def test_vocab_smaller_than_atoms_is_rejected() -> None:
    with pytest.raises(ValueError, match="own single component"):
        ComponentTable.build(list("あいう"), vocab_size=2)


def test_encodings() -> None:
    table = ComponentTable.build(list("明語林日月あ"), vocab_size=12)
    v = len(table.vocabulary)
    assert np.array_equal(table.encoding("one_hot"), np.eye(v))
    codes = table.encoding("binary_tree")
    assert codes.shape == (v, math.ceil(math.log2(v)))
    assert set(np.unique(codes)) == {-1.0, 1.0}
    assert len({tuple(r) for r in codes}) == v  # every component has its own path
    assert table.encoding("learned") is None
    with pytest.raises(ValueError, match="one_hot"):
        table.encoding("hash")


def test_multi_hot_of_a_character_outside_the_classes() -> None:
    table = ComponentTable.build(list("日月木"), vocab_size=3)
    row = table.multi_hot(["明"])[0]
    assert {table.vocabulary[i] for i in np.flatnonzero(row)} == {"日", "月"}
    with pytest.raises(DecompositionError, match="no component in the vocabulary"):
        table.multi_hot(["語"])


def test_pack_strings_round_trip_with_long_elements() -> None:
    strings = ["口", "CDP-8CB8", "⿱日隹"]
    assert unpack_strings(pack_strings(strings)) == strings
