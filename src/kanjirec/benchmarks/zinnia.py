"""zinnia, an SVM handwriting recogniser, through its C API (ctypes), for `kanjirec bench peers`.

zinnia (Taku Kudo) reads pen strokes as integer points on a width x height canvas and ranks the
characters of a model file. The model used here is the Tegaki project's Japanese one; both come from
Debian (``scripts/setup.sh`` installs them): ``libzinnia0`` (the library) and
``tegaki-zinnia-japanese`` (``handwriting-ja.model``). Nothing of zinnia is imported by the rest of
kanjirec.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kanjirec.errors import KanjirecError

LIBRARY = "libzinnia.so.0"  # Debian libzinnia0; the unversioned name needs libzinnia-dev
TEGAKI_JA_MODEL = Path("/usr/share/tegaki/models/zinnia/handwriting-ja.model")
_INSTALL = "install libzinnia0 and tegaki-zinnia-japanese (apt-get install, or scripts/setup.sh)"

_P = ctypes.c_void_p
_SIGNATURES = {
    "zinnia_recognizer_new": (_P, []),
    "zinnia_recognizer_destroy": (None, [_P]),
    "zinnia_recognizer_open": (ctypes.c_int, [_P, ctypes.c_char_p]),
    "zinnia_recognizer_strerror": (ctypes.c_char_p, [_P]),
    "zinnia_recognizer_size": (ctypes.c_size_t, [_P]),
    "zinnia_recognizer_value": (ctypes.c_char_p, [_P, ctypes.c_size_t]),
    "zinnia_recognizer_classify": (_P, [_P, _P, ctypes.c_size_t]),
    "zinnia_character_new": (_P, []),
    "zinnia_character_destroy": (None, [_P]),
    "zinnia_character_clear": (None, [_P]),
    "zinnia_character_set_width": (None, [_P, ctypes.c_size_t]),
    "zinnia_character_set_height": (None, [_P, ctypes.c_size_t]),
    "zinnia_character_add": (ctypes.c_int, [_P, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]),
    "zinnia_result_size": (ctypes.c_size_t, [_P]),
    "zinnia_result_value": (ctypes.c_char_p, [_P, ctypes.c_size_t]),
    "zinnia_result_score": (ctypes.c_float, [_P, ctypes.c_size_t]),
    "zinnia_result_destroy": (None, [_P]),
}


class ZinniaError(KanjirecError):
    """zinnia or its model is missing or unreadable, or a drawing it cannot take."""


def _library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBRARY)
    except OSError as e:
        raise ZinniaError(f"cannot load zinnia's library {LIBRARY} ({e}): {_INSTALL}") from e
    for name, (restype, argtypes) in _SIGNATURES.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


class Zinnia:
    """A zinnia recogniser with one model open: ``Zinnia()(strokes, width, height) -> [(char, score)]``."""

    def __init__(self, model: str | Path = TEGAKI_JA_MODEL):
        self.model = Path(model)
        if not self.model.is_file():
            raise ZinniaError(f"zinnia model {self.model} not found: {_INSTALL}")
        self._lib = _library()
        self._recognizer = self._lib.zinnia_recognizer_new()
        if not self._lib.zinnia_recognizer_open(self._recognizer, str(self.model).encode()):
            reason = self._lib.zinnia_recognizer_strerror(self._recognizer).decode(errors="replace")
            self._lib.zinnia_recognizer_destroy(self._recognizer)
            raise ZinniaError(f"zinnia cannot open the model {self.model}: {reason}")
        self._character = self._lib.zinnia_character_new()

    @property
    def labels(self) -> list[str]:
        """The characters the model can answer."""
        n = self._lib.zinnia_recognizer_size(self._recognizer)
        return [self._lib.zinnia_recognizer_value(self._recognizer, i).decode() for i in range(n)]

    def __call__(
        self, strokes: Sequence[np.ndarray], width: int, height: int, top_k: int = 10
    ) -> list[tuple[str, float]]:
        """Strokes (each (k, 2) x, y in canvas units, in writing order; rounded to whole units, as
        zinnia stores them) on a ``width`` x ``height`` canvas -> the top-k (char, SVM score)."""
        if width < 1 or height < 1:
            raise ZinniaError(f"the canvas must be at least 1 x 1, got {width} x {height}")
        if not strokes or any(len(s) == 0 for s in strokes):
            raise ZinniaError("expected at least one stroke, each with at least one point")
        lib, character = self._lib, self._character
        lib.zinnia_character_clear(character)
        lib.zinnia_character_set_width(character, int(width))
        lib.zinnia_character_set_height(character, int(height))
        for i, stroke in enumerate(strokes):
            for x, y in np.rint(np.asarray(stroke, np.float64).reshape(-1, 2)).astype(int).tolist():
                if not lib.zinnia_character_add(character, i, x, y):
                    raise ZinniaError(f"zinnia refused point ({x}, {y}) of stroke {i}")
        result = lib.zinnia_recognizer_classify(self._recognizer, character, top_k)
        if not result:
            reason = lib.zinnia_recognizer_strerror(self._recognizer).decode(errors="replace")
            raise ZinniaError(f"zinnia could not classify the drawing: {reason}")
        try:
            return [
                (lib.zinnia_result_value(result, i).decode(), float(lib.zinnia_result_score(result, i)))
                for i in range(lib.zinnia_result_size(result))
            ]
        finally:
            lib.zinnia_result_destroy(result)

    def close(self) -> None:
        if self._recognizer:
            self._lib.zinnia_character_destroy(self._character)
            self._lib.zinnia_recognizer_destroy(self._recognizer)
            self._recognizer = self._character = None

    def __enter__(self) -> Zinnia:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
