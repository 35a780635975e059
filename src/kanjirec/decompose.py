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

The vocabulary (``ComponentTable``) is built from a class list: **every** component that occurs
in the decompositions of the classes, at any depth, ranked by how many classes contain it (ties by
code point). Nothing is dropped, so every class keeps its whole decomposition as its target, and
since a character without components is its own component, no class is left without one. For the
3,036 ETL9G classes that is 1,084 components; a frequency floor would not shrink it much, because
990 of them are top-level components of some class (and 383 occur in one class only).

Encodings of a component (rows of a ``(V, D)`` matrix that multiplies a probability vector):

* ``one_hot``: the identity, D = V.
* ``binary_tree``: the component's index in the frequency-ranked vocabulary written in
  binary, most significant bit first, bits as -1/+1, D = ceil(log2 V) (11 for ETL9G's 1,084): its
  path from the root of a complete binary tree whose leaves are the components in frequency
  order. Frequent components share prefixes.
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


def multi_hot(chars: Sequence[str], vocabulary: Sequence[str], kanjivg: dict | None = None) -> np.ndarray:
    """(len(chars), V) multi-hot decompositions of any characters over ``vocabulary`` (zero-shot).

    Components outside the vocabulary are left out; a character with none inside it is an error,
    since it could not be scored at all.
    """
    index = {x: i for i, x in enumerate(vocabulary)}
    out = np.zeros((len(chars), len(vocabulary)), np.float32)
    for row, c in enumerate(chars):
        ids = [index[x] for x in decompose(c, kanjivg) if x in index]
        if not ids:
            raise DecompositionError(f"character {c!r} (U+{ord(c):04X}) has no component in the vocabulary")
        out[row, ids] = 1.0
    return out


@dataclass(frozen=True)
class ComponentTable:
    """The component vocabulary of a class list and each class's whole decomposition in it.

    targets: (C, V) float32 multi-hot; sequences: (C, L) int64 vocabulary indices in tree order,
    padded with -1, L the longest decomposition of the classes; lengths: (C,) int64, all >= 1.
    """

    classes: tuple[str, ...]
    vocabulary: tuple[str, ...]
    targets: np.ndarray
    sequences: np.ndarray
    lengths: np.ndarray

    @classmethod
    def build(cls, classes: Sequence[str], kanjivg: dict | None = None) -> ComponentTable:
        if not classes:
            raise ValueError("a component table needs at least one class")
        if kanjivg is None:
            from kanjirec.data.kanjivg import load_kanjivg

            kanjivg = load_kanjivg()
        decomposed = [decompose(c, kanjivg) for c in classes]
        counts = Counter(x for d in decomposed for x in set(d))
        vocabulary = sorted(counts, key=lambda x: (-counts[x], x))
        index = {x: i for i, x in enumerate(vocabulary)}
        lengths = np.array([len(d) for d in decomposed], np.int64)
        targets = np.zeros((len(classes), len(vocabulary)), np.float32)
        sequences = np.full((len(classes), int(lengths.max())), -1, np.int64)
        for row, d in enumerate(decomposed):
            ids = [index[x] for x in d]
            targets[row, ids] = 1.0
            sequences[row, : len(ids)] = ids
        return cls(tuple(classes), tuple(vocabulary), targets, sequences, lengths)

    def multi_hot(self, chars: Sequence[str], kanjivg: dict | None = None) -> np.ndarray:
        """(len(chars), V) multi-hot decompositions of any characters, classes or not (zero-shot)."""
        return multi_hot(chars, self.vocabulary, kanjivg)

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
            f"{len(self.classes)} classes, {len(self.vocabulary)} components, median "
            f"{int(np.median(self.lengths))} and at most {int(self.lengths.max())} components per class"
        )
