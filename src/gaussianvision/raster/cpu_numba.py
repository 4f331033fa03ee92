"""The fast CPU render backend ("numba"): fused, hand-differentiated kernels.

    render_numba(splats) -> [B, 3, H, W]    same contract as render_reference
    squared_error_numba(splats, target) -> [B]   sum (render - target)^2, differentiable (the fit's loss)
    probe()                                  raises ImportError (with the reason) if unusable

Math: exactly reference.py's. Each valid Gaussian k adds w * c_k to every pixel centre
p with q = |L_k^{-1}(p - mu_k)|^2 <= 9, w = exp(-q/2); nothing is clamped.

How it is fast
  * Exact footprints, no tiles: on pixel row i the 3-sigma ellipse is one interval of x,
    known in closed form from the conic (x = mu_x + l11 (dy l21 +- |l22| sqrt(9 s - dy^2)) / s,
    s = l21^2 + l22^2). A Gaussian touches exactly the pixels the spec gives it weight on:
    no wasted Gaussian-pixel pairs, no per-pixel cut test, no sorting or binning.
  * The cut itself is the reference's: the two end pixels of every row span are re-decided
    by the reference's formula in the render dtype (same divisions, same order), so the
    support of every Gaussian matches the spec bit for bit, q = 9 exactly included. The
    common case is cheap: all rows of a Gaussian get their closed-form ends in one
    vectorized loop that also checks float64 q just inside and outside both ends; only
    rows where q there is within 1e-4 of 9 (a few per 10,000) take the exact test.
  * exp() about once per Gaussian, not per row or pixel: along a row q is quadratic in the
    column, so w_{j+1} = w_j r_j and r_{j+1} = r_j exp(-a) (a constant per Gaussian); from
    row to row the first weight is carried too (one row down, then along the row to the new
    first pixel; the ratios change by the constant factors exp(-P_xx), exp(-+P_xy),
    exp(-P_yy), P = Sigma^-1). The carry restarts with exp on rows i % 16 == 0 (so row
    bands give bit-identical images) and is off for sub-pixel Gaussians (a or P_yy > 50),
    which use exp on every row. All chains run in float64 whatever T is.
  * Forward: work items are (image, band of rows), each writing only its own rows, so
    there are no races; bands are used only when the batch is smaller than 2 items per
    thread. It records every row's span and first weight/ratio (a few MB), so the backward
    runs neither the conic nor exp. Backward: work items are Gaussians; each walks its own
    spans reading dL/dimage and writes only its own gradients (no atomics, no per-thread
    image buffers). Per pixel it accumulates 6 sums (3 colour; e, e t, e t^2 with
    e = w g.c and t the column offset), vectorized in the image dtype; the five moments
    w g.c {y1, y2, y1^2, y1 y2, y2^2} that the gradients of mu and L need follow per row,
    because y1 and y2 are affine in t.
  * The fit's loss fused in (squared_error_numba, reached through raster.squared_error): given
    the target, each forward work item turns its rows into the residual render - target and
    sums its squares while they are still in cache, and the backward takes that residual as
    the image's gradient, scaling each image's parameter gradients by 2 dL/dsse afterwards:
    the fit's separate passes over the batch (subtract, sum of squares, 2 r) are gone (`fast`,
    40 photos at N=400: 1.06-1.15x the whole fit; rev_ab_sse_*.md).
  * Threads (raster/cpu_threads.py): the kernels are serial, GIL-free (nogil) loops over a range of work items;
    the calling thread and a small thread pool (torch.get_num_threads() threads in all)
    take chunks of them from a shared counter until none is left (a thread that finishes
    early takes more; handing the caller one fixed chunk made 40-image fits 25% slower).
    A render under PARALLEL_PIXELS pixels stays on the calling thread. numba's
    prange was tried first: its OpenMP team spin-waits, and on this shared 2-core machine
    (load ~8) a parallel loop ran 30x slower than the same loop on one thread. A pool
    blocks instead of spinning, is safe to call from several threads, and compiles faster.
    serial_torch() keeps torch's own operations on one thread around the kernels (a fit's
    loop uses it): torch's OpenMP workers spin after each operation too.

Gradients (per pixel, e = w * (dL/dC(p) . c_k), y1 = dx/l11, y2 = (dy - l21 y1)/l22,
sums over the Gaussian's footprint):
    dL/dc     = sum w dL/dC(p)
    dL/dmu_x  = (sum e y1)/l11 - l21/(l11 l22) (sum e y2)     dL/dmu_y = (sum e y2)/l22
    dL/dl11   = (sum e y1^2)/l11 - l21/(l11 l22) (sum e y1 y2)
    dL/dl21   = (sum e y1 y2)/l22                            dL/dl22  = (sum e y2^2)/l22

Why numba and not a C++ extension: the project is pip-installed from source by users
who have no compiler toolchain guarantee, and our CI machines build from a clean clone;
numba ships as a wheel, compiles these kernels on first use and caches the machine code
(cache=True, in raster/__pycache__), so no build step, no ABI coupling to the installed
torch, and one source file holds readable math. What we give up: the first call of each
dtype compiles (about 10 s on a loaded 2-core machine, once per machine), and SIMD only
where LLVM finds it (the per-row colour and gradient loops; the weight recurrence runs as
four interleaved scalar chains). The kernels are loops with no Python objects, so LLVM's
code is what a hand-written C++ loop would give; the time goes into per-row setup (span,
two exp) and per-pixel memory traffic, not into interpreter or dispatch overhead.

Timing: the `--cpu-table` of the render benchmark (apps/bench/render.py, an application).

Dtypes and devices follow the reference: computation in promote(means.dtype, float32)
(float32 or float64), output on the splats' device (non-CPU tensors are moved to the CPU
and back). Gaussians with a zero or non-finite Cholesky diagonal or non-finite mean
contribute nothing and get zero gradients; padding Gaussians (counts) likewise.
Double backward is not supported.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import stat
import tempfile
import threading

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from gaussianvision.atomic import check_writable
from gaussianvision.splats.types import Splats, SplatsError
from gaussianvision.raster.reference import CUTOFF_Q
from gaussianvision.raster.dispatch import take_residual
from gaussianvision.raster.cpu_threads import run_chunks, threads_for

__all__ = ["render_numba", "squared_error_numba", "squared_error_grads_numba", "probe", "numba_module"]

_INSTALL_HINT = "install it with `pip install 'gaussianvision[fast]'` (numba)"


def _writable(folder: str | os.PathLike) -> bool:
    """Whether files can be made in `folder` (created when missing)."""
    try:
        os.makedirs(folder, exist_ok=True)
        check_writable(folder)
        return True
    except OSError:
        return False


def private_folder(path: str | os.PathLike) -> str:
    """`path` as a folder only this user can write (made with mode 0700), or a fresh tempfile.mkdtemp()
    where `path` exists but belongs to someone else or is writable by others: numba's cache index is a
    pickle, so a cache folder another user could plant files in would run their code here."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)  # a link is refused: the folder itself must be this user's
        own = not hasattr(os, "getuid") or st.st_uid == os.getuid()
        if own and stat.S_ISDIR(st.st_mode) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return str(path)
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="gsv-numba-cache-")


def cache_fallback(in_tree: str | os.PathLike, user_wide: str | os.PathLike, temp: str | os.PathLike) -> str | None:
    """The folder numba must cache the kernels in when neither of its own places takes files (the
    package's __pycache__ beside the source, the user's cache folder): `temp`, made private to this
    user (private_folder); None when one of them does. Regression: run as a user with a read-only
    install and HOME, numba refused to compile ("cannot cache function ... no locator available") and
    fits fell back to the slow reference."""
    return None if _writable(in_tree) or _writable(user_wide) else private_folder(temp)


_IMPORT_LOCK = threading.Lock()  # numba's cache setting is process-wide: one kernel import at a time


@functools.lru_cache(maxsize=None)
def numba_module(name: str):
    """Import the numba kernel module `name` (e.g. "gaussianvision.raster._numba_kernels"), its kernels
    compiled into numba's cache: the __pycache__ beside the module, else the user's cache folder, else
    a private temporary folder (cache_fallback); NUMBA_CACHE_DIR wins when set. ImportError (with the
    install hint) when numba is missing."""
    with _IMPORT_LOCK:
        return _import_kernels(name)


def _import_kernels(name: str):
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ImportError(f"no kernel module {name!r}")
    try:
        from numba.core import config
        before = config.CACHE_DIR
        if not before:  # NUMBA_CACHE_DIR wins when set
            from numba.misc.appdirs import AppDirs
            user_wide = AppDirs(appname="numba", appauthor=False).user_cache_dir
            uid = os.getuid() if hasattr(os, "getuid") else 0
            temp = os.path.join(tempfile.gettempdir(), f"gsv-numba-cache-{uid}")
            in_tree = os.path.join(os.path.dirname(spec.origin), "__pycache__")
            config.CACHE_DIR = cache_fallback(in_tree, user_wide, temp) or before
        try:  # numba picks a function's cache folder when it is decorated: ours only, not later packages'
            return importlib.import_module(name)
        finally:
            config.CACHE_DIR = before
    except ImportError as e:
        raise ImportError(f"numba is not importable ({e}); {_INSTALL_HINT}") from e


def _kernels():
    return numba_module("gaussianvision.raster._numba_kernels")


def probe() -> None:
    """Raise ImportError with the reason if numba cannot compile and run kernels here."""
    k = _kernels()
    try:
        ok = float(k._selftest(1.5)) == 4.0
    except Exception as e:  # llvmlite / numba installed but broken
        raise ImportError(f"numba is installed but cannot compile ({type(e).__name__}: {e}); "
                          f"{_INSTALL_HINT}") from e
    if not ok:
        raise ImportError("numba compiled a wrong result in its self-test")


def _bands(batch: int, height: int, threads: int) -> int:
    # Enough (image, band) work items to keep every thread busy; bands cost a little
    # (each band scans all of its image's Gaussians), so use them only for small batches.
    want = 2 * threads
    if threads <= 1 or batch >= want:
        return 1
    return max(1, min(-(-want // batch), height // 8 or 1))


def _scratch(width: int, dtype) -> np.ndarray:
    return np.empty(width + 8, dtype)


def _span_scratch(height: int) -> np.ndarray:
    # closed_spans' per-row (lo, hi, confirmed) of one Gaussian, float64
    return np.empty((3, height + 8), np.float64)


_NO_TARGET = {np.dtype(np.float32): np.empty((0, 3, 1, 1), np.float32),
              np.dtype(np.float64): np.empty((0, 3, 1, 1), np.float64)}  # the forward's plain render


_CENTRES: dict = {}  # (size, dtype) -> pixel centres, made once: exactly as reference.pixel_centers (arange + 0.5 in T)


def _centres(size: int, dtype: torch.dtype) -> np.ndarray:
    key = (size, dtype)
    out = _CENTRES.get(key)
    if out is None:
        out = _CENTRES[key] = (torch.arange(size, dtype=dtype) + 0.5).numpy()  # (writable: a read-only
    return out                                                                      # array is another numba type)


def _forward(means, chol, colors, counts, height, width, target=None):
    """The forward kernels over the thread pool: (image [B, 3, H, W], None, state), or with a target
    (the residual image - target, sse [B] float64: its sums of squares, state); state is what
    _backward needs."""
    k = _kernels()
    dtype = means.dtype
    m = means.detach().contiguous().numpy()
    c = chol.detach().contiguous().numpy()
    col = colors.detach().contiguous().numpy()
    cnt = counts.numpy()
    xs, ys = _centres(width, dtype), _centres(height, dtype)
    nine = xs.dtype.type(CUTOFF_Q)
    b, n = m.shape[0], m.shape[1]
    params = np.empty((b, n, k.NPARAM), np.float64)
    threads = threads_for(b * height * width)
    run_chunks(k.setup, b * n, lambda i0, i1: (m, c, cnt, height, params, i0, i1), threads, per_thread=1)
    # one slot per (Gaussian, row of its 3-sigma box): the forward records each row's
    # span and first weights there, so the backward needs neither the conic nor exp
    rows = (params[:, :, k.ROW1] - params[:, :, k.ROW0] + 1).clip(min=0).astype(np.int64).ravel()
    offsets = np.zeros(rows.size + 1, np.int64)
    np.cumsum(rows, out=offsets[1:])
    spans = np.empty(4 * int(offsets[-1]), np.float64)  # flat: 4 per slot
    image = torch.empty((b, 3, height, width), dtype=dtype)
    im = image.numpy()
    bands = _bands(b, height, threads)
    tg = _NO_TARGET[xs.dtype] if target is None else target.detach().to(dtype).contiguous().numpy()
    sse = np.zeros(b * bands, np.float64)
    run_chunks(k.forward, b * bands,
         lambda i0, i1: (m, c, col, cnt, xs, ys, nine, params, bands, i0, i1, im,
                         _scratch(width, xs.dtype), offsets, spans, _span_scratch(height), tg, sse), threads)
    state = (params, offsets, spans, xs.dtype, means.shape, chol.shape)
    return image, (None if target is None else torch.from_numpy(sse.reshape(b, bands).sum(1))), state


def _backward(state, colors: torch.Tensor, grad_image: torch.Tensor, need=(True, True, True)) -> tuple:
    """The gradients (means, chol, colors; numpy, None where not `need`ed) of sum(grad_image * image)
    for the render _forward made (its state; colors: the colors it rendered)."""
    k = _kernels()
    params, offsets, spans, np_dtype, m_shape, c_shape = state
    col = colors.detach().contiguous().numpy()
    g = grad_image.to(colors.dtype).contiguous().numpy()
    g_means = np.empty(m_shape, np_dtype)
    g_chol = np.empty(c_shape, np_dtype)
    g_colors = np.empty(col.shape, np_dtype)
    width = g.shape[3]
    tb = np.arange(width + 8, dtype=np_dtype)
    b, n = m_shape[0], m_shape[1]
    run_chunks(k.backward, b * n,
         lambda i0, i1: (params, col, g, i0, i1, offsets, spans, g_means, g_chol, g_colors,
                         _scratch(width, np_dtype), tb), threads_for(b * g.shape[2] * width))
    return tuple(x if need[i] else None for i, x in enumerate((g_means, g_chol, g_colors)))


class _RenderNumba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, chol, colors, counts, height, width):
        image, _, ctx.extra = _forward(means, chol, colors, counts, height, width)
        ctx.save_for_backward(colors)
        return image

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_image):
        need = ctx.needs_input_grad[:3]
        if not any(need):
            return None, None, None, None, None, None
        (colors,) = ctx.saved_tensors
        grads = [None if g is None else torch.from_numpy(g) for g in _backward(ctx.extra, colors, grad_image, need)]
        return (*grads, None, None, None)


def _scaled_grads(state, colors, resid, grad_sse, need=(True, True, True)) -> list:
    """The gradients of sum_b grad_sse[b] sse[b]: the kernel takes the residual as the image's gradient
    and each image's are scaled by 2 grad_sse[b] afterwards (tensors of the Gaussians' size)."""
    scale = (2.0 * grad_sse.to(resid.dtype)).view(-1, 1, 1)
    return [None if g is None else torch.from_numpy(g).mul_(scale) for g in _backward(state, colors, resid, need)]


class _SquaredErrorNumba(torch.autograd.Function):
    """sum((render - target) ** 2) per image [B], the residual made inside the forward kernel (its
    rows still in cache) and kept as the backward's image gradient: no passes of their own over the
    image for the subtraction, the sum of squares and 2 (render - target)."""

    @staticmethod
    def forward(ctx, means, chol, colors, counts, height, width, target):
        ctx.resid, sse, ctx.extra = _forward(means, chol, colors, counts, height, width, target)
        ctx.save_for_backward(colors)
        return sse.to(means.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_sse):
        need = ctx.needs_input_grad[:3]
        (colors,) = ctx.saved_tensors
        resid = take_residual(ctx)
        grads = _scaled_grads(ctx.extra, colors, resid, grad_sse, need) if any(need) else [None] * 3
        return (*grads, None, None, None, None)


def _checked(splats: Splats, who: str):
    """(means, chol, colors, counts, dtype) of `splats` for the kernels; SplatsError naming `who`."""
    means, chol, colors = splats.means, splats.chol, splats.colors
    for name, t, last in (("means", means, 2), ("chol", chol, 3), ("colors", colors, 3)):
        if t.dim() != 3 or t.shape[-1] != last or t.shape[:2] != means.shape[:2]:
            raise SplatsError(f"{who}: {name} must be [B, N, {last}] matching means "
                              f"{list(means.shape)}, got {list(t.shape)}")
    dtype = torch.promote_types(means.dtype, torch.float32)
    if dtype not in (torch.float32, torch.float64):
        raise SplatsError(f"{who}: unsupported dtype {means.dtype} (float16/32/64 only)")
    n = means.shape[1]
    counts = splats.num_gaussians().to("cpu", torch.int64).clamp(0, n).contiguous()
    cpu = torch.device("cpu")
    return means.to(cpu, dtype), chol.to(cpu, dtype), colors.to(cpu, dtype), counts, dtype


def render_numba(splats: Splats) -> torch.Tensor:
    """[B, 3, H, W] image of `splats` at their own size; differentiable (fused backward)."""
    b, n = splats.means.shape[:2]
    h, w = int(splats.height), int(splats.width)
    means, chol, colors, counts, dtype = _checked(splats, "render_numba")
    if n == 0 or b == 0:
        return splats.means.new_zeros((b, 3, h, w), dtype=dtype)
    return _RenderNumba.apply(means, chol, colors, counts, h, w).to(splats.means.device)


def squared_error_grads_numba(splats: Splats, target: torch.Tensor, grad_sse: torch.Tensor) -> tuple:
    """(sse [B], (d/dmeans, d/dchol, d/dcolors)) of sum_b grad_sse[b] sse[b], sse as squared_error_numba's,
    without autograd: the numbers its backward gives, bit for bit, without the engine's work around
    the kernels (a fit's step on one image spent about 0.3 ms there, as much as a 112 px render)."""
    b, n = splats.means.shape[:2]
    means, chol, colors, counts, dtype = _checked(splats, "squared_error_grads_numba")
    if n == 0 or b == 0:
        sse = (target.to(dtype) ** 2).flatten(1).sum(1)
        return sse, tuple(torch.zeros_like(t, dtype=dtype) for t in (means, chol, colors))
    resid, sse, state = _forward(means, chol, colors, counts, int(splats.height), int(splats.width),
                                 target.to("cpu"))
    grads = _scaled_grads(state, colors, resid, grad_sse.to("cpu"))
    device = splats.means.device
    return sse.to(dtype).to(device), tuple(g.to(device) for g in grads)


def colors_adjoint_numba(splats: Splats, upstream) -> torch.Tensor:
    """W^T upstream(W c) [B, N, 3] (raster.dispatch.colors_adjoint): the forward kernels, then the backward's with
    u as the image's gradient, as _RenderNumba's backward takes it from autograd (the same numbers), without the
    engine and its image-sized temporaries; upstream gets the render to spend (in place is fine)."""
    b, n = splats.means.shape[:2]
    device, out_dtype = splats.means.device, splats.colors.dtype  # autograd's gradient: the colors' own dtype
    means, chol, colors, counts, dtype = _checked(splats, "colors_adjoint_numba")
    if n == 0 or b == 0:
        return torch.zeros(colors.shape, dtype=out_dtype, device=device)
    image, _, state = _forward(means, chol, colors, counts, int(splats.height), int(splats.width))
    # upstream sees the render where the splats are (its other operands are there; no copy on the CPU, so it may
    # spend the render in place), and a result that requires grad is a constant here, as in autograd's <out, u>
    u = upstream(image.to(device)).detach().to("cpu")
    g = torch.from_numpy(_backward(state, colors, u, (False, False, True))[2])
    return g.to(device=device, dtype=out_dtype)


def squared_error_numba(splats: Splats, target: torch.Tensor) -> torch.Tensor:
    """[B] sum of (render(splats) - target) ** 2 over channels and pixels; differentiable in the
    splats (target [B, 3, H, W] at the splats' size). The fit's loss in one fused pass
    (raster.dispatch.squared_error is the entry point; its twin renders and subtracts)."""
    b, n = splats.means.shape[:2]
    h, w = int(splats.height), int(splats.width)
    means, chol, colors, counts, dtype = _checked(splats, "squared_error_numba")
    if n == 0 or b == 0:
        return (target.to(dtype) ** 2).flatten(1).sum(1)
    sse = _SquaredErrorNumba.apply(means, chol, colors, counts, h, w, target.to("cpu"))
    return sse.to(splats.means.device)
