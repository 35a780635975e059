"""Images users hand the Recognizer: over the pixel limit refused by name, large ones reduced before any
expensive step, non-images and damaged files refused with ImageInputError."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

import kanjirec.data.preprocess as preprocess
from kanjirec.data.preprocess import MAX_IMAGE_PIXELS, open_image
from kanjirec.errors import ImageInputError
from kanjirec.recognizer import WORKING_SIDE_FACTOR, RecognizerError, to_convention


def png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height grey pixels: what Pillow reads before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def cross(width: int, height: int) -> Image.Image:
    """A dark cross (十) on white paper, a third of the shorter side long each way."""
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    s, cx, cy = min(width, height), width / 2, height / 2
    draw.line([(cx - s / 3, cy), (cx + s / 3, cy)], fill=0, width=max(3, s // 40))
    draw.line([(cx, cy - s / 3), (cx, cy + s / 3)], fill=0, width=max(3, s // 40))
    return image


@pytest.mark.parametrize(("width", "height"), [(20000, 20000), (9000, 9000), (6400, 6400)])
def test_images_over_the_pixel_limit_are_refused_naming_the_file(width, height, tmp_path):
    assert width * height > MAX_IMAGE_PIXELS
    path = tmp_path / f"huge-{width}.png"
    png_header_only(path, width, height)
    with pytest.raises(
        ImageInputError, match=rf"huge-{width}\.png: .*megapixels.* is over the limit of 40 megapixels"
    ):
        to_convention(path)


def test_arrays_and_pil_images_over_the_limit_are_refused_too():
    side = int(MAX_IMAGE_PIXELS**0.5) + 1
    with pytest.raises(ImageInputError, match=r"over the limit of 40 megapixels"):
        to_convention(np.zeros((side, side), np.uint8))
    with pytest.raises(ImageInputError, match=r"over the limit"):
        to_convention(Image.new("1", (side, side)))


def test_a_large_image_is_reduced_before_normalisation_and_reads_as_a_small_one(tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    cross(4000, 3000).save(path)
    seen = []
    real = preprocess.normalize_images

    def recording(images, **kwargs):
        seen.append(images.shape)
        return real(images, **kwargs)

    monkeypatch.setattr(preprocess, "normalize_images", recording)
    big = to_convention(path)
    assert len(seen) == 1 and max(seen[0][1:]) <= WORKING_SIDE_FACTOR * 64  # (1, 375, 500), not 3000x4000
    small = to_convention(cross(400, 300))
    ink_big, ink_small = big > 127, small > 127
    assert (ink_big & ink_small).sum() / (ink_big | ink_small).sum() > 0.8  # the same cross
    # RGB and palette images and arrays take the same reduction.
    rgb = to_convention(cross(4000, 3000).convert("RGB"))
    assert np.abs(rgb.astype(int) - big).max() <= 1
    assert np.array_equal(to_convention(np.asarray(cross(4000, 3000))), big)
    assert to_convention(cross(4000, 3000).convert("P")).shape == (64, 64)


def test_small_images_are_not_reduced(monkeypatch):
    seen = []
    real = preprocess.normalize_images
    monkeypatch.setattr(
        preprocess, "normalize_images", lambda im, **kw: seen.append(im.shape) or real(im, **kw)
    )
    to_convention(cross(512, 300))
    assert seen == [(1, 300, 512)]


def test_non_images_and_damaged_files_are_refused_naming_the_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image", encoding="utf-8")
    with pytest.raises(ImageInputError, match=r"notes\.png: not an image file Pillow can read"):
        open_image(text)
    with pytest.raises(ImageInputError, match=r"missing\.png: no such image file"):
        to_convention(tmp_path / "missing.png")
    good = tmp_path / "good.png"
    cross(300, 200).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:400])
    with pytest.raises(ImageInputError, match=r"truncated\.png: truncated or damaged PNG image"):
        to_convention(truncated)
    assert open_image(good).size == (300, 200)
    with pytest.raises(RecognizerError, match="image array"):
        to_convention(np.zeros((0, 5), np.uint8))
