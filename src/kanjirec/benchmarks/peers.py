"""`kanjirec bench peers`: the same drawn strokes given to our model, zinnia and kanjidraw.

The drawings are KanjiVG stroke paths distorted by the writer model below, written for this
comparison only: nothing trains on it, and it shares no code with the training renderer
(`data.synth`). Each drawing goes to three recognisers on the same canvas, as integer points in
writing order (what a browser's pointer events give):

- ``ours``: the shipped model (or ``--model``), the strokes drawn into its input image by
  `data.pen.strokes_to_image`, the path ``POST /recognize`` takes;
- ``zinnia``: zinnia with the Tegaki Japanese model, through its C API (`benchmarks.zinnia`);
- ``kanjidraw``: kanjidraw's strict matching (its default), given each stroke's first and last
  point scaled to its 255-unit canvas, as its own pad does.

Each answers from its own vocabulary; a drawing counts at top-1 when the first answer is the
character drawn, at top-10 when any of the first ten is.

The writer model. A writer is a handful of numbers drawn once from the seed (`draw_writers`); a
drawing of one character by one writer is drawn from a generator seeded by (seed, writer, code
point), so it does not depend on which other characters are in the set. In KanjiVG's 109-unit box,
stroke by stroke, in writing order:

1. length: each end of a stroke is trimmed (along the stroke) or extended (along its end
   tangent) by a normal fraction of its length, sd ``length`` (each change within +-25%);
2. placement: the stroke is scaled by exp(N(0, ``stroke_scale``)) and turned by
   N(0, ``stroke_turn``) degrees about its centroid, then shifted by N(0, ``stroke_shift``) units
   in x and y;
3. wobble: a slow displacement along the stroke, two sine waves per axis of random phase and
   1-2 periods per stroke, amplitude about ``wobble`` units;
4. the writer's hand: the whole character is slanted (x += ``slant`` * y about the centre),
   turned by ``rotation`` degrees, stretched by ``aspect`` (x wider, y narrower, area kept) and
   scaled so the 109-unit box spans ``size`` of the canvas; each drawing adds its own small
   change of size (sd 4%), angle (sd 1 degree) and position (sd 2% of the canvas);
5. sampling: each stroke is sampled as a pen tablet would at a fixed rate along a slow-fast-slow
   speed profile (minimum-jerk), one point per ``spacing`` canvas units on average (at least two
   points), plus sensor noise of sd ``jitter`` units; points are rounded to whole canvas units and
   kept on the canvas;
6. order: each pair of consecutive strokes whose innermost KanjiVG component is the same is
   swapped with probability ``swap_rate`` (pairs do not overlap).

Writer traits are drawn uniformly from: size 0.75..1.0, aspect exp(-0.12..0.12), slant
-0.15..0.15, stroke_shift 1..3.5 units, stroke_scale 0.03..0.10, stroke_turn 2..6 degrees, wobble
0.2..0.9 units, length 0.03..0.12, spacing 3..12 canvas units, jitter 0..1.5 canvas units,
swap_rate 0..0.08; rotation from N(0, 3) degrees within +-8.

The stroke count never changes (no joined or split strokes, no stroke reversed): every drawing has
the strokes of its KanjiVG entry, in KanjiVG's order except for the swaps of step 6, which
`Drawing.order` records.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from kanjirec.data.kanjivg import KANJIVG_BOX, Component, KanjiEntry
from kanjirec.errors import KanjirecError

SEED = 20261202  # fixed: every run draws the same writers and drawings
CANVAS = 400  # canvas side in units (a phone-sized writing pad in CSS pixels)
TOP_K = 10
DEFAULT_CHARS = 500
DEFAULT_WRITERS = 3
CLASS_SET = "jis1"  # the 2,965 JIS level-1 kanji, the kanji of ETL9G
RECOGNISERS = ("ours", "zinnia", "kanjidraw")
KANJIDRAW_SIDE = 255  # kanjidraw's coordinates span 0..255 (its pad scales the canvas to this)


class PeersError(KanjirecError):
    """A peer recogniser is not installed or the comparison cannot run as asked."""


# ---------------------------------------------------------------- the writer model


@dataclass(frozen=True)
class Writer:
    """One writer's hand (units: KanjiVG units unless named otherwise; the module docstring says how
    each number is used)."""

    size: float  # fraction of the canvas the 109-unit box spans
    aspect: float  # x / y stretch
    rotation: float  # degrees, clockwise on screen
    slant: float  # shear: x += slant * y
    stroke_shift: float  # sd of each stroke's offset
    stroke_scale: float  # sd of each stroke's log scale
    stroke_turn: float  # sd of each stroke's turn, degrees
    wobble: float  # amplitude of the slow displacement along a stroke
    length: float  # sd of each end's length change, as a fraction of the stroke
    spacing: float  # mean distance between sampled points, canvas units
    jitter: float  # sd of the sensor noise, canvas units
    swap_rate: float  # probability of swapping two consecutive strokes of one component


@dataclass(frozen=True)
class Drawing:
    char: str
    writer: int
    strokes: tuple[np.ndarray, ...]  # (k, 2) int64 canvas points, in the order written
    order: tuple[int, ...]  # KanjiVG stroke index of each drawn stroke


def draw_writers(count: int, seed: int = SEED) -> list[Writer]:
    """``count`` writers, the same for the same seed (writer i depends only on seed and i)."""
    if count < 1:
        raise PeersError(f"the comparison needs at least one writer, got {count}")
    writers = []
    for i in range(count):
        r = np.random.default_rng([seed, 0, i])
        writers.append(
            Writer(
                size=float(r.uniform(0.75, 1.0)),
                aspect=float(np.exp(r.uniform(-0.12, 0.12))),
                rotation=float(np.clip(r.normal(0, 3.0), -8, 8)),
                slant=float(r.uniform(-0.15, 0.15)),
                stroke_shift=float(r.uniform(1.0, 3.5)),
                stroke_scale=float(r.uniform(0.03, 0.10)),
                stroke_turn=float(r.uniform(2.0, 6.0)),
                wobble=float(r.uniform(0.2, 0.9)),
                length=float(r.uniform(0.03, 0.12)),
                spacing=float(r.uniform(3.0, 12.0)),
                jitter=float(r.uniform(0.0, 1.5)),
                swap_rate=float(r.uniform(0.0, 0.08)),
            )
        )
    return writers


def _arc(points: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])


def _at(points: np.ndarray, arc: np.ndarray, s: np.ndarray) -> np.ndarray:
    return np.stack([np.interp(s, arc, points[:, 0]), np.interp(s, arc, points[:, 1])], axis=1)


def _change_length(points: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    """Step 1: each end trimmed along the stroke or extended along its end tangent."""
    arc = _arc(points)
    total = arc[-1]
    start, end = np.clip(rng.normal(0, sd, 2), -0.25, 0.25) * total
    if total == 0:
        return points
    inner = arc[(arc > max(0.0, -start)) & (arc < total + min(0.0, end))]
    middle = _at(points, arc, np.concatenate([[max(0.0, -start)], inner, [total + min(0.0, end)]]))
    parts = [middle]
    if start > 0:
        tangent = middle[0] - _at(points, arc, np.array([min(total, 3.0)]))[0]
        parts.insert(0, middle[:1] + tangent / max(np.linalg.norm(tangent), 1e-9) * start)
    if end > 0:
        tangent = middle[-1] - _at(points, arc, np.array([max(0.0, total - 3.0)]))[0]
        parts.append(middle[-1:] + tangent / max(np.linalg.norm(tangent), 1e-9) * end)
    return np.concatenate(parts)


def _rotation(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _place_stroke(points: np.ndarray, w: Writer, rng: np.random.Generator) -> np.ndarray:
    """Steps 2 and 3: the stroke scaled, turned and shifted about its centroid, then wobbled."""
    centre = points.mean(axis=0)
    matrix = _rotation(rng.normal(0, w.stroke_turn)) * math.exp(rng.normal(0, w.stroke_scale))
    placed = (points - centre) @ matrix.T + centre + rng.normal(0, w.stroke_shift, 2)
    arc = _arc(placed)
    t = arc / arc[-1] if arc[-1] > 0 else arc
    wave = np.zeros_like(placed)
    for axis in range(2):
        for _ in range(2):
            periods, phase = rng.uniform(1.0, 2.0), rng.uniform(0, 2 * np.pi)
            wave[:, axis] += rng.normal(0, w.wobble / math.sqrt(2)) * np.sin(2 * np.pi * periods * t + phase)
    return placed + wave


def _hand(w: Writer, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Step 4: the affine map (matrix, offset) from KanjiVG units about the box centre to the canvas."""
    size = w.size * math.exp(rng.normal(0, 0.04)) * CANVAS / KANJIVG_BOX
    stretch = np.diag([math.sqrt(w.aspect), 1 / math.sqrt(w.aspect)])
    shear = np.array([[1.0, w.slant], [0.0, 1.0]])
    matrix = size * _rotation(w.rotation + rng.normal(0, 1.0)) @ stretch @ shear
    offset = CANVAS / 2 + rng.normal(0, 0.02 * CANVAS, 2)
    return matrix, offset


def _sample(points: np.ndarray, w: Writer, rng: np.random.Generator) -> np.ndarray:
    """Step 5: a fixed-rate pen along a slow-fast-slow speed profile, sensor noise, whole units."""
    arc = _arc(points)
    n = max(2, round(arc[-1] / w.spacing) + 1)
    u = np.linspace(0.0, 1.0, n)
    sampled = _at(points, arc, arc[-1] * (u - np.sin(2 * np.pi * u) / (2 * np.pi)))
    sampled += rng.normal(0, w.jitter, sampled.shape) if w.jitter > 0 else 0.0
    return np.clip(np.rint(sampled), 0, CANVAS - 1).astype(np.int64)


def _innermost(root: Component, count: int) -> list[int]:
    """For each stroke, an id of the deepest component holding it."""
    owner = [0] * count
    nodes = [root]
    while nodes:
        node = nodes.pop()
        for i in node.stroke_indices:
            owner[i] = id(node)  # children are visited after their parent, so the deepest wins
        nodes.extend(node.children)
    return owner


def _order(entry: KanjiEntry, swap_rate: float, rng: np.random.Generator) -> list[int]:
    """Step 6: consecutive strokes of one innermost component swapped with probability ``swap_rate``."""
    order = list(range(len(entry.strokes)))
    owner = _innermost(entry.root, len(order))
    i = 0
    while i + 1 < len(order):
        if owner[i] == owner[i + 1] and rng.random() < swap_rate:
            order[i], order[i + 1] = order[i + 1], order[i]
            i += 2
        else:
            i += 1
    return order


def write(entry: KanjiEntry, writer: Writer, writer_index: int, seed: int = SEED) -> Drawing:
    """``entry`` drawn by ``writer`` on the CANVAS x CANVAS canvas (see the module docstring)."""
    rng = np.random.default_rng([seed, 1, writer_index, ord(entry.char)])
    order = _order(entry, writer.swap_rate, rng)
    matrix, offset = _hand(writer, rng)
    centre = KANJIVG_BOX / 2
    strokes = []
    for index in order:
        points = np.asarray(entry.strokes[index].points, np.float64)
        points = _place_stroke(_change_length(points, writer.length, rng), writer, rng)
        strokes.append(_sample((points - centre) @ matrix.T + offset, writer, rng))
    return Drawing(entry.char, writer_index, tuple(strokes), tuple(order))


# ---------------------------------------------------------------- the recognisers


class Peer(Protocol):
    """A recogniser in the comparison: a drawing -> its first TOP_K answers, best first."""

    name: str  # short name in the report
    label: str  # what it is, in a few words

    def __call__(self, drawing: Drawing) -> list[str]: ...


class Ours:
    """Our model through the pen path of ``POST /recognize`` (`data.pen.strokes_to_image`)."""

    name = "ours"

    def __init__(self, model: str | Path | None = None):
        from kanjirec.recognizer import Recognizer

        self.recognizer = Recognizer.load(model, top_k=TOP_K, threads=1)  # one thread, as the peers
        self.label = f"model `{self.recognizer.loaded.name}`, strokes drawn by `data.pen.strokes_to_image`"

    def __call__(self, drawing: Drawing) -> list[str]:
        from kanjirec.data.pen import strokes_to_image
        from kanjirec.inference import torch_threads

        with torch_threads(1):  # the drawing's blur runs in torch
            image = strokes_to_image(drawing.strokes, CANVAS, CANVAS, self.recognizer.image_size)
        return [c for c, _ in self.recognizer.top(image[None], TOP_K)[0]]


class ZinniaTegaki:
    """zinnia with the Tegaki Japanese model."""

    name = "zinnia"

    def __init__(self):
        from kanjirec.benchmarks.zinnia import TEGAKI_JA_MODEL, Zinnia

        self.zinnia = Zinnia(TEGAKI_JA_MODEL)
        self.label = f"Tegaki's `{TEGAKI_JA_MODEL.name}` (Debian tegaki-zinnia-japanese)"

    def vocabulary(self) -> set[str]:
        return set(self.zinnia.labels)

    def __call__(self, drawing: Drawing) -> list[str]:
        return [c for c, _ in self.zinnia(drawing.strokes, CANVAS, CANVAS, TOP_K)]


def _kanjidraw():
    try:
        import kanjidraw
    except ImportError as e:
        raise PeersError(
            "kanjidraw is not installed: pip install 'kanjirec[peers]' (or pip install kanjidraw)"
        ) from e
    return kanjidraw


class Kanjidraw:
    """kanjidraw's strict matching, every candidate scored (no cut-off), the first ten kept."""

    name = "kanjidraw"

    def __init__(self):
        self.kanjidraw = _kanjidraw()
        self.label = f"kanjidraw {self.kanjidraw.__version__}, strict matching (its default)"

    def vocabulary(self) -> set[str]:
        return {c for by_count in self.kanjidraw.kanji_data().values() for c in by_count}

    def __call__(self, drawing: Drawing) -> list[str]:
        scale = KANJIDRAW_SIDE / CANVAS
        lines = [[*(s[0] * scale).tolist(), *(s[-1] * scale).tolist()] for s in drawing.strokes]
        if len(lines) not in self.kanjidraw.kanji_data():
            return []  # no character of its data has this many strokes
        return [c for _, c in self.kanjidraw.matches(lines, max_results=TOP_K, cutoff=0)]


# ---------------------------------------------------------------- the comparison


def class_set(count: int, zinnia: ZinniaTegaki, kanjidraw: Kanjidraw, kanjivg: dict) -> tuple[list[str], int]:
    """``count`` characters spread over the CLASS_SET kanji that KanjiVG, zinnia's model and kanjidraw
    all hold, and how many such kanji there are."""
    from kanjirec.charset import get_charset, spread_subset

    named_by_all = zinnia.vocabulary() & kanjidraw.vocabulary()
    common = [c for c in get_charset(CLASS_SET) if c in named_by_all and c in kanjivg]
    return spread_subset(common, count), len(common)


def _score(drawings: Sequence[Drawing], answers: Sequence[list[str]]) -> dict:
    top1 = [a[:1] == [d.char] for d, a in zip(drawings, answers, strict=True)]
    top10 = [d.char in a[:TOP_K] for d, a in zip(drawings, answers, strict=True)]
    return {"drawings": len(drawings), "top1": float(np.mean(top1)), "top10": float(np.mean(top10))}


def compare(drawings: Sequence[Drawing], recognisers: Sequence[Peer]) -> dict[str, dict]:
    """Each recogniser's answers to every drawing: top-1/top-10 overall and per writer, its misses
    (drawings whose first answer is wrong) and its time per drawing."""
    from kanjirec.evaluation.predict import progress

    results = {}
    for recogniser in recognisers:
        # CPU time as well as wall time: on a shared machine the wall time says more about the neighbours.
        cpu, wall = time.process_time(), time.perf_counter()
        answers = [recogniser(d) for d in progress(drawings, desc=recogniser.name, unit="drawing")]
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        writers = sorted({d.writer for d in drawings})
        results[recogniser.name] = {
            "label": recogniser.label,
            **_score(drawings, answers),
            "cpu_ms_per_drawing": 1000 * cpu / len(drawings),
            "wall_ms_per_drawing": 1000 * wall / len(drawings),
            "per_writer": [
                {
                    "writer": w,
                    **_score(
                        [d for d in drawings if d.writer == w],
                        [a for d, a in zip(drawings, answers, strict=True) if d.writer == w],
                    ),
                }
                for w in writers
            ],
            "misses": [
                {"char": d.char, "writer": d.writer, "answer": a[:1][0] if a else None, "top10": d.char in a}
                for d, a in zip(drawings, answers, strict=True)
                if a[:1] != [d.char]
            ],
        }
    return results


def command(chars: int, writers: int, seed: int, model: str | Path | None, out: str | Path | None) -> str:
    """The command line that reproduces a run."""
    parts = ["kanjirec bench peers", f"--chars {chars}", f"--writers {writers}", f"--seed {seed}"]
    parts += [f"--model {model}"] if model is not None else []
    parts += [f"--out {out}"] if out is not None else []
    return " ".join(parts)


def run(
    model: str | Path | None = None,
    *,
    chars: int = DEFAULT_CHARS,
    writers: int = DEFAULT_WRITERS,
    seed: int = SEED,
    out: str | Path | None = None,
    log=print,
) -> dict:
    """Draw ``chars`` characters by each of ``writers`` writers and score the three recognisers on the
    same drawings; returns the report, also written to ``out`` (peers.json, peers.md, SHEET) if given."""
    from kanjirec.data.kanjivg import load_kanjivg

    if chars < 1:
        raise PeersError(f"the comparison needs at least one character, got {chars}")
    hands = draw_writers(writers, seed)
    peers = [Ours(model), ZinniaTegaki(), Kanjidraw()]  # every one loads before any drawing is made
    kanjivg = load_kanjivg()
    characters, common = class_set(chars, peers[1], peers[2], kanjivg)
    t0 = time.perf_counter()
    drawings = [write(kanjivg[c], hand, i, seed) for i, hand in enumerate(hands) for c in characters]
    log(f"drew {len(drawings):,} drawings ({len(characters)} characters x {writers} writers) "
        f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    result = {
        "command": command(chars, writers, seed, model, out),
        "seed": seed,
        "canvas": CANVAS,
        "class_set": {
            "name": CLASS_SET,
            "named_by_all": common,
            "characters": "".join(characters),
            "count": len(characters),
        },
        "writers": [{"writer": i, **asdict(h)} for i, h in enumerate(hands)],
        "swapped_drawings": sum(d.order != tuple(sorted(d.order)) for d in drawings),
        "recognisers": compare(drawings, peers),
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "peers.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
        (out / "peers.md").write_text(report_markdown(result), encoding="utf-8")
        drawing_sheet(drawings, out / SHEET)
    return result


SHEET = "peers_drawings.png"
SHEET_CHARS = 12  # characters per writer on the sheet
SHEET_CELL = 100  # pixels per drawing on the sheet


def drawing_sheet(drawings: Sequence[Drawing], path: Path) -> None:
    """A PNG of the first SHEET_CHARS drawings of each writer, one writer a row, as drawn."""
    from PIL import Image, ImageDraw

    writers = sorted({d.writer for d in drawings})
    rows = [[d for d in drawings if d.writer == w][:SHEET_CHARS] for w in writers]
    sheet = Image.new("L", (SHEET_CELL * max(map(len, rows)), SHEET_CELL * len(rows)), 255)
    pen = ImageDraw.Draw(sheet)
    scale = SHEET_CELL / CANVAS
    for r, row in enumerate(rows):
        for c, d in enumerate(row):
            corner = np.array([c * SHEET_CELL, r * SHEET_CELL])
            pen.rectangle([*corner.tolist(), *(corner + SHEET_CELL - 1).tolist()], outline=200)
            for stroke in d.strokes:
                pen.line([tuple(p) for p in (stroke * scale + corner).tolist()], fill=0, width=2)
    sheet.save(path)


PROVENANCE = (
    "The strokes come from KanjiVG: every drawing is a KanjiVG character's stroke paths, with KanjiVG's "
    "stroke count and (but for a few swaps) stroke order, moved about by a writer model written for "
    "this comparison (no recogniser trained on it). That favours the recognisers that know KanjiVG. "
    "kanjidraw matches against KanjiVG itself (its data is the first and last point of each KanjiVG "
    "stroke, and its strict matching needs the stroke count and order that these drawings keep), and "
    "our model was trained on synthetic images, 80% of them rendered from KanjiVG strokes by our own "
    "handwriting renderer (the rest print faces). zinnia's Tegaki model was trained on strokes that "
    "people wrote (the Tomoe project's handwriting-ja.xml, which the Tegaki model's source ships), not "
    "on KanjiVG, so KanjiVG's stroke shapes and proportions are new to it. Real handwriting also "
    "joins, splits and reorders strokes, which this writer model does not do (beyond the swaps): these "
    "figures do not measure how each recogniser copes with that."
)


def report_markdown(r: dict, misses: bool = True) -> str:
    """The report as Markdown; ``misses``: with each recogniser's misses (one folded list each)."""
    cs = r["class_set"]
    rows = [
        f"| {name} | {v['label']} | {v['drawings']:,} | {100 * v['top1']:.2f}% | {100 * v['top10']:.2f}% "
        f"| {v['cpu_ms_per_drawing']:.1f} | {v['wall_ms_per_drawing']:.1f} |"
        for name, v in r["recognisers"].items()
    ]
    writer_rows = [
        f"| {w['writer']} | "
        + " | ".join(
            f"{100 * v['per_writer'][i]['top1']:.1f}% / {100 * v['per_writer'][i]['top10']:.1f}%"
            for v in r["recognisers"].values()
        )
        + " |"
        for i, w in enumerate(r["writers"])
    ]
    missed = []
    for name, v in r["recognisers"].items() if misses else ():
        listed = " ".join(f"{m['char']}>{m['answer'] or '-'}" for m in v["misses"])
        missed += [
            f"<details><summary>{name}: {len(v['misses']):,} misses at top-1 "
            f"({sum(not m['top10'] for m in v['misses']):,} not in the top 10)</summary>",
            "",
            f"{listed or '(none)'}",
            "",
            "</details>",
            "",
        ]
    return "\n".join(
        [
            "# Peers, side by side: the same drawn strokes, three recognisers",
            "",
            f"Command: `{r['command']}` (seed {r['seed']}, a {r['canvas']} x {r['canvas']} canvas).",
            "",
            f"Characters: {cs['count']:,} spread evenly over the {cs['named_by_all']:,} {cs['name']} kanji "
            "(JIS X 0208 level 1, the kanji of ETL9G) that KanjiVG, zinnia's Tegaki model and kanjidraw "
            f"all hold; {len(r['writers'])} writers, {r['swapped_drawings']:,} drawings with swapped "
            "strokes. Each recogniser answers from its own vocabulary.",
            "",
            "| recogniser | what | drawings | top-1 | top-10 | CPU ms / drawing | wall ms / drawing |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Each recogniser runs on one thread. CPU time counts this process's work per drawing (ours "
            "includes drawing the strokes into the image); wall time also counts waiting for the other "
            "jobs of a shared machine.",
            "",
            f"The first drawings of each writer, one writer a row: [{SHEET}]({SHEET}).",
            "",
            "Per writer (top-1 / top-10):",
            "",
            "| writer | " + " | ".join(r["recognisers"]) + " |",
            "|---|" + "---|" * len(r["recognisers"]),
            *writer_rows,
            "",
            PROVENANCE,
            *(["", "Misses (character drawn > first answer):", "", *missed] if misses else []),
        ]
    )
