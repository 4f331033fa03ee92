"""The kernels step of `gsv bench gpu`: the Triton raster kernels' launch settings side by side.

    step_kernels(cfg, rec)    # one row per (B, N, setting): forward and backward ms, checked against the reference
    best_setting(step)        # the fastest correct setting at the first (B, N): the later steps run with it
    apply_setting(setting)    # sets raster/gpu_triton's launch attributes (TILE, BLOCK_N, BWD_KERNEL, ...)

A setting is a name and overrides of gpu_triton's module attributes; the rest keep their defaults.
The first setting, "tile (2026-12-04)", is the kernel pair the first GPU run measured (backward
"tile"): the baseline of the A/B. Every setting is first compared with the reference renderer on a
small batch (forward and gradients); one that disagrees is reported and never chosen.
Rows run in order of importance (every setting at the first (B, N), then the next (B, N)), and each
is recorded as soon as it is measured, so a step cut short by its time limit keeps what it has.
On CPU (the --tiny run) the kernels run in Triton's interpreter: a check of the step, not a timing.
"""
from __future__ import annotations

import os
import time

import torch

__all__ = ["KERNEL_SETTINGS", "TUNABLES", "apply_setting", "best_setting", "step_kernels"]

TUNABLES = ("TILE", "BLOCK_N", "NUM_WARPS", "BLOCK_N_BWD", "NUM_WARPS_BWD", "BWD_KERNEL", "BWD_CHUNK", "CULL")
KERNEL_SETTINGS = (
    {"name": "tile (2026-12-04)", "BWD_KERNEL": "tile"},
    {"name": "chunked (default)"},
    {"name": "chunked, ellipse tiles", "CULL": "ellipse"},
    {"name": "chunked, bwd block 16", "BLOCK_N_BWD": 16},
    {"name": "chunked, bwd 2 warps", "NUM_WARPS_BWD": 2},
    {"name": "fwd 2 warps", "NUM_WARPS": 2},
    {"name": "fwd 2 warps, bwd block 16", "NUM_WARPS": 2, "BLOCK_N_BWD": 16},
    {"name": "tile 8 px, fwd 2 warps", "TILE": 8, "NUM_WARPS": 2},
    {"name": "tile 8 px, fwd 2 warps, ellipse tiles", "TILE": 8, "NUM_WARPS": 2, "CULL": "ellipse"},
)
# Chosen from instruction counts of the sm_90 SASS (main loop per Gaussian-pixel pair, no GPU here):
# forward 55 at 4 warps, 43 at 2 (each thread holds more pixels of every Gaussian it loads);
# backward tile 132, chunked 80, chunked with block 16 or 2 warps 69; the default keeps the fewest
# registers (occupancy), which counts do not show. Larger forward blocks, 8 px tiles at 4 warps and
# 64-pixel chunks counted worse and are left out. Ellipse tiles (gpu_triton.CULL): 20% fewer (Gaussian, tile) pairs
# than the box at 16 px and 27% fewer at 8 px on `fast` fits at N=400 (8.5% / 16% at N=3136), counted on CPU.
_TOL = 1e-4  # relative to the largest reference magnitude: the CUDA parity tests' tolerance


def apply_setting(setting: dict | None) -> dict:
    """Set gpu_triton's launch attributes from `setting` (its "name" aside); returns the previous values."""
    from gaussianvision.raster import gpu_triton as G
    setting = {k: v for k, v in (setting or {}).items() if k != "name"}
    unknown = sorted(set(setting) - set(TUNABLES))
    if unknown:
        raise ValueError(f"unknown raster setting(s) {unknown}; the tunables: {', '.join(TUNABLES)}")
    before = {k: getattr(G, k) for k in TUNABLES}
    for k, v in setting.items():
        setattr(G, k, v)
    return before


def _max_rel_error(device: torch.device, n: int) -> float:
    """Largest error of the Triton forward and gradients against the reference, relative to the
    reference's largest magnitude per tensor, on 2 fitted-like images of 64 px."""
    from gaussianvision.raster import render
    from gaussianvision.splats.types import Splats
    from .render import fitted_like_splats
    s = fitted_like_splats(2, n, 64, device, seed=3)
    up = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4)).to(device)
    outs = []
    for backend in ("triton", "reference"):
        leaves = [t.clone().requires_grad_(True) for t in (s.means, s.chol, s.colors)]
        img = render(Splats(*leaves, 64, 64), backend=backend)
        (img * up).sum().backward()
        outs.append([img.detach()] + [x.grad for x in leaves])
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(*outs))


def _row(setting: dict, batch: int, n: int, size: int, cfg: dict, device: torch.device) -> dict:
    from .render import time_render
    before = apply_setting(setting)
    try:
        err = _max_rel_error(device, min(n, 64))
        row = {"setting": setting["name"], "batch": batch, "n": n, "size": size, "max_rel_error": err,
               "ok": err <= _TOL}
        t = time_render("triton", batch, n, size, device, repeats=cfg["kernel_repeats"], warmup=2)
    finally:
        apply_setting(before)
    fwd, both = t["forward_ms"], t["forward_backward_ms"]
    row.update(forward_ms=fwd, backward_ms=both - fwd, forward_backward_ms=both,
               us_per_image_iteration=1e3 * both / batch)
    return row


def step_kernels(cfg: dict, rec) -> None:
    from .gpu_steps import NO_CUDA, _device, _error, _say, deadline
    device = _device(cfg)
    if device is None:
        rec.set(skipped=NO_CUDA)
        return
    if device.type == "cpu":  # the --tiny run: the same kernels in Triton's interpreter (this process only)
        os.environ["TRITON_INTERPRET"] = "1"
    end = deadline(cfg)
    settings = [dict(s) for s in cfg.get("kernel_settings") or KERNEL_SETTINGS]
    for batch, n, *rest in cfg["kernel_rows"]:  # (B, N) at cfg["size"], or (B, N, size)
        size = int(rest[0]) if rest else cfg["size"]
        for s in settings:
            if time.monotonic() > end:
                rec.set(cut_short=f"time limit: stopped before {s['name']} at B={batch}, N={n}, {size} px")
                return
            try:
                row = _row(s, batch, n, size, cfg, device)
            except Exception as e:  # noqa: BLE001 - a setting that fails (compile, memory) is reported
                row = {"setting": s["name"], "batch": batch, "n": n, "size": size, "error": _error(e)}
            rec.row(row)
            rec.set(best=best_setting(rec.data, settings))  # kept after every row: a step cut short still chooses
            _say(f"kernels B={batch} N={n} {size} px {s['name']}: " + (row.get("error") or
                 f"{row['us_per_image_iteration']:.1f} us/image-iteration (fwd {row['forward_ms']:.1f} ms, "
                 f"bwd {row['backward_ms']:.1f} ms), error {row['max_rel_error']:.1e}"))


def best_setting(step: dict, settings=KERNEL_SETTINGS) -> dict | None:
    """The setting (from `settings`, by name) with the lowest forward + backward time among the
    correct rows of the first (B, N) measured; None when there is none."""
    rows = [r for r in step.get("rows", []) if "error" not in r and r.get("ok")]
    if not rows:
        return None
    shape = lambda r: (r["batch"], r["n"], r.get("size"))  # noqa: E731
    best = min((r for r in rows if shape(r) == shape(rows[0])), key=lambda r: r["forward_backward_ms"])
    return next((dict(s) for s in settings if s["name"] == best["setting"]), None)
