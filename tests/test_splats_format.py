import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import peak_memory as _peak, random_splats
from gaussianvision.splats import FormatError, Splats, decode, encode, load, save
from gaussianvision.splats import format as fmt

GOLDEN = Path(__file__).parent / "data" / "golden_v1.gsv"


def f16_exact_splats(b=1, n=7, h=32, w=48, seed=3):
    """Splats whose stored (normalized) values are exactly representable in float16."""
    s = random_splats(b, n, h, w, seed=seed, dtype=torch.float64)
    norm = (s.means / torch.tensor([w, h], dtype=torch.float64) * 2 - 1).half().double()
    s.means = ((norm + 1) / 2 * torch.tensor([w, h], dtype=torch.float64)).float()
    s.chol = s.chol.half().float()
    s.colors = s.colors.half().float()
    return s


def golden_splats():
    s = f16_exact_splats(b=1, n=3, h=8, w=8, seed=11)
    return s


def test_roundtrip_exact():
    s = f16_exact_splats()
    t = decode(encode(s))
    assert (t.height, t.width) == (s.height, s.width)
    assert torch.equal(t.means, s.means) and torch.equal(t.chol, s.chol) and torch.equal(t.colors, s.colors)


def test_roundtrip_batch_with_counts():
    s = Splats.stack([f16_exact_splats(1, 4, seed=1), f16_exact_splats(1, 9, seed=2), f16_exact_splats(1, 1, seed=4)])
    s.counts[1] = 6  # drop the last three Gaussians of image 1
    data = encode(s)
    assert len(data) == fmt.HEADER_SIZE + 4 * 3 + 16 * (4 + 6 + 1)
    t = decode(data)
    assert t.counts.tolist() == [4, 6, 1]
    m = s.mask()
    assert torch.equal(t.means[t.mask()], s.means[m]) and torch.equal(t.colors[t.mask()], s.colors[m])


def test_float32_dtype_roundtrip_exact_for_any_value():
    s = random_splats(1, 5, 30, 30, seed=5)
    t = decode(encode(s, dtype="float32"))
    assert torch.allclose(t.means, s.means, atol=1e-5) and torch.equal(t.chol, s.chol)


def test_sixteen_bytes_per_gaussian_and_ratio():
    s = random_splats(1, 400, 224, 224)
    data = encode(s)
    payload = len(data) - fmt.HEADER_SIZE
    assert payload == 400 * 16
    assert round(224 * 224 * 3 / payload, 2) == 23.52
    assert 224 * 224 * 3 / len(data) == pytest.approx(23.40, abs=0.01)
    for n, ratio in ((3136, 3.00), (1600, 5.88), (900, 10.45)):
        assert round(150528 / (16 * n), 2) == ratio


def test_golden_file_pins_the_bytes():
    data = encode(golden_splats())
    # the golden file was written once and committed: a change to the bytes is a format change
    assert data == GOLDEN.read_bytes()
    assert GOLDEN.read_bytes()[:32].hex() == (
        "47535646" "0100" "0100" "0100" "0000" "08000000" "08000000" "01000000" "03000000" "30000000")
    assert data[:4] == b"GSVF" and struct.unpack_from("<HHH", data, 4) == (1, 1, 1)
    t = decode(GOLDEN.read_bytes())
    assert torch.equal(t.colors, golden_splats().colors)


def test_save_load(tmp_path):
    s = f16_exact_splats()
    n = save(tmp_path / "a.gsv", s)
    assert n == (tmp_path / "a.gsv").stat().st_size
    assert torch.equal(load(tmp_path / "a.gsv").chol, s.chol)
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(FormatError, match="no such file"):
        load(tmp_path / "missing.gsv")


def _patch(data: bytes, offset: int, fmtc: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmtc, b, offset, value)
    return bytes(b)


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: b"", "too short"),
    (lambda d: b"JUNK" + d[4:], "not a .gsv file"),
    (lambda d: _patch(d, 4, "<H", 9), "unsupported format version 9"),
    (lambda d: _patch(d, 6, "<H", 77), "unknown layout id 77"),
    (lambda d: _patch(d, 8, "<H", 5), "unknown dtype id 5"),
    (lambda d: d[:-3], "payload of|truncated"),
    (lambda d: d + b"\0" * 16, "oversized"),
    (lambda d: _patch(d, 24, "<I", 1 << 27), "header says"),
    (lambda d: _patch(d, 12, "<I", 0), "image size"),
])
def test_reader_rejects(mutate, msg):
    with pytest.raises(FormatError, match=msg):
        decode(mutate(encode(f16_exact_splats())), name="sample.gsv")


def test_reader_rejects_nonfinite_and_bad_diagonal():
    d = bytearray(encode(f16_exact_splats()))
    d[fmt.HEADER_SIZE + 2 * 5: fmt.HEADER_SIZE + 2 * 6] = np.float16(np.inf).tobytes()
    with pytest.raises(FormatError, match="non-finite"):
        decode(bytes(d))
    d = bytearray(encode(f16_exact_splats()))
    d[fmt.HEADER_SIZE + 2 * 2: fmt.HEADER_SIZE + 2 * 3] = np.float16(-1).tobytes()
    with pytest.raises(FormatError, match="non-positive Cholesky"):
        decode(bytes(d))


def test_encoder_refuses_float16_overflow():
    s = random_splats(1, 2)
    s.colors[0, 0, 0] = 1e6
    with pytest.raises(FormatError, match="float16 range"):
        encode(s)


VALID = encode(f16_exact_splats(1, 4, 16, 16))
VALID_B = encode(Splats.stack([f16_exact_splats(1, 2, 16, 16), f16_exact_splats(1, 3, 16, 16, seed=9)]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data):
    try:
        decode(data)
    except FormatError:
        pass


@settings(max_examples=600, deadline=None)
@given(st.sampled_from([VALID, VALID_B]), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
       st.integers(-40, 40))
def test_fuzz_mutated_files(base, flips, cut):
    d = bytearray(base)
    for pos, val in flips:
        if pos < len(d):
            d[pos] = val
    if cut < 0:
        d = d[:cut]
    else:
        d += bytes(cut)
    try:
        s = decode(bytes(d))
    except FormatError:
        return
    # whatever decodes is a valid, bounded batch
    s.validate()
    assert s.means.numel() <= len(d)


# ---------------------------------------------------------------- bounded memory (issue 18)
def _sparse_batch(b=1024, n=1024) -> bytes:
    """A valid float16 file of b images whose count table gives image 0 all n Gaussians."""
    rows = f16_exact_splats(1, n, 16, 16, seed=2)
    one = encode(rows)
    counts = np.zeros(b, dtype="<u4")
    counts[0] = n
    head = struct.pack("<4sHHHHIIIII", b"GSVF", 1, 1, 1, 0, 16, 16, b, n, 16 * n)
    return head + counts.tobytes() + one[fmt.HEADER_SIZE:]




def test_padding_bomb_is_refused_naming_the_limit_before_allocating():
    data = _sparse_batch()  # 1024 x 1024 padded rows from 1024 stored: 1,000x the Gaussians
    err, peak = _peak(lambda: decode(data, name="bomb.gsv"))
    assert isinstance(err, FormatError), err
    assert "bomb.gsv" in str(err) and "limit" in str(err) and "iter_images" in str(err)
    assert peak < 4 * len(data) + (1 << 20)


def test_sparse_batch_reads_image_by_image_exactly():
    data = _sparse_batch(b=300, n=40)
    imgs = list(fmt.iter_images(data))
    assert len(imgs) == 300 and [t.max_gaussians for t in imgs[:3]] == [40, 0, 0]
    s = f16_exact_splats(1, 40, 16, 16, seed=2)
    assert torch.equal(imgs[0].means, s.means) and torch.equal(imgs[0].chol, s.chol)
    assert torch.equal(imgs[0].colors, s.colors)
    r = fmt.decode_rows(data)
    assert r.counts.tolist() == [40] + [0] * 299 and r.rows.shape == (40, 8)


def test_legit_batch_padding_is_allowed_and_exact():
    parts = [f16_exact_splats(1, n, seed=n) for n in (1, 30, 9, 0)]
    s = Splats.stack(parts)
    t = decode(encode(s))
    assert t.counts.tolist() == [1, 30, 9, 0] and t.max_gaussians == 30
    for i, p in enumerate(parts):
        assert torch.equal(t[i].means[:, : p.max_gaussians], p.means)
        assert torch.equal(next(x for k, x in enumerate(fmt.iter_images(encode(s))) if k == i).chol, p.chol)


def test_decode_memory_is_a_small_multiple_of_the_file():
    data = encode(random_splats(1, 100_000, 224, 224, seed=1))
    s, peak = _peak(lambda: decode(data))
    assert s.max_gaussians == 100_000 and peak < 6 * len(data)


def test_load_reads_no_more_than_the_header_declares(tmp_path):
    if not Path("/dev/zero").exists():
        pytest.skip("needs /dev/zero")
    with pytest.raises(FormatError, match="not a .gsv file"):
        load("/dev/zero")  # an endless source: only the 32 header bytes are read
    big = tmp_path / "big.gsv"
    big.write_bytes(encode(f16_exact_splats()) + bytes(1 << 20))
    err, peak = _peak(lambda: load(big))
    assert isinstance(err, FormatError) and "oversized" in str(err) and peak < 1 << 19
    need = len(encode(f16_exact_splats()))  # the size the file has (regression: said need + 1)
    assert str(err) == f"{big}: oversized: header and payload need {need} bytes, the file has {need + (1 << 20)}"


def test_failed_save_leaves_no_temporary_file(tmp_path):
    (tmp_path / "d.gsv").mkdir()
    with pytest.raises(OSError):
        save(tmp_path / "d.gsv", f16_exact_splats())  # the rename onto a folder fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.gsv"]

    from gaussianvision.atomic import write_atomic

    def half_then_fail(tmp):
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space"):
        write_atomic(tmp_path / "x.gsv", half_then_fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.gsv"]
