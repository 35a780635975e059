"""Synthetic handwriting from KanjiVG strokes, plus print fonts.

Stroke data comes from KanjiVG (C) Ulrich Apel, CC BY-SA 3.0,
http://kanjivg.tagaini.net; images rendered from it are derived works under the
same licence.

The stroke renderer works on a whole batch at once, on flat arrays of points:

1. every stroke of every sample is resampled densely by arc length, with its
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
   levels as in ETL9G (ink not saturated), then `normalize_images`.

A "writer" is a persistent random style (size, slant, pen width, ink, messiness,
cursiveness ...) that writes every class once, so writer-disjoint splits mean
something. Fonts are writers too: one per face.

Stored strokes are (x, y) in pixel units of the stored image, the image spanning
[0, S] (pixel (row r, column c) covers [c, c+1) x [r, r+1), centre c + 0.5).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kanjirec.data.kanjivg import KANJIVG_BOX, KanjiEntry
from kanjirec.errors import KanjirecError

MAX_LEVEL = 15  # ETL9G's 16 grey levels
_SUB_BATCH = 256
_FONT_GRID = 9  # lattice points per side on which a font sample's inverse distortion is evaluated
_PAD = 3  # canvas border (pixels) so that blur near the edge sees the ink just outside
_DENSE_SPACING = 1.0  # output pixels between resampled stroke points (the blur hides the spacing)
_STORE_EVERY = 2  # stored stroke points keep every 2nd dense point (~2 px apart) and the last one
# KanjiVG stroke types that end in a sweep or a hook: the pen lifts while moving, so ink fades.
_SWEEP_MARKS = set("㇒㇏㇀㇁㇂㇃㇄㇅㇆㇇㇈㇉㇊㇋㇌㇍㇎㇚㇙㇟㇖㇗㇘㇛㇜㇝㇞㇡㇢")


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
)


def draw_writer_styles(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Independent random writer styles: each field an array (n,)."""
    u = rng.uniform
    return {
        "size": u(0.78, 0.98, n),
        "aspect": np.exp(rng.normal(0, 0.07, n)),
        "slant": rng.normal(0, 0.1, n),
        "rotation": rng.normal(0, 0.04, n),
        "pen": np.exp(u(np.log(0.55), np.log(1.5), n)),
        "ink": u(0.5, 1.0, n),
        "mess": u(0.3, 1.3, n),
        "cursive": u(0.0, 0.3, n) * (u(0, 1, n) < 0.5),
        "gap": u(0.0, 0.05, n),
        "length": rng.normal(0, 0.04, n),
        "elastic": u(0.3, 1.4, n),
        "gain": u(1.8, 4.0, n),
        "grain": u(0.0, 0.35, n),
        "noise": u(0.15, 0.6, n),
        "background": u(0.0, 1.3, n),
    }


# ---------------------------------------------------------------- stroke bank


@dataclass(frozen=True)
class StrokeBank:
    """The strokes of a list of characters as flat arrays, for gathering whole batches without loops."""

    chars: tuple[str, ...]
    points: np.ndarray  # (P, 2) float64, KanjiVG units
    arc: np.ndarray  # (P,) arc length from the stroke's start
    stroke_first: np.ndarray  # (K,) index of the stroke's first point
    stroke_npoints: np.ndarray  # (K,)
    stroke_length: np.ndarray  # (K,)
    stroke_sweep: np.ndarray  # (K,) bool
    char_first: np.ndarray  # (C,) index of the character's first stroke
    char_nstrokes: np.ndarray  # (C,)
    # Arc lengths offset per stroke so that one sorted array finds the segment of any (stroke, arc).
    stroke_offset: np.ndarray  # (K,)
    global_arc: np.ndarray  # (P,)

    @classmethod
    def build(cls, entries: Sequence[KanjiEntry]) -> StrokeBank:
        strokes = [s for e in entries for s in e.strokes]
        npoints = np.array([len(s.points) for s in strokes], dtype=np.int64)
        points = np.concatenate([s.points for s in strokes]).astype(np.float64)
        first = np.concatenate([[0], np.cumsum(npoints)[:-1]])
        step = np.linalg.norm(np.diff(points, axis=0), axis=1)
        step = np.concatenate([[0.0], step])
        step[first] = 0.0  # no arc across stroke boundaries
        cum = np.cumsum(step)
        arc = cum - np.repeat(cum[first], npoints)
        nstrokes = np.array([len(e.strokes) for e in entries], dtype=np.int64)
        length = arc[first + npoints - 1]
        offset = np.cumsum(length + 1.0) - (length + 1.0)
        return cls(
            chars=tuple(e.char for e in entries),
            points=points,
            arc=arc,
            stroke_first=first,
            stroke_npoints=npoints,
            stroke_length=length,
            stroke_sweep=np.array([any(ch in _SWEEP_MARKS for ch in s.type) for s in strokes]),
            char_first=np.concatenate([[0], np.cumsum(nstrokes)[:-1]]),
            char_nstrokes=nstrokes,
            stroke_offset=offset,
            global_arc=arc + np.repeat(offset, npoints),
        )


def _ragged_arange(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts (m,): owner (sum,) and position within the owner (sum,)."""
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(int(counts.sum())) - starts[owner]


def _affine_about(points: np.ndarray, centre: np.ndarray, mats: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """points (n, 2), per-point centre (n, 2), 2x2 matrices (n, 2, 2), shift (n, 2)."""
    d = points - centre
    return np.einsum("nij,nj->ni", mats, d) + centre + shift


def _rotation_shear_scale(rot: np.ndarray, shear: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """(n, 2, 2) = R(rot) @ [[1, shear], [0, 1]] @ diag(sx, sy)."""
    c, s = np.cos(rot), np.sin(rot)
    m = np.empty((len(rot), 2, 2))
    m[:, 0, 0] = c * sx
    m[:, 0, 1] = (c * shear - s) * sy
    m[:, 1, 0] = s * sx
    m[:, 1, 1] = (s * shear + c) * sy
    return m


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
    """
    images = np.empty((len(char_index), size, size), np.float32)
    strokes: list[list[np.ndarray]] | None = [] if with_strokes else None
    # Sub-batches keep the working arrays in cache; the rng is consumed in order, so results do not
    # depend on anything but the inputs.
    for b0 in range(0, len(char_index), _SUB_BATCH):
        part = slice(b0, b0 + _SUB_BATCH)
        images[part], sub_strokes = _render_stroke_batch(
            bank, char_index[part], {k: v[part] for k, v in style.items()}, rng, size, with_strokes
        )
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
) -> tuple[np.ndarray, list[list[np.ndarray]] | None]:
    n = len(char_index)
    px = size / 64.0  # style lengths are given in pixels at 64x64

    # -- the batch's strokes
    stroke_sample, stroke_pos = _ragged_arange(bank.char_nstrokes[char_index])
    stroke = bank.char_first[char_index][stroke_sample] + stroke_pos
    k = len(stroke)
    mess = style["mess"][stroke_sample]
    length = bank.stroke_length[stroke]
    units_to_px = size * style["size"] / KANJIVG_BOX  # per sample

    # -- 1. dense resampling with trimmed / extended ends (negative arc extrapolates along the tangent)
    change = style["length"][stroke_sample] + rng.normal(0, 0.04, k) * mess
    start_trim = rng.uniform(-0.5, 0.5, k) * change - 0.5 * change
    end_ext = 1.0 + change + start_trim
    span = length * (end_ext - start_trim)
    ndense = np.maximum(
        2, np.ceil(span * units_to_px[stroke_sample] / (_DENSE_SPACING * px)).astype(np.int64) + 1
    )
    pt_stroke, pt_pos = _ragged_arange(ndense)
    t = pt_pos / (ndense[pt_stroke] - 1)  # 0..1 along the drawn stroke
    s = length[pt_stroke] * (start_trim[pt_stroke] + t * (end_ext - start_trim)[pt_stroke])
    first = bank.stroke_first[stroke][pt_stroke]
    last_seg = first + bank.stroke_npoints[stroke][pt_stroke] - 2
    seg = np.searchsorted(bank.global_arc, s + bank.stroke_offset[stroke][pt_stroke], side="right") - 1
    seg = np.clip(seg, first, last_seg)
    seg_len = np.maximum(bank.arc[seg + 1] - bank.arc[seg], 1e-6)
    frac = (s - bank.arc[seg]) / seg_len
    p = bank.points[seg] + frac[:, None] * (bank.points[seg + 1] - bank.points[seg])

    # -- 2. stroke-level perturbations, in KanjiVG units: a bend along the chord's normal plus a smooth
    # wobble (random-phase sinusoids of one and two half-periods, written as sin/cos pairs)
    ends = bank.points[bank.stroke_first[stroke] + bank.stroke_npoints[stroke] - 1]
    starts = bank.points[bank.stroke_first[stroke]]
    chord = ends - starts
    normal = np.stack([-chord[:, 1], chord[:, 0]], axis=1)
    normal /= np.maximum(np.linalg.norm(chord, axis=1), 1e-6)[:, None]
    bend = rng.normal(0, 0.035, k) * mess * length
    tc = np.clip(t, 0, 1).astype(np.float32)
    basis = np.stack([np.sin(np.pi * tc), np.cos(np.pi * tc), np.sin(2 * np.pi * tc), np.cos(2 * np.pi * tc)])
    coef = rng.normal(0, 0.5, (k, 2, 4)) * mess[:, None, None]
    coef[:, :, 0] += bend[:, None] * normal
    coef = coef.astype(np.float32)
    p = p.astype(np.float32)
    for j in range(4):
        p += coef[:, :, j][pt_stroke] * basis[j][:, None]
    jitter = _rotation_shear_scale(
        rng.normal(0, 0.05, k) * mess,
        np.zeros(k),
        np.exp(rng.normal(0, 0.05, k) * mess),
        np.exp(rng.normal(0, 0.05, k) * mess),
    )
    centre = (starts + ends) / 2
    move = rng.normal(0, 1.0, (k, 2)) * mess[:, None]

    # -- 3. per-stroke jitter and the global affine into pixels, composed per stroke, then elastic
    sample = stroke_sample[pt_stroke]
    scale = units_to_px * np.exp(rng.normal(0, 0.04, n))
    aspect = style["aspect"] * np.exp(rng.normal(0, 0.03, n))
    glob = _rotation_shear_scale(
        style["rotation"] + rng.normal(0, 0.03, n),
        style["slant"] + rng.normal(0, 0.04, n),
        scale * np.sqrt(aspect),
        scale / np.sqrt(aspect),
    )
    shift = size / 2 + rng.normal(0, 1.2 * px, (n, 2))
    # pixel = G (J (u - c) + c + m - 54.5) + shift = (G J) u + [G (c + m - 54.5 - J c) + shift]
    gs = glob[stroke_sample]
    mat = np.einsum("kij,kjl->kil", gs, jitter)
    off = np.einsum(
        "kij,kj->ki", gs, centre + move - KANJIVG_BOX / 2 - np.einsum("kij,kj->ki", jitter, centre)
    )
    off += shift[stroke_sample]
    mat, off = mat.astype(np.float32), off.astype(np.float32)
    m = mat[pt_stroke]
    o = off[pt_stroke]
    x = m[:, 0, 0] * p[:, 0] + m[:, 0, 1] * p[:, 1] + o[:, 0]
    y = m[:, 1, 0] * p[:, 0] + m[:, 1, 1] * p[:, 1] + o[:, 1]
    p = np.stack([x, y], axis=1)
    p += _elastic(p, sample, style["elastic"] * px, rng, n, size)

    # -- 4. pressure along the strokes; it sets both darkness and width (through the saturating ink curve)
    stroke_len_px = (span * units_to_px[stroke_sample]).astype(np.float32)
    dist_from_start = tc * stroke_len_px[pt_stroke]
    pressure = np.minimum(1.0, 0.4 + dist_from_start / np.float32(2.0 * px))
    taper = np.where(bank.stroke_sweep[stroke], rng.uniform(0.5, 0.95, k), rng.uniform(0.0, 0.35, k))
    pressure *= 1.0 - taper.astype(np.float32)[pt_stroke] * np.clip((tc - 0.65) / 0.35, 0, 1) ** 2
    # Per stroke: its own weight, and a slow swell along it.
    swell = rng.normal(0, 0.1, (k, 2)).astype(np.float32)
    pressure *= np.exp(rng.normal(0, 0.12, k)).astype(np.float32)[pt_stroke]
    pressure *= 1.0 + swell[:, 0][pt_stroke] * basis[0] + swell[:, 1][pt_stroke] * basis[3]
    has_gap = rng.uniform(0, 1, k) < style["gap"][stroke_sample]
    gap_start = rng.uniform(0.2, 0.7, k)
    gap_end = gap_start + rng.uniform(0.04, 0.12, k)
    in_gap = has_gap[pt_stroke] & (t > gap_start[pt_stroke]) & (t < gap_end[pt_stroke])
    pressure[in_gap] = 0.0

    # -- joins: a light hairline from the end of a stroke to the start of the next one of the same sample
    last_pt = np.cumsum(ndense) - 1
    first_pt = last_pt - ndense + 1
    same_sample = stroke_sample[1:] == stroke_sample[:-1]
    a, b = p[last_pt[:-1]], p[first_pt[1:]]
    gap_px = np.linalg.norm(b - a, axis=1)
    join = same_sample & (rng.uniform(0, 1, k - 1) < style["cursive"][stroke_sample[:-1]])
    join &= gap_px < 0.35 * size
    all_p, all_sample, all_pressure = p, sample, pressure
    if join.any():
        ja, jb, jd = a[join], b[join], gap_px[join]
        jn = np.maximum(2, np.ceil(jd / (_DENSE_SPACING * px)).astype(np.int64) + 1)
        j_owner, j_pos = _ragged_arange(jn)
        jt = (j_pos / (jn[j_owner] - 1))[:, None]
        d = jb - ja
        sag = np.stack([-d[:, 1], d[:, 0]], axis=1) * rng.uniform(-0.15, 0.15, len(jd))[:, None]
        jp = ja[j_owner] + jt * d[j_owner] + np.sin(np.pi * jt) * sag[j_owner]
        j_pressure = rng.uniform(0.2, 0.45, len(jd))[j_owner]
        all_p = np.concatenate([p, jp.astype(np.float32)])
        all_sample = np.concatenate([sample, stroke_sample[:-1][join][j_owner]])
        all_pressure = np.concatenate([pressure, j_pressure.astype(np.float32)])

    # Each point stands for the dense spacing of ink, so lines get the same density at any point count.
    images = _splat(all_p, all_sample, all_pressure * np.float32(_DENSE_SPACING * px), style, n, size, px)

    strokes = None
    if with_strokes:
        keep = (pt_pos % _STORE_EVERY == 0) | (pt_pos == ndense[pt_stroke] - 1)
        kept_per_stroke = np.bincount(pt_stroke[keep], minlength=k)
        pieces = np.split(p[keep].astype(np.float32), np.cumsum(kept_per_stroke)[:-1])
        bounds = np.concatenate([[0], np.cumsum(np.bincount(stroke_sample, minlength=n))])
        strokes = [pieces[bounds[i] : bounds[i + 1]] for i in range(n)]
    return images, strokes


def _elastic(
    p: np.ndarray, sample: np.ndarray, amplitude: np.ndarray, rng: np.random.Generator, n: int, size: int
) -> np.ndarray:
    """A smooth random displacement (pixels) at pixel positions p (m, 2): a few low Fourier modes."""
    modes = 3
    freq = (rng.normal(0, 1.6, (modes, n, 2)) * (2 * np.pi / size)).astype(np.float32)  # ~1.6 cycles/side
    phase = rng.uniform(0, 2 * np.pi, (modes, n)).astype(np.float32)
    amp = (rng.normal(0, 1.0, (modes, n, 2)) * (amplitude[None, :, None] / np.sqrt(modes))).astype(np.float32)
    out = np.zeros(p.shape, np.float32)
    for j in range(modes):
        f = freq[j][sample]
        wave = np.sin(f[:, 0] * p[:, 0] + f[:, 1] * p[:, 1] + phase[j][sample])
        out += amp[j][sample] * wave[:, None]
    return out


def _blur_crop(canvas: np.ndarray, sigma: float, pad: int) -> np.ndarray:
    """Gaussian blur of (n, side, side) canvases, cropped by ``pad`` on each side, as two matrix products.

    A banded (size x side) kernel matrix does blur and crop at once; as GEMMs (torch, on the thread
    count the caller set) this is a few times faster than a separable convolution filter.
    """
    import torch

    n, side, _ = canvas.shape
    size = side - 2 * pad
    radius = int(np.ceil(3 * sigma))
    offsets = np.arange(side)[None, :] - (np.arange(size) + pad)[:, None]
    taps = np.exp(-(offsets**2) / (2 * sigma**2)) * (np.abs(offsets) <= radius)
    taps /= np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2)).sum()
    k = torch.from_numpy(taps.astype(np.float32))
    rows = torch.from_numpy(np.ascontiguousarray(canvas, dtype=np.float32)).reshape(n * side, side) @ k.T
    return (k @ rows.reshape(n, side, size)).numpy()


def _splat(
    p: np.ndarray,
    sample: np.ndarray,
    weight: np.ndarray,
    style: dict[str, np.ndarray],
    n: int,
    size: int,
    px: float,
) -> np.ndarray:
    """Bilinear splats into a canvas, a Gaussian blur of the writer's pen width, a saturating ink curve."""
    pad = _PAD
    side = size + 2 * pad
    # Pixel centres sit at integer + 0.5; points beyond the padded canvas carry no weight.
    x = p[:, 0] + np.float32(pad - 0.5)
    y = p[:, 1] + np.float32(pad - 0.5)
    outside = (x < 0) | (y < 0) | (x >= side - 1) | (y >= side - 1)
    weight = np.where(outside, np.float32(0), weight)
    x = np.clip(x, 0, side - 1.001)
    y = np.clip(y, 0, side - 1.001)
    x0, y0 = x.astype(np.int64), y.astype(np.int64)
    fx, fy = x - x0, y - y0
    idx = sample * (side * side) + y0 * side + x0
    wy1 = weight * fy
    wy0 = weight - wy1
    canvas = np.bincount(
        np.concatenate([idx, idx + 1, idx + side, idx + side + 1]),
        np.concatenate([wy0 - wy0 * fx, wy0 * fx, wy1 - wy1 * fx, wy1 * fx]),
        minlength=n * side * side,
    ).reshape(n, side, side)
    # One blur per pen width: a batch holds few writers, each with one pen.
    pen = style["pen"] * px
    density = np.empty((n, size, size), np.float32)
    for sigma in np.unique(pen):
        group = np.flatnonzero(pen == sigma)
        # A Gaussian line profile peaks at 1 / (sqrt(2 pi) sigma): scale so a full-pressure line peaks at 1.
        density[group] = _blur_crop(canvas[group], float(sigma), pad) * np.float32(np.sqrt(2 * np.pi) * sigma)
    gain = style["gain"][:, None, None].astype(np.float32)
    return (1.0 - np.exp(-gain * density)) / (1.0 - np.exp(-gain))


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

    n, res, _ = glyphs.shape
    px = size / 64.0
    # Forward map em box (units of the 109 box) -> pixels, as in render_strokes; invert it per sample.
    scale = size * style["size"] / KANJIVG_BOX * np.exp(rng.normal(0, 0.04, n))
    aspect = style["aspect"] * np.exp(rng.normal(0, 0.03, n))
    glob = _rotation_shear_scale(
        style["rotation"] + rng.normal(0, 0.03, n),
        style["slant"] + rng.normal(0, 0.04, n),
        scale * np.sqrt(aspect),
        scale / np.sqrt(aspect),
    )
    shift = size / 2 + rng.normal(0, 1.2 * px, (n, 2))
    inv = np.linalg.inv(glob)
    # The inverse map is smooth: evaluate it on a coarse lattice and upsample it bilinearly.
    coarse = _FONT_GRID
    centres = np.linspace(0.5, size - 0.5, coarse)
    qx, qy = np.meshgrid(centres, centres)
    q = np.tile(np.stack([qx.ravel(), qy.ravel()], axis=1).astype(np.float32), (n, 1))
    sample = np.repeat(np.arange(n), coarse * coarse)
    # Subtracting the displacement at q is the inverse of adding it, to first order.
    q = q - _elastic(q, sample, style["elastic"] * px, rng, n, size)
    u = np.einsum("mij,mj->mi", inv[sample], q - shift[sample]) + KANJIVG_BOX / 2
    lattice = torch.from_numpy((u / KANJIVG_BOX * 2 - 1).astype(np.float32).reshape(n, coarse, coarse, 2))
    grid = F.interpolate(lattice.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=True)
    grid = grid.permute(0, 2, 3, 1).contiguous()
    src = torch.from_numpy(glyphs.astype(np.float32))[:, None]
    out = F.grid_sample(src, grid, mode="bilinear", align_corners=False)
    ink = out[:, 0].numpy()
    # Pen weight: blur, then the same saturating curve as the stroke renderer (thickens or thins slightly).
    ink = _blur_crop(ink, 0.4 * px, pad=0)
    gain = style["gain"][:, None, None].astype(np.float32) * rng.uniform(0.4, 1.0, (n, 1, 1)).astype(
        np.float32
    )
    return (1.0 - np.exp(-gain * ink * 1.5)) / (1.0 - np.exp(-gain * 1.5))


# ---------------------------------------------------------------- scan finish


def scan_finish(ink: np.ndarray, style: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Ink (n, S, S) in [0, 1] -> uint8 grey levels 0..15 like an ETL9G scan: grainy, unsaturated ink,
    a light noisy background, the odd speck."""
    n, h, w = ink.shape

    def per_image(name: str) -> np.ndarray:
        return style[name][:, None, None].astype(np.float32)

    x = rng.random((n, h, w), dtype=np.float32)  # grain
    x *= -per_image("grain")
    x += 1.0
    x *= ink
    x *= MAX_LEVEL * per_image("ink")
    x += per_image("background")
    noise = rng.standard_normal((n, h, w), dtype=np.float32)
    noise *= per_image("noise")
    x += noise
    n_specks = rng.binomial(x.size, 0.002)
    x.reshape(-1)[rng.integers(0, x.size, n_specks)] += rng.uniform(1.0, 4.0, n_specks).astype(np.float32)
    np.rint(x, out=x)
    np.clip(x, 0, MAX_LEVEL, out=x)
    return x.astype(np.uint8)


def finish_images(ink: np.ndarray, style: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Scan finish, then the project's one image convention (uint8, ink 255 on 0)."""
    from kanjirec.data.preprocess import normalize_images

    return normalize_images(scan_finish(ink, style, rng), max_level=MAX_LEVEL, size=ink.shape[1], margin=0)


def _sample_styles(
    writer_styles: dict[str, np.ndarray], writer_of_sample: np.ndarray
) -> dict[str, np.ndarray]:
    return {k: v[writer_of_sample] for k, v in writer_styles.items()}


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
        ink, strokes = render_strokes(bank, char_index, style, rng, size, with_strokes)
        images = finish_images(ink, style, rng)
        keys = [f"synth/w{job.first_writer + w:05d}" for w in range(job.n_writers)]
        return (
            images,
            [bank.chars[i] for i in char_index],
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
    # A face is one writer with one style; each sample gets its own distortion around it.
    style = _sample_styles(draw_writer_styles(rng, 1), np.zeros(n, np.int64))
    style = {**style, "size": rng.uniform(0.8, 0.95, n), "mess": np.zeros(n)}
    ink = render_font_glyphs(cache.get(job.chars), style, rng, size)
    images = finish_images(ink, style, rng)
    strokes = [[] for _ in range(n)] if with_strokes else None
    return images, list(job.chars), [face.writer] * n, face.source, strokes


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
    writer = DatasetWriter(out, image_size=image_size)
    total = sum(j.n_writers * len(stroke_chars) if isinstance(j, _StrokeJob) else len(j.chars) for j in jobs)
    from tqdm import tqdm

    bar = tqdm(total=total, unit="img", desc="synth", disable=bool(os.environ.get("CI")))
    if workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=init_args)
        results = pool.imap(_run_job, jobs)
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
