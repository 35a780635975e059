"""Print fonts as a second source of synthetic samples.

Faces come from a fixed registry (`font_registry.FACES`) of files shipped by an allow-list of Debian
packages (`font_registry.ALLOWED_PACKAGES`); no other font on the machine is ever picked up unless
a user names its file. The default faces are Noto Sans / Serif CJK JP Regular and Bold and IPA /
IPAex Gothic and Mincho; `training_faces()` and `held_out_faces()` split the whole registry for
leave-styles-out evaluation (`HELD_OUT_FONT_FAMILIES`). Coverage comes from each font's cmap
(fontTools), so a character a font lacks is reported, never rendered as a tofu box; a Chinese face
covers a character only where its regional form is the Japanese one (`chinese_form_agreement`).

Glyphs are drawn with Pillow once per (font, character), with the font's ideographic em box filling
the canvas, and cached; a per-sample stroke weight (thinner / bolder) is applied to the cached glyph
through its signed distance field; `synth.py` applies the batched distortions.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from kanjirec.data.font_registry import ALLOWED_PACKAGES, FACES, FaceSpec
from kanjirec.errors import KanjirecError

FONT_DIRS: tuple[Path, ...] = (
    Path("/usr/share/fonts"),
    Path("/usr/local/share/fonts"),
    Path.home() / ".local/share/fonts",
    Path.home() / ".fonts",
)
_FONT_SUFFIXES = (".ttf", ".ttc", ".otf", ".otc")

# Leave-styles-out: these design families are never used for training or for choosing anything, only
# to measure top-1 on styles no training face shows (docs/FONTS.md says why these). Fixed across the
# issue so that figures compare.
HELD_OUT_FONT_FAMILIES: frozenset[str] = frozenset(
    {
        "BIZ UD Mincho",  # mincho
        "BIZ UD Gothic",  # gothic, Regular and Bold (its mincho's sibling: out with it)
        "Motoya L Maruberi",  # rounded gothic
        "Motoya L Cedar",  # its gothic sibling (same foundry, same skeletons): out with it
        "TW-Kai",  # kai (brush regular script)
    }
)
# The Noto CJK collections whose regional faces decide which characters a Chinese face may draw.
_FORM_REFERENCES = (
    ("NotoSansCJK-Regular.ttc", "Noto Sans CJK"),
    ("NotoSerifCJK-Regular.ttc", "Noto Serif CJK"),
)
_REGIONS = ("SC", "TC", "HK")
_WEIGHT_CHUNK = 16
# Thickening keeps a glyph's counters open: it stops where the narrower quarter of the gaps between
# strokes would close to below a hairline (1/64 em, a pixel at 64 px). A uniform dilation to "heavier
# than black" otherwise fills dense characters solid (Noto Serif CJK JP at 0.15 em: 39% top-1 for
# the shipped model, 99% at 0.05 em); black faces keep their counters by design, and so do we.
HAIRLINE_EM = 1 / 64
_GAP_QUANTILE = 25


def install_hint(packages: Iterable[str]) -> str:
    """The apt command for ``packages`` (allow-listed packages only, by construction)."""
    wanted = [p for p in dict.fromkeys(packages) if p in ALLOWED_PACKAGES]
    return "install them with: apt-get install " + " ".join(wanted)


INSTALL_HINT = install_hint(spec.package for spec in FACES if spec.default)


class FontError(KanjirecError):
    """A font file is missing, unreadable, or lacks glyphs it was asked for."""


@dataclass(frozen=True)
class FontFace:
    path: Path
    index: int  # face index inside a .ttc collection (0 for a single font)
    family: str
    style: str
    # Registry faces only: the design family (leave-styles-out unit), the Debian package, and for a
    # Chinese face the Noto CJK regions whose forms a character's Japanese form must match and the
    # codecs of the character sets it must belong to (see font_registry.FaceSpec).
    design_family: str = ""
    package: str = ""
    forms: tuple[str, ...] = ()
    charsets: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.family} {self.style}"

    @property
    def source(self) -> str:
        """The packed dataset's source name: one per family."""
        return f"font:{self.family}"

    @property
    def writer(self) -> str:
        """The writer key: each face is one 'writer', so writer-disjoint splits keep a face in one split."""
        return f"font:{self.family}/{self.style}"

    def coverage(self) -> frozenset[int]:
        """Code points the face may draw: those its cmap maps to a glyph, and for a Chinese face only
        those of its standard's character set whose form there is the Japanese form."""
        return _coverage(self.path, self.index, self.forms, self.charsets)

    def covers(self, chars: Iterable[str]) -> np.ndarray:
        cov = self.coverage()
        return np.array([ord(c) in cov for c in chars], dtype=bool)


def _open_ttfont(path: Path, index: int):
    from fontTools.ttLib import TTFont

    # Some packaged fonts carry old-style timestamps that fontTools logs about on every read: noise.
    logging.getLogger("fontTools.ttLib.tables._h_e_a_d").setLevel(logging.ERROR)
    try:
        return TTFont(path, fontNumber=index, lazy=True)
    except Exception as e:  # fontTools raises bare TTLibError, struct.error, ... on damaged files
        raise FontError(f"{path}: cannot read font face {index}: {e}") from e


@cache
def _cmap(path: Path, index: int) -> frozenset[int]:
    # A code point mapped to .notdef would draw a tofu box.
    return frozenset(cp for cp, glyph in _glyph_map(path, index).items() if glyph != ".notdef")


@cache
def _glyph_map(path: Path, index: int) -> dict[int, str]:
    """Code point -> glyph name (a collection's faces share glyph tables, so names compare across faces)."""
    cmap = _open_ttfont(path, index).getBestCmap()
    if cmap is None:
        raise FontError(f"{path}: face {index} has no Unicode cmap")
    return dict(cmap)


@cache
def _coverage(path: Path, index: int, forms: tuple[str, ...], charsets: tuple[str, ...]) -> frozenset[int]:
    cover = _cmap(path, index)
    if forms:
        cover &= chinese_form_agreement(forms)
    if charsets:
        cover = frozenset(cp for cp in cover if any(_encodable(chr(cp), codec) for codec in charsets))
    return cover


def _encodable(char: str, codec: str) -> bool:
    try:
        char.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


@cache
def _em_centre(path: Path, index: int) -> float:
    """Height of the ideographic em box's centre above the baseline, in em."""
    font = _open_ttfont(path, index)
    os2 = font["OS/2"]
    return (os2.sTypoAscender + os2.sTypoDescender) / 2 / font["head"].unitsPerEm


def _faces_in(path: Path) -> list[FontFace]:
    from fontTools.ttLib import TTCollection

    if not path.is_file():
        raise FontError(f"{path}: no such font file")
    if path.suffix.lower() in (".ttc", ".otc"):
        try:
            count = len(TTCollection(path, lazy=True).fonts)
        except Exception as e:  # see _open_ttfont
            raise FontError(f"{path}: cannot read font collection: {e}") from e
        indices = range(count)
    else:
        indices = range(1)
    faces = []
    for i in indices:
        names = _open_ttfont(path, i)["name"]
        family, style = names.getDebugName(1), names.getDebugName(2)
        if not family:
            raise FontError(f"{path}: face {i} has no family name")
        faces.append(FontFace(path=path, index=i, family=family, style=style or "Regular"))
    return faces


@cache
def _font_files(dirs: tuple[Path, ...]) -> dict[str, Path]:
    """Font file name -> path, first found in ``dirs`` order (Debian's paths differ between releases)."""
    found: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for path in sorted(d.rglob("*")):
                if path.suffix.lower() in _FONT_SUFFIXES:
                    found.setdefault(path.name, path)
    return found


def _registry_face(spec: FaceSpec, path: Path) -> FontFace:
    face = next((f for f in _faces_in(path) if (f.family, f.style) == (spec.face, spec.style)), None)
    if face is None:
        raise FontError(
            f"{path}: has no face {spec.face!r} {spec.style!r} (is it the file of {spec.package}?)"
        )
    return FontFace(
        face.path, face.index, face.family, face.style, spec.family, spec.package, spec.forms, spec.charsets
    )


@cache
def registry_faces(dirs: tuple[Path, ...] = FONT_DIRS) -> tuple[FontFace, ...]:
    """Every installed face of the registry, in registry order (possibly none)."""
    files = _font_files(dirs)
    return tuple(_registry_face(spec, files[spec.file]) for spec in FACES if spec.file in files)


def missing_packages(families: Iterable[str] | None = None, dirs: tuple[Path, ...] = FONT_DIRS) -> list[str]:
    """Allow-list packages (of ``families``' faces, or of all) with a registry file not installed."""
    wanted = set(families) if families is not None else None
    files = _font_files(dirs)
    specs = [s for s in FACES if wanted is None or s.family in wanted]
    return list(dict.fromkeys(s.package for s in specs if s.file not in files))


@cache
def default_fonts(dirs: tuple[Path, ...] = FONT_DIRS) -> tuple[FontFace, ...]:
    """The installed default print faces (possibly none)."""
    defaults = {(s.face, s.style) for s in FACES if s.default}
    return tuple(f for f in registry_faces(dirs) if (f.family, f.style) in defaults)


def training_faces(dirs: tuple[Path, ...] = FONT_DIRS) -> list[FontFace]:
    """Installed registry faces outside `HELD_OUT_FONT_FAMILIES`, the faces training may use.

    Warns (stderr) naming the allow-list packages to install when some are missing."""
    missing = missing_packages({s.family for s in FACES} - HELD_OUT_FONT_FAMILIES, dirs)
    if missing:
        print(
            f"kanjirec: warning: {len(missing)} font packages missing ({install_hint(missing)})",
            file=sys.stderr,
        )
    return [f for f in registry_faces(dirs) if f.design_family not in HELD_OUT_FONT_FAMILIES]


def held_out_faces(dirs: tuple[Path, ...] = FONT_DIRS) -> list[FontFace]:
    """Every face of `HELD_OUT_FONT_FAMILIES`: used only to measure unseen styles, never to train.

    The set is fixed so that figures compare: a missing package is an error, not a smaller set."""
    missing = missing_packages(HELD_OUT_FONT_FAMILIES, dirs)
    if missing:
        raise FontError(
            f"the held-out font families need {len(missing)} more packages: {install_hint(missing)}"
        )
    return [f for f in registry_faces(dirs) if f.design_family in HELD_OUT_FONT_FAMILIES]


@cache
def chinese_form_agreement(regions: tuple[str, ...], dirs: tuple[Path, ...] = FONT_DIRS) -> frozenset[int]:
    """Code points whose Japanese form is also the form of every region in ``regions`` (SC, TC, HK).

    Noto CJK's regional faces are one design sharing one glyph table, each face's cmap choosing its
    region's form: where the JP face maps a code point to the very glyph the regional face maps it to
    (in both Noto Sans and Noto Serif CJK), the standards agree and a face drawn to that regional
    standard draws the Japanese form. Anything else (other glyph, or absent) is not agreed."""
    unknown = set(regions) - set(_REGIONS)
    if unknown or not regions:
        raise FontError(
            f"unknown regions {sorted(unknown)} for the form check (known: {', '.join(_REGIONS)})"
        )
    files = _font_files(dirs)
    agreed: frozenset[int] | None = None
    for file_name, family in _FORM_REFERENCES:
        if file_name not in files:
            raise FontError(
                f"deciding which characters a Chinese face may draw needs {file_name} "
                f"({install_hint(['fonts-noto-cjk'])})"
            )
        faces = {f.family: f for f in _faces_in(files[file_name])}
        cmaps = {}
        for region in ("JP", *regions):
            face = faces.get(f"{family} {region}")
            if face is None:
                raise FontError(f"{files[file_name]}: has no face {family} {region}")
            cmaps[region] = _glyph_map(face.path, face.index)
        same = {cp for cp, glyph in cmaps["JP"].items() if all(cmaps[r].get(cp) == glyph for r in regions)}
        agreed = frozenset(same) if agreed is None else agreed & same
    assert agreed is not None
    return agreed


def font_from_path(spec: str | Path) -> list[FontFace]:
    """A user's font: `path` (every face of a collection, or its JP faces if it has any) or `path#index`."""
    text = str(spec)
    if "#" in text:
        path_text, index_text = text.rsplit("#", 1)
        faces = _faces_in(Path(path_text))
        try:
            return [faces[int(index_text)]]
        except (ValueError, IndexError) as e:
            raise FontError(f"{spec}: no face {index_text!r} (the file has {len(faces)})") from e
    faces = _faces_in(Path(text))
    jp = [f for f in faces if "JP" in f.family.split()]
    return jp if len(faces) > 1 and jp else faces


def resolve_fonts(extra: Sequence[str | Path] = (), use_defaults: bool = True) -> list[FontFace]:
    faces = list(default_fonts()) if use_defaults else []
    for spec in extra:
        faces.extend(f for f in font_from_path(spec) if f not in faces)
    return faces


def font_report(charsets: Sequence[str] = ("kana", "jis1"), dirs: tuple[Path, ...] = FONT_DIRS) -> str:
    """Every registry face with its role (default, training, held out), package and the characters of
    each named set it may draw; then how many of them have their Japanese form in Chinese standards."""
    from kanjirec.charset import get_charset

    sets = {name: get_charset(name) for name in charsets}
    faces = {(f.family, f.style): f for f in registry_faces(dirs)}
    lines = [
        f"{'face':36} {'family':18} {'role':9} {'package':28} " + " ".join(f"{n:>6}" for n in sets),
    ]
    for spec in FACES:
        face = faces.get((spec.face, spec.style))
        role = (
            "held out" if spec.family in HELD_OUT_FONT_FAMILIES else "default" if spec.default else "training"
        )
        counts = [f"{int(face.covers(c).sum()):6d}" if face else f"{'-':>6}" for c in sets.values()]
        name = f"{spec.face} {spec.style}"
        lines.append(f"{name:36} {spec.family:18} {role:9} {spec.package:28} " + " ".join(counts))
    if all(file_name in _font_files(dirs) for file_name, _ in _FORM_REFERENCES):
        sizes = ", ".join(f"{name} {len(chars)}" for name, chars in sets.items())
        lines.append(f"characters whose Noto CJK JP form is the regional form too (of {sizes}):")
        for regions in (("SC",), ("TC",), ("HK",), _REGIONS):
            agreed = chinese_form_agreement(regions, dirs)
            counts = ", ".join(
                f"{name} {sum(ord(c) in agreed for c in chars)}" for name, chars in sets.items()
            )
            lines.append(f"  {'+'.join(regions):9} {counts}")
    missing = missing_packages(dirs=dirs)
    if missing:
        lines.append(f"{len(missing)} packages missing: {install_hint(missing)}")
    return "\n".join(lines)


_WIDTH_PROBES = "永国書明語愛川東口"


@cache
def stroke_width(face: FontFace, res: int = 128) -> float:
    """The face's typical stroke width in em: the median over a few common characters of twice the
    distance to the outline along their strokes' centre lines (as `apply_weight` sees them).

    A weight of ``target - stroke_width(face)`` gives the face strokes about ``target`` em wide."""
    probes = [c for c in _WIDTH_PROBES if ord(c) in face.coverage()]
    if not probes:
        raise FontError(f"{face.path} ({face.name}): none of {_WIDTH_PROBES} to measure strokes on")
    cache = GlyphCache(face, res)
    cache.get(probes)
    fields = [signed_distance(cache._glyphs[c]) for c in probes]
    half = np.concatenate([d.astype(np.float32)[centre > 0] for d, centre, _ in fields])
    return float(2 * np.median(half) / res)


class GlyphCache:
    """Glyphs of one face as float32 ink in [0, 1], (res, res), the em box filling the canvas.

    ``smooth`` low-pass filters each glyph ([1, 2, 1] / 4 both ways) for callers that shrink it.
    ``get(chars, weight)`` changes each sample's stroke width (see `apply_weight`).
    """

    def __init__(self, face: FontFace, res: int, smooth: bool = False):
        from PIL import ImageFont

        self.face = face
        self.res = res
        self.smooth = smooth
        # One character at a time needs no shaping: the basic layout skips libraqm's per-call setup.
        self._font = ImageFont.truetype(
            str(face.path), size=res, index=face.index, layout_engine=ImageFont.Layout.BASIC
        )
        self._baseline = res / 2 + _em_centre(face.path, face.index) * res
        self._glyphs: dict[str, np.ndarray] = {}  # uint8 coverage as Pillow drew it
        self._smooth_glyphs: dict[str, np.ndarray] = {}
        self._fields: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}  # see `signed_distance`

    def get(self, chars: Sequence[str], weight: np.ndarray | None = None) -> np.ndarray:
        """(n, res, res) float32 glyphs; raises FontError naming the characters the face lacks.

        ``weight`` (n,): each sample's change of stroke width, in em (0.01 em is 0.64 px at 64 px;
        negative thins, down to a hairline; positive thickens until the glyph's counters would close)."""
        todo = [c for c in dict.fromkeys(chars) if c not in self._glyphs]
        if todo:
            covered = self.face.covers(todo)
            if not covered.all():
                missing = "".join(c for c, ok in zip(todo, covered, strict=True) if not ok)
                raise FontError(f"{self.face.path} ({self.face.name}) has no glyph for {missing!r}")
            for c in todo:
                self._glyphs[c] = self._draw(c)
        if weight is None:
            if self.smooth:
                return np.stack([self._smoothed(c) for c in chars])
            return np.stack([self._glyphs[c] for c in chars]).astype(np.float32) / np.float32(255)
        weight = np.asarray(weight, dtype=np.float32)
        if weight.shape != (len(chars),) or not np.isfinite(weight).all():
            raise FontError(f"weight: want {len(chars)} finite numbers (one per glyph), got {weight.shape}")
        out = np.empty((len(chars), self.res, self.res), np.float32)
        # A few glyphs at a time, so that the float working arrays stay in cache.
        for b0 in range(0, len(chars), _WEIGHT_CHUNK):
            part = slice(b0, b0 + _WEIGHT_CHUNK)
            fields = [self._field(c) for c in chars[part]]
            distance, centre, gap = (np.stack(f) for f in zip(*fields, strict=True))
            ink = apply_weight(distance, centre, weight[part], self.res, gap)
            out[part] = _smooth(ink) if self.smooth else ink
        return out

    def clear(self) -> None:
        """Drop the drawn glyphs (the font stays open)."""
        self._glyphs.clear()
        self._smooth_glyphs.clear()
        self._fields.clear()

    def _smoothed(self, char: str) -> np.ndarray:
        # Unweighted glyphs are smoothed once; weighted ones after each weight change.
        if char not in self._smooth_glyphs:
            ink = self._glyphs[char].astype(np.float32) / np.float32(255)
            self._smooth_glyphs[char] = _smooth(ink[None])[0]
        return self._smooth_glyphs[char]

    def _field(self, char: str) -> tuple[np.ndarray, np.ndarray, float]:
        if char not in self._fields:
            self._fields[char] = signed_distance(self._glyphs[char])
        return self._fields[char]

    def _draw(self, char: str) -> np.ndarray:
        from PIL import Image, ImageDraw

        img = Image.new("L", (self.res, self.res), 0)
        # Horizontally centred on the advance, vertically on the ideographic em box.
        ImageDraw.Draw(img).text((self.res / 2, self._baseline), char, fill=255, font=self._font, anchor="ms")
        return np.asarray(img)


def _smooth(ink: np.ndarray) -> np.ndarray:
    """[1, 2, 1] / 4 along both axes of (n, R, R), zero beyond the canvas."""
    rows = ink * np.float32(2)
    rows[:, 1:] += ink[:, :-1]
    rows[:, :-1] += ink[:, 1:]
    out = rows * np.float32(2)
    out[:, :, 1:] += rows[:, :, :-1]
    out[:, :, :-1] += rows[:, :, 1:]
    out *= np.float32(1 / 16)
    return out


def signed_distance(glyph: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """A glyph's (uint8 coverage, (R, R)) signed distance to its outline in pixels, positive inside
    (float16), its centre lines: the glyph's coverage there, 0 elsewhere (uint8), and its narrow gap:
    the `_GAP_QUANTILE` percentile of the half-widths of the gaps between its strokes (pixels; inf
    when it has none), measured on the gaps' own centre lines inside the glyph's bounding box.

    Pixels the outline crosses take their distance from their coverage (``g - 0.5``, within half a
    pixel of the outline), the rest half a pixel more than their distance to the nearest pixel on
    either side of the outline (one Euclidean distance transform), so that ``clip(d + 0.5, 0, 1)``
    gives back the glyph as drawn. A centre-line pixel is a maximum of the distance across the
    stroke, along rows or columns; a plateau along a stroke is not one."""
    from scipy import ndimage

    g = glyph.astype(np.float32) / np.float32(255)
    inside = g >= 0.5
    if not inside.any():  # a blank glyph (a space): nothing to thicken or thin
        blank = (g - np.float32(0.5) - np.float32(glyph.shape[-1])).astype(np.float16)
        return blank, np.zeros_like(glyph), float("inf")
    edge = (glyph > 0) & (glyph < 255)  # pixels the outline crosses
    p = np.pad(inside, 1, mode="edge")
    contour = edge | (p[1:-1, :-2] != inside) | (p[1:-1, 2:] != inside)
    contour |= (p[:-2, 1:-1] != inside) | (p[2:, 1:-1] != inside)
    dist = ndimage.distance_transform_edt(~contour).astype(np.float32) + np.float32(0.5)
    np.negative(dist, out=dist, where=~inside)
    dist[edge] = g[edge] - np.float32(0.5)
    centre = inside & (_across_maxima(dist) | _across_maxima(dist.T).T)
    rows, cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
    box = np.zeros_like(inside)
    box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
    background = -dist
    gaps = box & ~inside & (_across_maxima(background) | _across_maxima(background.T).T)
    gap = float(np.percentile(background[gaps], _GAP_QUANTILE)) if gaps.any() else float("inf")
    return dist.astype(np.float16), np.where(centre, glyph, 0).astype(np.uint8), gap


def _across_maxima(dist: np.ndarray) -> np.ndarray:
    d = np.pad(dist, ((0, 0), (2, 2)), constant_values=-np.inf)
    mid = d[:, 2:-2]
    return (mid > d[:, 1:-3]) & (mid >= d[:, 3:-1]) & (mid > d[:, 4:])


def apply_weight(
    distance: np.ndarray, centre: np.ndarray, weight: np.ndarray, res: int, gap: np.ndarray | None = None
) -> np.ndarray:
    """Ink (n, R, R) in [0, 1] of glyphs given by their signed distances (n, R, R), centre lines and
    narrow gaps (n,) (`signed_distance`) with every stroke ``weight`` em wider (negative: narrower).
    Thinning stops at each stroke's centre line (one pixel wide: a hairline), so no stroke vanishes or
    breaks; thickening grows every stroke alike, but no further than leaves the glyph's narrow gap a
    hairline wide (`HAIRLINE_EM`), so a dense character stays readable as a black face draws it."""
    shift = weight.astype(np.float32) * np.float32(res / 2)  # pixels each side
    if gap is not None:
        room = np.maximum(np.asarray(gap, np.float32) - np.float32(HAIRLINE_EM * res / 2), 0)
        shift = np.where(shift > 0, np.minimum(shift, room), shift)
    shift = shift.astype(np.float32) + np.float32(0.5)
    ink = distance.astype(np.float32)
    ink += shift[:, None, None]
    np.clip(ink, 0, 1, out=ink)
    thinned = shift < 0.5
    if thinned.any():
        ink[thinned] = np.maximum(ink[thinned], centre[thinned] / np.float32(255))
    return ink
