"""`kanjirec bench data`: ETL decoding throughput and the memory that preparing a dataset takes.

Everything runs on generated, spec-conformant ETL9G files (written through the same layout
table the reader uses; 12,144 records each, as the real files, the last one shorter), so the
figures are reproducible without the real database:

1. timed plain reads of the files, the floor any decoder pays: from disk (the files' pages
   dropped from the page cache first with ``posix_fadvise(POSIX_FADV_DONTNEED)``, which needs
   no root) and from the page cache (close to memcpy speed);
2. the vectorised G-type reader (`iter_etl_file`): fields, every check of the record, labels,
   writer keys and images, from disk and from the page cache. The target compares decoding
   with reading the same bytes from disk; the page-cache ratio is printed beside it as the
   stricter figure;
3. a baseline that decodes one record at a time with ``struct`` + Pillow, as AIST's sample
   script does, on a subset whose time per record is extrapolated to all records;
4. a full `prepare_etl` of the files into a packed dataset, with the process's peak resident
   memory above its level before the call (kernel high-water mark, reset through
   /proc/self/clear_refs), against the size of the final uint8 image data.
"""

from __future__ import annotations

import codecs
import os
import struct
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from kanjirec.charset import get_charset
from kanjirec.data.etl import LAYOUTS, SETS, encode_records, iter_etl_file, prepare_etl

_G9_STRUCT = ">HH8sI4B4H2B34x8128s7x"  # AIST's ETL9G record, for the per-record baseline


def etl9g_codes() -> np.ndarray:
    """JIS X 0208 codes of the 3,036 ETL9G classes, through the EUC-JP codec."""
    out = []
    for char in get_charset("etl9g"):
        b = char.encode("euc_jp")
        out.append(((b[0] & 0x7F) << 8) | (b[1] & 0x7F))
    return np.array(out, np.int64)


def _templates(rng: np.random.Generator, count: int = 64) -> np.ndarray:
    """Stroke-like 4-bit images (ink high): a few thick line segments each."""
    h, w = 127, 128
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    out = np.zeros((count, h, w), np.uint8)
    for k in range(count):
        ink = np.zeros((h, w), np.float32)
        for _ in range(rng.integers(3, 9)):
            (x0, y0), (x1, y1) = rng.uniform(16, 112, (2, 2))
            dx, dy = x1 - x0, y1 - y0
            t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
            dist = np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy))
            ink = np.maximum(ink, np.clip(4 - dist, 0, 1))
        out[k] = np.round(ink * rng.uniform(10, 15)).astype(np.uint8)
    return out


def write_etl9g(folder: Path, records: int, seed: int = 0, chunk: int = 2048) -> list[Path]:
    """Spec-conformant ETL9G files ETL9G_01, _02, ...: 12,144 records (4 data sets) each, classes in
    ETL9G order, 20 sheets per data set."""
    rng = np.random.default_rng(seed)
    codes = etl9g_codes()
    templates = _templates(rng)
    layout = LAYOUTS["G9"]
    per_file = SETS["ETL9G"].data_sets_per_file * SETS["ETL9G"].data_set_records
    paths = []
    for first in range(0, records, per_file):
        path = folder / f"ETL9G_{len(paths) + 1:02d}"
        with open(path, "wb") as fh:
            for start in range(first, min(first + per_file, records), chunk):
                i = np.arange(start, min(start + chunk, first + per_file, records))
                data_set, j = np.divmod(i, len(codes))
                sheet = data_set * 20 + j * 20 // len(codes) + 1
                images = templates[rng.integers(0, len(templates), len(i))]
                noise = rng.random(images.shape) < 0.01
                images = np.where(noise, rng.integers(0, 4, images.shape, dtype=np.uint8), images)
                recs = encode_records(
                    layout,
                    {
                        "sheet": sheet,
                        "jis0208": codes[j],
                        "reading": np.full((len(i), 8), ord(" ")),  # readings are not used
                        "serial": i + 1,
                        "gathered": np.full(len(i), 8212),
                        "scanned": np.full(len(i), 8310),
                    },
                    images,
                )
                fh.write(recs.tobytes())
        paths.append(path)
    return paths


def _drop_from_page_cache(paths: list[Path]) -> None:
    """Evict the files' pages from the page cache (posix_fadvise; Linux, no root needed)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _disk_times(paths: list[Path]) -> tuple[float, float] | str:
    """(read, decode) seconds from disk, best of two, each after evicting the files; or why not."""
    if not hasattr(os, "posix_fadvise"):
        return "no posix_fadvise to evict the files from the page cache"
    reads, decodes = [], []
    for _ in range(2):
        _drop_from_page_cache(paths)
        reads.append(_timed_read(paths))
        _drop_from_page_cache(paths)
        decodes.append(_timed_decode(paths)[0])
    return min(reads), min(decodes)


def _timed_read(paths: list[Path]) -> float:
    buf = bytearray(16 << 20)
    t0 = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    return time.perf_counter() - t0


def _timed_decode(paths: list[Path]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for path in paths:
        for block in iter_etl_file(path, "ETL9G"):
            n += len(block)
    return time.perf_counter() - t0, n


def baseline_decode(path: Path, records: int) -> tuple[float, list[str], np.ndarray]:
    """Per-record struct + Pillow decoding of the first ``records`` records: (seconds, chars, images)."""
    from PIL import Image

    size = struct.calcsize(_G9_STRUCT)
    chars, images = [], []
    decoder = codecs.getdecoder("euc_jp")
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        for k in range(records):
            r = struct.unpack(_G9_STRUCT, fh.read(size))
            code = r[1]
            chars.append(decoder(bytes([(code >> 8) | 0x80, (code & 0xFF) | 0x80]))[0])
            _writer = f"ETL9/ds{k // 3036 + 1:03d}"  # the data set of the record (in ETL9G_01)
            img = Image.frombytes("F", (128, 127), r[14], "bit", 4).convert("L")
            images.append(np.asarray(img))
    return time.perf_counter() - t0, chars, np.stack(images)


class _PeakRss:
    """Peak resident memory of this process during a block, above its level at the start."""

    def __init__(self) -> None:
        self.method = "kernel high-water mark (VmHWM, reset via /proc/self/clear_refs)"
        self._sampled = 0
        self._stop = threading.Event()

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"/proc/self/status has no {key}")

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._sampled = max(self._sampled, self._status("VmRSS"))

    def __enter__(self) -> _PeakRss:
        self.start = self._status("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._hwm = True
        except OSError:
            self._hwm = False
            self.method = "VmRSS sampled every 5 ms (/proc/self/clear_refs not writable)"
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        peak = max(self._sampled, self._status("VmHWM") if self._hwm else 0)
        self.increase = peak - self.start


def bench_data(
    records: int = 50_000,
    baseline_records: int = 2_000,
    image_size: int = 64,
    workdir: str | Path | None = None,
) -> dict[str, float]:
    """Run the benchmark, print its figures and return them."""
    if records < 1 or baseline_records < 1:
        raise ValueError("records and baseline_records must be positive")
    baseline_records = min(baseline_records, records)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=workdir, prefix="kanjirec-bench-data-") as tmp:
        etl_dir = Path(tmp) / "etl"
        etl_dir.mkdir()
        paths = write_etl9g(etl_dir, records)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        print(
            f"generated {paths[0].name} .. {paths[-1].name}: {records:,} ETL9G records in {len(paths)} "
            f"files, {mb:,.1f} MB (8,199 B each)"
        )
        baseline_records = min(baseline_records, paths[0].stat().st_size // 8199)

        disk = _disk_times(paths)
        _timed_read(paths)  # bring the files into the page cache
        t_read = min(_timed_read(paths) for _ in range(2))
        t_dec, n = min((_timed_decode(paths) for _ in range(2)), key=lambda r: r[0])
        assert n == records, (n, records)
        t_base, base_chars, base_images = baseline_decode(paths[0], baseline_records)
        t_base_all = t_base / baseline_records * records

        # The two decoders must agree on what they read.
        first = next(iter_etl_file(paths[0], "ETL9G", chunk_records=baseline_records))
        if list(first.chars) != base_chars or not np.array_equal(first.images, base_images):
            raise AssertionError("vectorised and per-record decoders disagree")

        figures.update(
            read_s=t_read,
            decode_s=t_dec,
            decode_mb_s=mb / t_dec,
            decode_records_s=records / t_dec,
            baseline_s=t_base_all,
            baseline_records_s=records / t_base_all,
            speedup=t_base_all / t_dec,
            decode_over_cached_read=t_dec / t_read,
        )
        # An eviction that did not take effect (tmpfs, a filesystem ignoring the advice) would
        # show page-cache speed; such figures are not reported as disk figures.
        if not isinstance(disk, str) and disk[0] < 1.5 * t_read:
            disk = (
                f"evicting the file did not slow its read ({disk[0]:.3f} s vs {t_read:.3f} s cached): "
                f"is {etl_dir} on tmpfs? (--workdir picks another place)"
            )
        if not isinstance(disk, str):
            t_read_disk, t_dec_disk = disk
            figures.update(
                read_disk_s=t_read_disk,
                decode_disk_s=t_dec_disk,
                decode_over_disk_read=t_dec_disk / t_read_disk,
            )
            print(f"plain read        {t_read_disk:8.3f} s  {mb / t_read_disk:9,.0f} MB/s  (from disk)")
            print(
                f"vectorised decode {t_dec_disk:8.3f} s  {mb / t_dec_disk:9,.0f} MB/s  "
                f"{records / t_dec_disk:11,.0f} records/s  (from disk)"
            )
        print(f"plain read        {t_read:8.3f} s  {mb / t_read:9,.0f} MB/s  (file in page cache)")
        print(
            f"vectorised decode {t_dec:8.3f} s  {mb / t_dec:9,.0f} MB/s  {records / t_dec:11,.0f} records/s"
            "  (file in page cache)"
        )
        print(
            f"per-record struct+Pillow baseline: measured on {baseline_records:,} records "
            f"({t_base:.2f} s), extrapolated per record to {records:,}:"
        )
        print(
            f"baseline decode   {t_base_all:8.3f} s  {mb / t_base_all:9,.0f} MB/s  "
            f"{records / t_base_all:11,.0f} records/s"
        )
        print(f"speed-up over baseline   {figures['speedup']:6.1f}x  (target >= 10x; page cache, both)")
        if isinstance(disk, str):
            print(f"decode / read, from disk: not measured ({disk})")
        else:
            print(f"decode / read, from disk {figures['decode_over_disk_read']:6.2f}x  (target <= 3x)")
        print(
            f"decode / read, page cache{figures['decode_over_cached_read']:6.2f}x  "
            f"(stricter: a cached read is a memcpy; {'within' if t_dec <= 3 * t_read else 'above'} 3x)"
        )

        # Warm the lazily imported modules so their one-off memory is not counted as prepare's.
        from kanjirec.data.preprocess import normalize_images

        normalize_images(first.images[:8], max_level=15, size=image_size)
        del first, base_images
        out = Path(tmp) / "dataset"
        t0 = time.perf_counter()
        with _PeakRss() as rss:
            prepare_etl(etl_dir, ["ETL9G"], out, image_size=image_size, quiet=True)
        t_prep = time.perf_counter() - t0
        dataset_bytes = records * image_size * image_size
        on_disk = sum(p.stat().st_size for p in out.glob("images-*.npy"))
        figures.update(
            prepare_s=t_prep,
            peak_rss_increase_mb=rss.increase / 1e6,
            dataset_mb=dataset_bytes / 1e6,
            memory_ratio=rss.increase / dataset_bytes,
        )
        print(
            f"prepare (decode + normalize to {image_size}x{image_size} + DatasetWriter): {t_prep:.1f} s, "
            f"{records / t_prep:,.0f} records/s"
        )
        print(
            f"final uint8 images {dataset_bytes / 1e6:,.1f} MB ({on_disk / 1e6:,.1f} MB of shard files); "
            f"peak RSS increase {rss.increase / 1e6:,.1f} MB"
        )
        print(f"peak memory / dataset    {figures['memory_ratio']:6.2f}x  (target < 2x; {rss.method})")
    print(f"machine: {os.cpu_count()} CPUs")
    return figures
