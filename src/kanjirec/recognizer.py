"""The small inference API: ``Recognizer.load()(image) -> [(char, prob), ...]``.

``Recognizer.load(path)`` takes anything `loading.load_any` does (a run folder, a checkpoint, an
exported .onnx file, an ensemble manifest); without a path, the model that ships with the package.

Any image is brought to the project's convention before the graph runs:

0. size: a file is read with ``data.preprocess.open_image`` (over ``MAX_IMAGE_PIXELS`` it is
   refused, as is an image or array passed in); an image whose longer side exceeds 8 times the
   model's input side is box-averaged down by a whole factor (``Image.reduce``) first, so that
   nothing below works on more than (8 x 64)^2 pixels whatever the input;
1. grey: RGB(A) is converted to luminance; transparent pixels take the background colour
   (white under dark ink, black under bright ink);
2. polarity: if the median of the image's border is bright, the image is inverted, so the
   ink is bright on a dark background;
3. ``data.preprocess.normalize_images(..., max_level=255, size=64, crop=True)``: contrast
   normalisation, crop to the ink, aspect-preserving resize to 64x64 and centring;
4. the model's own feature step (for an ONNX file, the one its metadata names, run outside the
   graph by `loading.OnnxModel`).

Pen strokes (``read_strokes``: what the browser page and ``POST /recognize`` send) go to a model
that reads pen trajectories (``input_kind == "pen"``, the online ``stroke_rnn``) as they are,
through `data.sequences.pen_strokes`; any other model reads them drawn as an image by
`data.pen.strokes_to_image`, the training renderer's convention.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kanjirec.errors import KanjirecError
from kanjirec.inference import inference_copy, torch_threads
from kanjirec.loading import LoadedModel, OnnxModel, load_any

# Images are reduced to at most this many times the model's input side before any other work:
# enough to crop a character filling an eighth of the frame at full detail; normalising at full
# resolution pooled with a kernel of ~150 pixels on a 9000-pixel image and took minutes.
WORKING_SIDE_FACTOR = 8


class RecognizerError(KanjirecError):
    """An image cannot be read or is not an image array."""


def _reduced(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` box-averaged by the smallest whole factor that brings its longer side to ``max_side``."""
    factor = math.ceil(max(image.size) / max_side)
    if factor <= 1:
        return image
    if image.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):  # the modes Image.reduce takes
        has_alpha = image.mode in ("PA", "La", "RGBa") or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB" if image.mode in ("P", "CMYK", "YCbCr") else "L")
    return image.reduce(factor)


def _grey(image: str | Path | Image.Image | np.ndarray, max_side: int) -> np.ndarray:
    """Any supported image -> (H, W) uint8 grey, in its original polarity, longer side <= ``max_side``."""
    from kanjirec.data.preprocess import check_image_size, open_image  # torch: imported on first use

    if isinstance(image, (str, Path)):
        image = open_image(image)
    if isinstance(image, Image.Image):
        check_image_size(image.width, image.height, "image")
        image = _reduced(image, max_side)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
            grey = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
            alpha = rgba[..., 3] / 255.0
            opaque = grey[alpha > 0.5]
            background = 0.0 if opaque.size and np.median(opaque) > 127 else 255.0
            return np.round(grey * alpha + background * (1 - alpha)).astype(np.uint8)
        return np.asarray(image.convert("L"))
    array = np.asarray(image)
    if array.ndim in (2, 3):
        check_image_size(array.shape[1], array.shape[0], f"image array {array.shape}")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        array = array[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.size == 0:
        raise RecognizerError(f"expected a (H, W), (1, H, W) or (H, W, 3|4) image array, got {array.shape}")
    if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0:
        array = array * 255.0
    grey = np.clip(np.round(array), 0, 255).astype(np.uint8)
    return np.asarray(_reduced(Image.fromarray(grey), max_side)) if max(grey.shape) > max_side else grey


def to_convention(image: str | Path | Image.Image | np.ndarray, size: int = 64) -> np.ndarray:
    """Any image -> (size, size) uint8, ink 255 on 0, contrast-normalised, cropped and centred."""
    from kanjirec.data.preprocess import normalize_images

    grey = _grey(image, WORKING_SIDE_FACTOR * size)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 127:
        grey = 255 - grey
    return normalize_images(grey[None], max_level=255, size=size, crop=True)[0]


class Recognizer:
    """Top-k character recognition with any model `loading.load_any` loads (by default the shipped one)."""

    def __init__(self, loaded: LoadedModel, top_k: int = 5, threads: int | None = None):
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.loaded = loaded
        self.model = inference_copy(loaded.model)
        self.classes = loaded.classes
        self.image_size = loaded.image_size
        self.path = loaded.path
        self.top_k = top_k
        self.threads = threads

    @classmethod
    def load(cls, path: str | Path | None = None, top_k: int = 5, threads: int | None = None) -> Recognizer:
        """``path``: anything `loading.load_any` takes; None: the shipped model. ``threads``: intra-op
        threads (1 for single-thread latency); None leaves the runtime's default."""
        return cls(load_any(path), top_k, threads)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(B, S, S) uint8 images already in the convention -> (B, C) logits."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if isinstance(self.model, OnnxModel):
            return self.model.logits(images, self.threads)
        with torch_threads(self.threads), torch.inference_mode():
            return self.model(torch.from_numpy(images)[:, None]).float().numpy()

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        logits = self.logits(images)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def top(self, images: np.ndarray, top_k: int | None = None) -> list[list[tuple[str, float]]]:
        """(B, S, S) uint8 images already in the convention -> per image, the top-k (char, prob)."""
        probs = self.probabilities(images)
        best = np.argsort(-probs, axis=1, kind="stable")[:, : top_k or self.top_k]
        return [[(self.classes[i], float(p[i])) for i in row] for p, row in zip(probs, best, strict=True)]

    def __call__(
        self, image: str | Path | Image.Image | np.ndarray, top_k: int | None = None
    ) -> list[tuple[str, float]]:
        if self.reads_pen:
            raise RecognizerError(f"{self.loaded.name} reads pen strokes, not images: use read_strokes")
        return self.top(to_convention(image, self.image_size)[None], top_k)[0]

    @property
    def reads_pen(self) -> bool:
        """True when the model reads pen trajectories rather than images."""
        return getattr(self.model, "input_kind", "images") == "pen"

    def stroke_probabilities(self, drawings) -> np.ndarray:
        """Drawings (each a list of (k, 2) x, y strokes in writing order, y down, any units) -> (B, C)
        class probabilities of a model that reads pen trajectories."""
        from kanjirec.data.sequences import pen_strokes

        if not self.reads_pen:
            raise RecognizerError(f"{self.loaded.name} reads images: draw the strokes first (read_strokes)")
        features, lengths = pen_strokes(drawings, self.model.max_strokes)
        if isinstance(self.model, OnnxModel):
            logits = self.model.pen_logits(features, lengths, self.threads)
        else:
            with torch_threads(self.threads), torch.inference_mode():
                inputs = (torch.from_numpy(features), torch.from_numpy(lengths))
                logits = self.model(inputs).float().numpy()
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def read_strokes(
        self, strokes, width: float, height: float, top_k: int | None = None
    ) -> list[tuple[str, float]]:
        """Pen strokes (each a (k, 2) array or list of x, y canvas points, in writing order) drawn on a
        ``width`` x ``height`` canvas -> the top-k (char, prob): the strokes themselves for a model
        that reads pen trajectories, else the image `data.pen.strokes_to_image` draws of them."""
        from kanjirec.data.pen import strokes_to_image

        strokes = [np.asarray(s, np.float64).reshape(-1, 2) for s in strokes]
        if self.reads_pen:
            if not strokes or any(len(s) == 0 for s in strokes):
                raise RecognizerError("strokes: expected at least one stroke, each with at least one point")
            probs = self.stroke_probabilities([strokes])
            best = np.argsort(-probs, axis=1, kind="stable")[0, : top_k or self.top_k]
            return [(self.classes[i], float(probs[0, i])) for i in best]
        return self.top(strokes_to_image(strokes, width, height, self.image_size)[None], top_k)[0]
