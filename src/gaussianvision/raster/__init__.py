"""Rendering splats to images.

    render(splats, height=None, width=None, backend="auto") -> [B, 3, H, W]
    squared_error(splats, target, backend="auto") -> [B]   sum of (render - target)^2, fused on numba
    squared_error_grads(splats, target, grad_sse)  -> (sse, grads)   its gradients without autograd on numba
    colors_adjoint(splats, upstream)                -> W^T upstream(W c) [B, N, 3]   (the colors' linear solve)

Backends share one signature and one specification (`reference.py`). They are
registered here by name with a lazy loader and can be probed without being used:

    reference  pure torch, any device, autograd (the spec)
    numba      fused CPU kernels, hand-derived backward   (issue: fast fitting)
    triton     GPU kernels                                 (issue: GPU backend)

`backend="auto"` picks the fastest backend that loads for the splats' device and
falls back to the reference with one warning per process.
"""
from .dispatch import available_backends, colors_adjoint, probe_backend, register_backend, render, resolve_backend, \
    squared_error, squared_error_grads
from .reference import CUTOFF_Q, render_reference

__all__ = ["render", "squared_error", "squared_error_grads", "colors_adjoint", "render_reference", "available_backends",
           "probe_backend", "register_backend", "resolve_backend", "CUTOFF_Q"]
