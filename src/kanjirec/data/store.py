"""The one packed dataset format (see docs/ARCHITECTURE.md).

A dataset is a directory of memory-mappable uint8 image shards plus small
per-sample arrays and a ``meta.json``. `DatasetWriter` streams samples in shard
by shard, so preparing a dataset never holds more than one shard of images;
`PackedDataset` opens one in milliseconds by memory-mapping the shards.

Classes are Unicode characters, sorted by code point: datasets from different
sources that share a character share a class. Splits are computed once, when
the dataset is written, and stored with it.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kanjirec.errors import DatasetFormatError

FORMAT = "kanjirec-packed"
VERSION = 1
CONVENTION = "uint8, ink 255 on background 0"
SPLITS = ("train", "val", "test")
DEFAULT_SHARD_SIZE = 65_536
_ARRAYS = {"labels": np.int32, "writers": np.int32, "sources": np.int16, "codes": np.int32, "split": np.uint8}


class DatasetWriter:
    """Write a packed dataset sample batch by sample batch.

    Nothing becomes visible at ``out_dir`` until `finish` renames the finished
    directory into place. Used as a context manager (``with DatasetWriter(out) as w:``),
    any failure before that (an exception, Ctrl-C) removes the ``<out>.partial`` folder
    too, so a failed prepare leaves nothing behind.
    """

    def __init__(self, out_dir: str | Path, image_size: int = 64, shard_size: int = DEFAULT_SHARD_SIZE):
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and any(self.out_dir.iterdir()):
            raise DatasetFormatError(f"{self.out_dir}: output directory exists and is not empty")
        self.image_size = image_size
        self.shard_size = shard_size
        self._tmp = self.out_dir.with_name(self.out_dir.name + ".partial")
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir(parents=True)
        self._part = None  # open file of the shard being written, raw bytes
        self._part_count = 0
        self._shards: list[dict] = []
        self._chars: list[str] = []
        self._writer_keys: dict[str, int] = {}
        self._source_keys: dict[str, int] = {}
        self._writer_ids: list[np.ndarray] = []
        self._source_ids: list[np.ndarray] = []
        self._codes: list[np.ndarray] = []
        self._strokes: list[list[np.ndarray]] | None = None
        self._count = 0

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            return
        try:
            self.abort()
        except OSError as e:  # the failure the user must see stays the original one
            exc.add_note(f"and {self._tmp} could not be removed: {e}")

    def abort(self) -> None:
        """Drop everything written so far: the open shard and the ``.partial`` folder."""
        if self._part is not None:
            self._part.close()
            self._part = None
        if self._tmp.exists():
            shutil.rmtree(self._tmp)

    def add(
        self,
        images: np.ndarray,
        chars: Sequence[str],
        writers: Sequence[str],
        source: str,
        codes: np.ndarray | None = None,
        strokes: Sequence[Sequence[np.ndarray]] | None = None,
    ) -> None:
        n = len(images)
        s = self.image_size
        if images.dtype != np.uint8 or images.shape[1:] != (s, s):
            raise ValueError(f"images must be uint8 (n, {s}, {s}), got {images.dtype} {images.shape}")
        if len(chars) != n or len(writers) != n:
            raise ValueError(f"{n} images but {len(chars)} chars and {len(writers)} writers")
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"a class must be one character; got {bad[:5]!r}")
        if codes is not None and len(codes) != n:
            raise ValueError(f"{n} images but {len(codes)} codes")
        if (strokes is None) != (self._strokes is None) and self._count:
            raise ValueError("either every batch carries strokes or none does")
        if strokes is not None:
            if len(strokes) != n:
                raise ValueError(f"{n} images but {len(strokes)} stroke lists")
            self._strokes = self._strokes or []
            self._strokes.extend(
                [np.asarray(p, np.float32).reshape(-1, 2) for p in sample] for sample in strokes
            )

        self._chars.extend(chars)
        writer_ids = np.fromiter(
            (self._writer_keys.setdefault(w, len(self._writer_keys)) for w in writers), np.int32, n
        )
        self._writer_ids.append(writer_ids)
        self._source_ids.append(
            np.full(n, self._source_keys.setdefault(source, len(self._source_keys)), np.int16)
        )
        self._codes.append(np.full(n, -1, np.int32) if codes is None else np.asarray(codes, np.int32))
        self._count += n
        # Images go straight to disk, so memory never holds more than the batch being added.
        while len(images):
            if self._part is None:
                self._open_shard()
            take = min(len(images), self.shard_size - self._part_count)
            self._part.write(np.ascontiguousarray(images[:take]).tobytes())
            self._part_count += take
            images = images[take:]
            if self._part_count == self.shard_size:
                self._close_shard()

    def _shard_header(self, count: int) -> bytes:
        buf = io.BytesIO()
        shape = (count, self.image_size, self.image_size)
        np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
        return buf.getvalue()

    def _open_shard(self) -> None:
        # The header is written for a full shard and patched in place if the last one ends early.
        self._part = open(self._tmp / f"images-{len(self._shards):05d}.npy", "wb")
        self._part.write(self._shard_header(self.shard_size))
        self._part_count = 0

    def _close_shard(self) -> None:
        header = self._shard_header(self._part_count)
        # numpy pads the header to a multiple of 64 bytes; a 3-d uint8 shape always fits in 128.
        assert len(header) == len(self._shard_header(self.shard_size))
        self._part.seek(0)
        self._part.write(header)
        self._part.close()
        self._shards.append({"file": Path(self._part.name).name, "count": self._part_count})
        self._part = None

    def finish(
        self,
        split: str = "writer",
        fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        preprocess: dict | None = None,
        provenance: dict | None = None,
    ) -> Path:
        if self._count == 0:
            raise DatasetFormatError(f"{self.out_dir}: no samples were added")
        if self._part is not None:
            self._close_shard()
        classes = sorted(set(self._chars), key=ord)
        index = {c: i for i, c in enumerate(classes)}
        labels = np.fromiter((index[c] for c in self._chars), np.int32, self._count)
        writer_ids = np.concatenate(self._writer_ids)
        split_ids = make_split(labels, writer_ids, split, fractions, seed)
        arrays = {
            "labels": labels,
            "writers": writer_ids,
            "sources": np.concatenate(self._source_ids),
            "codes": np.concatenate(self._codes),
            "split": split_ids,
        }
        for name, arr in arrays.items():
            np.save(self._tmp / f"{name}.npy", arr.astype(_ARRAYS[name]))
        if self._strokes is not None:
            _save_strokes(self._tmp / "strokes.npz", self._strokes)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "image_size": self.image_size,
            "convention": CONVENTION,
            "count": self._count,
            "classes": classes,
            "sources": list(self._source_keys),
            "writers": list(self._writer_keys),
            "shards": self._shards,
            "split": {"kind": split, "fractions": list(fractions), "seed": seed},
            "has_strokes": self._strokes is not None,
            "preprocess": preprocess or {},
            "provenance": provenance or {},
        }
        (self._tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
        if self.out_dir.exists():
            self.out_dir.rmdir()  # empty, checked in __init__
        os.replace(self._tmp, self.out_dir)
        return self.out_dir


def make_split(
    labels: np.ndarray, writer_ids: np.ndarray, kind: str, fractions: Sequence[float], seed: int
) -> np.ndarray:
    """0/1/2 = train/val/test per sample: whole writers per split, or stratified per class."""
    if len(fractions) != 3 or not math.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    cut = np.cumsum(fractions)[:2]
    if kind == "writer":
        n_writers = int(writer_ids.max()) + 1
        if n_writers < 3 and min(fractions) > 0:
            raise DatasetFormatError(
                f"a writer-disjoint split needs at least 3 writers, the data has {n_writers}; "
                f"use a random split (--split random) or add writers"
            )
        # Whole writers per split; a split asked for gets at least one writer.
        n_val, n_test = (max(1, round(f * n_writers)) if f > 0 else 0 for f in fractions[1:])
        if n_val + n_test >= n_writers:
            raise DatasetFormatError(
                f"{n_writers} writers are too few for split fractions {tuple(fractions)}; "
                f"use a random split (--split random) or add writers"
            )
        writer_split = np.zeros(n_writers, np.uint8)
        order = rng.permutation(n_writers)
        writer_split[order[:n_val]] = 1
        writer_split[order[n_val : n_val + n_test]] = 2
        return writer_split[writer_ids]
    if kind == "random":
        # Stratified: each class is shuffled and cut at the same fractions.
        split = np.empty(len(labels), np.uint8)
        keys = rng.random(len(labels))
        order = np.lexsort((keys, labels))
        sorted_labels = labels[order]
        starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
        counts = np.bincount(labels)[sorted_labels]
        rank = (np.arange(len(labels)) - starts + 0.5) / counts
        split[order] = np.searchsorted(cut, rank, side="right")
        return split
    raise ValueError(f"unknown split kind {kind!r}: use 'writer' or 'random'")


def _save_strokes(path: Path, strokes: list[list[np.ndarray]]) -> None:
    per_sample = np.fromiter((len(s) for s in strokes), np.int64, len(strokes))
    flat = [p for sample in strokes for p in sample]
    lengths = np.fromiter((len(p) for p in flat), np.int64, len(flat))
    points = np.concatenate(flat).astype(np.float16) if flat else np.zeros((0, 2), np.float16)
    np.savez(
        path,
        points=points,
        stroke_ptr=np.concatenate([[0], np.cumsum(lengths)]),
        sample_ptr=np.concatenate([[0], np.cumsum(per_sample)]),
    )


class ShardedImages:
    """Read-only view over the memory-mapped shards, indexable like one array."""

    def __init__(self, shards: list[np.ndarray]):
        self._shards = shards
        self._starts = np.concatenate([[0], np.cumsum([len(s) for s in shards])])
        self.shape = (int(self._starts[-1]),) + shards[0].shape[1:]
        self.dtype = np.uint8

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            i = int(idx) + (len(self) if idx < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(idx)
            k = int(np.searchsorted(self._starts, i, side="right")) - 1
            return self._shards[k][i - self._starts[k]]
        idx = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx, np.int64)
        out = np.empty((len(idx),) + self.shape[1:], np.uint8)
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        for k in np.unique(shard_of):
            mask = shard_of == k
            out[mask] = self._shards[k][idx[mask] - self._starts[k]]
        return out


@dataclass
class PackedDataset:
    path: Path
    meta: dict
    images: ShardedImages
    labels: np.ndarray
    writer_ids: np.ndarray
    source_ids: np.ndarray
    codes: np.ndarray
    split: np.ndarray
    _strokes: dict | None = None

    @classmethod
    def open(cls, path: str | Path) -> PackedDataset:
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise DatasetFormatError(
                f"{path}: not a packed dataset (no meta.json). Make one with "
                f"`kanjirec data synth --charset etl9g --per-class 20 --out {path}` or "
                f"`kanjirec data prepare --etl-dir ETL --sets ETL9G --out {path}`"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetFormatError(f"{meta_path}: unreadable ({e})") from e
        _check_meta(meta, meta_path)
        n, s = meta["count"], meta["image_size"]
        shards = []
        for shard in meta["shards"]:
            arr = _load(path / shard["file"], mmap=True)
            if arr.dtype != np.uint8 or arr.shape != (shard["count"], s, s):
                raise DatasetFormatError(
                    f"{path / shard['file']}: expected uint8 ({shard['count']}, {s}, {s}), "
                    f"found {arr.dtype} {arr.shape}"
                )
            shards.append(arr)
        arrays = {}
        for name, dtype in _ARRAYS.items():
            # Mapped first, so a header claiming more than the file holds fails before any allocation.
            arr = _load(path / f"{name}.npy", mmap=True)
            if arr.dtype != dtype or arr.shape != (n,):
                raise DatasetFormatError(
                    f"{path / name}.npy: expected {np.dtype(dtype)} ({n},), found {arr.dtype} {arr.shape}"
                )
            arrays[name] = np.array(arr)
        for name, limit in (
            ("labels", len(meta["classes"])),
            ("writers", len(meta["writers"])),
            ("sources", len(meta["sources"])),
            ("split", 3),
        ):
            arr = arrays[name]
            if n and (arr.min() < 0 or arr.max() >= limit):
                raise DatasetFormatError(f"{path / name}.npy: values outside 0..{limit - 1}")
        return cls(
            path=path,
            meta=meta,
            images=ShardedImages(shards),
            labels=arrays["labels"],
            writer_ids=arrays["writers"],
            source_ids=arrays["sources"],
            codes=arrays["codes"],
            split=arrays["split"],
        )

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def writers(self) -> list[str]:
        return self.meta["writers"]

    @property
    def sources(self) -> list[str]:
        return self.meta["sources"]

    @property
    def image_size(self) -> int:
        return self.meta["image_size"]

    @property
    def has_strokes(self) -> bool:
        return bool(self.meta.get("has_strokes"))

    def __len__(self) -> int:
        return self.meta["count"]

    def indices(self, split: str | None = None) -> np.ndarray:
        if split is None:
            return np.arange(len(self), dtype=np.int64)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
        return np.flatnonzero(self.split == SPLITS.index(split)).astype(np.int64)

    def _stroke_arrays(self) -> dict[str, np.ndarray]:
        if not self.has_strokes:
            raise DatasetFormatError(
                f"{self.path}: this dataset stores no stroke sequences (synthesise it with --with-strokes)"
            )
        if self._strokes is None:
            self._strokes = _load_strokes(self.path / "strokes.npz", len(self))
        return self._strokes

    def stroke_counts(self) -> np.ndarray:
        """(N,) the number of stored pen strokes of each sample (0 for a print-font sample)."""
        return np.diff(self._stroke_arrays()["sample_ptr"])

    def strokes_of(self, i: int) -> list[np.ndarray]:
        st = self._stroke_arrays()
        a, b = st["sample_ptr"][i], st["sample_ptr"][i + 1]
        ptr = st["stroke_ptr"]
        return [st["points"][ptr[k] : ptr[k + 1]].astype(np.float32) for k in range(a, b)]

    def torch_dataset(self, split: str | None = None):
        from torch.utils.data import Dataset

        dataset = self
        indices = self.indices(split)

        class _Split(Dataset):
            def __len__(self) -> int:
                return len(indices)

            def __getitem__(self, k: int):
                import torch

                i = indices[k]
                return torch.from_numpy(np.array(dataset.images[int(i)]))[None], int(dataset.labels[i])

        return _Split()

    def describe(self) -> str:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        lines = [
            f"dataset      {self.path}",
            f"samples      {len(self):,}   images {self.image_size}x{self.image_size} "
            f"({self.meta['convention']})",
            f"classes      {len(self.classes):,}   samples per class: min {counts.min()}, "
            f"median {int(np.median(counts))}, max {counts.max()}",
            f"writers      {len(self.writers):,}",
            "sources      "
            + ", ".join(f"{s} ({int((self.source_ids == i).sum()):,})" for i, s in enumerate(self.sources)),
            f"split        {self.meta['split']['kind']} (seed {self.meta['split']['seed']})",
        ]
        for k, name in enumerate(SPLITS):
            mask = self.split == k
            lines.append(
                f"  {name:<5}      {int(mask.sum()):>9,} samples, "
                f"{len(np.unique(self.writer_ids[mask])):,} writers, "
                f"{len(np.unique(self.labels[mask])):,} classes"
            )
        sample = "".join(self.classes[:40])
        lines.append(f"first classes {sample}{' ...' if len(self.classes) > 40 else ''}")
        lines.append(f"strokes      {'stored' if self.has_strokes else 'none'}")
        return "\n".join(lines)

    def save_grid(
        self, out: str | Path, char: str | None = None, count: int = 64, split: str | None = None
    ) -> Path:
        """A PNG grid of samples, shown dark ink on white as a person reads them."""
        from PIL import Image

        idx = self.indices(split)
        if char is not None:
            if char not in self.classes:
                raise DatasetFormatError(f"{self.path}: no class {char!r} in this dataset")
            idx = idx[self.labels[idx] == self.classes.index(char)]
        if len(idx) == 0:
            raise DatasetFormatError(f"{self.path}: no samples match (char={char!r}, split={split!r})")
        idx = np.random.default_rng(0).choice(idx, size=min(count, len(idx)), replace=False)
        idx.sort()
        imgs = self.images[idx]
        cols = int(math.ceil(math.sqrt(len(imgs))))
        rows = int(math.ceil(len(imgs) / cols))
        s, pad = self.image_size, 2
        canvas = np.full((rows * (s + pad) + pad, cols * (s + pad) + pad), 255, np.uint8)
        for k, img in enumerate(imgs):
            r, c = divmod(k, cols)
            canvas[
                pad + r * (s + pad) : pad + r * (s + pad) + s, pad + c * (s + pad) : pad + c * (s + pad) + s
            ] = 255 - img
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(canvas).resize((canvas.shape[1] * 2, canvas.shape[0] * 2), Image.NEAREST).save(out)
        return out


_META_TYPES = {
    "count": int,
    "image_size": int,
    "classes": list,
    "sources": list,
    "writers": list,
    "shards": list,
    "split": dict,
    "convention": str,
}


def _check_meta(meta: object, meta_path: Path) -> None:
    """Every key `PackedDataset` reads, with its type and what it must agree with."""

    def bad(what: str) -> DatasetFormatError:
        return DatasetFormatError(f"{meta_path}: {what}")

    if not isinstance(meta, dict):
        raise bad(f"holds a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        found = f"format {meta.get('format')!r} version {meta.get('version')!r}"
        raise bad(f"{found}, expected {FORMAT!r} version {VERSION}")
    for key, kind in _META_TYPES.items():
        value = meta.get(key)
        # bool is an int to Python, not a count.
        if not isinstance(value, kind) or isinstance(value, bool):
            raise bad(f"{key!r} must be a JSON {kind.__name__}, found {value!r:.60}")
    if meta["count"] < 1 or meta["image_size"] < 1:
        raise bad(f"count {meta['count']} and image_size {meta['image_size']} must be positive")
    for key in ("classes", "sources", "writers"):
        if not all(isinstance(v, str) for v in meta[key]) or len(set(meta[key])) != len(meta[key]):
            raise bad(f"{key!r} must be a list of distinct strings")
    if not all(len(c) == 1 for c in meta["classes"]):
        raise bad("every class must be one character")
    shards = meta["shards"]
    for k, shard in enumerate(shards):
        file, count = (shard.get("file"), shard.get("count")) if isinstance(shard, dict) else (None, None)
        # A plain file name inside the dataset folder, nothing that points elsewhere.
        if not isinstance(file, str) or not file or Path(file).name != file or file in (".", ".."):
            raise bad(f"shard {k}: 'file' must be a file name in the dataset folder, found {file!r:.60}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise bad(f"shard {k}: 'count' must be a non-negative integer, found {count!r:.60}")
    if sum(shard["count"] for shard in shards) != meta["count"] or not shards:
        raise bad(f"the shards hold {sum(sh['count'] for sh in shards)} images, but count is {meta['count']}")
    if not isinstance(meta["split"].get("kind"), str) or not isinstance(meta["split"].get("seed"), int):
        raise bad("'split' must give the split's 'kind' and 'seed'")


def _load_strokes(path: Path, count: int) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DatasetFormatError(
            f"{path}: missing file of the packed dataset (meta.json says it has strokes)"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            st = {k: z[k] for k in ("points", "stroke_ptr", "sample_ptr")}
    except Exception as e:  # as in _load: zip, header and array errors all mean a damaged file
        raise DatasetFormatError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    points, strokes, samples = st["points"], st["stroke_ptr"], st["sample_ptr"]
    consistent = (
        points.ndim == 2
        and points.shape[1] == 2
        and strokes.ndim == samples.ndim == 1
        and len(samples) == count + 1
        and len(strokes) >= 1
        and samples[0] == strokes[0] == 0
        and np.all(np.diff(samples) >= 0)
        and np.all(np.diff(strokes) >= 0)
        and samples[-1] == len(strokes) - 1
        and strokes[-1] == len(points)
    )
    if not consistent:
        raise DatasetFormatError(
            f"{path}: stroke arrays do not fit together or do not match the {count} samples"
        )
    return st


def _load(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing file of the packed dataset")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    # A damaged header reaches numpy's parser, which raises more than ValueError (tokenize's
    # TokenError, SyntaxError, ...); each means the same to the user: this file is damaged.
    except Exception as e:
        raise DatasetFormatError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
