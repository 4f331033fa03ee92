"""Backend registry and the `render` entry point."""
from __future__ import annotations

import importlib
import numbers
import warnings
from typing import Callable

import torch

from ..splats.types import Splats, SplatsError
from .reference import render_reference

__all__ = ["render", "squared_error", "squared_error_grads", "colors_adjoint", "register_backend", "probe_backend", "available_backends",
           "resolve_backend"]

# name -> "module:function" (imported lazily) or a callable
_BACKENDS: dict[str, str | Callable] = {
    "reference": render_reference,
    "numba": "gaussianvision.raster.cpu_numba:render_numba",
    "triton": "gaussianvision.raster.gpu_triton:render_triton",
}
# backends with a fused squared_error ("module:function"); the others render and subtract
_SQUARED_ERROR = {"numba": "gaussianvision.raster.cpu_numba:squared_error_numba"}
_SQUARED_ERROR_GRADS = {"numba": "gaussianvision.raster.cpu_numba:squared_error_grads_numba"}
_COLORS_ADJOINT = {"numba": "gaussianvision.raster.cpu_numba:colors_adjoint_numba"}
# preference order of "auto" per device type
_AUTO = {"cpu": ("numba", "reference"), "cuda": ("triton", "reference")}
_loaded: dict[str, Callable] = {}
_failed: dict[str, str] = {}
_warned: set[tuple[str, str]] = set()


def register_backend(name: str, target: str | Callable) -> None:
    _BACKENDS[name] = target
    _loaded.pop(name, None)
    _failed.pop(name, None)


def _load(name: str) -> Callable:
    if name in _loaded:
        return _loaded[name]
    if name in _failed:
        raise ImportError(_failed[name])
    if name not in _BACKENDS:
        raise ValueError(f"unknown render backend {name!r}; known: {['auto', *sorted(_BACKENDS)]}")
    target = _BACKENDS[name]
    try:
        if isinstance(target, str):
            mod, fn = target.split(":")
            module = importlib.import_module(mod)
            probe = getattr(module, "probe", None)
            if probe is not None:
                probe()  # raises ImportError / RuntimeError with the reason
            target = getattr(module, fn)
    except Exception as e:  # a backend that cannot load is recorded, never half-used
        _failed[name] = f"render backend {name!r} is unavailable: {type(e).__name__}: {e}"
        raise ImportError(_failed[name]) from e
    _loaded[name] = target
    return target


def probe_backend(name: str) -> tuple[bool, str]:
    """(True, "ok") if backend `name` loads, else (False, reason). Never raises."""
    try:
        _load(name)
        return True, "ok"
    except Exception as e:
        return False, str(e)


def available_backends() -> dict[str, str]:
    return {name: probe_backend(name)[1] for name in _BACKENDS}


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend != "auto":
        _load(backend)
        return backend
    order = _AUTO.get(device.type, ("reference",))
    for name in order:
        ok, why = probe_backend(name)
        if ok:
            return name
        key = (device.type, name)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"{why}; falling back to the next backend ({device.type})", RuntimeWarning,
                          stacklevel=3)
    return "reference"


MAX_RENDER_PIXELS = 1 << 30  # per image: 12 GiB of float32 RGB


def render(splats: Splats, height: int | None = None, width: int | None = None,
           backend: str = "auto") -> torch.Tensor:
    """Render splats to a [B, 3, H, W] float image (unclamped).

    height/width default to the splats' own size; any other size renders the same
    scene at that resolution (splats are resolution-free).
    """
    if not isinstance(splats, Splats):
        raise SplatsError(f"render: expected Splats, got {type(splats).__name__}")
    h = splats.height if height is None else height
    w = splats.width if width is None else width
    for name, v in (("height", h), ("width", w)):  # regression: 2.5 was taken as 2
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise SplatsError(f"render: {name} must be a whole number of pixels, got {v!r}")
    h, w = int(h), int(w)
    if h <= 0 or w <= 0:
        raise SplatsError(f"render: output size must be positive, got {h}x{w}")
    if h * w > MAX_RENDER_PIXELS:  # regression (new-user trial): the allocator's own error, asking for 120 GB
        raise SplatsError(f"render: {h}x{w} is {h * w:,} pixels, more than {MAX_RENDER_PIXELS:,} per image "
                          f"({12 * h * w / 2**30:.0f} GiB of float32 RGB); render a smaller size or in tiles")
    s = splats.scaled(h, w)
    fn = _load(resolve_backend(backend, s.device))
    return fn(s)


def _function(table: dict, name: str):
    """The function table[name] ("module:function") names, or None."""
    target = table.get(name)
    if target is None:
        return None
    mod, fn = target.split(":")
    return getattr(importlib.import_module(mod), fn)


def squared_error_grads(splats: Splats, target: torch.Tensor, grad_sse: torch.Tensor,
                        backend: str = "auto") -> tuple[torch.Tensor, tuple]:
    """(sse [B], (d/dmeans, d/dchol, d/dcolors)): squared_error's value and the gradients of
    sum_b grad_sse[b] sse[b] with respect to the splats' parameters, as autograd through squared_error
    gives them (numba: the same kernels without the autograd engine around them; the other backends
    through autograd)."""
    _check_target(splats, target, "squared_error_grads")
    name = resolve_backend(backend, splats.device)
    direct = _function(_SQUARED_ERROR_GRADS, name)
    if direct is not None:
        return direct(splats, target, grad_sse)
    leaves = [t.detach().requires_grad_(True) for t in (splats.means, splats.chol, splats.colors)]
    with torch.enable_grad():
        sse = squared_error(Splats(*leaves, splats.height, splats.width, splats.counts), target, name)
        (sse * grad_sse.to(sse.dtype)).sum().backward()
    return sse.detach(), tuple(t.grad for t in leaves)


def colors_adjoint(splats: Splats, upstream: Callable[[torch.Tensor], torch.Tensor],
                   backend: str = "auto") -> torch.Tensor:
    """W^T u [B, N, 3], where render(splats) = W c is linear in the colors c and u = upstream(W c) [B, 3, H, W]:
    the colors' gradient of <render(splats), u>, u a constant (fit/colors.py's conjugate gradients take one per
    iteration). upstream may work in place on the render it is given (it is the caller's to spend). numba: the
    render's own kernels without the autograd engine, bit for bit the numbers of autograd's
    (<render, u>.backward(), in the colors' dtype) without its image-sized temporaries (a 24 Mpixel solve took
    6.3 s with them); the other backends through autograd, the twin it is tested against."""
    name = resolve_backend(backend, splats.device)
    direct = _function(_COLORS_ADJOINT, name)
    if direct is not None:
        return direct(splats, upstream)
    colors = splats.colors.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = _load(name)(Splats(splats.means.detach(), splats.chol.detach(), colors, splats.height, splats.width,
                                 splats.counts))
        # <out, u>, a scalar: out.backward(gradient=u) would give the same numbers, but torch imports sympy
        # (0.3-0.4 s) the first time a gradient is given, inside a budget's clock (regression of 2026-12-07).
        # upstream may spend out's memory (no copy: an image-sized tensor at every pass): out's gradient in the
        # product is u alone, and a backend that kept its output would fail autograd's version check, not err
        (out * upstream(out.detach()).detach()).sum().backward()
    return colors.grad


def _check_target(splats: Splats, target: torch.Tensor, who: str) -> None:
    if not isinstance(splats, Splats):
        raise SplatsError(f"{who}: expected Splats, got {type(splats).__name__}")
    if target.requires_grad:
        raise SplatsError(f"{who}: the target requires grad; the loss is differentiable in the splats "
                          "only (give target.detach())")
    want = (splats.means.shape[0], 3, int(splats.height), int(splats.width))
    if tuple(target.shape) != want:
        raise SplatsError(f"{who}: target must be {list(want)} (the splats' batch and size), "
                          f"got {list(target.shape)}")


def squared_error(splats: Splats, target: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """[B] sum over channels and pixels of (render(splats) - target) ** 2, differentiable in the
    splats; target [B, 3, H, W] at the splats' own size. A backend with a fused version (numba: the
    residual made while the render's rows are in cache) uses it; the others, and the twin it is
    tested against, render and subtract."""
    _check_target(splats, target, "squared_error")
    name = resolve_backend(backend, splats.device)
    fused = _function(_SQUARED_ERROR, name)
    if fused is not None:
        return fused(splats, target)
    pred = _load(name)(splats)
    with torch.no_grad():  # the residual in the render's own memory (no backend keeps its output)
        resid = pred.detach().sub_(target)
        v = resid.flatten(1).unsqueeze(1)  # [B, 1, 3 H W] (B = 0 too)
        sse = torch.bmm(v, v.transpose(1, 2)).view(-1)  # a batched dot: no temporary the image's size
    return _FromResidual.apply(pred, resid, sse)


def take_residual(ctx) -> torch.Tensor:
    """The residual a squared error's forward kept for its one backward (then dropped, or reused in place);
    a second backward (retain_graph) gets a clear error instead of wrong or missing gradients."""
    resid = getattr(ctx, "resid", None)
    if resid is None:
        raise RuntimeError("squared_error: its backward runs once (the residual is spent); retain_graph=True "
                           "and a second backward are not supported: compute the loss again")
    ctx.resid = None
    return resid


class _FromResidual(torch.autograd.Function):
    """sse [B] (given) as a function of pred, with the gradient 2 g[b] resid: the backward of
    sum((pred - target) ** 2) in one pass over the image, the residual made in place beforehand."""

    @staticmethod
    def forward(ctx, pred, resid, sse):
        ctx.resid = resid
        return sse.clone()

    @staticmethod
    def backward(ctx, g):
        resid = take_residual(ctx)
        return resid.mul_((2.0 * g.to(resid.dtype)).view(-1, *[1] * (resid.dim() - 1))), None, None
