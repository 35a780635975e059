"""`kanjirec bench synth`: synthetic samples per second per core.

One process, one torch thread, CPU time (not wall time, so other load on the machine
inflates the figures less). Each stage is timed separately on the ETL9G class set, one
sample per class per writer:

1. stroke rendering (resampling, distortions, splatting, pen blur);
2. the finish: scan-like grain, noise and 16 grey levels, then the contrast stretch of
   the image convention (`finish_images`); `normalize_images` on the same levels is
   timed beside it for comparison, since `finish_images` gives the same images;
3. font glyph distortion, with glyphs already in the cache (first-time Pillow drawing
   is timed on its own);

then each path end to end as `data synth` runs it per chunk: `stroke_images` /
`font_images` (rendering and finish fused per sub-batch) plus `DatasetWriter.add`
into a scratch dataset (the store).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from kanjirec.charset import get_charset
from kanjirec.data.fonts import GlyphCache, default_fonts
from kanjirec.data.kanjivg import load_kanjivg
from kanjirec.data.preprocess import normalize_images
from kanjirec.data.store import DatasetWriter
from kanjirec.data.synth import (
    MAX_LEVEL,
    StrokeBank,
    _sample_styles,
    draw_writer_styles,
    finish_images,
    font_images,
    render_font_glyphs,
    render_strokes,
    scan_finish,
    stroke_images,
)


def _cpu(fn):
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


def bench_synth(charset: str = "etl9g", writers: int = 2, image_size: int = 64, seed: int = 0) -> dict:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="kanjirec-bench-synth-") as scratch:
            return _bench(charset, writers, image_size, seed, Path(scratch))
    finally:
        torch.set_num_threads(threads)


def _store(images: np.ndarray, chars: list[str], out: Path, size: int) -> float:
    """CPU seconds to add the images to a fresh packed dataset, as the parent of `data synth` does."""
    writer = DatasetWriter(out, image_size=size)
    writers = ["synth/w00000"] * len(images)
    return _cpu(lambda: writer.add(images, "".join(chars), writers, "synth-strokes"))[1]


def _bench(charset: str, writers: int, size: int, seed: int, scratch: Path) -> dict:
    kvg = load_kanjivg()
    chars = [c for c in get_charset(charset) if c in kvg]
    bank, t_bank = _cpu(lambda: StrokeBank.build([kvg[c] for c in chars]))
    rng = np.random.default_rng(seed)
    n = len(chars) * writers
    writer_of_sample = np.repeat(np.arange(writers), len(chars))
    style = _sample_styles(draw_writer_styles(rng, writers), writer_of_sample)
    char_index = np.tile(np.arange(len(chars)), writers)
    sample_chars = [chars[i] for i in char_index]
    warm = {k: v[:64] for k, v in style.items()}
    stroke_images(bank, char_index[:64], warm, rng, size)

    (ink, _), t_strokes = _cpu(lambda: render_strokes(bank, char_index, style, rng, size))
    (_, strokes), t_with = _cpu(lambda: render_strokes(bank, char_index, style, rng, size, with_strokes=True))
    _, t_finish = _cpu(lambda: finish_images(ink, style, rng))
    raw = scan_finish(ink, style, rng)
    _, t_norm = _cpu(lambda: normalize_images(raw, max_level=MAX_LEVEL, size=size, margin=0))
    (images, _), t_fused = _cpu(lambda: stroke_images(bank, char_index, style, rng, size))
    t_store = _store(images, sample_chars, scratch / "strokes", size)
    results = {
        "samples": n,
        "bank_s": t_bank,
        "strokes_per_s": n / t_strokes,
        "strokes_with_sequences_per_s": n / t_with,
        "finish_per_s": n / t_finish,
        "normalize_per_s": n / t_norm,
        "store_per_s": n / t_store,
        "stroke_end_to_end_per_s": n / (t_fused + t_store),
    }
    print(
        f"kanjirec bench synth: {charset}, {len(chars)} classes x {writers} writers = {n} samples, "
        f"{size}x{size}"
    )
    print("per core (1 process, 1 torch thread, CPU time):")
    print(f"  stroke rendering             {results['strokes_per_s']:9,.0f} samples/s")
    print(f"  ... storing stroke sequences {results['strokes_with_sequences_per_s']:9,.0f} samples/s")
    print(f"  scan finish + contrast       {results['finish_per_s']:9,.0f} samples/s (finish_images)")
    print(f"  normalize_images (replaced)  {results['normalize_per_s']:9,.0f} samples/s")
    print(f"  store (DatasetWriter.add)    {results['store_per_s']:9,.0f} samples/s")
    print(f"  strokes end to end           {results['stroke_end_to_end_per_s']:9,.0f} samples/s")

    faces = default_fonts()
    if not faces:
        print("  fonts: none of the default print fonts is installed; font rendering not measured")
        return results
    face = faces[0]
    cache = GlyphCache(face, 2 * size, smooth=True)
    covered = [c for c, ok in zip(chars, face.covers(chars), strict=True) if ok]
    glyphs, t_draw = _cpu(lambda: cache.get(covered))
    fstyle = _sample_styles(draw_writer_styles(rng, 1), np.zeros(len(covered), np.int64))
    _, t_font = _cpu(lambda: render_font_glyphs(glyphs, fstyle, rng, size))
    fimages, t_fused = _cpu(lambda: font_images(cache, covered, fstyle, rng, size))
    t_fstore = _store(fimages, covered, scratch / "fonts", size)
    results.update(
        font_glyph_draw_per_s=len(covered) / t_draw,
        font_distort_per_s=len(covered) / t_font,
        font_end_to_end_per_s=len(covered) / (t_fused + t_fstore),
    )
    print(f"  font glyphs, first drawing   {results['font_glyph_draw_per_s']:9,.0f} glyphs/s ({face.name})")
    print(f"  font distortion (cached)     {results['font_distort_per_s']:9,.0f} samples/s")
    print(f"  fonts end to end (cached)    {results['font_end_to_end_per_s']:9,.0f} samples/s")
    return results
