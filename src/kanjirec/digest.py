"""SHA-256 content hashes: of bytes, of files, and of nested states holding tensors or arrays.

`state_sha256` hashes what a state *contains*, not how a library serialised it: every tensor
or array by its dtype, shape and raw bytes, every other value by a tagged, length-prefixed
encoding, in container order. So the hash of a checkpoint's state does not depend on torch's
zip layout or pickle protocol, and a state read back from disk hashes to the value stored
with it unless a byte of its content changed. The module imports no torch: it recognises
tensors only when torch is already loaded, so the ONNX side can use it too.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_CHUNK = 1 << 20


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex SHA-256 of a bytes-like object."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def state_sha256(state: Any) -> str:
    """Hex SHA-256 of a nested state: dicts, lists, tuples, str, bytes, numbers, None, tensors, arrays."""
    h = hashlib.sha256()
    for part in _encode(state):
        h.update(part)
    return h.hexdigest()


def _tagged(tag: bytes, payload: bytes) -> bytes:
    return tag + len(payload).to_bytes(8, "little") + payload


def _encode(obj: Any) -> Iterator[bytes | memoryview]:
    # bool before int (bool is an int); every item is tagged and length-prefixed so that no two
    # different states share an encoding.
    torch = sys.modules.get("torch")
    if obj is None:
        yield b"N"
    elif isinstance(obj, bool):
        yield b"T" if obj else b"F"
    elif isinstance(obj, int):
        yield _tagged(b"i", str(obj).encode())
    elif isinstance(obj, float):
        yield _tagged(b"f", obj.hex().encode())
    elif isinstance(obj, str):
        yield _tagged(b"s", obj.encode("utf-8", "surrogatepass"))
    elif isinstance(obj, (bytes, bytearray)):
        yield _tagged(b"b", bytes(obj))
    elif isinstance(obj, dict):
        yield _tagged(b"d", str(len(obj)).encode())
        for key, value in obj.items():
            yield from _encode(key)
            yield from _encode(value)
    elif isinstance(obj, (list, tuple)):
        yield _tagged(b"l" if isinstance(obj, list) else b"t", str(len(obj)).encode())
        for value in obj:
            yield from _encode(value)
    elif torch is not None and isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        yield _tagged(b"X", f"{t.dtype}{tuple(t.shape)}".encode())  # fixes the byte count that follows
        yield memoryview(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, np.ndarray) and obj.dtype != object:
        a = np.ascontiguousarray(obj)
        yield _tagged(b"A", f"{a.dtype.str}{a.shape}".encode())
        yield memoryview(a.reshape(-1).view(np.uint8))
    elif isinstance(obj, np.generic):
        yield from _encode(obj.item())
    elif torch is not None and isinstance(obj, (torch.dtype, torch.device)):
        yield _tagged(b"o", repr(obj).encode())
    else:
        raise TypeError(f"cannot hash a value of type {type(obj).__name__} in a state")
