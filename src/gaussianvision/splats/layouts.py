"""The byte layouts of a .gsv payload: the registry, the float dtypes, and layout 1 (interleaved).

A layout turns [n, 8] float rows (x_n, y_n, l11, l21, l22, r, g, b) into payload bytes and back.
format.py (the file: header, count table, checks) looks layouts up here by id; quantized.py
registers layout 2. This module imports neither, so there is no import circle:
format -> quantized -> layouts, format -> layouts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .types import SplatsError

__all__ = ["FormatError", "DTYPES", "DTYPE_IDS", "Layout", "LAYOUTS", "LAYOUT_IDS", "register_layout",
           "bytes_per_gaussian", "read_bounded"]

DTYPES = {1: np.dtype("<f2"), 2: np.dtype("<f4")}
DTYPE_IDS = {"float16": 1, "float32": 2}


class FormatError(SplatsError):
    """A .gsv byte string or file is malformed."""


@dataclass(frozen=True)
class Layout:
    """How one layout turns [n, 8] float rows (x_n, y_n, l11, l21, l22, r, g, b) into bytes.

    encode(rows, dtype_id, **options): the layout's own options (e.g. quantized: bits, zstd).
    payload_size(n, dtype_id) gives the exact payload length, or None when the layout is
    variable-length; then decode must itself refuse to produce more than n rows.
    """
    id: int
    name: str
    encode: Callable[..., bytes]  # (rows, dtype_id, **options) -> payload
    decode: Callable[[memoryview, int, int], np.ndarray]
    payload_size: Callable[[int, int], int | None]
    dtype_free: bool = False


LAYOUTS: dict[int, Layout] = {}
LAYOUT_IDS: dict[str, int] = {}


def register_layout(layout: Layout) -> None:
    if layout.id in LAYOUTS and LAYOUTS[layout.id].name != layout.name:
        raise ValueError(f"layout id {layout.id} already belongs to {LAYOUTS[layout.id].name!r}")
    LAYOUTS[layout.id] = layout
    LAYOUT_IDS[layout.name] = layout.id


def _interleaved_encode(rows: np.ndarray, dtype_id: int, **options) -> bytes:
    if options:
        raise FormatError(f"layout 'interleaved' takes no options, got {sorted(options)}")
    return np.ascontiguousarray(rows, dtype=DTYPES[dtype_id]).tobytes()


def _interleaved_decode(buf: memoryview, n: int, dtype_id: int) -> np.ndarray:
    return np.frombuffer(buf, dtype=DTYPES[dtype_id], count=8 * n).reshape(n, 8).astype(np.float32)


register_layout(Layout(
    1, "interleaved", _interleaved_encode, _interleaved_decode,
    lambda n, dtype_id: 8 * n * DTYPES[dtype_id].itemsize,
))


def bytes_per_gaussian(layout: str = "interleaved", dtype: str = "float16") -> float | None:
    size = LAYOUTS[LAYOUT_IDS[layout]].payload_size(1000, DTYPE_IDS[dtype])
    return None if size is None else size / 1000


def read_bounded(f, limit: int) -> bytes:
    """At most `limit` bytes from the file-like f, read in chunks of 1 MiB (memory follows the data)."""
    parts, got = [], 0
    while got < limit:
        chunk = f.read(min(limit - got, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)
