"""The Triton backend against the reference rasterizer.

On CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set per test: the backend
picks interpreted or compiled kernels at each call, so setting it in-process is reliable).
On a CUDA machine the same cases also run compiled (marker requires_cuda; skipped otherwise).

Tolerances (errors relative to the largest reference magnitude of each tensor, float32):
  interpreter: rtol 1e-5, atol 1e-6. Measured: about 1e-7 on every case, 3e-6 on the needle
               (a 20:0.5 Gaussian, whose chol gradient sums terms of very different sizes).
  CUDA:        rtol 1e-4, atol 1e-5: the GPU's exp is approximate (a few ulp), the compiler
               may fuse multiply-adds, and atomic adds sum the tiles in any order.
"""
from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from raster_parity import check_parity, parity_cases
from gaussianvision.raster import dispatch, gpu_triton, render, render_reference
from gaussianvision.raster.gpu_triton import TILE, _bin, render_triton
from gaussianvision.raster.reference import CUTOFF_Q, pixel_centers
from gaussianvision.splats import Splats

RTOL_INTERP, ATOL_INTERP = 1e-5, 1e-6
RTOL_CUDA, ATOL_CUDA = 1e-4, 1e-5
CASES = parity_cases(torch.float32)
HAS_CUDA = torch.cuda.is_available()
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def requires_cuda(test):
    """The compiled kernels on a real GPU; skipped, with the reason, on CPU-only machines."""
    skip = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device: compiled Triton kernels not run")
    return pytest.mark.requires_cuda(skip(needs_triton(test)))


@pytest.fixture
def interp(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def fresh_dispatch(monkeypatch):
    """Forget which backends loaded or failed and which warnings were given."""
    monkeypatch.setattr(dispatch, "_loaded", {})
    monkeypatch.setattr(dispatch, "_failed", {})
    monkeypatch.setattr(dispatch, "_warned", set())


def _on(s: Splats, device) -> Splats:
    return Splats(s.means.to(device), s.chol.to(device), s.colors.to(device), s.height, s.width,
                  None if s.counts is None else s.counts.to(device))


def many_per_tile(device="cpu") -> Splats:
    """More Gaussians per tile than one forward block (32), spread over 2 x 3 tiles, variable N."""
    g = torch.Generator().manual_seed(3)
    b, n, h, w = 2, 45, 20, 34
    means = torch.rand(b, n, 2, generator=g) * torch.tensor([w + 6.0, h + 6.0]) - 3.0
    chol = torch.stack([2 + 4 * torch.rand(b, n, generator=g), 3 * (torch.rand(b, n, generator=g) - 0.5),
                        2 + 4 * torch.rand(b, n, generator=g)], -1)
    colors = torch.rand(b, n, 3, generator=g) * 2 - 1
    return _on(Splats(means, chol, colors, h, w, torch.tensor([45, 37])), device)


def _parity(s: Splats, name: str, rtol: float, atol: float):
    if s.max_gaussians == 0:
        # the reference's N = 0 image is a constant (no autograd graph), so check by hand
        leaves = [t.detach().clone().requires_grad_(True) for t in (s.means, s.chol, s.colors)]
        out = render_triton(Splats(*leaves, s.height, s.width, s.counts))
        assert out.shape == (s.batch_size, 3, s.height, s.width) and out.dtype == torch.float32
        assert bool((out == 0).all())
        out.sum().backward()
        assert all(x.grad is not None and x.grad.shape == x.shape for x in leaves)
        return
    check_parity(render_triton, s, rtol=rtol, atol=atol, name=name)


# ----------------------------------------------------------------- interpreter (CPU)
@pytest.mark.parametrize("name,splats", CASES, ids=[c[0] for c in CASES])
@needs_triton
def test_interpreter_parity(interp, name, splats):
    _parity(splats, name, RTOL_INTERP, ATOL_INTERP)


@needs_triton
def test_interpreter_parity_several_blocks_per_tile(interp):
    s = many_per_tile()
    ids, offsets, _, t = _bin(s.means, s.chol, s.mask(), s.height, s.width)
    per_tile = offsets.diff()
    assert t == 6 and int(per_tile.max()) > gpu_triton.BLOCK_N  # the inner loop really takes >1 step
    _parity(s, "many_per_tile", RTOL_INTERP, ATOL_INTERP)


@needs_triton
def test_interpreter_parity_other_launch_shapes(interp, monkeypatch):
    # the launch shapes are documented tunables: a different tile and block must give the same image
    monkeypatch.setattr(gpu_triton, "TILE", 8)
    monkeypatch.setattr(gpu_triton, "BLOCK_N", 4)
    monkeypatch.setattr(gpu_triton, "BLOCK_N_BWD", 8)
    name, s = CASES[3]  # Gaussians on 16-px tile borders are on 8-px borders too
    _parity(s, name + "_tile8", RTOL_INTERP, ATOL_INTERP)


@needs_triton
@pytest.mark.parametrize("bwd,tile,chunk", [("tile", 16, 32), ("chunked", 16, 64), ("chunked", 8, 16),
                                            ("chunked", 4, 32)])
def test_interpreter_parity_backward_variants(interp, monkeypatch, bwd, tile, chunk):
    """Both backward kernels, the chunked one at several chunk sizes (at tile 4 the chunk of 32 is
    capped at the tile's 16 pixels: no pixel counted twice), on several blocks per tile."""
    monkeypatch.setattr(gpu_triton, "BWD_KERNEL", bwd)
    monkeypatch.setattr(gpu_triton, "TILE", tile)
    monkeypatch.setattr(gpu_triton, "BWD_CHUNK", chunk)
    assert gpu_triton.bwd_launch(tile)[1] == ({} if bwd == "tile" else {"CHUNK": min(chunk, tile * tile)})
    _parity(many_per_tile(), f"many_per_tile_{bwd}_{tile}_{chunk}", RTOL_INTERP, ATOL_INTERP)


def test_backward_launch_settings_are_checked(monkeypatch):
    monkeypatch.setattr(gpu_triton, "BWD_KERNEL", "fastest")
    with pytest.raises(ValueError, match="BWD_KERNEL='fastest': choose one of chunked, tile"):
        gpu_triton.bwd_launch(16)
    monkeypatch.setattr(gpu_triton, "BWD_KERNEL", "chunked")
    monkeypatch.setattr(gpu_triton, "BWD_CHUNK", 24)
    with pytest.raises(ValueError, match="BWD_CHUNK=24: expected a power of two"):
        gpu_triton.bwd_launch(16)


@needs_triton
def test_interpreter_float64_input_keeps_dtype(interp):
    name, s = CASES[2]
    s64 = Splats(s.means.double(), s.chol.double(), s.colors.double(), s.height, s.width, s.counts)
    leaves = [t.clone().requires_grad_(True) for t in (s64.means, s64.chol, s64.colors)]
    out = render_triton(Splats(*leaves, s.height, s.width))
    assert out.dtype == torch.float64
    ref = render_reference(s64)
    assert (out - ref).abs().max() <= RTOL_INTERP * ref.abs().max()
    out.sum().backward()
    assert all(x.grad.dtype == torch.float64 for x in leaves)


def test_cpu_tensors_without_interpreter_are_refused(no_interp):
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        render_triton(CASES[1][1])


# ----------------------------------------------------------------- tile binning (torch only: no triton needed)
def _listed_and_needed(s: Splats, cull: str, tile: int = TILE):
    """[B, T, N] bool: the pairs _bin lists, and the pairs some pixel needs (q <= CUTOFF_Q at a pixel centre of
    the tile, computed as the reference computes it, in float32, and in float64)."""
    ids, offsets, ntx, t = _bin(s.means, s.chol, s.mask(), s.height, s.width, tile, cull)
    b, n = s.batch_size, s.max_gaussians
    listed = torch.zeros(b, t, n, dtype=torch.bool)
    for bt in range(b * t):
        listed[bt // t, bt % t, ids[offsets[bt]:offsets[bt + 1]] - (bt // t) * n] = True
    hits = torch.zeros(b, n, s.height * s.width, dtype=torch.bool)
    for dtype in (torch.float32, torch.float64):
        d = pixel_centers(s.height, s.width).to(dtype)[None, None] - s.means.to(dtype)[:, :, None]
        l11, l21, l22 = (s.chol.to(dtype)[..., k, None] for k in range(3))
        y1 = d[..., 0] / l11
        y2 = (d[..., 1] - l21 * y1) / l22
        hits |= (y1 * y1 + y2 * y2 <= CUTOFF_Q) & s.mask()[..., None]  # [B, N, P]
    rows, cols = torch.arange(s.height).repeat_interleave(s.width), torch.arange(s.width).repeat(s.height)
    tile_of_pixel = (rows // tile) * ntx + cols // tile
    needed = torch.zeros(b, t, n, dtype=torch.bool)
    for k in range(t):
        needed[:, k] = hits[..., tile_of_pixel == k].any(-1)
    return listed, needed


@pytest.mark.parametrize("cull,slack", [("box", 1.25), ("ellipse", 1.04)])
def test_bins_hold_every_contributing_pair_and_cull_the_rest(cull, slack):
    s = many_per_tile()
    s.means[0, 5] = torch.tensor([-60.0, 10.0])  # footprint entirely left of the image
    listed, needed = _listed_and_needed(s, cull)
    b, t, n = listed.shape
    assert bool((listed | ~needed).all()), "a contributing Gaussian is missing from a tile"
    assert not bool(listed[1, :, 37:].any()), "padding was binned"
    assert not bool(listed[0, :, 5].any()), "an off-image Gaussian was binned"
    assert int(listed.sum()) < b * t * n  # the culling removes something
    # ... and lists little beyond what is needed (the box around the ellipse reaches a few more tiles; the
    # ellipse's test, only tiles within CULL_MARGIN of a pixel centre the cut keeps)
    assert int(listed.sum()) <= slack * int(needed.sum())


@pytest.mark.parametrize("tile", [16, 8, 4])
def test_ellipse_cull_keeps_every_pixel_of_thin_tilted_gaussians(tile):
    """Needles (one factor 0.02-0.3 px, the other up to 60 px, any angle) and Gaussians whose cut passes just by a
    pixel centre: the ellipse's tiles hold every pair a pixel needs, in float32 as in float64, and fewer than the
    box's."""
    g = torch.Generator().manual_seed(11)
    b, n, h, w = 2, 60, 48, 56
    ang = torch.rand(b, n, generator=g) * torch.pi
    long_, short = 1 + 19 * torch.rand(b, n, generator=g), 0.02 + 0.28 * torch.rand(b, n, generator=g)
    c, s_ = torch.cos(ang), torch.sin(ang)
    sxx = (long_ * c) ** 2 + (short * s_) ** 2
    sxy = (long_ ** 2 - short ** 2) * c * s_
    syy = (long_ * s_) ** 2 + (short * c) ** 2
    l11 = sxx.sqrt()
    l21 = sxy / l11
    l22 = (syy - l21 ** 2).clamp_min(1e-8).sqrt()
    means = torch.rand(b, n, 2, generator=g) * torch.tensor([w + 10.0, h + 10.0]) - 5.0
    means[:, ::3] = means[:, ::3].round() + 0.5 + 3.0 * l11[:, ::3, None].clamp(max=2)  # cuts near pixel centres
    s = Splats(means, torch.stack([l11, l21, l22], -1), torch.rand(b, n, 3, generator=g), h, w)
    listed, needed = _listed_and_needed(s, "ellipse", tile)
    assert int(needed.sum()) > 0 and bool((listed | ~needed).all()), "a contributing needle is missing from a tile"
    box, _ = _listed_and_needed(s, "box", tile)
    assert bool((box | ~listed).all()) and int(listed.sum()) < int(box.sum())


def test_cull_setting_is_checked(monkeypatch):
    s = many_per_tile()
    with pytest.raises(ValueError, match="CULL='disc'"):
        _bin(s.means, s.chol, s.mask(), s.height, s.width, cull="disc")


@needs_triton
@pytest.mark.parametrize("name,splats", CASES + [("many_per_tile", many_per_tile())],
                         ids=[c[0] for c in CASES] + ["many_per_tile"])
def test_interpreter_parity_ellipse_tiles(interp, monkeypatch, name, splats):
    """With the ellipse's tiles the kernels give the reference's image and gradients (every case: padding, tile
    borders, off-image, needles)."""
    monkeypatch.setattr(gpu_triton, "CULL", "ellipse")
    _parity(splats, name + "_ellipse", RTOL_INTERP, ATOL_INTERP)


@needs_triton
def test_bins_of_nothing():
    s = CASES[0][1]  # N = 0
    ids, offsets, _, t = _bin(s.means, s.chol, s.mask(), s.height, s.width)
    assert ids.numel() == 0 and offsets.shape == (s.batch_size * t + 1,) and int(offsets.max()) == 0


# ----------------------------------------------------------------- compiled kernels, no GPU
@pytest.mark.slow
@needs_triton
def test_kernels_compile_for_sm80_without_spills(no_interp):
    """The real compiler (not the interpreter) accepts the kernels; about 30 s cold, 2 s cached.
    In a fresh process: kernels run in the interpreter earlier in this one leave triton.language
    patched, and a cold compile after them fails inside Triton's code generator."""
    import json
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import json; from gaussianvision.raster._triton_aot import compile_kernels; print(json.dumps(compile_kernels(80)))"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(report) == {"splat_fwd_kernel", "splat_bwd_kernel", "splat_bwd_tile_kernel"}
    # the chunked backward needs only atomicity: relaxed atomics, no fences (the tile one has them)
    assert report["splat_bwd_kernel"]["ptx_ordered_atomics"] == 0
    assert report["splat_bwd_tile_kernel"]["ptx_ordered_atomics"] > 0
    for name, info in report.items():
        # y1 and y2 are IEEE divisions in every [BLOCK_N, pixels] element, as in the reference
        assert info["ptx_div_rn"] >= 2, name
        if "registers" in info:  # cuobjdump ships with triton's NVIDIA backend
            assert info["local"] == 0 and info["stack"] == 0, f"{name} spills registers: {info}"
            assert info["registers"] <= 168, f"{name}: {info}"  # leaves room for 3 programs of 128 threads/SM


# ----------------------------------------------------------------- probing and fallback
def test_probe_without_cuda_or_interpreter(no_interp, monkeypatch):
    monkeypatch.setattr(gpu_triton, "_cuda_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        gpu_triton.probe()


@needs_triton
def test_probe_accepts_the_interpreter(interp, monkeypatch):
    monkeypatch.setattr(gpu_triton, "_cuda_available", lambda: False)
    gpu_triton.probe()


def test_probe_without_triton(interp, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "triton", None)  # makes `import triton` fail
    with pytest.raises(ImportError, match="pip install triton"):
        gpu_triton.probe()


def test_auto_on_cuda_falls_back_to_reference_with_one_warning(no_interp, fresh_dispatch, monkeypatch):
    monkeypatch.setattr(gpu_triton, "_cuda_available", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dispatch.resolve_backend("auto", torch.device("cuda")) == "reference"
        assert dispatch.resolve_backend("auto", torch.device("cuda")) == "reference"
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "triton" in msgs[0] and "no CUDA device" in msgs[0]


def test_render_auto_falls_back_and_still_renders(no_interp, fresh_dispatch, monkeypatch):
    # a CPU-only machine cannot make CUDA tensors: give CPU the CUDA preference order instead
    monkeypatch.setattr(gpu_triton, "_cuda_available", lambda: False)
    monkeypatch.setitem(dispatch._AUTO, "cpu", dispatch._AUTO["cuda"])
    s = CASES[2][1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a, b = render(s), render(s)
    assert sum(issubclass(w.category, RuntimeWarning) for w in caught) == 1
    assert torch.equal(a, render_reference(s)) and torch.equal(a, b)


@needs_triton
def test_render_backend_triton_through_dispatch(interp, fresh_dispatch):
    s = CASES[3][1]  # tile borders
    out = render(s, backend="triton")
    ref = render_reference(s)
    assert (out - ref).abs().max() <= RTOL_INTERP * ref.abs().max()


@needs_triton
def test_fitting_through_the_triton_backend_matches_the_reference(interp, fresh_dispatch):
    from gaussianvision.fit.run import fit_images

    # no symmetry in the images: a gradient that is exactly zero by symmetry is rounding noise in
    # either backend, and Adam would turn the noise's sign into a full step
    coarse = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(7))
    images = torch.nn.functional.interpolate(coarse, size=(12, 14), mode="bilinear", align_corners=False)
    runs = [fit_images(images, 9, iters=3, init="grid", backend=b) for b in ("triton", "reference")]
    start = fit_images(images, 9, iters=0, init="grid", backend="reference")
    for got, ref, before in zip(runs[0].metrics, runs[1].metrics, start.metrics):
        # Adam turns a rounding-level gradient difference into a visible step where a gradient is
        # near zero, so compare the fits' quality, not their parameters bit for bit
        assert abs(got["psnr"] - ref["psnr"]) < 0.01
        assert got["psnr"] > before["psnr"] + 0.1  # and the fit really moved


@needs_triton
def test_render_benchmark_prints_one_row_per_configuration(interp, fresh_dispatch, capsys):
    import json

    from gaussianvision.apps.bench.render import main

    args = ["--device", "cpu", "--backends", "triton", "reference", "--batch", "1", "--n", "2", "5",
            "--size", "16", "--repeats", "1", "--warmup", "0"]
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["backend"], r["n"]) for r in rows] == [("triton", 2), ("triton", 5), ("reference", 2),
                                                      ("reference", 5)]
    assert all(r["forward_ms"] > 0 and r["forward_backward_ms"] > 0 and r["images_per_s_forward_backward"] > 0
               for r in rows)


# ----------------------------------------------------------------- real GPU
@pytest.mark.parametrize("name,splats", CASES, ids=[c[0] for c in CASES])
@requires_cuda
def test_cuda_parity(no_interp, name, splats):
    _parity(_on(splats, "cuda"), name, RTOL_CUDA, ATOL_CUDA)


@requires_cuda
def test_cuda_parity_several_blocks_per_tile(no_interp):
    _parity(many_per_tile("cuda"), "many_per_tile", RTOL_CUDA, ATOL_CUDA)


@requires_cuda
def test_cuda_parity_paper_size(no_interp):
    """224 x 224, N = 3136 (the paper's largest budget), a batch of 3 with variable N."""
    g = torch.Generator().manual_seed(5)
    b, n = 3, 3136
    means = torch.rand(b, n, 2, generator=g) * 224
    chol = torch.stack([0.5 + 3 * torch.rand(b, n, generator=g), torch.rand(b, n, generator=g) - 0.5,
                        0.5 + 3 * torch.rand(b, n, generator=g)], -1)
    s = Splats(means, chol, torch.rand(b, n, 3, generator=g), 224, 224, torch.tensor([3136, 1600, 400]))
    _parity(_on(s, "cuda"), "paper_size", RTOL_CUDA, ATOL_CUDA)


@requires_cuda
def test_cuda_auto_picks_triton(no_interp, fresh_dispatch):
    assert dispatch.resolve_backend("auto", torch.device("cuda")) == "triton"


def test_ellipse_cull_keeps_a_pixel_of_a_huge_gaussian_whose_q_rounds_to_the_cut():
    """Review finding: sigma 2e5 px, its mean 6e5 px off the image: at pixel (0, 0) the kernels' float32 q is 9.0
    (drawn), while 0.01 px of margin moves q by less than its rounding; the relative slack keeps the pair."""
    means = torch.tensor([[[-599999.5625, 0.5]]])
    chol = torch.tensor([[[200000.015625, 0.0, 1.0]]])
    s = Splats(means, chol, torch.ones(1, 1, 3), 16, 16)
    d = pixel_centers(16, 16)[0] - means[0, 0]
    y1 = d[0] / chol[0, 0, 0]
    y2 = (d[1] - chol[0, 0, 1] * y1) / chol[0, 0, 2]
    assert float(y1 * y1 + y2 * y2) <= CUTOFF_Q  # drawn at (0, 0), in float32
    for cull in ("box", "ellipse"):
        ids, offsets, _, _ = _bin(s.means, s.chol, s.mask(), 16, 16, cull=cull)
        assert int(offsets[-1]) == 1, cull

