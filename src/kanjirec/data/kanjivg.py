"""Stroke paths and component trees parsed from KanjiVG.

KanjiVG is copyright (C) 2009-2023 Ulrich Apel and distributed under the Creative
Commons Attribution-Share Alike 3.0 licence (http://kanjivg.tagaini.net). We read
its SVG files from the installed `kanjivg` Python package and never copy them
into this repository; data derived from them (synthetic images, stroke
sequences) falls under the same licence.

Each SVG holds one character drawn in a 109x109 box: nested `<g>` groups carry
the component tree (`kvg:element`, `kvg:position`, `kvg:radical`, `kvg:part`,
...), and `<path>` elements carry the strokes in writing order. The path data
uses absolute and relative moves, cubic Beziers and their smooth shorthands;
we sample each stroke into a polyline with evenly spaced points.

Parsing all ~6,700 characters takes a few seconds, so the result is cached
under the user cache directory, keyed by the package version.
"""

from __future__ import annotations

import importlib.metadata
import os
import pickle
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from kanjirec.errors import DatasetFormatError, KanjirecError

KANJIVG_BOX = 109.0
# Spacing of the sampled polyline points, in KanjiVG units (the box is 109 wide).
POINT_SPACING = 1.5
# Bumped whenever the parsed representation changes, so stale caches are ignored.
_PARSER_VERSION = 1
_DIST_NAMES = ("kanjivg",)
# Main files are named by code point only (0660e.svg); variants carry a suffix (0660e-Kaisho.svg).
_MAIN_FILE = re.compile(r"^([0-9a-f]{5})\.svg$")
_TOKEN = re.compile(r"[A-Za-z]|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_STROKE_ID = re.compile(r"-s(\d+)$")
_PARAM_COUNT = {"M": 2, "L": 2, "H": 1, "V": 1, "C": 6, "S": 4, "Q": 4, "T": 2, "Z": 0}
_BEZIER_SAMPLES = 16


class KanjiVGError(KanjirecError):
    """The kanjivg package is missing or one of its files cannot be parsed."""


@dataclass(frozen=True)
class Stroke:
    type: str  # kvg:type, e.g. "㇑", "㇕a" (may be "")
    points: np.ndarray  # (k, 2) float32 polyline in KanjiVG's 109x109 coordinates, writing direction


@dataclass(frozen=True)
class Component:
    element: str | None  # kvg:element
    position: str | None  # kvg:position (left, right, top, bottom, kamae, nyo, tare, ...)
    radical: str | None  # kvg:radical (general, tradit, nelson)
    part: int | None  # kvg:part (a component split around another one)
    original: str | None  # kvg:original
    variant: bool
    children: tuple[Component, ...]
    stroke_indices: tuple[int, ...]  # 0-based indices of every stroke under this node


@dataclass(frozen=True)
class KanjiEntry:
    char: str
    strokes: tuple[Stroke, ...]  # in writing order
    root: Component  # the top kvg:element group of the character


# ---------------------------------------------------------------- locating the package


def kanjivg_dir() -> tuple[Path, str]:
    """The folder holding KanjiVG's SVG files and the package version."""
    for name in _DIST_NAMES:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in dist.files or ():
            if f.suffix == ".svg" and f.parent.name == "kanji":
                folder = Path(dist.locate_file(f)).parent
                if folder.is_dir():
                    return folder, dist.version
        raise KanjiVGError(
            f"the {name!r} package (version {dist.version}) is installed but lists no kanji/*.svg files; "
            "reinstall it: pip install --force-reinstall kanjivg"
        )
    raise KanjiVGError("KanjiVG data not found: install the `kanjivg` package (pip install kanjivg)")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kanjirec"


# ---------------------------------------------------------------- SVG path sampling


def _path_segments(d: str, where: str) -> list[np.ndarray]:
    """Absolute cubic control points (n, 4, 2) of each subpath of an SVG path string.

    Lines and quadratics are raised to cubics so one evaluator serves all of them.
    """
    tokens = _TOKEN.findall(d)
    subpaths: list[list[np.ndarray]] = []
    cur = np.zeros(2)
    start = np.zeros(2)
    last_ctrl: np.ndarray | None = None  # reflected by S / T
    last_cmd = ""
    cmd = ""
    i = 0

    def num(k: int) -> np.ndarray:
        try:
            return np.array([float(t) for t in tokens[i : i + k]], dtype=np.float64)
        except ValueError as e:
            raise KanjiVGError(f"{where}: malformed path data {d!r}") from e

    def line(p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
        return np.stack([p0, p0 + (p1 - p0) / 3, p0 + 2 * (p1 - p0) / 3, p1])

    while i < len(tokens):
        if tokens[i].isalpha():
            cmd = tokens[i]
            i += 1
        elif not cmd:
            raise KanjiVGError(f"{where}: path data starts with a number: {d!r}")
        upper = cmd.upper()
        if upper not in _PARAM_COUNT:
            raise KanjiVGError(f"{where}: unsupported SVG path command {cmd!r} in {d!r}")
        k = _PARAM_COUNT[upper]
        if i + k > len(tokens) or any(t.isalpha() for t in tokens[i : i + k]):
            raise KanjiVGError(f"{where}: path command {cmd!r} lacks parameters in {d!r}")
        p = num(k)
        i += k
        rel = cmd.islower()
        seg = None
        if upper == "M":
            cur = p + cur if rel else p
            start = cur.copy()
            subpaths.append([])
            # Further coordinate pairs after a move are implicit line-tos.
            cmd = "l" if rel else "L"
            last_ctrl = None
        elif upper in ("L", "H", "V", "Z"):
            if upper == "L":
                end = p + cur if rel else p
            elif upper == "H":
                end = np.array([p[0] + cur[0] if rel else p[0], cur[1]])
            elif upper == "V":
                end = np.array([cur[0], p[0] + cur[1] if rel else p[0]])
            else:
                end = start.copy()
            seg = line(cur, end)
            last_ctrl = None
        elif upper == "C":
            q = p.reshape(3, 2) + (cur if rel else 0)
            seg = np.stack([cur, q[0], q[1], q[2]])
            last_ctrl = q[1]
        elif upper == "S":
            q = p.reshape(2, 2) + (cur if rel else 0)
            c1 = 2 * cur - last_ctrl if last_cmd in ("C", "S") and last_ctrl is not None else cur
            seg = np.stack([cur, c1, q[0], q[1]])
            last_ctrl = q[0]
        elif upper in ("Q", "T"):
            if upper == "Q":
                q = p.reshape(2, 2) + (cur if rel else 0)
                ctrl, end = q[0], q[1]
            else:
                end = p + cur if rel else p
                ctrl = 2 * cur - last_ctrl if last_cmd in ("Q", "T") and last_ctrl is not None else cur
            seg = np.stack([cur, cur + 2 / 3 * (ctrl - cur), end + 2 / 3 * (ctrl - end), end])
            last_ctrl = ctrl
        if seg is not None:
            if not subpaths:
                raise KanjiVGError(f"{where}: path data draws before its first move: {d!r}")
            subpaths[-1].append(seg)
            cur = seg[3]
        last_cmd = upper
    return [np.stack(s) for s in subpaths if s]


def _sample_cubics(ctrl: np.ndarray, spacing: float = POINT_SPACING) -> np.ndarray:
    """Evaluate cubic Beziers (n, 4, 2) densely, then resample the joined curve evenly by arc length."""
    t = np.linspace(0.0, 1.0, _BEZIER_SAMPLES)[:, None]
    basis = np.concatenate([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], axis=1)  # (T, 4)
    dense = np.einsum("tk,nkd->ntd", basis, ctrl)  # (n, T, 2)
    # Consecutive segments share their end point; keep it once.
    dense = np.concatenate([dense[:1, 0], dense[:, 1:].reshape(-1, 2)], axis=0)
    step = np.linalg.norm(np.diff(dense, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(step)])
    total = arc[-1]
    count = max(2, int(np.ceil(total / spacing)) + 1)
    target = np.linspace(0.0, total, count)
    return np.stack([np.interp(target, arc, dense[:, 0]), np.interp(target, arc, dense[:, 1])], axis=1)


def sample_path(d: str, where: str = "path") -> np.ndarray:
    """An SVG path string -> (k, 2) float32 polyline (subpaths joined in order)."""
    subpaths = _path_segments(d, where)
    if not subpaths:
        raise KanjiVGError(f"{where}: path data draws nothing: {d!r}")
    return np.concatenate([_sample_cubics(s) for s in subpaths]).astype(np.float32)


# ---------------------------------------------------------------- SVG files


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1]


def _attrs(el: ET.Element) -> dict[str, str]:
    # The kvg namespace URI differs between the DTD and the root element, so match local names only.
    return {_local(k): v for k, v in el.attrib.items()}


def parse_svg(path: Path) -> KanjiEntry:
    """Parse one KanjiVG SVG file into its strokes and component tree."""
    m = _MAIN_FILE.match(path.name) or re.match(r"^([0-9a-f]{5})-", path.name)
    if not m:
        raise KanjiVGError(f"{path}: not a KanjiVG file name (expected <5 hex digits>.svg)")
    code = m.group(1)
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise KanjiVGError(f"{path}: invalid XML: {e}") from e
    top = None
    for g in tree.getroot().iter():
        if _local(g.tag) == "g" and g.get("id") == f"kvg:{code}":
            top = g
            break
    if top is None:
        raise KanjiVGError(f"{path}: no <g id='kvg:{code}'> group")

    strokes: dict[int, Stroke] = {}

    def build(g: ET.Element) -> Component:
        a = _attrs(g)
        children: list[Component] = []
        indices: list[int] = []
        for child in g:
            tag = _local(child.tag)
            if tag == "g":
                c = build(child)
                children.append(c)
                indices.extend(c.stroke_indices)
            elif tag == "path":
                sid = child.get("id", "")
                sm = _STROKE_ID.search(sid)
                if not sm:
                    raise KanjiVGError(f"{path}: stroke path without a stroke number id: {sid!r}")
                index = int(sm.group(1)) - 1
                if index in strokes:
                    raise KanjiVGError(f"{path}: stroke {index + 1} appears twice")
                pa = _attrs(child)
                strokes[index] = Stroke(
                    type=pa.get("type", ""), points=sample_path(pa.get("d", ""), f"{path} stroke {sid}")
                )
                indices.append(index)
        part = a.get("part")
        return Component(
            element=a.get("element"),
            position=a.get("position"),
            radical=a.get("radical"),
            part=int(part) if part is not None else None,
            original=a.get("original"),
            variant=a.get("variant") == "true",
            children=tuple(children),
            stroke_indices=tuple(sorted(indices)),
        )

    root = build(top)
    if sorted(strokes) != list(range(len(strokes))):
        raise KanjiVGError(
            f"{path}: stroke numbers are not 1..{len(strokes)}: {sorted(i + 1 for i in strokes)}"
        )
    for s in strokes.values():
        s.points.flags.writeable = False
    return KanjiEntry(
        char=chr(int(code, 16)), strokes=tuple(strokes[i] for i in range(len(strokes))), root=root
    )


def _parse_files(paths: Iterable[Path]) -> list[KanjiEntry]:
    return [parse_svg(p) for p in paths]


def _parse_all(folder: Path, workers: int) -> dict[str, KanjiEntry]:
    files = sorted(p for p in folder.iterdir() if _MAIN_FILE.match(p.name))
    if not files:
        raise KanjiVGError(f"{folder}: no KanjiVG SVG files")
    if workers > 1:
        import multiprocessing as mp

        chunks = [files[i::workers] for i in range(workers)]
        with mp.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_parse_files, chunks)
        entries = [e for part in parts for e in part]
    else:
        entries = _parse_files(files)
    return {e.char: e for e in sorted(entries, key=lambda e: e.char)}


def _pack(entries: dict[str, KanjiEntry]) -> dict:
    """Flatten entries into a few arrays and tuples: unpickling ~130k objects is slow, rebuilding is not."""
    strokes = [s for e in entries.values() for s in e.strokes]
    nodes: list[tuple] = []

    def flatten(c: Component) -> None:
        nodes.append(
            (
                c.element,
                c.position,
                c.radical,
                c.part,
                c.original,
                c.variant,
                len(c.children),
                c.stroke_indices,
            )
        )
        for child in c.children:
            flatten(child)

    for e in entries.values():
        flatten(e.root)
    return {
        "chars": list(entries),
        "stroke_counts": [len(e.strokes) for e in entries.values()],
        "types": [s.type for s in strokes],
        "point_counts": np.array([len(s.points) for s in strokes], dtype=np.int64),
        "points": np.concatenate([s.points for s in strokes]).astype(np.float32),
        "nodes": nodes,
    }


def _unpack(packed: dict) -> dict[str, KanjiEntry]:
    points = packed["points"]
    points.flags.writeable = False
    ends = np.cumsum(packed["point_counts"]).tolist()
    starts = [0, *ends[:-1]]
    strokes = [Stroke(t, points[a:b]) for t, a, b in zip(packed["types"], starts, ends, strict=True)]
    node_iter = iter(packed["nodes"])

    def build() -> Component:
        element, position, radical, part, original, variant, n_children, indices = next(node_iter)
        children = tuple(build() for _ in range(n_children))
        return Component(element, position, radical, part, original, variant, children, indices)

    entries = {}
    at = 0
    for char, n in zip(packed["chars"], packed["stroke_counts"], strict=True):
        entries[char] = KanjiEntry(char, tuple(strokes[at : at + n]), build())
        at += n
    return entries


@lru_cache(maxsize=1)
def load_kanjivg() -> dict[str, KanjiEntry]:
    """Every main (non-variant) KanjiVG character, keyed by the character, cached on disk.

    The returned entries are shared between callers: treat them (and their point arrays) as read-only.
    """
    folder, version = kanjivg_dir()
    cache = cache_dir() / f"kanjivg-{version}-p{_PARSER_VERSION}.pickle"
    if cache.is_file():
        try:
            with open(cache, "rb") as f:
                packed = pickle.load(f)
            return _unpack(packed)
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, StopIteration) as e:
            raise DatasetFormatError(f"{cache}: unreadable KanjiVG cache ({e}); delete it to rebuild") from e
    entries = _parse_all(folder, workers=min(4, os.cpu_count() or 1))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        pickle.dump(_pack(entries), f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, cache)
    return entries


def component_stroke_groups(entry: KanjiEntry) -> list[list[int]]:
    """The stroke indices of each top-level component of ``entry`` (語: those of 言, then of 吾), in
    writing order; a stroke under no component is a group of its own. Real writers vary the order
    of strokes inside such a group far more than the order of the groups."""
    groups, covered = [], set()
    for child in entry.root.children:
        if child.stroke_indices:
            groups.append(sorted(child.stroke_indices))
            covered.update(child.stroke_indices)
    rest = [[i] for i in range(len(entry.strokes)) if i not in covered]
    return sorted(groups + rest, key=lambda g: g[0])
