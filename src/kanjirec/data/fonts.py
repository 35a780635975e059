"""Print fonts as a second source of synthetic samples.

The default fonts are exactly the print families Noto Sans / Serif CJK JP
(Debian `fonts-noto-cjk`; `.ttc` collections, of which we take the JP face) and
IPA / IPAex Gothic and Mincho (`fonts-ipafont`, `fonts-ipaexfont`). Other fonts
(handwriting, brush, textbook styles) are never picked up by default; users add
any font by path. Coverage comes from each font's cmap (fontTools), so a
character a font lacks is reported, never rendered as a tofu box.

Glyphs are drawn with Pillow once per (font, character) at twice the output
resolution, with the font's ideographic em box filling the canvas, and cached;
`synth.py` applies the batched distortions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from kanjirec.errors import KanjirecError

# (file name, family of the face to take from it). Debian's paths differ between releases, so we
# search the usual font folders by file name.
DEFAULT_FONTS: tuple[tuple[str, str], ...] = (
    ("NotoSansCJK-Regular.ttc", "Noto Sans CJK JP"),
    ("NotoSansCJK-Bold.ttc", "Noto Sans CJK JP"),
    ("NotoSerifCJK-Regular.ttc", "Noto Serif CJK JP"),
    ("NotoSerifCJK-Bold.ttc", "Noto Serif CJK JP"),
    ("ipag.ttf", "IPAGothic"),
    ("ipam.ttf", "IPAMincho"),
    ("ipaexg.ttf", "IPAexGothic"),
    ("ipaexm.ttf", "IPAexMincho"),
)
FONT_DIRS: tuple[Path, ...] = (
    Path("/usr/share/fonts"),
    Path("/usr/local/share/fonts"),
    Path.home() / ".local/share/fonts",
    Path.home() / ".fonts",
)
INSTALL_HINT = "install them with: apt-get install fonts-noto-cjk fonts-ipafont fonts-ipaexfont"


class FontError(KanjirecError):
    """A font file is missing, unreadable, or lacks glyphs it was asked for."""


@dataclass(frozen=True)
class FontFace:
    path: Path
    index: int  # face index inside a .ttc collection (0 for a single font)
    family: str
    style: str

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
        """Code points the font's cmap maps to a glyph."""
        return _cmap(self.path, self.index)

    def covers(self, chars: Iterable[str]) -> np.ndarray:
        cov = self.coverage()
        return np.array([ord(c) in cov for c in chars], dtype=bool)


def _open_ttfont(path: Path, index: int):
    from fontTools.ttLib import TTFont

    try:
        return TTFont(path, fontNumber=index, lazy=True)
    except Exception as e:  # fontTools raises bare TTLibError, struct.error, ... on damaged files
        raise FontError(f"{path}: cannot read font face {index}: {e}") from e


@cache
def _cmap(path: Path, index: int) -> frozenset[int]:
    font = _open_ttfont(path, index)
    cmap = font.getBestCmap()
    if cmap is None:
        raise FontError(f"{path}: face {index} has no Unicode cmap")
    # A code point mapped to .notdef would draw a tofu box.
    return frozenset(cp for cp, glyph in cmap.items() if glyph != ".notdef")


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


def _find_file(name: str, dirs: Sequence[Path]) -> Path | None:
    for d in dirs:
        if d.is_dir():
            hit = next(iter(sorted(d.rglob(name))), None)
            if hit is not None:
                return hit
    return None


@cache
def default_fonts(dirs: tuple[Path, ...] = FONT_DIRS) -> tuple[FontFace, ...]:
    """The installed default print faces (possibly none)."""
    faces = []
    for file_name, family in DEFAULT_FONTS:
        path = _find_file(file_name, dirs)
        if path is None:
            continue
        face = next((f for f in _faces_in(path) if f.family == family), None)
        if face is None:
            raise FontError(f"{path}: has no face of family {family!r}")
        faces.append(face)
    return tuple(faces)


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


class GlyphCache:
    """Glyphs of one face as float32 ink in [0, 1], (res, res), the em box filling the canvas.

    ``smooth`` low-pass filters each glyph once ([1, 2, 1] / 4 both ways) for callers that shrink it.
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
        self._glyphs: dict[str, np.ndarray] = {}

    def get(self, chars: Sequence[str]) -> np.ndarray:
        """(n, res, res) float32 glyphs; raises FontError naming the characters the face lacks."""
        todo = [c for c in dict.fromkeys(chars) if c not in self._glyphs]
        if todo:
            covered = self.face.covers(todo)
            if not covered.all():
                missing = "".join(c for c, ok in zip(todo, covered, strict=True) if not ok)
                raise FontError(f"{self.face.path} ({self.face.name}) has no glyph for {missing!r}")
            for c in todo:
                self._glyphs[c] = self._draw(c)
        return np.stack([self._glyphs[c] for c in chars])

    def clear(self) -> None:
        """Drop the drawn glyphs (the font stays open)."""
        self._glyphs.clear()

    def _draw(self, char: str) -> np.ndarray:
        from PIL import Image, ImageDraw

        img = Image.new("L", (self.res, self.res), 0)
        # Horizontally centred on the advance, vertically on the ideographic em box.
        ImageDraw.Draw(img).text((self.res / 2, self._baseline), char, fill=255, font=self._font, anchor="ms")
        if not self.smooth:
            return np.asarray(img, dtype=np.float32) / np.float32(255)
        # [1, 2, 1] both ways in exact integers (at most 16 * 255), zero beyond the canvas.
        g = np.asarray(img).astype(np.uint16)
        rows = g * 2
        rows[1:] += g[:-1]
        rows[:-1] += g[1:]
        out = rows * 2
        out[:, 1:] += rows[:, :-1]
        out[:, :-1] += rows[:, 1:]
        return out.astype(np.float32) * np.float32(1 / (16 * 255))
