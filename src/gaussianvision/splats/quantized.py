"""Layout 2 ("quantized"): a compact, lossy byte layout for splats.

Each Gaussian's row (x_n, y_n, l11, l21, l22, r, g, b) is first mapped to 8 channels that
quantize well:

    x_n, y_n                  normalized means (as in layout 1)
    log l11                   log scale: relative precision is what matters for a footprint
    log rho, theta            the second Cholesky row in polar form, rho = hypot(l21, l22),
                              theta = atan2(l21, l22) in (-pi/2, pi/2); decoding gives
                              l22 = rho cos(theta) > 0, so the factor stays valid
    r, g, b                   colors

then every channel is quantized uniformly between its per-file minimum and maximum with a fixed
number of bits (default BITS: 11, 11, 7, 7, 7, 8, 8, 8 = 67 bits, 8.4 bytes per Gaussian against
16 for float16), and the codes are bit-packed channel after channel. Optionally the packed
stream is zstd-compressed (needs the `zstandard` package to write and read).

Payload of layout 2:

    offset size  field
    0      1     flags: bit 0 = zstd-compressed body; other bits must be 0
    1      8     bits per channel (each 1..16)
    9      64    8 x (lo, hi) float32: the quantization range of each channel
    73     ...   body: ceil(n * sum(bits) / 8) bytes of packed codes (zstd-compressed if flagged)

Decoding is bounded: the body length is checked against n and the bit widths before any
allocation, a zstd body may not claim to expand more than MAX_ZSTD_RATIO times, and the
rows then go through the same finiteness and positive-diagonal checks as layout 1.

Use `encode_quantized(splats, bits=..., zstd=...)` to choose options; `format.encode(splats,
layout="quantized")` uses the defaults (no zstd).
"""
from __future__ import annotations

import contextvars
import struct
from contextlib import contextmanager

import numpy as np

from . import format as fmt
from .types import Splats

__all__ = ["BITS", "LAYOUT_ID", "encode_quantized", "quantized_size", "quantize_options"]

LAYOUT_ID = 2
BITS = (11, 11, 7, 7, 7, 8, 8, 8)
MAX_ZSTD_RATIO = 64
_PRE = struct.Struct("<B8B16f")
_HALF_PI = np.pi / 2 - 1e-6  # keeps cos(theta) > 0 after float32 rounding of the range

_options: contextvars.ContextVar[tuple[tuple[int, ...], bool]] = contextvars.ContextVar(
    "gsv_quantized_options", default=(BITS, False))


@contextmanager
def quantize_options(bits=BITS, zstd: bool = False):
    """Within this block, `format.encode(..., layout="quantized")` uses these options."""
    bits = tuple(int(b) for b in bits)
    if len(bits) != 8 or not all(1 <= b <= 16 for b in bits):
        raise ValueError(f"bits must be 8 integers in 1..16, got {bits}")
    if zstd:
        _zstd()  # fail early with the install hint
    token = _options.set((bits, bool(zstd)))
    try:
        yield
    finally:
        _options.reset(token)


def _zstd():
    try:
        import zstandard
    except ImportError:
        raise fmt.FormatError("zstd-compressed splats need the zstandard package "
                              "(pip install 'gaussianvision[data]')") from None
    return zstandard


def _to_channels(rows: np.ndarray) -> np.ndarray:
    out = np.empty_like(rows, dtype=np.float64)
    out[:, 0:2] = rows[:, 0:2]
    out[:, 2] = np.log(rows[:, 2])
    out[:, 3] = np.log(np.hypot(rows[:, 3], rows[:, 4]))
    out[:, 4] = np.clip(np.arctan2(rows[:, 3], rows[:, 4]), -_HALF_PI, _HALF_PI)
    out[:, 5:8] = rows[:, 5:8]
    return out


def _from_channels(ch: np.ndarray) -> np.ndarray:
    out = np.empty_like(ch, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        rho = np.exp(ch[:, 3])
        out[:, 0:2] = ch[:, 0:2]
        out[:, 2] = np.exp(ch[:, 2])
        out[:, 3] = rho * np.sin(ch[:, 4])
        out[:, 4] = rho * np.cos(ch[:, 4])
        out[:, 5:8] = ch[:, 5:8]
    return out


def _pack(codes: np.ndarray, bits) -> bytes:
    planes = []
    for c, b in enumerate(bits):
        shifts = np.arange(b - 1, -1, -1, dtype=np.uint32)
        planes.append(((codes[:, c, None] >> shifts) & 1).astype(np.uint8).ravel())
    return np.packbits(np.concatenate(planes)).tobytes() if planes else b""


def _unpack(body: bytes, n: int, bits) -> np.ndarray:
    flat = np.unpackbits(np.frombuffer(body, dtype=np.uint8))
    out = np.empty((n, 8), dtype=np.uint32)
    pos = 0
    padded = np.zeros((n, 16), dtype=np.uint8)
    for c, b in enumerate(bits):
        # right-align the b bits of each code in 16 and let packbits assemble big-endian uint16s
        padded[:, : 16 - b] = 0
        padded[:, 16 - b:] = flat[pos: pos + n * b].reshape(n, b)
        out[:, c] = np.packbits(padded.ravel()).view(">u2")  # rows of 16 bits: flat packing is row packing
        pos += n * b
    return out


def _body_len(n: int, bits) -> int:
    return (n * sum(bits) + 7) // 8


def _encode(rows: np.ndarray, dtype_id: int) -> bytes:
    bits, use_zstd = _options.get()
    ch = _to_channels(rows)
    n = ch.shape[0]
    if n:
        lo = ch.min(0).astype(np.float32)
        hi = ch.max(0).astype(np.float32)
        # float32 rounding may move the range inside the data: widen by one ulp where needed
        lo = np.where(lo > ch.min(0), np.nextafter(lo, np.float32(-np.inf)), lo)
        hi = np.where(hi < ch.max(0), np.nextafter(hi, np.float32(np.inf)), hi)
    else:
        lo = hi = np.zeros(8, dtype=np.float32)
    levels = np.array([(1 << b) - 1 for b in bits], dtype=np.float64)
    span = (hi.astype(np.float64) - lo)
    scale = np.where(span > 0, levels / np.where(span > 0, span, 1.0), 0.0)
    codes = np.clip(np.rint((ch - lo) * scale), 0, levels).astype(np.uint32)
    body = _pack(codes, bits)
    if use_zstd:
        body = _zstd().ZstdCompressor(level=19).compress(body)
    ranges = np.stack([lo, hi], 1).ravel().tolist()
    return _PRE.pack(1 if use_zstd else 0, *bits, *ranges) + body


def _decode(buf: memoryview, n: int, dtype_id: int) -> np.ndarray:
    if len(buf) < _PRE.size:
        raise fmt.FormatError(f"quantized payload too short ({len(buf)} < {_PRE.size} bytes)")
    vals = _PRE.unpack_from(buf, 0)
    flags, bits, ranges = vals[0], vals[1:9], np.array(vals[9:], dtype=np.float64).reshape(8, 2)
    if flags & ~1:
        raise fmt.FormatError(f"quantized payload: unknown flags {flags:#x}")
    if not all(1 <= b <= 16 for b in bits):
        raise fmt.FormatError(f"quantized payload: bit widths must be 1..16, got {list(bits)}")
    if not np.isfinite(ranges).all() or (ranges[:, 1] < ranges[:, 0]).any():
        raise fmt.FormatError("quantized payload: invalid channel ranges (non-finite or hi < lo)")
    body = bytes(buf[_PRE.size:])
    expect = _body_len(n, bits)
    if flags & 1:
        if expect > MAX_ZSTD_RATIO * max(len(body), 1) + 1024:
            raise fmt.FormatError(f"quantized payload: {len(body)} zstd bytes cannot hold {n} Gaussians "
                                  f"({expect} bytes) within ratio {MAX_ZSTD_RATIO}")
        try:
            body = _zstd().ZstdDecompressor().decompress(body, max_output_size=expect)
        except fmt.FormatError:
            raise
        except Exception as e:
            raise fmt.FormatError(f"quantized payload: zstd body does not decompress ({e})") from None
    if len(body) != expect:
        raise fmt.FormatError(f"quantized payload: body of {len(body)} bytes, {n} Gaussians at "
                              f"{sum(bits)} bits need {expect}")
    codes = _unpack(body, n, bits).astype(np.float64)
    levels = np.array([(1 << b) - 1 for b in bits], dtype=np.float64)
    ch = ranges[:, 0] + codes / levels * (ranges[:, 1] - ranges[:, 0])
    return _from_channels(ch)


fmt.register_layout(fmt.Layout(LAYOUT_ID, "quantized", _encode, _decode, lambda n, dtype_id: None,
                               dtype_free=True))


def encode_quantized(splats: Splats, bits=BITS, zstd: bool = False) -> bytes:
    """Splats -> .gsv bytes in layout 2 with the given bit widths (8 channels) and compression."""
    with quantize_options(bits, zstd):
        return fmt.encode(splats, layout="quantized")


def quantized_size(n: int, bits=BITS, n_images: int = 1) -> int:
    """File bytes of n Gaussians in layout 2 without zstd (header + table + payload)."""
    return fmt.HEADER_SIZE + (4 * n_images if n_images > 1 else 0) + _PRE.size + _body_len(n, bits)
