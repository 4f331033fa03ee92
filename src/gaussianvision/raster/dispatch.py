"""Backend registry and the `render` entry point."""
from __future__ import annotations

import importlib
import numbers
import warnings
from typing import Callable

import torch

from ..splats.types import Splats, SplatsError
from .reference import render_reference

__all__ = ["render", "register_backend", "probe_backend", "available_backends", "resolve_backend"]

# name -> "module:function" (imported lazily) or a callable
_BACKENDS: dict[str, str | Callable] = {
    "reference": render_reference,
    "numba": "gaussianvision.raster.cpu_numba:render_numba",
    "triton": "gaussianvision.raster.gpu_triton:render_triton",
}
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
    s = splats.scaled(h, w)
    fn = _load(resolve_backend(backend, s.device))
    return fn(s)
