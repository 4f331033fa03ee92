"""Time render backends alone (forward, forward + backward) on fitted-like splats.

    python -m gaussianvision.apps.bench.render --device cuda --batch 64 --n 400 1600 3136

prints one JSON object per (backend, batch, N), the rows of docs/gpu.md's rasterizer table.
The splats imitate a fit: N Gaussians spread uniformly over a size x size image, each about as
wide as the spacing of a sqrt(N) x sqrt(N) grid (the grid initializer's scale), randomly sheared.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from gaussianvision.splats.types import Splats

__all__ = ["fitted_like_splats", "time_render", "main"]


def fitted_like_splats(batch: int, n: int, size: int, device="cpu", seed: int = 0) -> Splats:
    g = torch.Generator().manual_seed(seed)
    spacing = size / max(1.0, n ** 0.5)
    r = lambda *s: torch.rand(*s, generator=g)
    means = r(batch, n, 2) * size
    chol = torch.stack([spacing * (0.4 + 0.5 * r(batch, n)), spacing * 0.6 * (r(batch, n) - 0.5),
                        spacing * (0.4 + 0.5 * r(batch, n))], -1)
    s = Splats(means, chol, r(batch, n, 3), size, size)
    return s.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_render(backend: str, batch: int, n: int, size: int = 224, device="cpu", repeats: int = 10,
                warmup: int = 2, seed: int = 0) -> dict:
    """Median milliseconds of one render (forward) and of one render + backward."""
    from gaussianvision.raster import render

    dev = torch.device(device)
    s = fitted_like_splats(batch, n, size, dev, seed)
    leaves = [t.clone().requires_grad_(True) for t in (s.means, s.chol, s.colors)]
    fs = Splats(*leaves, size, size)
    upstream = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed + 1)).to(dev)

    def fwd():
        with torch.no_grad():
            render(fs, backend=backend)

    def fwd_bwd():
        for x in leaves:
            x.grad = None
        (render(fs, backend=backend) * upstream).sum().backward()

    out = {"backend": backend, "device": str(dev), "batch": batch, "n": n, "size": size}
    for label, fn in (("forward_ms", fwd), ("forward_backward_ms", fwd_bwd)):
        for _ in range(warmup):  # the first Triton call compiles the kernels
            fn()
        times = []
        for _ in range(repeats):
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            times.append((time.perf_counter() - t0) * 1e3)
        out[label] = sorted(times)[len(times) // 2]
    out["images_per_s_forward_backward"] = batch / (out["forward_backward_ms"] / 1e3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gaussianvision.apps.bench.render", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backends", nargs="+", default=["triton", "reference"])
    p.add_argument("--batch", nargs="+", type=int, default=[64])
    p.add_argument("--n", nargs="+", type=int, default=[400, 1600, 3136])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args(argv)
    for backend in a.backends:
        for batch in a.batch:
            for n in a.n:
                row = time_render(backend, batch, n, a.size, a.device, a.repeats, a.warmup)
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
