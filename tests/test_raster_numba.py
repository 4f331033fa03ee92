"""The numba CPU backend against the reference (the spec), forward and backward."""
import functools
import math
import warnings

import pytest
import torch

from raster_parity import check_parity, parity_cases

from gaussianvision.raster import cpu_threads, dispatch, render, render_reference, squared_error
from gaussianvision.splats import Splats

numba_backend = pytest.importorskip("gaussianvision.raster.cpu_numba")
try:
    numba_backend.probe()
except ImportError as e:  # pragma: no cover - only where numba is missing
    pytest.skip(f"numba backend unavailable: {e}", allow_module_level=True)
render_numba = numba_backend.render_numba

# float64: both sides compute in float64; the weight recurrence drifts ~1e-15 per pixel.
# float32: the reference sums in float32 (einsum over N) while we accumulate per row in
# float32 from float64 weights: differences are a few float32 ulps of the largest value.
TOL = {torch.float64: (1e-9, 1e-12), torch.float32: (2e-5, 2e-6)}


def _cases(dtype):
    return [(name, s) for name, s in parity_cases(dtype) if s.max_gaussians > 0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_parity_forward_backward(dtype):
    rtol, atol = TOL[dtype]
    for name, s in _cases(dtype):
        check_parity(render_numba, s, rtol=rtol, atol=atol, name=f"{name}/{dtype}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_support_matches_reference_exactly(dtype):
    # the 3-sigma cut is decided as the spec decides it: same pixels, one Gaussian at a time
    for name, s in _cases(dtype):
        for b in range(s.batch_size):
            for k in range(int(s.num_gaussians()[b])):
                one = Splats(s.means[b:b + 1, k:k + 1], s.chol[b:b + 1, k:k + 1],
                             torch.ones_like(s.colors[b:b + 1, k:k + 1]), s.height, s.width)
                got = render_numba(one)[0, 0] > 0
                want = render_reference(one)[0, 0] > 0
                assert torch.equal(got, want), f"{name} image {b} Gaussian {k}: support differs"


def test_cut_includes_q_equal_nine_and_excludes_beyond():
    # d = 0..3 px have q = d^2 <= 9 (q = 9 exactly at d = 3); d = 4 is culled
    s = Splats(torch.tensor([[[0.5, 0.5]]], dtype=torch.float64), torch.tensor([[[1.0, 0.0, 1.0]]], dtype=torch.float64),
               torch.tensor([[[1.0, 0.5, 0.25]]], dtype=torch.float64), 1, 8)
    row = render_numba(s)[0, 0, 0]
    assert row[:4].tolist() == pytest.approx([math.exp(-0.5 * k * k) for k in range(4)], rel=1e-13)
    assert row[4:].abs().max() == 0.0


def test_empty_and_all_padding():
    s = Splats(torch.zeros(2, 0, 2), torch.zeros(2, 0, 3), torch.zeros(2, 0, 3), 5, 7)
    out = render_numba(s)
    assert out.shape == (2, 3, 5, 7) and out.dtype == torch.float32 and not out.any()
    # N > 0 but every image has count 0: black, and zero gradients everywhere
    means = torch.rand(2, 3, 2, dtype=torch.float64).mul(5).requires_grad_(True)
    chol = torch.ones(2, 3, 3, dtype=torch.float64).requires_grad_(True)
    colors = torch.rand(2, 3, 3, dtype=torch.float64).requires_grad_(True)
    out = render_numba(Splats(means, chol, colors, 5, 7, torch.tensor([0, 0])))
    assert not out.any()
    out.sum().backward()
    for t in (means, chol, colors):
        assert t.grad is not None and not t.grad.any()


def test_padding_is_ignored_and_gets_zero_grad():
    g = torch.Generator().manual_seed(3)
    means = (torch.rand(2, 5, 2, generator=g, dtype=torch.float64) * 12)
    chol = torch.cat([1 + torch.rand(2, 5, 1, generator=g, dtype=torch.float64),
                      torch.rand(2, 5, 1, generator=g, dtype=torch.float64) - 0.5,
                      1 + torch.rand(2, 5, 1, generator=g, dtype=torch.float64)], -1)
    colors = torch.rand(2, 5, 3, generator=g, dtype=torch.float64)
    means[0, 2:] = float("nan")  # garbage in padding must not leak
    chol[0, 2:] = 0.0
    leaves = [x.clone().requires_grad_(True) for x in (means, chol, colors)]
    out = render_numba(Splats(*leaves, 12, 12, torch.tensor([2, 5])))
    ref = render_reference(Splats(means[:1, :2], chol[:1, :2], colors[:1, :2], 12, 12))
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], ref[0], rtol=1e-12, atol=1e-13)
    (out * torch.randn_like(out)).sum().backward()
    for x in leaves:
        assert torch.isfinite(x.grad).all() and not x.grad[0, 2:].any()
        assert x.grad[1].abs().sum() > 0


def test_gradcheck_tiny_float64():
    g = torch.Generator().manual_seed(7)
    means = torch.tensor([[[4.3, 3.6], [7.9, 6.2], [2.2, 8.1]]], dtype=torch.float64)
    chol = torch.tensor([[[1.7, 0.4, 1.3], [2.1, -0.8, 1.6], [1.2, 0.3, 2.4]]], dtype=torch.float64)
    colors = torch.rand(1, 3, 3, generator=g, dtype=torch.float64) + 0.2
    fn = lambda m, c, col: render_numba(Splats(m, c, col, 10, 11))
    # the q = 9 cut makes the image piecewise smooth; these parameters keep every pixel
    # well away from the cut so finite differences do not straddle it
    assert torch.autograd.gradcheck(fn, tuple(x.requires_grad_(True) for x in (means, chol, colors)),
                                    eps=1e-6, atol=1e-6, rtol=1e-5)


def test_dtype_and_device_rules():
    s = parity_cases(torch.float64)[2][1]
    half = Splats(s.means.half(), s.chol.half(), s.colors.half(), s.height, s.width)
    out = render_numba(half)
    assert out.dtype == torch.float32 == render_reference(half).dtype
    assert torch.allclose(out, render_reference(half), rtol=1e-4, atol=1e-4)
    # gradients come back in each input's own dtype
    m = half.means.clone().requires_grad_(True)
    render_numba(Splats(m, half.chol, half.colors, s.height, s.width)).sum().backward()
    assert m.grad.dtype == torch.float16 and torch.isfinite(m.grad).all()
    # non-contiguous inputs and upstream gradients
    mt = s.means.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(True)
    out = render_numba(Splats(mt, s.chol, s.colors, s.height, s.width))
    out.backward(torch.ones(1, 1, 1, 1, dtype=torch.float64).expand_as(out))
    assert torch.isfinite(mt.grad).all()


def test_bands_and_threads_give_the_same_image(monkeypatch):
    """One image split in bands over 2 threads, the same image in a batch of 9 (one band each) and on
    the calling thread alone (under PARALLEL_PIXELS): the same pixels and gradients, bit for bit."""
    s = parity_cases(torch.float64)[2][1]
    single = Splats(s.means[:1], s.chol[:1], s.colors[:1], s.height, s.width)
    many = Splats(s.means[:1].expand(9, -1, -1), s.chol[:1].expand(9, -1, -1), s.colors[:1].expand(9, -1, -1),
                  s.height, s.width)

    def run(splats):
        m = splats.means.clone().requires_grad_(True)
        out = render_numba(Splats(m, splats.chol, splats.colors, s.height, s.width))
        (out * torch.linspace(-1, 1, out[0].numel(), dtype=out.dtype).view_as(out[0])).sum().backward()  # per image
        return out.detach(), m.grad

    serial = run(single)
    assert cpu_threads.threads_for(s.height * s.width) == 1  # the premise: a small render stays on one thread
    monkeypatch.setattr(cpu_threads, "PARALLEL_PIXELS", 0)
    monkeypatch.setattr(cpu_threads, "_num_threads", lambda: 2)
    assert numba_backend._bands(1, s.height, 2) > 1 and numba_backend._bands(9, s.height, 2) == 1
    banded, batched = run(single), run(many)
    assert torch.equal(banded[0], serial[0]) and torch.equal(banded[1], serial[1])
    assert torch.equal(batched[0], serial[0].expand_as(batched[0]))
    assert torch.equal(batched[1], serial[1].expand_as(batched[1]))








def test_rescaled_render_through_dispatch():
    s = parity_cases(torch.float64)[2][1]
    got = render(s, 2 * s.height, 3 * s.width, backend="numba")
    want = render(s, 2 * s.height, 3 * s.width, backend="reference")
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-9, atol=1e-12)


def test_auto_picks_numba_on_cpu(monkeypatch):
    assert dispatch.resolve_backend("auto", torch.device("cpu")) == "numba"
    assert dispatch.probe_backend("numba") == (True, "ok")
    calls = []
    monkeypatch.setitem(dispatch._loaded, "numba", lambda s: calls.append(1) or render_numba(s))
    s = parity_cases(torch.float32)[1][1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = render(s)
    assert calls == [1] and torch.allclose(out, render_reference(s), rtol=1e-5, atol=1e-6)


def test_probe_reports_a_missing_numba(monkeypatch):
    import builtins
    numba_backend.numba_module.cache_clear()
    real_import = builtins.__import__

    def fake_import(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "numba" or name.startswith("numba.") or (fromlist and "_numba_kernels" in fromlist):
            raise ImportError("No module named 'numba'")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    try:
        with pytest.raises(ImportError, match="numba.*gaussianvision\\[fast\\]"):
            numba_backend.probe()
    finally:
        monkeypatch.setattr(builtins, "__import__", real_import)
        numba_backend.numba_module.cache_clear()
    numba_backend.probe()  # and recovers once numba is importable again


def test_bad_shapes_are_named():
    from gaussianvision.splats import SplatsError
    s = Splats(torch.zeros(1, 2, 2), torch.ones(1, 2, 2), torch.zeros(1, 2, 3), 4, 4)
    with pytest.raises(SplatsError, match="chol"):
        render_numba(s)


def test_render_size_must_be_whole_pixels():
    """Regression: render(s, 2.5, 3) rendered at 2 x 3."""
    from gaussianvision.raster import render
    from gaussianvision.splats import SplatsError
    s = Splats(torch.full((1, 1, 2), 2.0), torch.ones(1, 1, 3), torch.ones(1, 1, 3), 4, 4)
    for h, w in ((2.5, 3), (4, "4"), (True, 4)):
        with pytest.raises(SplatsError, match="must be a whole number of pixels"):
            render(s, h, w, backend="reference")
    assert render(s, 3, 5, backend="reference").shape == (1, 3, 3, 5)
    # regression (new-user trial): 100000 x 100000 was the allocator's raw error asking for 120 GB
    with pytest.raises(SplatsError, match=r"render: 100000x100000 is 10,000,000,000 pixels, more than"):
        render(s, 100_000, 100_000)


def test_subpixel_gaussians_without_the_row_carry():
    # second differences of q above CARRY_MAX per pixel step: these Gaussians get exp on every
    # row instead of the cross-row carry; still the reference's image and gradients
    k = numba_backend._kernels()
    means = torch.tensor([[[5.3, 4.6], [9.1, 7.7], [3.5, 9.2], [12.2, 3.3]]], dtype=torch.float64)
    chol = torch.tensor([[[0.1, 0.0, 0.12], [0.9, 0.3, 0.1], [0.11, 0.05, 2.0], [3.0, 2.5, 0.13]]],
                        dtype=torch.float64)
    colors = torch.rand(1, 4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    inv11, inv22 = 1 / chol[..., 0], 1 / chol[..., 2]
    a = inv11 ** 2 + (chol[..., 1] * inv11 * inv22) ** 2
    assert ((a > k.CARRY_MAX) | (inv22 ** 2 > k.CARRY_MAX)).all()
    for dtype in (torch.float64, torch.float32):
        rtol, atol = TOL[dtype]
        s = Splats(means.to(dtype), chol.to(dtype), colors.to(dtype), 16, 15)
        check_parity(render_numba, s, rtol=rtol, atol=atol, name=f"subpixel/{dtype}")


def test_large_gaussians_carry_across_many_rows():
    # footprints spanning several RESTART blocks and the whole image, sheared both ways:
    # the carried weights (row to row and along rows, left and right) stay exact
    means = torch.tensor([[[20.5, 30.2], [40.0, 25.0], [10.0, 60.0]]], dtype=torch.float64)
    chol = torch.tensor([[[9.0, 6.0, 4.0], [7.0, -8.0, 3.0], [30.0, 0.5, 25.0]]], dtype=torch.float64)
    colors = torch.rand(1, 3, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        rtol, atol = TOL[dtype]
        s = Splats(means.to(dtype), chol.to(dtype), colors.to(dtype), 70, 53)
        check_parity(render_numba, s, rtol=rtol, atol=atol, name=f"large/{dtype}")


def test_closed_form_spans_agree_with_the_exact_row_test():
    # every row closed_spans confirms has row_span's (lo, hi); the rest it must leave to
    # row_span. Grid-aligned means and integer factors put q = 9 exactly on pixel centres.
    import numpy as np
    k = numba_backend._kernels()
    g = torch.Generator().manual_seed(7)
    n, h, w = 400, 40, 37
    means = torch.rand(1, n, 2, generator=g, dtype=torch.float64) * torch.tensor([w + 6.0, h + 6.0]) - 3.0
    chol = torch.rand(1, n, 3, generator=g, dtype=torch.float64) * torch.tensor([6.0, 8.0, 6.0]) \
        + torch.tensor([0.05, -4.0, 0.05])
    means[0, :100] = means[0, :100].round() + 0.5
    chol[0, :100] = chol[0, :100].round().clamp(min=1.0)
    params = np.empty((1, n, k.NPARAM))
    k.setup(means.numpy(), chol.numpy(), np.array([n]), h, params, 0, n)
    xs = np.arange(w, dtype=np.float64) + 0.5
    ys = np.arange(h, dtype=np.float64) + 0.5
    sb = np.empty((3, h + 8))
    confirmed = deferred = 0
    for j in range(n):
        p = params[0, j]
        r0, r1 = int(p[k.ROW0]), int(p[k.ROW1])
        if r0 > r1:
            continue
        k.closed_spans(p, r0, r1, w, sb)
        m, c = means[0, j].tolist(), chol[0, j].tolist()
        for i in range(r0, r1 + 1):
            lo, hi = k.row_span(p, i, w, xs, ys[i], m[0], m[1], c[0], c[1], c[2], 9.0)
            if sb[2, i - r0] == 0.0:
                deferred += 1
                continue
            confirmed += 1
            got = (int(sb[0, i - r0]), int(sb[1, i - r0]))
            assert got == (lo, hi) or (got[0] > got[1] and lo > hi), f"Gaussian {j} row {i}"
    assert confirmed > 1000 and deferred > 0


def test_cache_fallback_only_where_numba_has_no_place_to_cache(tmp_path):
    """Regression (trial 6): with a read-only install and HOME, numba refused to compile and fits fell back
    to the reference; then (and only then) the kernels are cached in a temporary folder."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # nothing can be created below a file, even by root
    temp = tmp_path / "temp"
    assert numba_backend.cache_fallback(blocked / "tree", blocked / "user", temp) == str(temp)
    assert numba_backend.cache_fallback(tmp_path / "tree", blocked / "user", temp) is None
    assert numba_backend.cache_fallback(blocked / "tree", tmp_path / "user", temp) is None
    assert not list(tmp_path.rglob(".gsv-write-check-*"))  # the probes leave nothing behind
    assert temp.is_dir() and temp.stat().st_mode & 0o077 == 0  # made private


def test_the_cache_fallback_folder_is_never_one_others_can_plant_files_in(tmp_path):
    """numba's cache index is a pickle: a shared folder another user made (or can write) would run their
    code here, so such a folder (and a link) is passed over for a fresh private one (review finding)."""
    import os
    import shutil
    mine = tmp_path / "mine"
    assert numba_backend.private_folder(mine) == str(mine) and mine.stat().st_mode & 0o777 == 0o700
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    os.chmod(open_to_all, 0o777)
    link = tmp_path / "link"
    link.symlink_to(mine)
    for bad in (open_to_all, link):
        other = numba_backend.private_folder(bad)
        try:
            assert other != str(bad) and os.path.basename(other).startswith("gsv-numba-cache-")
            assert os.stat(other).st_mode & 0o077 == 0
        finally:
            shutil.rmtree(other, ignore_errors=True)


def _sse_and_grads(fn, s, target):
    leaves = [t.detach().clone().requires_grad_(True) for t in (s.means, s.chol, s.colors)]
    sse = fn(Splats(*leaves, s.height, s.width, s.counts), target)
    (sse * torch.arange(1, sse.numel() + 1, dtype=sse.dtype)).sum().backward()  # a different weight per image
    return sse.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_fused_squared_error_matches_render_and_subtract(dtype):
    """squared_error on numba (the residual made inside the forward kernel, the backward fed with it
    and scaled per image) against its twin, the reference render minus the target, squared and
    summed: values and gradients, every parity case (padding, off-image, sub-pixel, large)."""
    rtol, atol = TOL[dtype]
    twin = lambda s, t: ((render_reference(s) - t) ** 2).flatten(1).sum(1)
    for name, s in _cases(dtype):
        g = torch.Generator().manual_seed(1)
        target = torch.rand(s.batch_size, 3, s.height, s.width, generator=g, dtype=torch.float64).to(dtype)
        want, want_g = _sse_and_grads(twin, s, target)
        # the fused numba path, and the path of the other backends (the residual made in place)
        for fn in (numba_backend.squared_error_numba, functools.partial(squared_error, backend="reference")):
            got, got_g = _sse_and_grads(fn, s, target)
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want, rtol=10 * rtol, atol=atol * s.height * s.width, msg=name)
            for a, b in zip(got_g, want_g):
                torch.testing.assert_close(a, b, rtol=10 * rtol, atol=10 * atol * s.height, msg=name)


def test_fused_squared_error_is_the_same_in_bands_and_through_dispatch(monkeypatch):
    """Bands over 2 threads sum each image's squared error over its bands: the same as one thread;
    raster.squared_error picks the fused path for numba and refuses a target of the wrong size."""
    from gaussianvision.splats import SplatsError
    s = parity_cases(torch.float64)[2][1]
    target = torch.rand(s.batch_size, 3, s.height, s.width, dtype=torch.float64)
    serial = _sse_and_grads(numba_backend.squared_error_numba, s, target)
    monkeypatch.setattr(cpu_threads, "PARALLEL_PIXELS", 0)
    monkeypatch.setattr(cpu_threads, "_num_threads", lambda: 2)
    assert numba_backend._bands(s.batch_size, s.height, 2) > 1
    banded = _sse_and_grads(numba_backend.squared_error_numba, s, target)
    torch.testing.assert_close(banded[0], serial[0], rtol=1e-13, atol=0)
    for a, b in zip(banded[1], serial[1]):
        assert torch.equal(a, b)
    calls = []
    monkeypatch.setattr(numba_backend, "squared_error_numba", lambda *a: calls.append(1) or serial[0])
    assert torch.equal(squared_error(s, target, backend="numba"), serial[0]) and calls == [1]
    with pytest.raises(SplatsError, match=r"squared_error: target must be \[2, 3, 37, 45\].*got \[2, 3, 37, 44\]"):
        squared_error(s, target[..., :44], backend="numba")
    with pytest.raises(SplatsError, match="squared_error: the target requires grad"):
        squared_error(s, target.clone().requires_grad_(True), backend="reference")
    monkeypatch.undo()
    empty = Splats(s.means[:0], s.chol[:0], s.colors[:0], s.height, s.width)
    for backend in ("numba", "reference"):  # regression: the reference path's reshape failed on B = 0
        assert squared_error(empty, target[:0], backend=backend).shape == (0,)


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_squared_error_grads_are_autograd_through_squared_error_bit_for_bit(backend):
    """squared_error_grads (numba: the kernels without autograd's engine; the others: autograd) gives
    squared_error's value and exactly the gradients autograd takes through it, a weight per image."""
    from gaussianvision.raster import squared_error_grads
    for name, s in _cases(torch.float32):
        target = torch.rand(s.batch_size, 3, s.height, s.width, generator=torch.Generator().manual_seed(4))
        w = torch.arange(1, s.batch_size + 1, dtype=torch.float32) / 3.0
        leaves = [t.detach().clone().requires_grad_(True) for t in (s.means, s.chol, s.colors)]
        sse = squared_error(Splats(*leaves, s.height, s.width, s.counts), target, backend=backend)
        (sse * w).sum().backward()
        got, grads = squared_error_grads(s, target, w, backend=backend)
        assert torch.equal(got, sse.detach()), name
        for a, b in zip(grads, leaves):
            assert torch.equal(a, b.grad), name


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_a_second_backward_of_squared_error_is_refused_clearly(backend):
    """The residual is spent by the first backward (dropped on numba, scaled in place elsewhere): a
    second one (retain_graph) raises a clear error, not an AttributeError or wrong gradients."""
    s = _cases(torch.float32)[1][1]
    m = s.means.clone().requires_grad_(True)
    sse = squared_error(Splats(m, s.chol, s.colors, s.height, s.width, s.counts),
                        torch.rand(s.batch_size, 3, s.height, s.width), backend=backend)
    sse.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="squared_error: its backward runs once"):
        sse.sum().backward()
