"""The small inference API: ``Recognizer.load("model.onnx")(image) -> [(char, prob), ...]``.

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
4. the model's feature step named in the ONNX metadata: ``images`` -> float in [0, 1];
   ``strokes:<extractor>:<max>`` -> ``data.sequences.extract_strokes`` outside the graph.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from kanjirec.errors import KanjirecError

META_PREFIX = "kanjirec."
# Images are reduced to at most this many times the model's input side before any other work:
# enough to crop a character filling an eighth of the frame at full detail; normalising at full
# resolution pooled with a kernel of ~150 pixels on a 9000-pixel image and took minutes.
WORKING_SIDE_FACTOR = 8


class RecognizerError(KanjirecError):
    """An ONNX file lacks kanjirec metadata, or an image array has an unusable shape."""


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
    """Top-k character recognition with an exported ONNX model."""

    def __init__(
        self,
        session,
        classes: list[str],
        preprocessing: str,
        image_size: int,
        top_k: int = 5,
        *,
        path: Path | None = None,
        threads: int | None = None,
    ):
        self.session = session
        self.classes = classes
        self.preprocessing = preprocessing
        self.image_size = image_size
        self.top_k = top_k
        self.path = path
        self.threads = threads
        self._input_names = [i.name for i in session.get_inputs()]

    @classmethod
    def load(cls, path: str | Path, top_k: int = 5, threads: int | None = None) -> Recognizer:
        """``threads``: ONNX Runtime's intra-op threads (1 for single-thread latency); None leaves
        its default, one per physical core."""
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise RecognizerError(f"{path}: no such ONNX file")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except (
            ort_errors.Fail,
            ort_errors.InvalidArgument,
            ort_errors.InvalidGraph,
            ort_errors.InvalidProtobuf,
        ) as e:
            raise RecognizerError(f"{path}: not a loadable ONNX model ({e})") from e
        meta = session.get_modelmeta().custom_metadata_map
        missing = [k for k in ("classes", "preprocessing", "image_size") if META_PREFIX + k not in meta]
        if missing:
            raise RecognizerError(
                f"{path}: not a kanjirec export, metadata lacks {', '.join(META_PREFIX + k for k in missing)}"
            )
        try:
            classes = json.loads(meta[META_PREFIX + "classes"])
            image_size = int(meta[META_PREFIX + "image_size"])
        except ValueError as e:  # JSONDecodeError is a ValueError
            raise RecognizerError(f"{path}: unreadable kanjirec metadata ({e})") from e
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or image_size < 1:
            raise RecognizerError(f"{path}: kanjirec metadata holds no class list or image size")
        return cls(
            session,
            classes,
            meta[META_PREFIX + "preprocessing"],
            image_size,
            top_k,
            path=path,
            threads=threads,
        )

    def graph_inputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(B, S, S) uint8 images in the convention -> the graph's named inputs.

        The preprocessing names one feature step, or (an ensemble) several joined by ",", whose
        outputs fill the graph inputs in order."""
        arrays = [a for kind in self.preprocessing.split(",") for a in self._features(kind, images)]
        if len(arrays) != len(self._input_names):
            raise RecognizerError(
                f"{self.path}: preprocessing {self.preprocessing!r} makes {len(arrays)} inputs, "
                f"the graph takes {len(self._input_names)} ({', '.join(self._input_names)})"
            )
        return dict(zip(self._input_names, arrays, strict=True))

    def _features(self, kind: str, images: np.ndarray) -> list[np.ndarray]:
        if kind == "images":
            return [images[:, None].astype(np.float32) / 255.0]
        parts = kind.split(":")
        if len(parts) != 3 or parts[0] != "strokes" or not parts[2].isdigit():
            raise RecognizerError(
                f"{self.path or 'ONNX model'}: unknown preprocessing {kind!r} in its metadata "
                "(expected 'images' or 'strokes:<extractor>:<max strokes>')"
            )
        from kanjirec.data.sequences import extract_strokes

        return list(extract_strokes(images, parts[1], int(parts[2])))

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(B, S, S) uint8 images already in the convention -> (B, C) logits."""
        return self.session.run(None, self.graph_inputs(images))[0]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        logits = self.logits(images)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def __call__(
        self, image: str | Path | Image.Image | np.ndarray, top_k: int | None = None
    ) -> list[tuple[str, float]]:
        probs = self.probabilities(to_convention(image, self.image_size)[None])[0]
        best = np.argsort(-probs)[: top_k or self.top_k]
        return [(self.classes[i], float(probs[i])) for i in best]
