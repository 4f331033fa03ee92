"""fit/colors.py: least-squares colors by conjugate gradients through the rasterizer."""
from __future__ import annotations

import pytest
import torch

from conftest import random_splats
from gaussianvision.fit.colors import color_objective, solve_colors
from gaussianvision.raster import render
from gaussianvision.splats import Splats


def _dense_solution(s: Splats, images: torch.Tensor, ridge: float) -> torch.Tensor:
    """The reference: W built column by column (each Gaussian alone, unit color, reference
    renderer), then the normal equations solved exactly in float64."""
    b, n = s.colors.shape[:2]
    out = torch.empty(b, n, 3, dtype=torch.float64)
    for i in range(b):
        cols = []
        for k in range(n):
            one = Splats(s.means[i:i + 1, k:k + 1], s.chol[i:i + 1, k:k + 1],
                         torch.ones(1, 1, 3, dtype=s.colors.dtype), s.height, s.width)
            cols.append(render(one, backend="reference")[0, 0].reshape(-1))
        w = torch.stack(cols, 1).double()  # [P, N]
        lam = ridge * s.height * s.width / n
        a = w.T @ w + lam * torch.eye(n, dtype=torch.float64)
        y = images[i].reshape(3, -1).T.double()  # [P, 3]
        rhs = w.T @ y + lam * s.colors[i].double()
        out[i] = torch.linalg.solve(a, rhs)
    return out


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_cg_reaches_the_exact_least_squares_colors(backend):
    s = random_splats(b=2, n=12, h=14, w=18, seed=3)
    images = torch.rand(2, 3, 14, 18, generator=torch.Generator().manual_seed(1))
    want = _dense_solution(s, images, ridge=1e-2)
    got = solve_colors(s, images, iters=60, ridge=1e-2, backend=backend)
    assert torch.allclose(got.double(), want, rtol=1e-3, atol=1e-4)


def test_every_cg_iteration_count_improves_on_the_start():
    s = random_splats(b=3, n=20, h=16, w=16, seed=7)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    start = color_objective(s, images, s.colors, s.colors)
    prev = start
    for k in (1, 2, 4, 8):
        obj = color_objective(s, images, solve_colors(s, images, iters=k), s.colors)
        assert bool((obj <= start + 1e-6).all()) and bool((obj <= prev + 1e-4).all())
        prev = obj


def test_padding_rows_are_left_alone():
    s = random_splats(b=2, n=10, h=12, w=12, seed=4)
    s = Splats(s.means, s.chol, s.colors, 12, 12, torch.tensor([10, 6]))
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    got = solve_colors(s, images, iters=5)
    assert torch.equal(got[1, 6:], s.colors[1, 6:])
    assert not torch.equal(got[1, :6], s.colors[1, :6])


def test_fit_option_color_solve_starts_from_better_colors():
    """FitConfig(color_solve=k): the initial colors are the CG solution for the initial geometry; the
    unclamped squared error at iteration 0 is never above the initializer's own colors'."""
    from gaussianvision.fit import FitConfig, Fitter
    from gaussianvision.fit.colors import solve_colors
    images = torch.rand(2, 3, 24, 20, generator=torch.Generator().manual_seed(8))
    plain = Fitter(images, 30, FitConfig(init="content", backend="reference"))
    solved = Fitter(images, 30, FitConfig(init="content", backend="reference", color_solve=6))
    s0 = plain.splats()
    assert torch.equal(solved.params["means"], plain.params["means"])
    assert torch.allclose(solved.params["colors"], solve_colors(s0, images, 6, backend="reference"), atol=1e-5)
    err = lambda f: ((render(f.splats(), backend="reference") - images) ** 2).flatten(1).sum(1)
    assert bool((err(solved) <= err(plain)).all())
    with pytest.raises(ValueError, match="color_solve must be >= 0"):
        FitConfig(color_solve=-1).check()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_colors_adjoint_on_numba_is_autograds_bit_for_bit(monkeypatch, dtype):
    """raster.colors_adjoint: W^T upstream(W c), each conjugate-gradient pass's render and backward. On numba the
    kernels run without the autograd engine and its image-sized temporaries (a 24 Mpixel solve 6.3 -> 3.6 s);
    the numbers are its twin's, <render, u>.backward() through autograd, to the bit (padding rows, counts, an
    upstream that spends the render in place), and the reference renderer's to rounding."""
    import gaussianvision.raster.dispatch as dispatch
    from gaussianvision.raster import colors_adjoint, probe_backend
    if not probe_backend("numba")[0]:
        pytest.skip("numba is not available")
    s = random_splats(3, 17, 24, 31, seed=4, dtype=dtype)
    s.counts = torch.tensor([17, 9, 0])
    images = torch.rand(3, 3, 24, 31, generator=torch.Generator().manual_seed(5), dtype=dtype)
    uppers = {"identity": lambda w: w, "residual": lambda w: images - w, "in place": lambda w: w.neg_().add_(images)}
    for name, up in uppers.items():
        fast = colors_adjoint(s, up, backend="numba")
        monkeypatch.setattr(dispatch, "_COLORS_ADJOINT", {})  # the autograd twin
        twin = colors_adjoint(s, up, backend="numba")
        ref = colors_adjoint(s, up, backend="reference")
        monkeypatch.undo()
        assert fast.dtype == twin.dtype == dtype and fast.shape == (3, 17, 3)
        bits = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16}[dtype]
        assert torch.equal(fast.contiguous().view(bits), twin.contiguous().view(bits)), name  # signed zeros too
        if dtype != torch.float16:  # (the reference renders float16 in float16)
            torch.testing.assert_close(fast, ref, rtol=1e-4 if dtype == torch.float32 else 1e-9, atol=1e-4), name
        assert not fast[2].any()  # an image without Gaussians
    held = images.clone().requires_grad_(True)  # an upstream whose result requires grad is a constant, as in autograd
    assert torch.equal(colors_adjoint(s, lambda w: held - w, backend="numba"),
                       colors_adjoint(s, lambda w: images - w, backend="numba"))
