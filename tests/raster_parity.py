"""Shared parity harness: every fast render backend is checked against the reference.

    for name, splats in parity_cases(dtype): check_parity(render_fn, splats, ...)

Cases: N = 0, N = 1, random, Gaussians centred on 16-px tile borders and corners, Gaussians
off-image whose footprint reaches in, variable N per image (counts), tiny (sub-pixel) and large
anisotropic Gaussians, a non-square image whose size is not a multiple of 16.
"""
from __future__ import annotations

import torch

from gaussianvision.raster.reference import render_reference
from gaussianvision.splats import Splats


def _mk(means, chol, colors, h, w, counts=None, dtype=torch.float64):
    t = lambda x: torch.as_tensor(x, dtype=dtype)
    return Splats(t(means), t(chol), t(colors), h, w, None if counts is None else torch.as_tensor(counts))


def parity_cases(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)
    cases = []
    cases.append(("empty", _mk(torch.zeros(2, 0, 2), torch.zeros(2, 0, 3), torch.zeros(2, 0, 3), 20, 24, dtype=dtype)))
    cases.append(("single", _mk([[[7.3, 9.1]]], [[[2.5, 0.7, 1.9]]], [[[0.9, 0.4, 0.2]]], 19, 23, dtype=dtype)))
    b, n, h, w = 2, 24, 37, 45
    means = r(b, n, 2) * torch.tensor([w, h])
    chol = torch.stack([0.6 + 4 * r(b, n), (r(b, n) - 0.5) * 4, 0.6 + 4 * r(b, n)], -1)
    cases.append(("random", _mk(means, chol, r(b, n, 3) * 2 - 0.5, h, w, dtype=dtype)))
    # centred exactly on tile borders / corners (16 px tiles) and on pixel edges
    border = torch.tensor([[16.0, 16.0], [32.0, 8.0], [16.0, 31.5], [0.0, 0.0], [47.9, 16.1], [8.0, 32.0]])
    bc = torch.tensor([[3.0, 0.0, 3.0], [5.0, 2.0, 1.0], [1.0, -0.5, 4.0], [2.0, 0.0, 2.0], [2.5, 1.0, 2.5],
                       [6.0, -3.0, 2.0]])
    cases.append(("tile_borders", _mk(border[None], bc[None], r(1, 6, 3), 40, 48, dtype=dtype)))
    off = torch.tensor([[-3.0, 10.0], [10.0, -4.0], [27.0, 10.0], [10.0, 25.0], [-2.0, -2.0], [-100.0, 5.0],
                        [5.0, 400.0]])
    oc = torch.tensor([[2.0, 0.0, 2.0]] * 5 + [[1.0, 0.0, 1.0]] * 2)
    cases.append(("off_image", _mk(off[None], oc[None], r(1, 7, 3), 21, 24, dtype=dtype)))
    b, n = 3, 10
    means = r(b, n, 2) * torch.tensor([30.0, 26.0])
    chol = torch.stack([0.8 + 2 * r(b, n), (r(b, n) - 0.5), 0.8 + 2 * r(b, n)], -1)
    cases.append(("variable_n", _mk(means, chol, r(b, n, 3), 26, 30, counts=[10, 0, 4], dtype=dtype)))
    tiny = torch.tensor([[[5.5, 5.5], [9.2, 4.7], [3.3, 8.8]]])
    tc = torch.tensor([[[0.3, 0.0, 0.3], [0.4, 0.2, 0.35], [20.0, 15.0, 0.5]]])
    cases.append(("tiny_and_needle", _mk(tiny, tc, r(1, 3, 3), 17, 13, dtype=dtype)))
    return cases


def _grads(fn, s: Splats, upstream: torch.Tensor):
    leaves = [s.means.detach().clone().requires_grad_(True), s.chol.detach().clone().requires_grad_(True),
              s.colors.detach().clone().requires_grad_(True)]
    out = fn(Splats(*leaves, s.height, s.width, s.counts))
    (out * upstream).sum().backward()
    return out.detach(), [x.grad if x.grad is not None else torch.zeros_like(x) for x in leaves]


def check_parity(fn, s: Splats, rtol: float = 1e-4, atol: float = 1e-6, seed: int = 1, name: str = ""):
    """Forward and backward of `fn` against the reference, with a random upstream gradient.

    Compares the valid Gaussians' gradients only (padding gradients are unspecified).
    Errors are measured relative to the largest reference magnitude of each tensor.
    """
    g = torch.Generator().manual_seed(seed)
    upstream = torch.randn(s.batch_size, 3, s.height, s.width, generator=g, dtype=torch.float64).to(s.device, s.dtype)
    ref_out, ref_g = _grads(render_reference, s, upstream)
    out, got = _grads(fn, s, upstream)
    assert out.shape == ref_out.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref_out.shape)}"
    _close(out, ref_out, rtol, atol, f"{name} forward")
    m = s.mask()
    for label, a, b in zip(("means", "chol", "colors"), got, ref_g):
        _close(a[m], b[m], rtol, atol, f"{name} grad {label}")


def _close(a: torch.Tensor, b: torch.Tensor, rtol, atol, what):
    if b.numel() == 0:
        assert a.numel() == 0, what
        return
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    err = (a.double() - b.double()).abs().max().item()
    scale = b.double().abs().max().item()
    assert err <= atol + rtol * scale, f"{what}: max abs error {err:.3e} > {atol:.1e} + {rtol:.1e} * {scale:.3e}"
