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
allocation; a zstd body may describe at most one Gaussian per compressed byte (+ ZSTD_SLACK)
and is streamed out no further than the length n implies, whatever its frame header claims;
codes are unpacked one channel at a time (no 8 bytes per bit expansion of the whole body); the
rows then go through the same finiteness and positive-diagonal checks as layout 1.

Options are arguments: `format.encode(splats, layout="quantized", bits=..., zstd=...)` or
`format.encode_quantized(splats, bits=..., zstd=...)`; the defaults are BITS and no zstd.
"""
from __future__ import annotations

import struct

import numpy as np

from .layouts import FormatError, Layout, read_bounded, register_layout

__all__ = ["BITS", "LAYOUT_ID", "check_bits", "payload_size"]

LAYOUT_ID = 2
BITS = (11, 11, 7, 7, 7, 8, 8, 8)
# a zstd body may describe at most one Gaussian per compressed byte (+ ZSTD_SLACK): no denser
# than a raw body at 1 bit a channel, so decoded rows stay within 32x the file; the writer stores
# the body raw whenever zstd would shrink it past that, so no file it writes is refused
ZSTD_SLACK = 64
_PRE = struct.Struct("<B8B16f")
_HALF_PI = np.pi / 2 - 1e-6  # keeps cos(theta) > 0 after float32 rounding of the range

def check_bits(bits) -> tuple[int, ...]:
    bits = tuple(int(b) for b in bits)
    if len(bits) != 8 or not all(1 <= b <= 16 for b in bits):
        raise ValueError(f"bits must be 8 integers in 1..16, got {bits}")
    return bits


def _zstd():
    try:
        import zstandard
    except ImportError:
        raise FormatError("zstd-compressed splats need the zstandard package "
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


def _pack(codes: np.ndarray, bits) -> bytes:
    planes = []
    for c, b in enumerate(bits):
        shifts = np.arange(b - 1, -1, -1, dtype=np.uint32)
        planes.append(((codes[:, c, None] >> shifts) & 1).astype(np.uint8).ravel())
    return np.packbits(np.concatenate(planes)).tobytes() if planes else b""


def _channel_codes(body, pos: int, n: int, b: int) -> np.ndarray:
    """The n b-bit big-endian codes starting at bit `pos` of body -> uint32 [n]."""
    first, last = pos // 8, (pos + n * b + 7) // 8
    bits = np.unpackbits(np.frombuffer(body, dtype=np.uint8, count=last - first, offset=first))
    bits = bits[pos % 8: pos % 8 + n * b].reshape(n, b)
    codes = np.zeros(n, dtype=np.uint32)
    for k in range(b):
        codes <<= 1
        codes |= bits[:, k]
    return codes


def _decode_body(body, n: int, bits, ranges: np.ndarray) -> np.ndarray:
    """Packed codes -> rows [n, 8] float32, one channel at a time (the inverse of _to_channels)."""
    out = np.empty((n, 8), dtype=np.float32)
    polar = {}
    pos = 0
    with np.errstate(over="ignore", invalid="ignore"):
        for c, b in enumerate(bits):
            lo, hi = ranges[c]
            ch = lo + _channel_codes(body, pos, n, b).astype(np.float64) / ((1 << b) - 1) * (hi - lo)
            pos += n * b
            if c in (3, 4):
                polar[c] = ch
            else:
                out[:, c] = np.exp(ch) if c == 2 else ch
        rho = np.exp(polar[3])
        out[:, 3] = rho * np.sin(polar[4])
        out[:, 4] = rho * np.cos(polar[4])
    return out


def _body_len(n: int, bits) -> int:
    return (n * sum(bits) + 7) // 8


def _encode(rows: np.ndarray, dtype_id: int, bits=BITS, zstd: bool = False) -> bytes:
    bits, use_zstd = check_bits(bits), bool(zstd)
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
        packed = _zstd().ZstdCompressor(level=19).compress(body)
        # stored raw where zstd does not shrink it (packed codes are near random: it mostly adds its
        # frame, +10 bytes at N=400; regression) or where the reader would refuse it as too dense
        use_zstd = len(packed) < len(body) and not _zstd_dense(n, len(packed))
        body = packed if use_zstd else body
    ranges = np.stack([lo, hi], 1).ravel().tolist()
    return _PRE.pack(1 if use_zstd else 0, *bits, *ranges) + body


def _decode(buf: memoryview, n: int, dtype_id: int) -> np.ndarray:
    if len(buf) < _PRE.size:
        raise FormatError(f"quantized payload too short ({len(buf)} < {_PRE.size} bytes)")
    vals = _PRE.unpack_from(buf, 0)
    flags, bits, ranges = vals[0], vals[1:9], np.array(vals[9:], dtype=np.float64).reshape(8, 2)
    if flags & ~1:
        raise FormatError(f"quantized payload: unknown flags {flags:#x}")
    if not all(1 <= b <= 16 for b in bits):
        raise FormatError(f"quantized payload: bit widths must be 1..16, got {list(bits)}")
    if not np.isfinite(ranges).all() or (ranges[:, 1] < ranges[:, 0]).any():
        raise FormatError("quantized payload: invalid channel ranges (non-finite or hi < lo)")
    body = buf[_PRE.size:]
    expect = _body_len(n, bits)
    if flags & 1:
        body = _unzstd(bytes(body), n, expect)
    if len(body) != expect:
        raise FormatError(f"quantized payload: body of {len(body)} bytes, {n} Gaussians at "
                              f"{sum(bits)} bits need {expect}")
    return _decode_body(body, n, bits, ranges)


def _zstd_dense(n: int, zbytes: int) -> bool:
    return n > zbytes + ZSTD_SLACK


def _unzstd(body: bytes, n: int, expect: int) -> bytes:
    """Stream a zstd body out, refusing before `expect` + 1 bytes whatever its frame claims."""
    if _zstd_dense(n, len(body)):
        raise FormatError(f"quantized payload: {len(body)} zstd bytes claim {n} Gaussians, over the "
                              f"limit of one Gaussian per compressed byte + {ZSTD_SLACK}")
    try:
        with _zstd().ZstdDecompressor().stream_reader(body) as reader:
            out = read_bounded(reader, expect + 1)
    except FormatError:
        raise
    except Exception as e:
        raise FormatError(f"quantized payload: zstd body does not decompress ({e})") from None
    if len(out) > expect:
        raise FormatError(f"quantized payload: zstd body expands to more than the {expect} bytes "
                              f"{n} Gaussians need")
    return out


register_layout(Layout(LAYOUT_ID, "quantized", _encode, _decode, lambda n, dtype_id: None, dtype_free=True))


def payload_size(n: int, bits=BITS) -> int:
    """Payload bytes of n Gaussians in layout 2 without zstd."""
    return _PRE.size + _body_len(n, bits)
