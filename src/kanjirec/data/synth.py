"""Synthetic handwriting from KanjiVG strokes, plus print fonts.

Stroke data comes from KanjiVG (C) Ulrich Apel, CC BY-SA 3.0,
http://kanjivg.tagaini.net; images rendered from it are derived works under the
same licence.

The stroke renderer works on a whole batch at once, on flat arrays of points:

1. every stroke of every sample is resampled densely along its arc, with its
   ends trimmed or extended (changes in stroke length);
2. each stroke is bent (curvature change), given a smooth low-frequency wobble,
   and moved by a small affine jitter about its own centre;
3. each sample gets a global affine (size, slant, rotation, offset) and a
   smooth elastic displacement, both applied to the points, so the stored
   stroke sequences line up exactly with the ink;
4. pen pressure varies along each stroke (tapered sweeps, gaps where the pen
   lifts), consecutive strokes are sometimes joined by a light hairline;
5. points are splatted bilinearly into a canvas, blurred with the writer's pen
   Gaussian (two matrix products) and turned into ink through a saturating
   curve, so that pressure sets both darkness and width;
6. scan-like finish: ink grain, background level and noise, specks, and 16 grey
   levels as in ETL9G (ink not saturated), then the contrast stretch of the
   project's image convention (see `finish_images`).

Writer styles span pen and brush hands (see `draw_writer_styles`): hairline to heavier-than-bold
pens; brushes whose width follows pressure, with the entry press, firm stop (tome), flick (hane)
and tapering sweep (harai) of a Japanese hand, and dry-brush streaks; writer geometry (slant,
aspect, compactness, the proportion of a character's two top-level components, size and placement);
semi-cursive joins and shortened short strokes. What the literature on synthetic CJK
handwriting suggested, and where it is used: personal style as a smooth deformation of standard
stroke templates (Tan, Yin, Wu and Liu, "Chinese Handwriting Generation by Neural Network Based
Style Transformation", ICIG 2017): the per-writer affine and elastic field; cursiveness and the
spatial layout of components as the style variations that matter (Zong and Zhu, "StrokeBank:
Automating Personalized Chinese Handwriting Generation", IAAI 2014): joins, shortened strokes,
component proportions and compactness; a brush footprint that widens with pressure and runs dry
(Wong and Ip, "Virtual brush: a model-based synthesis of Chinese calligraphy", Computers & Graphics
24(1), 2000): the brush model below.

Leave-styles-out: one region of this style space, brush hands that are also strongly
semi-cursive (`HELD_OUT_REGION`), is never drawn for training (`draw_writer_styles(region="train")`)
and only drawn to test on it (`region="held_out"`).

Stages 1-6 run a sub-batch of samples at a time (`stroke_images`), so the float
working arrays stay in cache and only uint8 images leave the renderer.

A "writer" is a persistent random style (size, slant, pen width, ink, messiness,
cursiveness ...) that writes every class once, so writer-disjoint splits mean
something. Fonts are writers too: one per face.

Stored strokes are (x, y) in pixel units of the stored image, the image spanning
[0, S] (pixel (row r, column c) covers [c, c+1) x [r, r+1), centre c + 0.5).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kanjirec.data.kanjivg import KANJIVG_BOX, KanjiEntry
from kanjirec.errors import KanjirecError

MAX_LEVEL = 15  # ETL9G's 16 grey levels
_LEVELS = MAX_LEVEL + 1
# Samples rendered together: enough to amortise numpy's per-call overhead on the point arrays, few
# enough that the (n, 70, 70) float32 pixel arrays (~2.5 MB) stay in cache.
_SUB_BATCH = 128
_FONT_GRID = 9  # lattice points per side on which a font sample's inverse distortion is evaluated
_PAD = 3  # canvas border (pixels) so that blur near the edge sees the ink just outside
_DENSE_SPACING = 1.0  # output pixels between resampled stroke points (the blur hides the spacing)
_STORE_EVERY = 2  # stored stroke points keep every 2nd dense point (~2 px apart) and the last one
_ELASTIC_MODES = 3  # plane waves summed into a sample's smooth elastic displacement
_SHORT_STROKE = 14.0  # KanjiVG units: strokes shorter than this (dots, ticks) shrink in cursive hands
# A brush's footprint: extra lines at these fractions of its half-width either side of the centre line
# (pressure sets the half-width, so the ink widens as the brush is pressed).
_BRUSH_OFFSETS = (-1.0, -0.5, 0.5, 1.0)
# KanjiVG stroke types that end in a sweep or a hook: the pen lifts while moving, so ink fades.
_SWEEP_MARKS = set("㇒㇏㇀㇁㇂㇃㇄㇅㇆㇇㇈㇉㇊㇋㇌㇍㇎㇚㇙㇟㇖㇗㇘㇛㇜㇝㇞㇡㇢")
# Scan noise is the sum of 3 uniform random bytes (Irwin-Hall: within 1% of a Gaussian's quantiles up
# to 2.5 sigma): a few times cheaper than float normals, and rounded to 16 grey levels anyway.
_NOISE_BYTES = 3
_NOISE_MEAN = _NOISE_BYTES * 255 / 2
_NOISE_STD = float(np.sqrt(_NOISE_BYTES * (256**2 - 1) / 12))


class SynthError(KanjirecError):
    """Synthetic data cannot be made as asked (missing stroke data or glyphs, bad options)."""


# ---------------------------------------------------------------- writer styles


STYLE_FIELDS = (
    "size",  # the 109-unit KanjiVG box as a fraction of the image side
    "aspect",  # x scale / y scale
    "slant",  # horizontal shear
    "rotation",  # radians
    "pen",  # pen sigma in pixels at 64x64
    "ink",  # ink level as a fraction of full scale
    "mess",  # scales every stroke-level perturbation
    "cursive",  # probability that a stroke joins the next with a hairline
    "gap",  # probability that a stroke has a pen lift in it
    "length",  # mean change in stroke length (fraction)
    "elastic",  # elastic displacement amplitude in pixels at 64x64
    "gain",  # saturation of the ink curve
    "grain",  # ink texture strength
    "noise",  # background noise (grey levels)
    "background",  # background grey level
    "brush",  # brush half-width at full pressure, pixels at 64x64 (0: a pen, width set by `pen` alone)
    "dry",  # dry-brush streaks: how much of a brush's outer footprint drops out along a stroke
    "press",  # brush entry press and firm stop (tome): extra pressure at stroke ends
    "compact",  # stroke centres pulled towards (< 0) or pushed from (> 0) the character's centre
    "proportion",  # spread of the first top-level component's share of the character (log scale)
    "join_weight",  # pressure of the connecting traces of semi-cursive joins
)

# Brush hands that are also strongly semi-cursive: held out of training, to measure the step to
# styles the model never saw (see `draw_writer_styles`).
HELD_OUT_CURSIVE = 0.55
REGIONS = ("train", "held_out", "all")


def draw_writer_styles(rng: np.random.Generator, n: int, region: str = "train") -> dict[str, np.ndarray]:
    """Independent random writer styles: each field an array (n,).

    ``region``: "train" never draws a held-out style (a brush hand with cursive >= HELD_OUT_CURSIVE:
    such a draw has its cursiveness folded below the threshold), "held_out" draws only those, "all"
    draws from the whole space.
    """
    if region not in REGIONS:
        raise SynthError(f"unknown style region {region!r}; choose one of {', '.join(REGIONS)}")
    u = rng.uniform
    # Pens: a few hairlines, mostly ordinary pens, a quarter heavier than bold print (with a high gain).
    kind = u(0, 1, n)
    pen = np.where(kind < 0.15, u(0.3, 0.5, n), np.where(kind < 0.75, u(0.5, 1.1, n), u(1.1, 1.6, n)))
    brush = np.where(u(0, 1, n) < 0.35, u(0.6, 2.2, n), 0.0)
    pen = np.where(brush > 0, u(0.45, 0.8, n), pen)
    cursive = u(0.0, 0.85, n) * (u(0, 1, n) < 0.5)
    if region == "held_out":
        brush = u(0.8, 2.2, n)
        pen = u(0.45, 0.8, n)
        cursive = u(HELD_OUT_CURSIVE, 0.9, n)
    elif region == "train":
        cursive = np.where(brush > 0, cursive * (HELD_OUT_CURSIVE / 0.85) * 0.999, cursive)
    return {
        "size": u(0.72, 0.98, n),
        "aspect": np.exp(rng.normal(0, 0.09, n)),
        "slant": rng.normal(0, 0.12, n),
        "rotation": rng.normal(0, 0.05, n),
        "pen": pen,
        "ink": u(0.5, 1.0, n),
        "mess": u(0.3, 1.4, n),
        "cursive": cursive,
        "gap": u(0.0, 0.05, n),
        "length": rng.normal(0, 0.05, n),
        "elastic": u(0.3, 1.5, n),
        "gain": np.where(kind >= 0.75, u(2.5, 4.0, n), u(1.5, 3.0, n)),
        "grain": u(0.0, 0.35, n),
        "noise": u(0.15, 0.6, n),
        "background": u(0.0, 1.3, n),
        "brush": brush,
        "dry": np.where(brush > 0, u(0.0, 0.7, n), 0.0),
        "press": u(0.0, 0.5, n),
        "compact": rng.normal(0, 0.07, n),
        "proportion": u(0.0, 0.15, n),
        "join_weight": u(0.2, 0.8, n),
    }


def in_held_out_region(style: dict[str, np.ndarray]) -> np.ndarray:
    """Which styles lie in the held-out region (brush hands with cursive >= HELD_OUT_CURSIVE)."""
    return (style["brush"] > 0) & (style["cursive"] >= HELD_OUT_CURSIVE)


def _sample_styles(
    writer_styles: dict[str, np.ndarray], writer_of_sample: np.ndarray
) -> dict[str, np.ndarray]:
    return {k: v[writer_of_sample] for k, v in writer_styles.items()}


# ---------------------------------------------------------------- stroke bank


@dataclass(frozen=True)
class StrokeBank:
    """The strokes of a list of characters as flat arrays, for gathering whole batches without loops.

    KanjiVG polylines are resampled evenly by arc length (`kanjivg.POINT_SPACING`), so a point's
    index along its stroke is an arc-length parameter: walking along a stroke needs no search.
    """

    chars: tuple[str, ...]
    point_step: np.ndarray  # (P, 4) float32: x, y of each point (KanjiVG units) and the step to the next
    stroke_first: np.ndarray  # (K,) index of the stroke's first point
    stroke_npoints: np.ndarray  # (K,)
    stroke_length: np.ndarray  # (K,) KanjiVG units
    stroke_sweep: np.ndarray  # (K,) bool
    char_first: np.ndarray  # (C,) index of the character's first stroke
    char_nstrokes: np.ndarray  # (C,)
    # The character's top-level split into two components, for writer-level proportions: the axis
    # (0 none, 1 left/right, 2 top/bottom), the extent along it and the boundary (lo, boundary, hi) in
    # KanjiVG units, and which side each stroke belongs to (0 first, 1 second, -1 neither).
    char_split_axis: np.ndarray  # (C,) int8
    char_split: np.ndarray  # (C, 3) float64
    stroke_part: np.ndarray  # (K,) int8

    @classmethod
    def build(cls, entries: Sequence[KanjiEntry]) -> StrokeBank:
        strokes = [s for e in entries for s in e.strokes]
        npoints = np.array([len(s.points) for s in strokes], dtype=np.int64)
        points = np.concatenate([s.points for s in strokes]).astype(np.float32)
        first = np.cumsum(npoints) - npoints
        step = np.zeros_like(points)
        step[:-1] = points[1:] - points[:-1]
        step[first + npoints - 1] = 0.0  # no step across stroke boundaries
        nstrokes = np.array([len(e.strokes) for e in entries], dtype=np.int64)
        splits = [_top_level_split(e) for e in entries]
        return cls(
            chars=tuple(e.char for e in entries),
            point_step=np.concatenate([points, step], axis=1),
            stroke_first=first,
            stroke_npoints=npoints,
            stroke_length=np.add.reduceat(np.linalg.norm(step, axis=1).astype(np.float64), first),
            stroke_sweep=np.array([any(ch in _SWEEP_MARKS for ch in s.type) for s in strokes]),
            char_first=np.cumsum(nstrokes) - nstrokes,
            char_nstrokes=nstrokes,
            char_split_axis=np.array([a for a, _, _ in splits], dtype=np.int8),
            char_split=np.array([b for _, b, _ in splits], dtype=np.float64).reshape(len(entries), 3),
            stroke_part=np.concatenate([p for _, _, p in splits]).astype(np.int8),
        )


_SPLIT_POSITIONS = {("left", "right"): 1, ("top", "bottom"): 2}


def _top_level_split(entry: KanjiEntry) -> tuple[int, tuple[float, float, float], np.ndarray]:
    """(axis, (lo, boundary, hi), part of each stroke) of a character whose root has exactly a
    left/right or top/bottom pair of components; axis 0 and parts -1 otherwise."""
    part = np.full(len(entry.strokes), -1, dtype=np.int8)
    children = entry.root.children
    axis = _SPLIT_POSITIONS.get(tuple(c.position for c in children), 0)
    if not axis or not all(c.stroke_indices for c in children):
        return 0, (0.0, 0.0, 0.0), part
    for side, child in enumerate(children):
        part[list(child.stroke_indices)] = side
    dim = axis - 1
    coords = [np.concatenate([entry.strokes[i].points[:, dim] for i in c.stroke_indices]) for c in children]
    lo, hi = float(coords[0].min()), float(coords[1].max())
    boundary = (float(coords[0].max()) + float(coords[1].min())) / 2
    if not lo < boundary < hi:  # overlapping components: no clean boundary to move
        return 0, (0.0, 0.0, 0.0), np.full(len(entry.strokes), -1, dtype=np.int8)
    return axis, (lo, boundary, hi), part


def _ragged_arange(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts (m,): owner (sum,) and position within the owner (sum,)."""
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(int(counts.sum())) - starts[owner]


def _rotation_shear_scale(rot: np.ndarray, shear: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """(n, 2, 2) = R(rot) @ [[1, shear], [0, 1]] @ diag(sx, sy)."""
    c, s = np.cos(rot), np.sin(rot)
    m = np.empty((len(rot), 2, 2))
    m[:, 0, 0] = c * sx
    m[:, 0, 1] = (c * shear - s) * sy
    m[:, 1, 0] = s * sx
    m[:, 1, 1] = (s * shear + c) * sy
    return m


def _global_affine(
    style: dict[str, np.ndarray], rng: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: the 2x2 map from KanjiVG units (about the box centre) to pixels, and the shift."""
    n = len(style["size"])
    scale = size * style["size"] / KANJIVG_BOX * np.exp(rng.normal(0, 0.04, n))
    aspect = style["aspect"] * np.exp(rng.normal(0, 0.03, n))
    glob = _rotation_shear_scale(
        style["rotation"] + rng.normal(0, 0.03, n),
        style["slant"] + rng.normal(0, 0.04, n),
        scale * np.sqrt(aspect),
        scale / np.sqrt(aspect),
    )
    shift = size / 2 + rng.normal(0, 1.2 * size / 64.0, (n, 2))
    return glob, shift


def _elastic_waves(
    style: dict[str, np.ndarray], rng: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth random displacement (pixels) per sample as a few low Fourier modes: the displacement at
    p is sum_j amp[j] * sin(freq[j] . p + phase[j]); freq, amp (modes, n, 2), phase (modes, n)."""
    n = len(style["elastic"])
    modes = _ELASTIC_MODES
    freq = rng.normal(0, 1.6, (modes, n, 2)) * (2 * np.pi / size)  # ~1.6 cycles per side
    phase = rng.uniform(0, 2 * np.pi, (modes, n))
    amp = rng.normal(0, 1.0, (modes, n, 2)) * (style["elastic"] * size / 64.0)[None, :, None] / np.sqrt(modes)
    return freq, phase, amp


# ---------------------------------------------------------------- stroke rendering


def render_strokes(
    bank: StrokeBank,
    char_index: np.ndarray,
    style: dict[str, np.ndarray],
    rng: np.random.Generator,
    size: int = 64,
    with_strokes: bool = False,
) -> tuple[np.ndarray, list[list[np.ndarray]] | None]:
    """Ink images (n, size, size) float32 in [0, 1] of bank characters, one per sample style.

    ``style`` holds one value per sample (a writer's style repeated over its samples).
    Returns the images and, if asked, each sample's strokes in pixel coordinates.
    These are stages 1-5; `stroke_images` adds the scan finish, as datasets store them.
    """
    return _stroke_batches(bank, char_index, style, rng, size, with_strokes, finish=False)


def stroke_images(
    bank: StrokeBank,
    char_index: np.ndarray,
    style: dict[str, np.ndarray],
    rng: np.random.Generator,
    size: int = 64,
    with_strokes: bool = False,
) -> tuple[np.ndarray, list[list[np.ndarray]] | None]:
    """Finished images (n, size, size) uint8 in the project's convention (ink 255 on 0): the ink of
    `render_strokes` through `finish_images`, a sub-batch at a time. Returns strokes as `render_strokes`."""
    return _stroke_batches(bank, char_index, style, rng, size, with_strokes, finish=True)


def _stroke_batches(
    bank: StrokeBank,
    char_index: np.ndarray,
    style: dict[str, np.ndarray],
    rng: np.random.Generator,
    size: int,
    with_strokes: bool,
    finish: bool,
) -> tuple[np.ndarray, list[list[np.ndarray]] | None]:
    images = np.empty((len(char_index), size, size), np.uint8 if finish else np.float32)
    strokes: list[list[np.ndarray]] | None = [] if with_strokes else None
    # The rng is consumed in order, sub-batch by sub-batch, so results depend on nothing but the inputs.
    for b0 in range(0, len(char_index), _SUB_BATCH):
        part = slice(b0, b0 + _SUB_BATCH)
        sub_style = {k: v[part] for k, v in style.items()}
        ink, ink_scale, sub_strokes = _render_stroke_batch(
            bank, char_index[part], sub_style, rng, size, with_strokes
        )
        if finish:
            images[part] = _finish_batch(ink, sub_style, rng, ink_scale)
        else:
            images[part] = ink * ink_scale.astype(np.float32)[:, None, None]
        if strokes is not None:
            strokes.extend(sub_strokes)
    return images, strokes


def _render_stroke_batch(
    bank: StrokeBank,
    char_index: np.ndarray,
    style: dict[str, np.ndarray],
    rng: np.random.Generator,
    size: int,
    with_strokes: bool,
) -> tuple[np.ndarray, np.ndarray, list[list[np.ndarray]] | None]:
    """Stages 1-5 for one sub-batch: unscaled ink (n, size, size) float32, the per-sample factor that
    scales it to [0, 1], and the strokes if asked.

    Everything random is drawn per stroke or per sample (small float64 arrays); the per-point work is
    float32 arithmetic on the rows of one table of per-stroke values repeated out to the points.
    """
    n = len(char_index)
    px = size / 64.0  # style lengths are given in pixels at 64x64
    f32 = np.float32

    # -- the batch's strokes
    stroke_sample, stroke_pos = _ragged_arange(bank.char_nstrokes[char_index])
    stroke = bank.char_first[char_index][stroke_sample] + stroke_pos
    k = len(stroke)
    mess = style["mess"][stroke_sample]
    length = bank.stroke_length[stroke]
    npoints = bank.stroke_npoints[stroke]
    first = bank.stroke_first[stroke]
    units_to_px = (size * style["size"] / KANJIVG_BOX)[stroke_sample]

    # -- 1. trimmed / extended ends, as fractions of the stroke (outside [0, 1] extrapolates along the
    # end tangent)
    change = style["length"][stroke_sample] + rng.normal(0, 0.04, k) * mess
    # Semi-cursive hands shorten short strokes: dots become ticks that lead into the next stroke.
    change -= np.where(length < _SHORT_STROKE, style["cursive"][stroke_sample] * rng.uniform(0.1, 0.5, k), 0)
    start_trim = rng.uniform(-0.5, 0.5, k) * change - 0.5 * change
    end_ext = 1.0 + change + start_trim
    span_px = length * (end_ext - start_trim) * units_to_px
    ndense = np.maximum(2, np.ceil(span_px / (_DENSE_SPACING * px)).astype(np.int64) + 1)

    # -- 2. stroke-level perturbations, in KanjiVG units: a bend along the chord's normal plus a smooth
    # wobble (random-phase sinusoids of one and two half-periods, written as sin/cos pairs)
    starts = bank.point_step[first, :2].astype(np.float64)
    ends = bank.point_step[first + npoints - 1, :2].astype(np.float64)
    chord = ends - starts
    normal = np.stack([-chord[:, 1], chord[:, 0]], axis=1)
    normal /= np.maximum(np.linalg.norm(chord, axis=1), 1e-6)[:, None]
    bend = rng.normal(0, 0.035, k) * mess * length
    wobble = rng.normal(0, 0.5, (k, 2, 4)) * mess[:, None, None]
    wobble[:, :, 0] += bend[:, None] * normal
    jitter = _rotation_shear_scale(
        rng.normal(0, 0.05, k) * mess,
        np.zeros(k),
        np.exp(rng.normal(0, 0.05, k) * mess),
        np.exp(rng.normal(0, 0.05, k) * mess),
    )
    # Writer geometry: the first of two top-level components gets a larger or smaller share of the
    # character (an axis-aligned map per stroke, u -> scale * u + shift), and stroke centres are pulled
    # towards the box centre or pushed from it (compactness).
    comp_scale, comp_shift = _component_maps(bank, char_index, stroke, stroke_sample, style, rng)
    centre = comp_scale * (starts + ends) / 2 + comp_shift
    move = rng.normal(0, 1.0, (k, 2)) * mess[:, None]
    move += style["compact"][stroke_sample, None] * (centre - KANJIVG_BOX / 2)

    # -- 3. per-stroke jitter and the global affine into canvas pixels, composed per stroke:
    # G (J (u - c) + c + m - 54.5) + shift = (G J) u + [G (c + m - 54.5 - J c) + shift]
    glob, shift = _global_affine(style, rng, size)
    # With the component map C u = D u + t first: G (J (C u - c) + c + m - 54.5) + shift
    # = (G J D) u + [G (c + m - 54.5 - J c + J t) + shift], c the mapped centre.
    gs = glob[stroke_sample]
    gj = gs @ jitter
    mat = gj * comp_scale[:, None, :]
    off = (gs @ (centre + move - KANJIVG_BOX / 2)[:, :, None])[:, :, 0] + (
        gj @ (comp_shift - centre)[:, :, None]
    )[:, :, 0]
    # Canvas coordinates put pixel centres on integers, with the border: a constant shift, which the
    # elastic waves' uniform random phases do not notice.
    off += shift[stroke_sample] + (_PAD - 0.5)
    freq, phase, amp = _elastic_waves(style, rng, size)

    # -- 4. pressure: a ramp over the first 2 px, a taper at the end (strong on sweeps), a weight and a
    # slow swell per stroke, the odd pen lift
    taper = np.where(bank.stroke_sweep[stroke], rng.uniform(0.5, 0.95, k), rng.uniform(0.0, 0.35, k))
    swell = rng.normal(0, 0.1, (k, 2))
    # Each point stands for the dense spacing of ink, so lines get the same density at any point count.
    weight = np.exp(rng.normal(0, 0.12, k)) * (_DENSE_SPACING * px)
    has_gap = rng.uniform(0, 1, k) < style["gap"][stroke_sample]
    gap_start = np.where(has_gap, rng.uniform(0.2, 0.7, k), 2.0)
    gap_end = gap_start + rng.uniform(0.04, 0.12, k)
    # Stroke ends: a brush presses in at the start; a firm stop (tome) presses at the end of strokes that
    # do not sweep out; sweeps and flicks (harai, hane) taper instead (above).
    is_brush = style["brush"][stroke_sample] > 0
    press = style["press"][stroke_sample] * rng.uniform(0.5, 1.5, k)
    entry_press = np.where(is_brush, press, 0.0)
    tome = np.where(bank.stroke_sweep[stroke], 0.0, press * rng.uniform(0.3, 1.0, k))
    brush_px = style["brush"][stroke_sample] * px * np.exp(rng.normal(0, 0.1, k))

    # -- per point: one float32 table of per-stroke values repeated out to the points
    start_pt = np.cumsum(ndense) - ndense
    m = int(ndense.sum())
    s = stroke_sample
    table = np.stack(
        [
            start_pt,
            1.0 / (ndense - 1),
            (npoints - 1) * start_trim,  # the drawn stroke as a range of the bank polyline's point index
            (npoints - 1) * (end_ext - start_trim),
            npoints - 2,
            *wobble.reshape(k, 8).T,
            mat[:, 0, 0],
            mat[:, 0, 1],
            mat[:, 1, 0],
            mat[:, 1, 1],
            off[:, 0],
            off[:, 1],
            *freq[:, s, 0],
            *freq[:, s, 1],
            *phase[:, s],
            *amp[:, s, 0],
            *amp[:, s, 1],
            span_px / (2.0 * px),
            taper,
            weight,
            weight * swell[:, 0],
            weight * swell[:, 1],
            gap_start,
            gap_end,
            entry_press,
            tome,
        ]
    ).astype(f32)
    rows = iter(np.repeat(table, ndense, axis=1))
    r_start, r_inv, r_u0, r_du, r_last = (next(rows) for _ in range(5))
    r_wobble = [next(rows) for _ in range(8)]
    m00, m01, m10, m11, o0, o1 = (next(rows) for _ in range(6))
    modes = _ELASTIC_MODES
    r_fx, r_fy, r_phase, r_ax, r_ay = ([next(rows) for _ in range(modes)] for _ in range(5))
    r_ramp, r_taper, r_weight, r_swell0, r_swell1, r_gap0, r_gap1, r_entry, r_tome = rows
    i_first, i_base = np.repeat(np.stack([first, stroke_sample]), ndense, axis=1)
    tmp = np.empty(m, f32)

    # 1. dense resampling: t runs 0..1 along the drawn stroke, u over the bank polyline's point index
    t = np.arange(m, dtype=f32)
    t -= r_start
    t *= r_inv
    u = r_du * t
    u += r_u0
    seg = np.floor(u)
    np.maximum(seg, 0, out=seg)
    np.minimum(seg, r_last, out=seg)
    u -= seg  # the fraction along the segment (extrapolating beyond the ends)
    ps = bank.point_step[seg.astype(np.int64) + i_first]
    x = ps[:, 2] * u
    x += ps[:, 0]
    y = ps[:, 3] * u
    y += ps[:, 1]

    # 2. wobble; sin / cos of 2 pi t from those of pi t
    sin1 = t * f32(np.pi)
    cos1 = np.cos(sin1)
    np.sin(sin1, out=sin1)
    sin2 = sin1 * cos1
    sin2 *= 2
    cos2 = sin1 * sin1
    cos2 *= -2
    cos2 += 1
    for j, basis in enumerate((sin1, cos1, sin2, cos2)):
        x += np.multiply(r_wobble[j], basis, out=tmp)
        y += np.multiply(r_wobble[4 + j], basis, out=tmp)

    # 3. affine into canvas pixels, then the elastic displacement evaluated there
    px_x = m00 * x
    px_x += np.multiply(m01, y, out=tmp)
    px_x += o0
    px_y = m10 * x
    px_y += np.multiply(m11, y, out=tmp)
    px_y += o1
    x, y = px_x, px_y
    dx, dy = np.zeros(m, f32), np.zeros(m, f32)
    for j in range(modes):
        wave = r_fx[j] * x
        wave += np.multiply(r_fy[j], y, out=tmp)
        wave += r_phase[j]
        np.sin(wave, out=wave)
        dx += np.multiply(r_ax[j], wave, out=tmp)
        dy += np.multiply(r_ay[j], wave, out=tmp)
    x += dx
    y += dy

    # 4. pressure
    pressure = r_ramp * t
    pressure += 0.4
    np.minimum(pressure, 1.0, out=pressure)
    fade = t * f32(1 / 0.35)
    fade -= f32(0.65 / 0.35)
    np.clip(fade, 0, 1, out=fade)
    fade *= fade
    fade *= r_taper
    np.subtract(1, fade, out=fade)
    pressure *= fade
    ends = np.square(t * f32(1 / 0.08), out=fade)
    np.exp(-ends, out=ends)
    pressure += np.multiply(r_entry, ends, out=ends)
    ends = np.subtract(1, t, out=fade)
    ends *= f32(1 / 0.07)
    np.square(ends, out=ends)
    np.exp(-ends, out=ends)
    pressure += np.multiply(r_tome, ends, out=ends)
    profile = pressure.copy()  # the pressure's shape along the stroke: a brush's width follows it
    factor = np.multiply(r_swell0, sin1, out=fade)
    factor += np.multiply(r_swell1, cos2, out=tmp)
    factor += r_weight
    pressure *= factor
    pressure[(t > r_gap0) & (t < r_gap1)] = 0.0
    brush_x, brush_y, brush_sample, brush_weight = _brush_footprints(
        x, y, t, i_base, pressure, profile, start_pt, ndense, brush_px, style["dry"][stroke_sample], rng
    )

    # -- joins: a light hairline from the end of a stroke to the start of the next one of the same sample
    last_pt = start_pt + ndense - 1
    ax, ay, bx, by = x[last_pt[:-1]], y[last_pt[:-1]], x[start_pt[1:]], y[start_pt[1:]]
    gap_px = np.hypot(bx - ax, by - ay)
    join = (stroke_sample[1:] == stroke_sample[:-1]) & (rng.uniform(0, 1, k - 1) < style["cursive"][s[:-1]])
    join &= gap_px < 0.35 * size
    if join.any():
        ja, jb, jd = np.stack([ax, ay], 1)[join], np.stack([bx, by], 1)[join], gap_px[join]
        jn = np.maximum(2, np.ceil(jd / (_DENSE_SPACING * px)).astype(np.int64) + 1)
        j_owner, j_pos = _ragged_arange(jn)
        jt = (j_pos / (jn[j_owner] - 1))[:, None]
        d = jb - ja
        sag = np.stack([-d[:, 1], d[:, 0]], axis=1) * rng.uniform(-0.15, 0.15, len(jd))[:, None]
        jp = (ja[j_owner] + jt * d[j_owner] + np.sin(np.pi * jt) * sag[j_owner]).astype(f32)
        j_weight = style["join_weight"][s[:-1]][join]
        j_pressure = (rng.uniform(0.5, 1.0, len(jd)) * j_weight)[j_owner] * (_DENSE_SPACING * px)
        j_x, j_y, j_sample, j_weight = jp[:, 0], jp[:, 1], stroke_sample[:-1][join][j_owner], j_pressure
    else:
        j_x = j_y = j_weight = np.empty(0, f32)
        j_sample = np.empty(0, np.int64)
    splat_x = np.concatenate([x, brush_x, j_x])
    splat_y = np.concatenate([y, brush_y, j_y])
    splat_sample = np.concatenate([i_base, brush_sample, j_sample])
    splat_weight = np.concatenate([pressure, brush_weight, j_weight.astype(f32)])

    # -- 5. ink: the saturating curve (1 - exp(-gain d)) / (1 - exp(-gain)) of the pen-blurred density d.
    # A Gaussian line profile peaks at 1 / (sqrt(2 pi) sigma): scaled so a full-pressure line peaks at 1.
    # The blur's matrices carry -gain and the scale; the division is left to the caller (`ink_scale`).
    canvas = _splat(splat_x, splat_y, splat_sample, splat_weight, n, size + 2 * _PAD)
    pen = style["pen"] * px
    ink = _blur(canvas, pen, -style["gain"] * np.sqrt(2 * np.pi) * pen, _PAD)
    np.exp(ink, out=ink)
    ink -= 1
    ink_scale = -1 / (1 - np.exp(-style["gain"]))

    strokes = None
    if with_strokes:
        pos = np.arange(m) - np.repeat(start_pt, ndense)
        keep = pos % _STORE_EVERY == 0
        keep[last_pt] = True
        kept_per_stroke = np.bincount(np.repeat(np.arange(k), ndense)[keep], minlength=k)
        kept = np.stack([x[keep], y[keep]], axis=1) - f32(_PAD - 0.5)  # canvas -> image coordinates
        pieces = np.split(kept, np.cumsum(kept_per_stroke)[:-1])
        bounds = np.concatenate([[0], np.cumsum(bank.char_nstrokes[char_index])])
        strokes = [pieces[bounds[i] : bounds[i + 1]] for i in range(n)]
    return ink, ink_scale, strokes


def _component_maps(
    bank: StrokeBank,
    char_index: np.ndarray,
    stroke: np.ndarray,
    stroke_sample: np.ndarray,
    style: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Per stroke (k, 2) scale and shift in KanjiVG units that give the first of a character's two
    top-level components the share r of their joint extent instead of its own (r drawn per sample
    around 1 with the writer's ``proportion`` spread), the second component taking the rest."""
    k = len(stroke)
    scale, shift = np.ones((k, 2)), np.zeros((k, 2))
    chars = char_index[stroke_sample]
    axis = bank.char_split_axis[chars]
    part = bank.stroke_part[stroke]
    ratio = np.exp(rng.normal(0, 1, len(char_index)) * style["proportion"])[stroke_sample]
    moved = (axis > 0) & (part >= 0)
    if not moved.any():
        return scale, shift
    lo, boundary, hi = bank.char_split[chars[moved]].T
    r = ratio[moved]
    first_w, second_w = boundary - lo, hi - boundary
    # The second component keeps at least 60% of its extent.
    r = np.minimum(r, (first_w + 0.4 * second_w) / first_w)
    second_scale = (hi - lo - r * first_w) / second_w
    first = part[moved] == 0
    s = np.where(first, r, second_scale)
    t = np.where(first, lo * (1 - r), hi * (1 - second_scale))
    dim = axis[moved].astype(np.int64) - 1
    rows = np.flatnonzero(moved)
    scale[rows, dim] = s
    shift[rows, dim] = t
    return scale, shift


def _brush_footprints(
    x: np.ndarray,
    y: np.ndarray,
    t: np.ndarray,
    point_sample: np.ndarray,
    pressure: np.ndarray,
    profile: np.ndarray,
    start_pt: np.ndarray,
    ndense: np.ndarray,
    brush_px: np.ndarray,
    dry: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Extra splat points (x, y, sample, weight) that widen brush strokes: lines either side of the
    centre line at `_BRUSH_OFFSETS` of a half-width that follows the pressure ``profile``, so a pressed
    brush is wide and a lifting one thin. Dry brush: the outer lines drop out in streaks, more towards
    a stroke's end as the ink runs out. Strokes of pen writers (``brush_px`` 0) add nothing."""
    f32 = np.float32
    k = len(ndense)
    stroke_of_point = np.repeat(np.arange(k), ndense)
    on = np.flatnonzero(brush_px[stroke_of_point] > 0)
    if len(on) == 0:
        empty = np.empty(0, f32)
        return empty, empty, np.empty(0, np.int64), empty
    # Tangents by central differences, one-sided at each stroke's ends.
    last_pt = start_pt + ndense - 1
    nxt = np.minimum(np.arange(len(x)) + 1, len(x) - 1)
    prv = np.maximum(np.arange(len(x)) - 1, 0)
    nxt[last_pt] = last_pt
    prv[start_pt] = start_pt
    nxt, prv = nxt[on], prv[on]
    tx, ty = x[nxt] - x[prv], y[nxt] - y[prv]
    norm = np.maximum(np.hypot(tx, ty), f32(1e-6))
    half = (brush_px[stroke_of_point[on]] * profile[on]).astype(f32) / norm
    nx, ny = -ty * half, tx * half
    n_lines = len(_BRUSH_OFFSETS)
    offsets = np.array(_BRUSH_OFFSETS, f32)[:, None]
    out_x = (x[on][None, :] + offsets * nx[None, :]).reshape(-1)
    out_y = (y[on][None, :] + offsets * ny[None, :]).reshape(-1)
    # Streaks: per stroke and line a random sinusoid along the stroke; dryness grows towards the end.
    stroke_on = stroke_of_point[on]
    freq = rng.uniform(1.5, 6.0, (n_lines, k)).astype(f32)
    phase = rng.uniform(0, 2 * np.pi, (n_lines, k)).astype(f32)
    wave = np.sin(freq[:, stroke_on] * f32(2 * np.pi) * t[on][None, :] + phase[:, stroke_on])
    depth = (dry[stroke_on] * (0.3 + 0.7 * t[on])).astype(f32)[None, :] * np.abs(offsets)
    keep = np.clip(1 - 2 * depth * (0.5 + 0.5 * wave), 0, 1)
    weight = (pressure[on][None, :] * f32(0.7) * keep).reshape(-1)
    sample = np.tile(point_sample[on], n_lines)
    return out_x.astype(f32), out_y.astype(f32), sample, weight.astype(f32)


def _splat(
    x: np.ndarray, y: np.ndarray, sample: np.ndarray, weight: np.ndarray, n: int, side: int
) -> np.ndarray:
    """Bilinear splats of weighted points (canvas pixel coordinates: centres on integers) into n
    (side, side) canvases, float32. Points beyond a canvas carry no weight."""
    import torch

    outside = (x < 0) | (y < 0) | (x >= side - 1) | (y >= side - 1)
    weight = np.where(outside, np.float32(0), weight)
    x = np.clip(x, 0, side - 1.001)
    y = np.clip(y, 0, side - 1.001)
    x0, y0 = np.floor(x), np.floor(y)
    x -= x0  # now the fractions
    y -= y0
    y0 *= side
    y0 += x0
    idx = torch.from_numpy(y0.astype(np.int64) + sample * (side * side))
    below = weight * y  # the share of row y0 + 1
    above = weight - below
    below_right = below * x
    below -= below_right
    above_right = above * x
    above -= above_right
    canvas = torch.zeros(n * side * side)
    for w, at in ((above, idx), (above_right, idx + 1), (below, idx + side), (below_right, idx + side + 1)):
        canvas.index_add_(0, at, torch.from_numpy(w))
    return canvas.reshape(n, side, side)


def _blur_matrix(sigma: float, side: int, pad: int) -> np.ndarray:
    """(side - 2 pad, side) Gaussian blur-and-crop matrix, rows summing to 1 away from the edges."""
    size = side - 2 * pad
    radius = int(np.ceil(3 * sigma))
    offsets = np.arange(side)[None, :] - (np.arange(size) + pad)[:, None]
    taps = np.exp(-(offsets**2) / (2 * sigma**2)) * (np.abs(offsets) <= radius)
    return taps / np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2)).sum()


def _blur(canvas, sigma: np.ndarray, gain: np.ndarray, pad: int) -> np.ndarray:
    """Gaussian blur (per-sample ``sigma``) of torch canvases (n, side, side), cropped by ``pad`` on each
    side and multiplied by ``gain``, as two matrix products: a banded kernel matrix does blur and crop at
    once, and as GEMMs this is a few times faster than a separable convolution. Returns float32 numpy.
    """
    import torch

    n, side, _ = canvas.shape
    size = side - 2 * pad
    out = torch.empty(n, size, size)
    # One kernel per run of samples that share sigma and gain: a writer's samples are contiguous.
    change = np.flatnonzero((sigma[1:] != sigma[:-1]) | (gain[1:] != gain[:-1])) + 1
    bounds = [0, *change.tolist(), n]
    for a, b in itertools.pairwise(bounds):
        k = torch.from_numpy(_blur_matrix(float(sigma[a]), side, pad).astype(np.float32))
        rows = canvas[a:b].reshape((b - a) * side, side) @ (k.T * float(gain[a]))
        torch.matmul(k, rows.reshape(b - a, side, size), out=out[a:b])
    return out.numpy()


# ---------------------------------------------------------------- fonts


def render_font_glyphs(
    glyphs: np.ndarray, style: dict[str, np.ndarray], rng: np.random.Generator, size: int = 64
) -> np.ndarray:
    """Distort high-resolution glyphs (n, R, R) (em box = canvas) into ink images (n, size, size).

    Glyphs drawn at more than the output resolution should come low-pass filtered
    (`GlyphCache(..., smooth=True)`), so that thin serifs do not alias when shrunk.

    The em box is mapped like the KanjiVG box of the stroke renderer, with the same kinds of
    global affine and elastic distortion, evaluated as an inverse map and sampled with torch.
    """
    import torch
    import torch.nn.functional as F

    n = len(glyphs)
    # Forward map em box (units of the 109 box) -> pixels, as in render_strokes; invert it per sample.
    glob, shift = _global_affine(style, rng, size)
    inv = np.linalg.inv(glob)
    # The inverse map is smooth: evaluate it on a coarse lattice and upsample it bilinearly.
    coarse = _FONT_GRID
    centres = np.linspace(0.5, size - 0.5, coarse)
    qx, qy = (c.ravel() for c in np.meshgrid(centres, centres))
    freq, phase, amp = _elastic_waves(style, rng, size)
    # Per sample (n, coarse^2): q - shift minus the elastic displacement at q (subtracting it is the
    # inverse of adding it, to first order), then the inverse affine into the 109 box.
    dx = qx[None, :] - shift[:, 0, None]
    dy = qy[None, :] - shift[:, 1, None]
    for j in range(len(freq)):
        wave = np.sin(freq[j, :, 0, None] * qx + freq[j, :, 1, None] * qy + phase[j][:, None])
        dx -= amp[j, :, 0, None] * wave
        dy -= amp[j, :, 1, None] * wave
    ux = inv[:, 0, 0, None] * dx + inv[:, 0, 1, None] * dy
    uy = inv[:, 1, 0, None] * dx + inv[:, 1, 1, None] * dy
    # (n, 2, row, col) in grid_sample's [-1, 1] units (the box centre is 0); bilinear upsampling
    # (align_corners=True) is a (size, coarse) matrix applied on both sides, done as two plain GEMMs.
    lattice = torch.from_numpy((np.stack([ux, uy], axis=1) * (2 / KANJIVG_BOX)).astype(np.float32))
    lattice = lattice.reshape(n * 2 * coarse, coarse)
    up = torch.from_numpy(_upsample_matrix(coarse, size).T.astype(np.float32))
    cols = (lattice @ up).reshape(n * 2, coarse, size).transpose(1, 2).reshape(n * 2 * size, coarse)
    # (n, 2, col, row) -> grid (n, row, col, 2), a strided view grid_sample reads as it is
    grid = (cols @ up).reshape(n, 2, size, size).permute(0, 3, 2, 1)
    out = F.grid_sample(torch.from_numpy(glyphs)[:, None], grid, mode="bilinear", align_corners=False)
    # Pen weight: blur, then the same saturating curve as the stroke renderer (thickens or thins slightly).
    ink = _blur(out[:, 0], np.full(n, 0.4 * size / 64.0), np.ones(n), pad=0)
    gain = (style["gain"] * rng.uniform(0.4, 1.0, n) * 1.5).astype(np.float32)[:, None, None]
    ink *= -gain
    np.exp(ink, out=ink)
    ink -= 1
    ink *= -1 / (1 - np.exp(-gain))
    return ink


def _upsample_matrix(coarse: int, size: int) -> np.ndarray:
    """(size, coarse) weights of bilinear upsampling with align_corners=True."""
    pos = np.arange(size) * (coarse - 1) / (size - 1)
    low = np.minimum(np.floor(pos).astype(np.int64), coarse - 2)
    frac = pos - low
    w = np.zeros((size, coarse))
    w[np.arange(size), low] = 1 - frac
    w[np.arange(size), low + 1] = frac
    return w


def font_styles(
    face, rng: np.random.Generator, n: int, region: str = "train", weight: bool = True
) -> dict[str, np.ndarray]:
    """Per-sample styles of ``n`` samples set in ``face``: a random writer's scan finish, no stroke mess,
    and a stroke weight that takes the face's strokes to a width drawn from a hairline (0.016 em) to
    heavier than black print (0.15 em; a dense character stops thickening where its counters would
    close, `fonts.apply_weight`); a fixed change would turn bold faces into blobs. Without
    ``weight`` the face keeps its own stroke width (how the held-out faces are measured)."""
    from kanjirec.data.fonts import stroke_width

    style = draw_writer_styles(rng, n, region=region)
    if not weight:
        return {**style, "size": rng.uniform(0.8, 0.95, n), "mess": np.zeros(n)}
    target = np.exp(rng.uniform(np.log(0.016), np.log(0.15), n))
    return {
        **style,
        "size": rng.uniform(0.8, 0.95, n),
        "mess": np.zeros(n),
        "font_weight": target - stroke_width(face),
    }


def font_images(
    cache, chars: Sequence[str], style: dict[str, np.ndarray], rng: np.random.Generator, size: int = 64
) -> np.ndarray:
    """Finished images (n, size, size) uint8 of ``chars`` from a `fonts.GlyphCache` (smoothed, drawn at
    more than ``size``): `render_font_glyphs` then `finish_images`, a sub-batch at a time."""
    images = np.empty((len(chars), size, size), np.uint8)
    for b0 in range(0, len(chars), _SUB_BATCH):
        part = slice(b0, b0 + _SUB_BATCH)
        sub_style = {k: v[part] for k, v in style.items()}
        glyphs = cache.get(chars[part], sub_style.get("font_weight"))
        ink = render_font_glyphs(glyphs, sub_style, rng, size)
        images[part] = _finish_batch(ink, sub_style, rng)
    return images


# ---------------------------------------------------------------- scan finish


def scan_finish(ink: np.ndarray, style: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Ink (n, S, S) in [0, 1] -> uint8 grey levels 0..15 like an ETL9G scan: grainy, unsaturated ink,
    a light noisy background, the odd speck."""
    out = np.empty(ink.shape, np.uint8)
    for b0 in range(0, len(ink), _SUB_BATCH):
        x = ink[b0 : b0 + _SUB_BATCH].astype(np.float32)
        _scan(x, {k: v[b0 : b0 + _SUB_BATCH] for k, v in style.items()}, rng)
        index = _level_index(x)
        index -= (np.arange(len(x)) * _LEVELS)[:, None, None]
        out[b0 : b0 + _SUB_BATCH] = index
    return out


def finish_images(ink: np.ndarray, style: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """`scan_finish`, then the project's one image convention: uint8, ink 255 on 0, contrast stretched.

    This replaces ``normalize_images(scan_finish(ink, style, rng), max_level=MAX_LEVEL, size=S,
    margin=0)``, which datasets of rendered images used to go through: the renderer already draws at
    the stored size S with no margin (so that call's resize is the identity) and ink high, and with 16
    grey levels its contrast stretch (median level -> 0, 95th percentile of the ink -> 255) is a
    16-entry table per image, applied here straight from the histogram it comes from. The images are
    the same (a test compares them) except where the stretch lands exactly on .5: normalize_images'
    identity resample through grid_sample carries float32 error that rounds those either way pixel by
    pixel, while here a grey level always maps to one value.
    """
    out = np.empty(ink.shape, np.uint8)
    for b0 in range(0, len(ink), _SUB_BATCH):
        part = slice(b0, b0 + _SUB_BATCH)
        out[part] = _finish_batch(ink[part].astype(np.float32), {k: v[part] for k, v in style.items()}, rng)
    return out


def _finish_batch(
    ink: np.ndarray,
    style: dict[str, np.ndarray],
    rng: np.random.Generator,
    ink_scale: np.ndarray | None = None,
) -> np.ndarray:
    """`finish_images` of float32 ink (n, S, S) that may be overwritten, times ``ink_scale`` per image."""
    _scan(ink, style, rng, ink_scale)
    index = _level_index(ink)
    n = len(ink)
    hist = np.bincount(index.reshape(-1), minlength=n * _LEVELS).reshape(n, _LEVELS)
    return _contrast_tables(hist).reshape(-1)[index]


def _scan(
    x: np.ndarray, style: dict[str, np.ndarray], rng: np.random.Generator, ink_scale: np.ndarray | None = None
) -> None:
    """In place: ink (n, S, S) float32 in [0, 1] (after multiplying by ``ink_scale`` per image) ->
    continuous grey levels in [0, MAX_LEVEL]: ink * level * (1 - grain * v) + background + noise."""

    def per_image(v: np.ndarray) -> np.ndarray:
        return v.astype(np.float32)[:, None, None]

    level = MAX_LEVEL * style["ink"] * (1.0 if ink_scale is None else ink_scale)
    grain = style["grain"]
    # Raw 64-bit draws are the cheapest random bytes numpy makes: one for grain, three for noise.
    nbytes = (1 + _NOISE_BYTES) * x.size
    random = rng.bit_generator.random_raw(-(-nbytes // 8)).view(np.uint8)[:nbytes]
    random = random.reshape(1 + _NOISE_BYTES, *x.shape)
    # Grain: v = (byte + 0.5) / 256, uniform in (0, 1).
    factor = random[0].astype(np.float32)
    factor *= per_image(-level * grain / 256)
    factor += per_image(level * (1 - grain / 512))
    x *= factor
    noise = random[1].astype(np.float32)
    for extra in random[2:]:
        noise += extra
    noise *= per_image(style["noise"] / _NOISE_STD)
    x += noise
    x += per_image(style["background"] - style["noise"] * _NOISE_MEAN / _NOISE_STD)
    n_specks = rng.binomial(x.size, 0.002)
    x.reshape(-1)[rng.integers(0, x.size, n_specks)] += rng.uniform(1.0, 4.0, n_specks).astype(np.float32)
    np.clip(x, 0, MAX_LEVEL, out=x)


def _level_index(x: np.ndarray) -> np.ndarray:
    """Continuous levels (n, S, S) in [0, MAX_LEVEL] -> rounded level + 16 * image index (intp), the
    index of each pixel into the batch's (n, 16) histograms and tables. Overwrites x."""
    x += (0.5 + _LEVELS * np.arange(len(x), dtype=np.float32))[:, None, None]
    return x.astype(np.intp)


def _contrast_tables(hist: np.ndarray) -> np.ndarray:
    """(n, 16) per-image grey level histograms -> (n, 16) uint8 tables: the contrast stretch of
    `preprocess.normalize_images` (background = median level -> 0, the 95th percentile of the levels
    above it -> 255), in the same float32 arithmetic, so the tables hold the values it computes."""
    levels = hist.shape[1]
    cum = hist.cumsum(axis=1)
    background = (cum * 2 < cum[:, -1:]).sum(axis=1)
    above = np.where(np.arange(levels)[None, :] <= background[:, None], 0, hist)
    ink = above.cumsum(axis=1)
    top = np.where(ink[:, -1] > 0, (ink * 100 < ink[:, -1:] * 95).sum(axis=1), background)
    scale = np.maximum((top - background).astype(np.float32), np.float32(0.5))
    value = (np.arange(levels, dtype=np.float32)[None, :] - background.astype(np.float32)[:, None]) / scale[
        :, None
    ]
    np.clip(value, 0, 1, out=value)
    value *= np.float32(255)
    return np.rint(value).astype(np.uint8)


# ---------------------------------------------------------------- dataset synthesis


@dataclass(frozen=True)
class _StrokeJob:
    chunk: int
    first_writer: int
    n_writers: int


@dataclass(frozen=True)
class _FontJob:
    face: int
    block: int
    chars: tuple[str, ...]


_STROKE_CHUNK_SAMPLES = 2048
_FONT_BLOCK = 2048

# Per-process state, set up once per worker.
_STATE: dict = {}


def _init_worker(
    stroke_chars: Sequence[str], faces: Sequence, seed: int, size: int, with_strokes: bool
) -> None:
    import torch

    from kanjirec.data.kanjivg import load_kanjivg

    # One thread per process: the parallelism is across processes, and results must not depend on it.
    torch.set_num_threads(1)
    kvg = load_kanjivg()
    _STATE.update(
        bank=StrokeBank.build([kvg[c] for c in stroke_chars]) if stroke_chars else None,
        faces=list(faces),
        glyphs={},
        seed=seed,
        size=size,
        with_strokes=with_strokes,
    )


def _run_job(job: _StrokeJob | _FontJob) -> tuple:
    size, seed, with_strokes = _STATE["size"], _STATE["seed"], _STATE["with_strokes"]
    if isinstance(job, _StrokeJob):
        bank: StrokeBank = _STATE["bank"]
        rng = np.random.default_rng([seed, 0, job.chunk])
        writers = draw_writer_styles(rng, job.n_writers)
        n_chars = len(bank.chars)
        writer_of_sample = np.repeat(np.arange(job.n_writers), n_chars)
        char_index = np.tile(np.arange(n_chars), job.n_writers)
        style = _sample_styles(writers, writer_of_sample)
        images, strokes = stroke_images(bank, char_index, style, rng, size, with_strokes)
        keys = [f"synth/w{job.first_writer + w:05d}" for w in range(job.n_writers)]
        # Classes as one string (a sequence of characters), so a chunk pickles back to the parent cheaply.
        return (
            images,
            "".join(bank.chars[i] for i in char_index),
            [keys[w] for w in writer_of_sample],
            "synth-strokes",
            strokes,
        )
    from kanjirec.data.fonts import GlyphCache

    face = _STATE["faces"][job.face]
    cache = _STATE["glyphs"].get(job.face)
    if cache is None:
        cache = _STATE["glyphs"][job.face] = GlyphCache(face, 2 * size, smooth=True)
    rng = np.random.default_rng([seed, 1, job.face, job.block])
    n = len(job.chars)
    images = font_images(cache, job.chars, font_styles(face, rng, n), rng, size)
    # A face's copies of a class sit in one block, so glyphs are not needed after it.
    cache.clear()
    strokes = [[] for _ in range(n)] if with_strokes else None
    return images, "".join(job.chars), [face.writer] * n, face.source, strokes


def _in_order(pool, jobs: Sequence, ahead: int):
    """Results of jobs in job order, with at most ``ahead`` outstanding: unlike Pool.imap, finished
    chunks cannot pile up in memory while the writer is busy."""
    from collections import deque

    pending: deque = deque()
    queue = iter(jobs)
    for job in queue:
        pending.append(pool.apply_async(_run_job, (job,)))
        if len(pending) >= ahead:
            break
    while pending:
        result = pending.popleft().get()
        job = next(queue, None)
        if job is not None:
            pending.append(pool.apply_async(_run_job, (job,)))
        yield result


def synthesize(
    charset: str | Path | Sequence[str],
    per_class: int,
    out: str | Path,
    *,
    seed: int = 0,
    image_size: int = 64,
    font_fraction: float = 0.2,
    fonts: Sequence[str | Path] = (),
    default_fonts: bool = True,
    workers: int = 1,
    with_strokes: bool = False,
    skip_missing: bool = False,
    split: str = "writer",
    log=print,
) -> Path:
    """Render ``per_class`` samples of every character of ``charset`` into a packed dataset at ``out``.

    Stroke samples come from independent writers that each write every class once; a fraction
    ``font_fraction`` of each class comes from print fonts (one writer per face). Characters
    without KanjiVG strokes are drawn from fonts alone; characters neither source covers are an
    error unless ``skip_missing``. The same seed gives the same dataset for any worker count.
    """
    from kanjirec.charset import get_charset
    from kanjirec.data.fonts import INSTALL_HINT, resolve_fonts
    from kanjirec.data.kanjivg import kanjivg_dir, load_kanjivg
    from kanjirec.data.store import DatasetWriter

    if per_class < 1:
        raise SynthError(f"--per-class must be at least 1, got {per_class}")
    if not 0.0 <= font_fraction <= 1.0:
        raise SynthError(f"--font-fraction must be within [0, 1], got {font_fraction}")
    if image_size < 16:
        raise SynthError(f"--image-size must be at least 16, got {image_size}")
    chars = list(charset) if not isinstance(charset, str | Path) else get_charset(charset)
    kvg = load_kanjivg()
    faces = resolve_fonts(fonts, use_defaults=default_fonts)
    if not faces and font_fraction > 0:
        print(f"kanjirec: warning: no print fonts found; strokes only ({INSTALL_HINT})", file=sys.stderr)

    stroke_chars = [c for c in chars if c in kvg]
    covering = {c: [i for i, f in enumerate(faces) if ord(c) in f.coverage()] for c in chars}
    font_only = [c for c in chars if c not in kvg and covering[c]]
    uncovered = [c for c in chars if c not in kvg and not covering[c]]
    if uncovered:
        listing = " ".join(f"{c}(U+{ord(c):04X})" for c in uncovered[:50])
        more = f" and {len(uncovered) - 50} more" if len(uncovered) > 50 else ""
        if not skip_missing:
            raise SynthError(
                f"{len(uncovered)} characters have neither KanjiVG strokes nor a glyph in any font: "
                f"{listing}{more}; add a font with --fonts or pass --skip-missing"
            )
        log(f"skipping {len(uncovered)} characters with neither strokes nor glyphs: {listing}{more}")
    if font_only:
        log(f"{len(font_only)} characters have no KanjiVG strokes, fonts only: {''.join(font_only[:50])}")

    skipped = list(uncovered)
    n_font = round(per_class * font_fraction) if faces else 0
    n_stroke = per_class - n_font
    if not stroke_chars:
        n_stroke = 0
    # Font samples: class j's copies go round-robin over the faces that cover it.
    per_face: list[list[str]] = [[] for _ in faces]
    for j, c in enumerate(chars):
        cover = covering[c]
        want = per_class if c in font_only else (n_font if c in kvg else 0)
        if want and not cover:
            continue  # in KanjiVG but in no font: reported below, it gets stroke samples only
        for copy in range(want):
            per_face[cover[(j + copy) % len(cover)]].append(c)
    short = [c for c in stroke_chars if n_font and not covering[c]]
    if short and not n_stroke:
        listing = "".join(short[:50])
        if not skip_missing:
            raise SynthError(
                f"{len(short)} characters are in no font and --font-fraction {font_fraction} leaves no "
                f"stroke samples: {listing}; lower --font-fraction or pass --skip-missing"
            )
        log(f"skipping {len(short)} characters in no font (no stroke samples asked for): {listing}")
        skipped += short
    elif short:
        log(f"{len(short)} characters are in no font: {n_stroke} stroke samples each, not {per_class}")

    jobs: list[_StrokeJob | _FontJob] = []
    if n_stroke:
        per_chunk = max(1, _STROKE_CHUNK_SAMPLES // len(stroke_chars))
        for chunk, w0 in enumerate(range(0, n_stroke, per_chunk)):
            jobs.append(_StrokeJob(chunk, w0, min(per_chunk, n_stroke - w0)))
    for fi, face_chars in enumerate(per_face):
        for block, b0 in enumerate(range(0, len(face_chars), _FONT_BLOCK)):
            jobs.append(_FontJob(fi, block, tuple(face_chars[b0 : b0 + _FONT_BLOCK])))
    if not jobs:
        raise SynthError("nothing to render: no character has strokes or glyphs")
    n_writers = n_stroke + sum(1 for face_chars in per_face if face_chars)
    if split == "writer" and n_writers < 3:
        raise SynthError(
            f"a writer-disjoint split needs at least 3 writers; {per_class} samples per class give "
            f"{n_writers} ({n_stroke} stroke writers, the rest font faces): raise --per-class or use "
            "--split random"
        )

    init_args = (stroke_chars, faces, seed, image_size, with_strokes)
    with DatasetWriter(out, image_size=image_size) as writer:
        total = sum(
            j.n_writers * len(stroke_chars) if isinstance(j, _StrokeJob) else len(j.chars) for j in jobs
        )
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", desc="synth", disable=bool(os.environ.get("CI")))
        if workers > 1:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=init_args)
            results = _in_order(pool, jobs, ahead=2 * workers)
        else:
            import torch

            pool = None
            threads = torch.get_num_threads()
            _init_worker(*init_args)
            results = map(_run_job, jobs)
        try:
            for images, cs, ws, source, strokes in results:
                writer.add(images, cs, ws, source, strokes=strokes)
                bar.update(len(images))
        finally:
            bar.close()
            if pool is not None:
                pool.terminate()
            else:
                torch.set_num_threads(threads)
        _, kvg_version = kanjivg_dir()
        return writer.finish(
            split=split,
            seed=seed,
            preprocess={"max_level": MAX_LEVEL, "size": image_size, "crop": False, "margin": 0},
            provenance={
                "generator": "kanjirec.data.synth",
                "charset": str(charset) if isinstance(charset, str | Path) else "custom",
                "per_class": per_class,
                "seed": seed,
                "font_fraction": font_fraction,
                "stroke_writers": n_stroke,
                "kanjivg": f"KanjiVG {kvg_version} (C) Ulrich Apel, CC BY-SA 3.0, http://kanjivg.tagaini.net",
                "fonts": [{"path": str(f.path), "index": f.index, "name": f.name} for f in faces],
                "skipped": "".join(skipped),
            },
        )


# ---------------------------------------------------------------- coverage report


def charset_report(names: Sequence[str] | None = None) -> str:
    """Each named set's size and its coverage by KanjiVG and by each installed default font."""
    from kanjirec.charset import CHARSET_NAMES, get_charset
    from kanjirec.data.fonts import INSTALL_HINT, default_fonts
    from kanjirec.data.kanjivg import load_kanjivg

    kvg = load_kanjivg()
    faces = default_fonts()
    lines = []
    if not faces:
        lines.append(f"warning: no default print fonts installed ({INSTALL_HINT})")
    # Fonts as numbered columns with a legend, so the table stays narrow.
    lines += [f"font {i + 1}: {f.name} ({f.path}#{f.index})" for i, f in enumerate(faces)]
    header = f"{'set':<10}{'size':>7}{'KanjiVG':>9}" + "".join(
        f"{f'font {i + 1}':>9}" for i in range(len(faces))
    )
    lines.append(header)
    for name in names or CHARSET_NAMES:
        try:
            chars = get_charset(name)
        except KanjirecError as e:
            lines.append(f"{name:<10}  not available: {e}")
            continue
        row = f"{name:<10}{len(chars):>7}{sum(c in kvg for c in chars):>9}"
        row += "".join(f"{int(f.covers(chars).sum()):>9}" for f in faces)
        lines.append(row)
    return "\n".join(lines)
