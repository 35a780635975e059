"""Fresh synthetic training batches, rendered on the fly: the model never sees a sample twice.

`SynthBatches` is a map-style dataset whose item i is training step i of one epoch: a batch of
classes drawn uniformly, each sample written by a new random writer (`synth.draw_writer_styles`, in
its training region only) or, for a fraction of the samples, drawn from a training font face with
the same distortions. Everything random comes from a generator seeded by (seed, epoch, step, rank),
so a batch depends on nothing else: not on the DataLoader's worker count, and a run resumed in the
middle of an epoch renders exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from kanjirec.data.synth import SynthError, draw_writer_styles, font_images, font_styles, stroke_images

FONT_SETS = ("training", "default")


def font_faces(font_set: str) -> list:
    """The print faces fresh batches draw from: every installed training face (never a held-out one),
    or only the eight default faces."""
    from kanjirec.data.fonts import default_fonts, training_faces

    if font_set == "training":
        return training_faces()
    if font_set == "default":
        return list(default_fonts())
    raise SynthError(f"unknown font set {font_set!r}; choose one of {', '.join(FONT_SETS)}")


class SynthBatches(Dataset):
    """Item i: (uint8 images (b, 1, S, S), int64 labels (b,)) of step ``first + i`` of ``epoch``; for a
    pen model (``pen_rows`` > 0, its ``max_strokes``), the inputs are the (features, lengths) of the
    fresh samples' pen trajectories (`data.sequences.pen_strokes`) and every sample is written."""

    def __init__(
        self,
        classes: Sequence[str],
        *,
        seed: int,
        epoch: int,
        rank: int,
        steps: int,
        batch_size: int,
        font_fraction: float,
        font_set: str = "training",
        first: int = 0,
        size: int = 64,
        pen_rows: int = 0,
        pen_order_shuffle: float = 0.0,
    ) -> None:
        if not 0.0 <= font_fraction <= 1.0:
            raise SynthError(f"synth_font_fraction must lie in [0, 1], got {font_fraction}")
        if pen_rows and font_fraction > 0:
            raise SynthError("pen trajectories come from written samples only: synth_font_fraction must be 0")
        self.classes = list(classes)
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.steps, self.first, self.batch_size = steps, first, batch_size
        self.font_fraction, self.font_set, self.size = font_fraction, font_set, size
        self.pen_rows, self.pen_order_shuffle = pen_rows, pen_order_shuffle
        self._sources = None  # built lazily in each worker process: nothing heavy is pickled

    def __len__(self) -> int:
        return self.steps - self.first

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sources": None}

    def _build(self):
        if self._sources is None:
            fonts = self.font_set if self.font_fraction > 0 else None
            self._sources = _Sources.build(self.classes, fonts, self.size)
        return self._sources

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        src = self._build()
        step = self.first + i
        rng = np.random.default_rng([self.seed, self.epoch, step, self.rank, 0x5EED])
        labels = rng.integers(0, len(self.classes), self.batch_size)
        # A sample is a font sample if asked for and some face covers it; classes without strokes
        # always are.
        want_font = (rng.uniform(0, 1, self.batch_size) < self.font_fraction) & src.covered[labels]
        use_font = want_font | ~src.has_strokes[labels]
        if self.pen_rows:
            return self._pen_batch(src, labels, use_font, rng)
        images = np.empty((self.batch_size, self.size, self.size), np.uint8)
        strokes = np.flatnonzero(~use_font)
        if len(strokes):
            style = draw_writer_styles(rng, len(strokes), region="train")
            images[strokes], _ = stroke_images(
                src.bank, src.bank_index[labels[strokes]], style, rng, self.size
            )
        fonts = np.flatnonzero(use_font)
        if len(fonts):
            # Each font sample takes a random face among those that cover its class.
            faces = np.array([rng.choice(src.faces_of[c]) for c in labels[fonts]])
            for face in np.unique(faces):
                rows = fonts[faces == face]
                cache = src.caches[face]
                style = font_styles(cache.face, rng, len(rows))
                images[rows] = font_images(
                    cache, [self.classes[c] for c in labels[rows]], style, rng, self.size
                )
                cache.clear()  # a few glyphs per batch: drawing them again is cheaper than keeping thousands
        return torch.from_numpy(images)[:, None], torch.from_numpy(labels.astype(np.int64))

    def _pen_batch(self, src, labels, use_font, rng):
        from kanjirec.data.sequences import pen_strokes

        if use_font.any():
            missing = "".join(sorted({self.classes[c] for c in labels[use_font]}))
            raise SynthError(f"no KanjiVG strokes, so no pen trajectories, for the classes {missing}")
        style = draw_writer_styles(rng, len(labels), region="train")
        _, strokes = stroke_images(src.bank, src.bank_index[labels], style, rng, self.size, with_strokes=True)
        for i in np.flatnonzero(rng.uniform(0, 1, len(labels)) < self.pen_order_shuffle):
            groups = src.stroke_groups[labels[i]]
            strokes[i] = [strokes[i][k] for g in groups for k in rng.permutation(g)]
        features, lengths = pen_strokes(strokes, self.pen_rows)
        inputs = (torch.from_numpy(features), torch.from_numpy(lengths))
        return inputs, torch.from_numpy(labels.astype(np.int64))


class _Sources:
    """What one process needs to render any class: the stroke bank and the font faces."""

    @classmethod
    def build(cls, classes: Sequence[str], font_set: str | None, size: int) -> _Sources:
        from kanjirec.data.fonts import GlyphCache
        from kanjirec.data.kanjivg import component_stroke_groups, load_kanjivg
        from kanjirec.data.synth import StrokeBank

        torch.set_num_threads(1)
        kvg = load_kanjivg()
        self = cls()
        self.has_strokes = np.array([c in kvg for c in classes])
        stroke_classes = [c for c in classes if c in kvg]
        self.bank = StrokeBank.build([kvg[c] for c in stroke_classes])
        self.bank_index = np.full(len(classes), -1, np.int64)
        self.bank_index[self.has_strokes] = np.arange(len(stroke_classes))
        self.stroke_groups = [component_stroke_groups(kvg[c]) if c in kvg else [] for c in classes]
        faces = font_faces(font_set) if font_set else []
        self.caches = [GlyphCache(f, 2 * size, smooth=True) for f in faces]
        cover = np.array([f.covers(classes) for f in faces]).reshape(len(faces), len(classes))
        self.covered = cover.any(axis=0)
        self.faces_of = [np.flatnonzero(cover[:, j]) for j in range(len(classes))]
        missing = [c for j, c in enumerate(classes) if not self.has_strokes[j] and not self.covered[j]]
        if missing:
            raise SynthError(
                f"{len(missing)} classes have neither KanjiVG strokes nor a glyph in a training font: "
                f"{''.join(missing[:50])}"
            )
        return self
