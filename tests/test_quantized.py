import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import peak_memory as _peak, random_splats
from gaussianvision.raster import render
from gaussianvision.splats import FormatError, Splats, decode, encode, read_header
from gaussianvision.splats import format as fmt
from gaussianvision.splats.format import encode_quantized, quantized_size
from gaussianvision.splats.quantized import BITS

PRE = fmt.HEADER_SIZE  # payload starts here for single-image files


def test_header_names_layout_2_and_sizes_beat_float16_by_1_8x():
    for n in (400, 900, 3136):
        s = random_splats(1, n, 224, 224, seed=n)
        q = encode_quantized(s)
        h = read_header(q)
        assert (h.layout, h.dtype) == (2, 0)
        assert len(q) == quantized_size(n)
        assert len(encode(s)) / len(q) >= 1.8, n  # the target, whole file with headers


def test_roundtrip_error_is_within_half_a_quantization_step():
    s = random_splats(1, 500, 64, 80, seed=1, margin=4)
    t = decode(encode_quantized(s))
    norm = lambda m: m / torch.tensor([80.0, 64.0]) * 2 - 1  # noqa: E731
    span_m = norm(s.means).amax(1) - norm(s.means).amin(1)
    step_m = span_m / (2 ** BITS[0] - 1)
    assert ((norm(t.means) - norm(s.means)).abs() <= step_m / 2 + 1e-6).all()
    step_c = (s.colors.amax(1) - s.colors.amin(1)) / 255
    assert ((t.colors - s.colors).abs() <= step_c / 2 + 1e-6).all()
    # log-scale factor: relative error of l11 within half a step of the log range
    logl = s.chol[..., 0].log()
    step_l = (logl.max() - logl.min()) / (2 ** BITS[2] - 1)
    assert ((t.chol[..., 0].log() - logl).abs() <= step_l / 2 + 1e-5).all()
    assert (t.chol[..., [0, 2]] > 0).all()


def test_rendered_error_is_small():
    s = random_splats(1, 300, 48, 48, seed=2)
    a = render(s, backend="reference")
    b = render(decode(encode_quantized(s)), backend="reference")
    mse = ((a - b) ** 2).mean()
    assert 10 * torch.log10(1.0 / mse) > 40


def test_more_bits_is_more_exact_and_batch_counts_survive():
    s = Splats.stack([random_splats(1, 7, 32, 32, seed=3), random_splats(1, 2, 32, 32, seed=4)])
    coarse = decode(encode_quantized(s, bits=(6,) * 8))
    fine = decode(encode_quantized(s, bits=(16,) * 8))
    assert fine.counts.tolist() == [7, 2]
    m = s.mask()
    e_fine = (fine.means[m] - s.means[m]).abs().max()
    e_coarse = (coarse.means[m] - s.means[m]).abs().max()
    assert e_fine < 1e-3 < e_coarse


def test_zstd_decodes_to_the_same_values():
    s = random_splats(1, 200, 32, 32, seed=5)
    a, b = decode(encode_quantized(s)), decode(encode_quantized(s, zstd=True))
    assert torch.equal(a.means, b.means) and torch.equal(a.chol, b.chol) and torch.equal(a.colors, b.colors)
    assert decode(encode(s, layout="quantized")).colors.equal(a.colors)  # default options via format.encode


def test_zero_and_one_gaussian():
    for n in (0, 1):
        s = random_splats(1, n, 16, 16)
        t = decode(encode_quantized(s))
        assert t.max_gaussians == n
        if n:
            assert torch.allclose(t.means, s.means, atol=1e-4) and torch.allclose(t.colors, s.colors, atol=1e-6)


def _payload(d: bytes, fmtc: str, offset: int, value) -> bytes:
    b = bytearray(d)
    struct.pack_into(fmtc, b, PRE + offset, value)
    return bytes(b)


BASE = encode_quantized(random_splats(1, 20, 16, 16, seed=6))


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: _payload(d, "<B", 0, 4), "unknown flags"),
    (lambda d: _payload(d, "<B", 1, 0), "bit widths"),
    (lambda d: _payload(d, "<B", 3, 17), "bit widths"),
    (lambda d: _payload(d, "<f", 9, float("nan")), "invalid channel ranges"),
    (lambda d: _payload(d, "<f", 9, 1e9), "invalid channel ranges"),  # lo > hi
    (lambda d: _payload(d, "<B", 8, 16), "body of"),  # more bits than the body holds
    (lambda d: _payload(d, "<f", 9 + 4 * 9, 3.0), "non-positive Cholesky"),  # theta range past pi/2
    (lambda d: _payload(d, "<f", 9 + 4 * 5, 200.0), "non-finite"),  # exp overflow of log l11
    (lambda d: _payload(d, "<B", 0, 1), "zstd"),  # flagged compressed but is not
    (lambda d: d[: PRE + 20], "too short|header and payload"),
])
def test_reader_rejects(mutate, msg):
    with pytest.raises(FormatError, match=msg):
        decode(mutate(BASE), name="q.gsv")


def test_zstd_bomb_is_refused_before_decompressing():
    import zstandard
    n = 1 << 20
    body = zstandard.ZstdCompressor().compress(b"\0" * ((n * sum(BITS) + 7) // 8))
    payload = struct.pack("<B8B16f", 1, *BITS, *([0.0, 1.0] * 8)) + body
    head = struct.pack("<4sHHHHIIIII", b"GSVF", 1, 2, 0, 0, 8, 8, 1, n, len(payload))
    with pytest.raises(FormatError, match="limit"):
        decode(head + payload)




def _zstd_file(n: int, raw: bytes) -> bytes:
    import zstandard
    body = zstandard.ZstdCompressor().compress(raw)
    payload = struct.pack("<B8B16f", 1, *BITS, *([0.0, 1.0] * 8)) + body
    return struct.pack("<4sHHHHIIIII", b"GSVF", 1, 2, 0, 0, 8, 8, 1, n, len(payload)) + payload


def test_zstd_frame_larger_than_the_header_says_is_refused_without_allocating_it():
    data = _zstd_file(1000, bytes(64 << 20))  # 2 KB file whose frame claims 64 MB
    err, peak = _peak(lambda: decode(data, name="z.gsv"))
    assert isinstance(err, FormatError) and "z.gsv" in str(err) and "more than" in str(err), err
    assert peak < 4 << 20


def test_zstd_body_denser_than_one_gaussian_per_byte_is_refused():
    n = 100_000
    raw = bytes(np.where(np.arange(quantized_size(n) - PRE - 73) % 8 == 0, 5, 0).astype(np.uint8))
    data = _zstd_file(n, raw)  # ~13x compression: 100,000 Gaussians from ~60 KB
    err, peak = _peak(lambda: decode(data, name="dense.gsv"))
    assert isinstance(err, FormatError) and "limit" in str(err) and "dense.gsv" in str(err), err
    assert peak < 1 << 20


def test_writer_never_writes_a_zstd_file_the_reader_refuses():
    s = random_splats(1, 5000, 32, 32, seed=2)
    s.means[:] = s.means[0, 0]
    s.chol[:] = s.chol[0, 0]
    s.colors[:] = s.colors[0, 0]  # identical Gaussians: zstd would shrink the body ~1000x
    z, raw = encode_quantized(s, zstd=True), encode_quantized(s)
    assert z == raw  # stored without zstd rather than past the reader's limit
    t = random_splats(1, 3000, 32, 32, seed=3)
    assert decode(encode_quantized(t, zstd=True)).means.equal(decode(encode_quantized(t)).means)


def test_zstd_is_used_only_where_it_shrinks_the_body():
    """Regression: packed codes of real fits barely compress, and zstd's frame made every file larger
    (N=400 photos: 3,465 against 3,455 bytes); such a body is stored raw, flag off."""
    s = random_splats(1, 400, 64, 64, seed=4)
    raw, z = encode_quantized(s), encode_quantized(s, zstd=True)
    assert len(z) <= len(raw)
    assert z == raw or z[32] & 1  # raw (flag off), or compressed and smaller
    flat = random_splats(1, 400, 64, 64, seed=4)
    flat.chol[:] = flat.chol[0, 0]
    flat.colors[:] = flat.colors[0, 0]  # constant channels: zstd pays off (3,455 -> 1,256 bytes)
    z = encode_quantized(flat, zstd=True)
    assert len(z) < len(encode_quantized(flat)) and z[32] & 1
    assert decode(z).means.equal(decode(encode_quantized(flat)).means)


def test_quantized_decode_memory_is_a_small_multiple_of_the_file():
    data = encode_quantized(random_splats(1, 100_000, 224, 224, seed=1))
    s, peak = _peak(lambda: decode(data))
    assert s.max_gaussians == 100_000 and peak < 10 * len(data)


VALID_Z = encode_quantized(random_splats(1, 12, 16, 16, seed=7), zstd=True)
VALID_B = encode_quantized(Splats.stack([random_splats(1, 3, 16, 16, seed=8), random_splats(1, 5, 16, 16, seed=9)]))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([BASE, VALID_Z, VALID_B]),
       st.lists(st.tuples(st.integers(0, 260), st.integers(0, 255)), max_size=6), st.integers(-40, 40))
def test_fuzz_mutated_files_raise_only_format_errors(base, flips, cut):
    d = bytearray(base)
    for pos, val in flips:
        if pos < len(d):
            d[pos] = val
    if cut < 0:
        d = d[:cut]
    else:
        d = d + bytes(cut)
    try:
        s = decode(bytes(d))
    except FormatError:
        return
    assert s.max_gaussians <= 1 << 20 and np.isfinite(s.means.numpy()).all()


def test_layout_options_are_arguments_not_context():
    """bits and zstd go to format.encode as arguments (no context variable); the interleaved layout
    refuses options it does not have; bad bit widths are one clear error."""
    s = random_splats(b=2, n=9, h=12, w=10)
    bits = (10, 10, 6, 6, 6, 7, 7, 7)
    a = encode(s, layout="quantized", bits=bits)
    assert a == encode_quantized(s, bits=bits)
    assert a != encode(s, layout="quantized")  # the defaults, not a leftover setting
    assert fmt.read_header(a).layout == 2 and len(a) == quantized_size(18, bits, n_images=2)
    with pytest.raises(FormatError, match="takes no options"):
        encode(s, layout="interleaved", bits=bits)
    with pytest.raises(ValueError, match="bits must be 8 integers"):
        encode(s, layout="quantized", bits=(8, 8))


def test_a_channel_range_that_puts_means_out_of_float32_is_a_format_error():
    """Found by the fuzz test: a flipped byte in the quantization range of x gave means of -2.6e38
    (finite in the rows, -inf once in pixels). Means over MAX_NORM_MEAN image sizes out are refused,
    reading and writing."""
    d = bytearray(BASE)
    d[44] = 254
    with pytest.raises(FormatError, match="image sizes outside the image"):
        decode(bytes(d))
    far = random_splats(1, 3, 16, 16)
    far.means[0, 0, 0] = 1e6
    with pytest.raises(FormatError, match="image sizes outside the image"):
        encode(far, dtype="float32")
