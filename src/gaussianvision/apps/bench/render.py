"""Time render backends alone (forward, forward + backward) on fitted-like splats.

    python -m gaussianvision.apps.bench.render --device cuda --batch 64 --n 400 1600 3136

prints one JSON object per (backend, batch, N), the rows of docs/gpu.md's rasterizer table.

    python -m gaussianvision.apps.bench.render --cpu-table

prints the numba CPU backend's table of docs/cpu-backend.md (CPU and wall ms per image-iteration,
Gaussian-pixel pairs per CPU second).
The splats imitate a fit: N Gaussians spread uniformly over a size x size image, each about as
wide as the spacing of a sqrt(N) x sqrt(N) grid (the grid initializer's scale), randomly sheared.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from gaussianvision.raster.cpu_numba import render_numba
from gaussianvision.splats.types import Splats

__all__ = ["fitted_like_splats", "time_render", "grid_scene", "cpu_table_rows", "main"]


def fitted_like_splats(batch: int, n: int, size: int, device="cpu", seed: int = 0) -> Splats:
    g = torch.Generator().manual_seed(seed)
    spacing = size / max(1.0, n ** 0.5)
    r = lambda *s: torch.rand(*s, generator=g)
    means = r(batch, n, 2) * size
    chol = torch.stack([spacing * (0.4 + 0.5 * r(batch, n)), spacing * 0.6 * (r(batch, n) - 0.5),
                        spacing * (0.4 + 0.5 * r(batch, n))], -1)
    s = Splats(means, chol, r(batch, n, 3), size, size)
    return s.to(device)


def sync_device(device: torch.device) -> None:
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
    # drawn on the device: a batch of 1024 at 224 px drawn on the CPU took seconds per call
    upstream = torch.randn(batch, 3, size, size, generator=torch.Generator(dev).manual_seed(seed + 1), device=dev)

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
            sync_device(dev)
            t0 = time.perf_counter()
            fn()
            sync_device(dev)
            times.append((time.perf_counter() - t0) * 1e3)
        out[label] = sorted(times)[len(times) // 2]
    out["images_per_s_forward_backward"] = batch / (out["forward_backward_ms"] / 1e3)
    return out


def grid_scene(n: int, batch: int = 8, size: int = 224, seed: int = 0) -> Splats:
    """Grid-like float32 Gaussians whose 3-sigma footprints cover each pixel ~12 times."""
    import math
    g = torch.Generator().manual_seed(seed)
    side = max(1, int(round(math.sqrt(n))))
    n = side * side
    step = size / side
    sig = step * math.sqrt(12 / (9 * math.pi))
    ys, xs = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
    mu = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float() * step
    mu = mu[None].expand(batch, -1, -1) + (torch.rand(batch, n, 2, generator=g) - 0.5) * step
    u = lambda: torch.rand(batch, n, generator=g) - 0.5  # noqa: E731
    chol = torch.stack([sig * (1 + 0.4 * u()), sig * 0.6 * u(), sig * (1 + 0.4 * u())], -1)
    return Splats(mu.contiguous(), chol, torch.rand(batch, n, 3, generator=g) / 4, size, size)


def cpu_table_rows(ns=(400, 3136), batch: int = 8, size: int = 224, reps: int = 5, inner: int = 4) -> list[dict]:
    """Forward + backward timing: ms per image-iteration (CPU over all threads, and wall; best
    of `reps` rounds of `inner` iterations) and Gaussian-pixel pairs per CPU second."""
    import time
    rows = []
    for n in ns:
        s = grid_scene(n, batch, size)
        leaves = [x.clone().requires_grad_(True) for x in (s.means, s.chol, s.colors)]
        up = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))

        def step():
            render_numba(Splats(*leaves, size, size)).backward(up)

        step()  # compile / load the cache
        cpu = wall = float("inf")
        for _ in range(reps):
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(inner):
                step()
            cpu = min(cpu, (time.process_time() - c0) / inner / batch)
            wall = min(wall, (time.perf_counter() - w0) / inner / batch)
        pairs = _count_pairs(s)
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
        rows.append({"N": s.means.shape[1], "cpu_ms": 1e3 * cpu, "wall_ms": 1e3 * wall, "pairs_per_image": pairs,
                     "pairs_per_cpu_s": pairs / cpu, "threads": max(1, torch.get_num_threads()), "load": float(load)})
    return rows


def _count_pairs(s: Splats) -> float:
    """Gaussian-pixel pairs per image (pixels with q <= 9), estimated from 64 sampled Gaussians."""
    ones = torch.zeros_like(s.colors)
    ones[..., 0] = 1.0
    total = 0
    # weight >= exp(-4.5) > 0 on the support: count the support of a sample of Gaussians
    idx = torch.arange(0, s.means.shape[1], max(1, s.means.shape[1] // 64))
    for k in idx.tolist():
        one = Splats(s.means[:, k:k + 1], s.chol[:, k:k + 1], ones[:, k:k + 1], s.height, s.width)
        total += int((render_numba(one)[:, 0] > 0).sum())
    return total / s.batch_size * s.means.shape[1] / len(idx)


def _print_cpu_table() -> None:
    print("| N | CPU ms / image-iteration | wall ms / image-iteration | pairs / image | pairs / CPU s | threads | load |")
    print("|---|---|---|---|---|---|---|")
    for r in cpu_table_rows():
        print(f"| {r['N']} | {r['cpu_ms']:.2f} | {r['wall_ms']:.2f} | {r['pairs_per_image']:.3g} | "
              f"{r['pairs_per_cpu_s']:.2g} | {r['threads']} | {r['load']:.1f} |")


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
    p.add_argument("--cpu-table", action="store_true",
                   help="instead: the numba CPU backend's forward + backward, CPU and wall ms per image-iteration "
                        "and Gaussian-pixel pairs per CPU second, on grid-like scenes (a markdown table)")
    a = p.parse_args(argv)
    if a.cpu_table:
        _print_cpu_table()
        return 0
    for backend in a.backends:
        for batch in a.batch:
            for n in a.n:
                row = time_render(backend, batch, n, a.size, a.device, a.repeats, a.warmup)
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
