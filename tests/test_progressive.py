"""Progressive splats: the order (fit/progressive.py), the header flag and the prefix reads
(splats/format.py), the encoder on a prefix, and `gsv fit --progressive`."""
import json

import pytest
import torch

from conftest import random_splats
from gaussianvision.fit.progressive import progressive, progressive_order, reorder
from gaussianvision.splats import Splats
from gaussianvision.splats.format import FLAG_PROGRESSIVE, FormatError, decode, decode_rows, encode, load

ROW = 16  # float16 bytes per Gaussian in layout 1


def _first(s: Splats, k: int) -> Splats:
    return Splats(s.means[:, :k], s.chol[:, :k], s.colors[:, :k], s.height, s.width)


def _batch(counts=(9, 4)) -> Splats:
    s = random_splats(len(counts), max(counts), 16, 20, seed=3)
    return Splats(s.means, s.chol, s.colors, s.height, s.width, torch.tensor(counts))


def test_order_keeps_every_gaussian_and_padding_last():
    s = _batch()
    order = progressive_order(s, backend="reference")
    for b, n in enumerate(s.counts.tolist()):
        assert sorted(order[b, :n].tolist()) == list(range(n))
        assert sorted(order[b, n:].tolist()) == list(range(n, s.max_gaussians))
    o = reorder(s, order)
    assert torch.equal(o.counts, s.counts)


def test_prefix_read_is_the_first_k_rows_of_the_ordered_splats():
    s = progressive(_batch((9, 4)), backend="reference")
    data = encode(s, dtype="float32", progressive=True)
    p = decode(data, max_gaussians=5)
    assert p.counts.tolist() == [5, 4]
    for b, k in enumerate((5, 4)):
        ref = s[b]
        for got, want in ((p.means, ref.means), (p.chol, ref.chol), (p.colors, ref.colors)):
            torch.testing.assert_close(got[b, :k], want[0, :k], rtol=0, atol=1e-4 if got is p.means else 0)
    assert decode_rows(data, max_gaussians=5).header.n_total == 9
    assert torch.equal(decode(data, max_gaussians=100).colors, decode(data).colors)


def test_flag_off_writes_the_old_bytes_and_on_changes_only_the_flag():
    s = random_splats(1, 12, 16, 16, seed=1)
    old, plain, prog = encode(s), encode(s, progressive=False), encode(s, progressive=True)
    assert plain == old and old[10:12] == b"\0\0"
    assert prog[10] == FLAG_PROGRESSIVE and prog[:10] == old[:10] and prog[11:] == old[11:]
    assert not decode_rows(old).header.progressive and decode_rows(prog).header.progressive


def test_a_plain_file_refuses_a_prefix_and_unknown_flags_are_refused():
    data = encode(random_splats(1, 12, 16, 16))
    with pytest.raises(FormatError, match=r"x.gsv: not a progressive file"):
        decode(data, "x.gsv", max_gaussians=4)
    assert decode(data, max_gaussians=12).max_gaussians == 12  # nothing cut: allowed
    bad = bytearray(data)
    bad[10] = 2
    with pytest.raises(FormatError, match="unknown header flags"):
        decode(bytes(bad))


def test_a_cut_progressive_file_reads_its_whole_gaussians_when_allowed():
    s = progressive(random_splats(1, 12, 16, 16, seed=2), backend="reference")
    data = encode(s, progressive=True)
    cut = data[:32 + 5 * ROW + 7]
    got = decode(cut, "cut.gsv", allow_truncated=True)
    want = decode(data, max_gaussians=5)
    assert torch.equal(got.means, want.means) and torch.equal(got.colors, want.colors)
    assert torch.equal(decode(data, allow_truncated=True).colors, decode(data).colors)  # whole: as is
    with pytest.raises(FormatError, match=r"^cut.gsv: truncated: header and payload need 224 bytes, got 119$"):
        decode(cut, "cut.gsv")
    with pytest.raises(FormatError, match="no whole Gaussian"):
        decode(data[:32 + 9], allow_truncated=True)


@pytest.mark.parametrize("data,why", [
    (encode(random_splats(1, 12, 16, 16)), "it is not progressive"),
    (encode(random_splats(2, 12, 16, 16), progressive=True), "it holds 2 images"),
    (encode(random_splats(1, 12, 16, 16), layout="quantized", progressive=True), "layout 'quantized'"),
])
def test_a_cut_file_that_cannot_be_read_is_refused_in_one_line(data, why):
    with pytest.raises(FormatError, match=f"truncated: .*cannot be read: {why}") as e:
        decode(data[:len(data) - 20], allow_truncated=True)
    assert "\n" not in str(e.value)


def _photo(size=48):
    from gaussianvision.data.photos import bundled_photos
    return bundled_photos(size, ["astronaut"])[0][1][None]


@pytest.fixture(scope="module")
def fitted():
    from gaussianvision.fit import FitConfig, fit_images
    img = _photo()
    res = fit_images(img, 60, config=FitConfig.from_options({"preset": "fast", "iters": 60, "backend": "reference"}))
    return img, res.splats.detach()


def _prefix_psnr(s: Splats, img, ks) -> list[float]:
    from gaussianvision.fit.metrics import psnr
    from gaussianvision.raster import render
    return [float(psnr(render(_first(s, k), backend="reference"), img)) for k in ks]


def test_prefix_psnr_rises_with_k_and_the_first_cost_most(fitted):
    img, s = fitted
    ks = (5, 10, 20, 30, 45, 60)
    for method in ("eliminate", "greedy"):
        p = _prefix_psnr(progressive(s, method=method, backend="reference"), img, ks)
        assert all(b >= a - 1e-6 for a, b in zip(p, p[1:])), (method, p)
    o = progressive(s, backend="reference")
    rest = lambda idx: Splats(o.means[:, idx], o.chol[:, idx], o.colors[:, idx], o.height, o.width)  # noqa: E731
    full = _prefix_psnr(o, img, [60])[0]
    first = full - _prefix_psnr(rest(list(range(10, 60))), img, [50])[0]   # the first 10 removed
    last = full - _prefix_psnr(rest(list(range(0, 50))), img, [50])[0]     # the last 10 removed
    assert first > 5 * max(last, 0.01)


def test_the_encoder_reads_a_prefix_as_the_same_gaussians_stored_plainly():
    from gaussianvision.models import create_gsclip
    torch.manual_seed(0)
    model = create_gsclip(config="gs-tiny").eval()
    s = progressive(random_splats(2, 40, 64, 64, seed=4), backend="reference")
    prefix = decode(encode(s, progressive=True), max_gaussians=17)  # [2, 17], padded batch of the file
    assert prefix.counts.tolist() == [17, 17]
    plain = decode(encode(_first(s[0], 17)))
    mixed = Splats.stack([prefix[0], decode(encode(s[1]))])  # padded to 40 with counts [17, 40]
    with torch.no_grad():
        want = model.encode_image(plain)
        torch.testing.assert_close(model.encode_image(prefix)[:1], want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.encode_image(mixed)[:1], want, rtol=1e-5, atol=1e-6)


def test_gsv_fit_progressive_writes_flagged_files_that_info_shows(tmp_path, capsys):
    from gaussianvision.apps.cli.main import main as gsv
    from gaussianvision.data.images import save_png
    save_png(_photo(24)[0], tmp_path / "a.png")
    for flag, out in (([], "plain"), (["--progressive"], "prog")):
        rc = gsv(["fit", str(tmp_path / "a.png"), "-n", "20", "--iters", "5", "--size", "24", "--backend",
                  "reference", "--out", str(tmp_path / out), "--json", *flag])
        assert rc == 0
        capsys.readouterr()
        assert gsv(["info", str(tmp_path / out / "a.gsv"), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["progressive"] is bool(flag)
    assert load(tmp_path / "prog" / "a.gsv", max_gaussians=7).max_gaussians == 7
    with pytest.raises(FormatError, match="not a progressive file"):
        load(tmp_path / "plain" / "a.gsv", max_gaussians=7)
