"""The Triton render backend: tiled forward and backward kernels for CUDA devices.

    render_triton(splats) -> [B, 3, H, W]     (same contract as reference.render_reference)

Pipeline (every step batched over images; no per-image launches):
  1. `_bin` (torch ops on the splats' device): each valid Gaussian's 3-sigma bounding box is
     turned into the range of 16x16 pixel tiles whose pixel centres it can reach (with
     CULL = "ellipse", only those tiles the ellipse itself meets); the (image, tile, Gaussian)
     pairs are sorted by (image, tile) into one id list with per-tile offsets. Padding (beyond
     counts[b]) and Gaussians that miss the image are never binned.
  2. `splat_fwd_kernel` on a grid (tile, image): each program sums its tile's Gaussians.
  3. `splat_bwd_kernel` on the same grid and bins: per-pixel gradients are reduced over the
     tile's pixels and atomically added into per-Gaussian gradients (means, chol, colors).
     BWD_KERNEL = "chunked" (the default: pixels CHUNK at a time, sums kept per pair in
     registers, reduced once per block inside each warp, relaxed atomics) or "tile" (the first
     backward: a reduction across the whole tile per block; kept until a GPU times the two).

Numerics: computed in float32 whatever the input dtype (the output has the reference's dtype,
promote_types(dtype, float32)); the 3-sigma cut q <= CUTOFF_Q is exact as in the reference, the
tile culling only skips pairs that the cut would zero anyway.

Devices: CUDA tensors run the compiled kernels (or, with TRITON_INTERPRET=1, the interpreted
ones). CPU tensors run the same kernels in Triton's interpreter, only when TRITON_INTERPRET=1
(slow; this is how the project tests the kernels without a GPU). `probe()` tells `render(backend="auto")` whether this backend can load.
"""
from __future__ import annotations

import contextlib
import os

import torch

from gaussianvision.splats.types import Splats, SplatsError
from gaussianvision.raster.reference import CUTOFF_Q

__all__ = ["render_triton", "probe", "interpret_enabled", "bwd_launch", "TILE", "BLOCK_N"]

# Launch shapes, chosen from compiled register counts (sm_80 cubin via cuobjdump, no GPU here,
# not timed): a program holds [BLOCK_N, TILE*TILE] float32 arrays, and BLOCK_N = 16 pushed the
# forward to 188 registers a thread; with 8 both kernels use about 110-120 and spill nothing
# (tests/test_raster_triton.py checks the no-spill part). Module attributes, so a user with a GPU
# can tune them (docs/gpu.md) without editing the kernels.
TILE = 16  # tile side in pixels (TILE x TILE pixels per program); a power of two
BLOCK_N = 8  # Gaussians per inner step of the forward kernel
BLOCK_N_BWD = 8
NUM_WARPS = 4
NUM_WARPS_BWD = 4
BWD_KERNEL = "chunked"  # or "tile": splat_bwd_kernel / splat_bwd_tile_kernel (_triton_kernels.py)
BWD_CHUNK = 32  # pixels per inner step of the chunked backward (a power of two; capped at the tile's pixels)
_BWD_KERNELS = {"chunked": "splat_bwd_kernel", "tile": "splat_bwd_tile_kernel"}
# Which tiles a Gaussian is binned to: "box", every tile its 3-sigma bounding box reaches; or "ellipse", only
# those whose pixel centres, the rectangle grown by CULL_MARGIN px, the 3-sigma ellipse itself meets (fewer pairs
# for the kernels: 20% fewer on `fast` fits at N=400, 224 px, 8.5% at N=3136; a few more operations per pair in
# the binning). The kernels' output is the same either way. "box" until a GPU times the two (the gpu check's
# kernels step).
CULL = "box"
CULL_MARGIN = 0.01  # px; the kernels' float32 rounding moves a pixel's q as a shift of about 1e-5 px would
CULL_REL = 1e-5  # relative slack on q: the kernels' float32 q may lie a few roundings (6e-8 each) below the exact q
_CULLS = ("box", "ellipse")
# the 3-sigma box is widened by this much so that float rounding in q can never make the
# box cull a pair that the kernel's own (exact) cut would keep
_BOX_REL, _BOX_ABS = 1e-4, 1e-3

_INSTALL_HINT = "pip install triton (Linux; normally installed with the CUDA build of torch)"


def interpret_enabled() -> bool:
    """True when TRITON_INTERPRET is set to a true value (read now, not at import)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _cuda_available() -> bool:
    # a seam for tests that fake a CUDA-less (or CUDA) machine
    return torch.cuda.is_available()


def probe() -> None:
    """Raise ImportError / RuntimeError with the reason when this backend cannot run."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # a broken triton install raises more than ImportError
        raise ImportError(f"triton is not importable ({type(e).__name__}: {e}); {_INSTALL_HINT}") from e
    if interpret_enabled():
        return
    if not _cuda_available():
        raise RuntimeError("no CUDA device (torch.cuda.is_available() is False); the Triton kernels need a GPU, "
                           "or TRITON_INTERPRET=1 to run them on CPU tensors (slow, for testing)")


def _check_device(device: torch.device) -> None:
    if device.type == "cuda" or (device.type == "cpu" and interpret_enabled()):
        return
    raise RuntimeError(f"render_triton: tensors on {device} need a CUDA device; set TRITON_INTERPRET=1 "
                       f"to run the Triton kernels on CPU tensors (slow, for testing)")


_variants: dict[tuple[str, bool], object] = {}


def _kernel(name: str, device: torch.device):
    """The kernel `name` for tensors on `device`: compiled, or run by Triton's interpreter.

    Triton decides between the two when a kernel is decorated, i.e. when _triton_kernels is
    first imported. The mode is re-decided here on every call from TRITON_INTERPRET, so that
    setting or clearing the variable after import (tests, notebooks) takes effect.
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    from gaussianvision.raster import _triton_kernels as K

    _check_device(device)
    interp = interpret_enabled()
    key = (name, interp)
    if key not in _variants:
        decorated = getattr(K, name)
        want = InterpretedFunction if interp else JITFunction
        _variants[key] = decorated if isinstance(decorated, want) else want(decorated.fn)
    return _variants[key]


def _bin(means: torch.Tensor, chol: torch.Tensor, valid: torch.Tensor, h: int, w: int, tile: int | None = None,
         cull: str | None = None):
    """Sort (image, tile, Gaussian) overlaps by (image, tile).

    means [B, N, 2], chol [B, N, 3] float32, valid [B, N] bool; tile, cull: TILE, CULL by default.
    Returns (ids [P] int64 flat Gaussian indices b*N + n, offsets [B*T + 1] int64, tiles_x,
    tiles_per_image). Tile k of the batch lists ids[offsets[k]:offsets[k + 1]]; with cull="ellipse"
    the pairs culled after the box sort past the last tile (ids[offsets[-1]:], never read).
    """
    tile = TILE if tile is None else int(tile)
    cull = CULL if cull is None else cull
    if cull not in _CULLS:
        raise ValueError(f"gpu_triton.CULL={cull!r}: choose one of {', '.join(_CULLS)}")
    b, n = valid.shape
    ntx, nty = -(-w // tile), -(-h // tile)
    t = ntx * nty
    dev = means.device
    # the q <= 9 ellipse of Sigma = L L^T spans |dx| <= 3*sqrt(S_xx), |dy| <= 3*sqrt(S_yy)
    s = CUTOFF_Q ** 0.5
    rx = s * chol[..., 0].abs()
    ry = s * torch.sqrt(chol[..., 1] ** 2 + chol[..., 2] ** 2)
    rx = rx * (1 + _BOX_REL) + _BOX_ABS
    ry = ry * (1 + _BOX_REL) + _BOX_ABS
    mx, my = means[..., 0], means[..., 1]
    # pixel j has its centre at j + 0.5: columns whose centres lie in [mx - rx, mx + rx];
    # clamping in float first keeps huge or far-off values from overflowing the int cast
    j0 = torch.ceil(mx - rx - 0.5).clamp(0, w)
    j1 = torch.floor(mx + rx - 0.5).clamp(-1, w - 1)
    i0 = torch.ceil(my - ry - 0.5).clamp(0, h)
    i1 = torch.floor(my + ry - 0.5).clamp(-1, h - 1)
    hit = valid & (j0 <= j1) & (i0 <= i1)  # NaN parameters compare False: never binned
    tx0 = torch.where(hit, j0, 0).long() // tile
    tx1 = torch.where(hit, j1, 0).long() // tile
    ty0 = torch.where(hit, i0, 0).long() // tile
    ty1 = torch.where(hit, i1, 0).long() // tile
    wx = tx1 - tx0 + 1
    per = torch.where(hit, wx * (ty1 - ty0 + 1), 0).reshape(-1)  # tiles touched per Gaussian
    total = int(per.sum())  # one host sync: the pair list's length
    if total == 0:
        return (torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(b * t + 1, dtype=torch.long, device=dev),
                ntx, t)
    gid = torch.repeat_interleave(torch.arange(b * n, device=dev), per, output_size=total)
    first = torch.cumsum(per, 0) - per
    k = torch.arange(total, device=dev) - first[gid]
    wxg = wx.reshape(-1)[gid]
    tx = tx0.reshape(-1)[gid] + k % wxg
    ty = ty0.reshape(-1)[gid] + k // wxg
    key = (gid // n) * t + ty * ntx + tx
    if cull == "ellipse":  # a culled pair sorts past every tile (key b * t): no second host sync to drop it
        key = torch.where(_meets_ellipse(means, chol, gid, tx, ty, tile, h, w), key, b * t)
    if b * t < 2 ** 31:  # 32-bit keys: a radix sort makes half the passes of 64-bit ones
        key = key.to(torch.int32)
    key, order = torch.sort(key, stable=True)  # stable: a tile sums its Gaussians in index order
    ids = gid[order]
    # the keys are sorted: tile k's slice starts where key k would be inserted (no host sync, unlike bincount)
    offsets = torch.searchsorted(key, torch.arange(b * t + 1, device=dev, dtype=key.dtype))
    return ids, offsets, ntx, t


def _meets_ellipse(means, chol, gid, tx, ty, tile: int, h: int, w: int) -> torch.Tensor:
    """Per (Gaussian gid, tile (tx, ty)) pair: whether the 3-sigma ellipse q <= CUTOFF_Q meets the rectangle of
    the tile's pixel centres grown by CULL_MARGIN px (float64). q's smallest value on the rectangle is 0 where
    the mean lies inside; else it lies on an edge, where q is a quadratic in one coordinate whose minimum is
    taken in closed form and clamped to the edge. q is computed as the kernels compute it (y1 = dx / l11,
    y2 = (dy - l21 y1) / l22); a pair whose q is not a number (a zero factor) is kept, as the box keeps it."""
    d = torch.float64
    mx, my = (means[..., k].reshape(-1).to(d) for k in range(2))
    l11, l21, l22 = (chol[..., k].reshape(-1).to(d) for k in range(3))
    xc = l11 * l21 / (l21 * l21 + l22 * l22)  # on a row dy, q is least at dx = xc dy
    mx, my, l11, l21, l22, xc = (v[gid] for v in (mx, my, l11, l21, l22, xc))
    x0 = (tx * tile).to(d) + (0.5 - CULL_MARGIN) - mx
    x1 = torch.clamp((tx + 1) * tile, max=w).to(d) + (CULL_MARGIN - 0.5) - mx
    y0 = (ty * tile).to(d) + (0.5 - CULL_MARGIN) - my
    y1 = torch.clamp((ty + 1) * tile, max=h).to(d) + (CULL_MARGIN - 0.5) - my

    def q(dx, dy):
        u = dx / l11
        v = (dy - l21 * u) / l22
        return u * u + v * v

    least = torch.minimum(
        torch.minimum(q(x0, torch.clamp(l21 * x0 / l11, y0, y1)), q(x1, torch.clamp(l21 * x1 / l11, y0, y1))),
        torch.minimum(q(torch.clamp(xc * y0, x0, x1), y0), q(torch.clamp(xc * y1, x0, x1), y1)))
    inside = (x0 <= 0) & (x1 >= 0) & (y0 <= 0) & (y1 >= 0)
    # the relative slack: a Gaussian so wide (sigma over ~2e4 px) that 0.01 px moves q by less than the kernels'
    # float32 rounding of it (review finding); NaN compares False: kept
    return inside | ~(least > CUTOFF_Q * (1 + CULL_REL))


def bwd_launch(tile: int) -> tuple[str, dict]:
    """The backward kernel's name and its extra constexprs for the current BWD_KERNEL / BWD_CHUNK."""
    if BWD_KERNEL not in _BWD_KERNELS:
        raise ValueError(f"gpu_triton.BWD_KERNEL={BWD_KERNEL!r}: choose one of {', '.join(_BWD_KERNELS)}")
    if BWD_KERNEL == "tile":
        return _BWD_KERNELS["tile"], {}
    chunk = min(int(BWD_CHUNK), tile * tile)
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"gpu_triton.BWD_CHUNK={BWD_CHUNK!r}: expected a power of two")
    return _BWD_KERNELS["chunked"], {"CHUNK": chunk}


def _on_device(device: torch.device):
    # Triton launches on the current CUDA device: make it the tensors' one (cuda:1, ...)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class _RenderTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, chol, colors, valid, h, w):
        m = means.detach().to(torch.float32).contiguous()
        c = chol.detach().to(torch.float32).contiguous()
        col = colors.detach().to(torch.float32).contiguous()
        bsz = m.shape[0]
        out = torch.zeros(bsz, 3, h, w, dtype=torch.float32, device=m.device)
        tile = int(TILE)  # read once: backward must walk the same bins
        ids, offsets, ntx, t = _bin(m, c, valid, h, w, tile, CULL)
        if bsz > 0 and ids.numel() > 0:
            kern = _kernel("splat_fwd_kernel", m.device)
            with _on_device(m.device):
                kern[(t, bsz)](m, c, col, ids, offsets, out, h, w, ntx, t,
                               CUTOFF_Q=CUTOFF_Q, TILE_H=tile, TILE_W=tile, BLOCK_N=BLOCK_N, num_warps=NUM_WARPS)
        ctx.save_for_backward(m, c, col, ids, offsets)
        ctx.meta = (h, w, ntx, t, tile, means.dtype, chol.dtype, colors.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        m, c, col, ids, offsets = ctx.saved_tensors
        h, w, ntx, t, tile, dm, dc, dcol = ctx.meta
        gm, gc, gcol = torch.zeros_like(m), torch.zeros_like(c), torch.zeros_like(col)
        if ids.numel() > 0:
            g = grad_out.to(torch.float32).contiguous()
            name, extra = bwd_launch(tile)
            kern = _kernel(name, m.device)
            with _on_device(m.device):
                kern[(t, m.shape[0])](m, c, col, ids, offsets, g, gm, gc, gcol, h, w, ntx, t,
                                      CUTOFF_Q=CUTOFF_Q, TILE_H=tile, TILE_W=tile, BLOCK_N=BLOCK_N_BWD,
                                      num_warps=NUM_WARPS_BWD, **extra)
        return gm.to(dm), gc.to(dc), gcol.to(dcol), None, None, None


def render_triton(splats: Splats) -> torch.Tensor:
    """[B, 3, H, W] image of `splats` at their own size, via the Triton kernels.

    Differentiable with respect to means, chol and colors (padding gets zero gradients).
    CUDA tensors, or CPU tensors with TRITON_INTERPRET=1.
    """
    if not isinstance(splats, Splats):
        raise SplatsError(f"render_triton: expected Splats, got {type(splats).__name__}")
    _check_device(splats.device)
    h, w = int(splats.height), int(splats.width)
    out_dtype = torch.promote_types(splats.dtype, torch.float32)
    valid = splats.mask()
    out = _RenderTriton.apply(splats.means, splats.chol, splats.colors, valid, h, w)
    return out if out.dtype == out_dtype else out.to(out_dtype)
