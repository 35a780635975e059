"""Kanji -> components from KanjiVG's component trees, the component vocabulary, and encodings.

How a character is decomposed (``decompose``):

* KanjiVG nests ``<g kvg:element=...>`` groups; we walk the tree in pre-order (KanjiVG's
  order, which follows writing order: left before right, top before bottom, outer before
  inner) and take the ``kvg:element`` of **every group below the root, at every depth**. So
  語 -> 言, 口, 吾, 五, 二, 口 and 明 -> 日, 月. Groups without an element are walked through.
* A component split around another one (``kvg:part`` 1, 2, ...) counts once, at its first
  part. Repeats are kept in the ordered sequence (林 -> 木, 木) and collapse in the set.
* The visual form is used as KanjiVG writes it (氵, not its ``kvg:original`` 水), since
  the model sees shapes.
* A character with no element below its root (kana, 一, 日, ...) is its own single
  component. So 日 as a class and 日 inside 明 share one component.

The vocabulary (``ComponentTable``) is built from a class list: first every class that is its
own single component ("atoms": kana and simple kanji, always kept so no such class has an
empty decomposition), then the other components ranked by how many classes contain them
(ties by code point), up to ``vocab_size`` in all. Components outside the vocabulary are
dropped; a class left with none is listed in ``uncovered`` (1 of the 3,036 ETL9G classes, 羽, at
the default size of 500).

Encodings of a component (rows of a ``(V, D)`` matrix that multiplies a probability vector):

* ``one_hot``: the identity, D = V.
* ``binary_tree``: the component's index in the frequency-ranked vocabulary written in
  binary, bits as -1/+1, D = ceil(log2 V): its path from the root of a complete binary tree
  whose leaves are the components in frequency order. Frequent components share prefixes.
* ``learned``: no fixed matrix; the model learns a ``(V, D)`` embedding.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kanjirec.errors import KanjirecError

ENCODINGS = ("one_hot", "binary_tree", "learned")


class DecompositionError(KanjirecError):
    """A character has no KanjiVG entry, so its components are unknown."""


def _walk(node, is_root: bool, out: list[str]) -> None:
    if not is_root and node.element and (node.part is None or node.part == 1):
        out.append(node.element)
    for child in node.children:
        _walk(child, False, out)


def decompose(char: str, kanjivg: dict | None = None) -> list[str]:
    """Ordered components of ``char`` (pre-order, every depth); itself if it has none."""
    if kanjivg is None:
        from kanjirec.data.kanjivg import load_kanjivg

        kanjivg = load_kanjivg()
    entry = kanjivg.get(char)
    if entry is None:
        raise DecompositionError(f"character {char!r} (U+{ord(char):04X}) has no KanjiVG entry")
    out: list[str] = []
    _walk(entry.root, True, out)
    return out or [char]


def pack_strings(strings: Sequence[str]) -> np.ndarray:
    """Strings -> (n, longest) int64 code points padded with 0, so they can live in a state dict.

    Most components are one character; a few KanjiVG elements are longer (CDP-8CB8, ⿱日隹).
    """
    width = max((len(s) for s in strings), default=1)
    out = np.zeros((len(strings), width), np.int64)
    for row, s in enumerate(strings):
        out[row, : len(s)] = [ord(ch) for ch in s]
    return out


def unpack_strings(codes: np.ndarray) -> list[str]:
    return ["".join(chr(c) for c in row if c) for row in codes.tolist()]


@dataclass(frozen=True)
class ComponentTable:
    """The component vocabulary of a class list and each class's decomposition in it.

    targets: (C, V) float32 multi-hot; sequences: (C, max_len) int64 vocabulary indices in tree
    order, padded with -1; lengths: (C,) int64.
    """

    classes: tuple[str, ...]
    vocabulary: tuple[str, ...]
    targets: np.ndarray
    sequences: np.ndarray
    lengths: np.ndarray
    uncovered: tuple[str, ...]

    @classmethod
    def build(
        cls, classes: Sequence[str], vocab_size: int = 500, max_len: int = 12, kanjivg: dict | None = None
    ) -> ComponentTable:
        if kanjivg is None:
            from kanjirec.data.kanjivg import load_kanjivg

            kanjivg = load_kanjivg()
        if vocab_size < 1 or max_len < 1:
            raise ValueError(f"vocab_size and max_len must be positive, got {vocab_size}, {max_len}")
        decomposed = [decompose(c, kanjivg) for c in classes]
        atoms = sorted({d[0] for c, d in zip(classes, decomposed, strict=True) if d == [c]})
        if len(atoms) > vocab_size:
            raise ValueError(
                f"vocab_size {vocab_size} is smaller than the {len(atoms)} classes that are their own "
                "single component (kana, simple kanji); raise vocab_size"
            )
        atom_set = set(atoms)
        counts = Counter(x for d in decomposed for x in set(d) if x not in atom_set)
        ranked = sorted(counts, key=lambda x: (-counts[x], x))
        # Atoms are also ranked by frequency so that the binary code stays frequency-ordered.
        all_counts = Counter(x for d in decomposed for x in set(d))
        vocabulary = sorted([*atoms, *ranked[: vocab_size - len(atoms)]], key=lambda x: (-all_counts[x], x))
        return cls.from_vocabulary(classes, vocabulary, max_len, kanjivg, decomposed)

    @classmethod
    def from_vocabulary(
        cls,
        classes: Sequence[str],
        vocabulary: Sequence[str],
        max_len: int,
        kanjivg: dict | None = None,
        decomposed: list[list[str]] | None = None,
    ) -> ComponentTable:
        if decomposed is None:
            decomposed = [decompose(c, kanjivg) for c in classes]
        index = {x: i for i, x in enumerate(vocabulary)}
        targets = np.zeros((len(classes), len(vocabulary)), np.float32)
        sequences = np.full((len(classes), max_len), -1, np.int64)
        lengths = np.zeros(len(classes), np.int64)
        uncovered = []
        for row, d in enumerate(decomposed):
            ids = [index[x] for x in d if x in index][:max_len]
            targets[row, ids] = 1.0
            sequences[row, : len(ids)] = ids
            lengths[row] = len(ids)
            if not ids:
                uncovered.append(classes[row])
        return cls(tuple(classes), tuple(vocabulary), targets, sequences, lengths, tuple(uncovered))

    def multi_hot(self, chars: Sequence[str], kanjivg: dict | None = None) -> np.ndarray:
        """(len(chars), V) multi-hot decompositions of any characters, classes or not (zero-shot)."""
        index = {x: i for i, x in enumerate(self.vocabulary)}
        class_row = {c: i for i, c in enumerate(self.classes)}
        out = np.zeros((len(chars), len(self.vocabulary)), np.float32)
        for row, c in enumerate(chars):
            if c in class_row:
                out[row] = self.targets[class_row[c]]
                continue
            ids = [index[x] for x in decompose(c, kanjivg) if x in index]
            if not ids:
                raise DecompositionError(f"character {c!r} has no component in the vocabulary")
            out[row, ids] = 1.0
        return out

    def encoding(self, kind: str) -> np.ndarray | None:
        """The fixed ``(V, D)`` code matrix of an encoding; None for ``learned``."""
        v = len(self.vocabulary)
        if kind == "one_hot":
            return np.eye(v, dtype=np.float32)
        if kind == "binary_tree":
            bits = max(1, math.ceil(math.log2(v)))
            codes = (np.arange(v)[:, None] >> np.arange(bits - 1, -1, -1)) & 1
            return codes.astype(np.float32) * 2 - 1
        if kind == "learned":
            return None
        raise ValueError(f"unknown component encoding {kind!r}; use one of {', '.join(ENCODINGS)}")

    def describe(self) -> str:
        return (
            f"{len(self.classes)} classes, {len(self.vocabulary)} components, "
            f"median {int(np.median(self.lengths))} components per class, "
            f"{len(self.uncovered)} classes without an in-vocabulary component"
        )
