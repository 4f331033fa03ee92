"""Benchmark: GS tower vs the base's RGB tower, encode_image latency and FLOPs per image.

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on a meta-device twin of the
model (matmuls, convolutions and attention; 2 FLOPs per multiply-add; element-wise ops such as LayerNorm, GELU and the stem's
sin/cos are not counted) on one image.  The GS count is split into "embed" (stem + resampler
+ CLS/positions) and the rest (frozen blocks + head).  Latency is wall-clock median and minimum
of `repeats` calls after one warm-up, under torch.no_grad, float32, on the current thread count.
Inputs are synthetic (uniform means, sizes that tile the image, random colors): the cost does
not depend on the content.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import time
from typing import Callable, Sequence

import torch

__all__ = ["synthetic_splats", "count_flops", "time_call", "run_model_bench", "markdown_table"]


def _loadavg() -> float | None:
    # a shared machine's load explains noisy latencies; record it with the numbers
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                        platform.processor() or platform.machine())
    except OSError:
        return platform.processor() or platform.machine()


def synthetic_splats(batch: int, n: int, size: int = 224, seed: int = 0):
    """Splats [batch, n] for a size x size image, Gaussians about as wide as the grid spacing."""
    from gaussianvision.splats.types import Splats
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(batch, n, 2, generator=g) * size
    sigma = 0.6 * size / math.sqrt(max(n, 1))
    chol = torch.stack([sigma * (0.5 + torch.rand(batch, n, generator=g)),
                        sigma * 0.3 * (torch.rand(batch, n, generator=g) - 0.5),
                        sigma * (0.5 + torch.rand(batch, n, generator=g))], -1)
    return Splats(means, chol, torch.rand(batch, n, 3, generator=g), size, size)


def count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    # not under no_grad: FlopCounterMode's module tracker then trips over parameters that
    # require grad but have no grad_fn; the forward graph is simply discarded
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def time_call(fn: Callable[[], object], repeats: int, warmup: bool = True) -> tuple[float, float]:
    """(median, min) seconds of `repeats` calls after one warm-up call.

    The minimum is the better estimate on a shared machine (interference only adds time)."""
    with torch.no_grad():
        if warmup:
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


DEFAULT_CONFIGS = ("gs-98", "gs-98-shared")  # 98 tokens: per-layer full-width keys/values vs shared narrow
DEFAULT_N = (400, 900, 1600, 3136)


def run_model_bench(base: str = "ViT-B-16", configs: Sequence[str] = DEFAULT_CONFIGS,
                    n_gaussians: Sequence[int] = DEFAULT_N, batches: Sequence[int] = (1, 8),
                    repeats: int = 3, progress: Callable[[str], None] | None = None,
                    large_batch_repeats: int = 1, on_row: Callable[[dict], None] | None = None) -> dict:
    """Measure every (tower, N, batch).  Returns {"env": ..., "rows": [...]}; one row per
    tower x N with flops_per_image, embed_flops_per_image, ratio_to_rgb (FLOPs), trainable_fraction
    and latency_s / images_per_s per batch.

    Batches above 8 get `large_batch_repeats` timed calls and no warm-up (the smaller batch
    of the same tower warmed it up; one such call costs many seconds on a CPU).
    `on_row(partial_result)` is called after every row, so long runs can save as they go."""
    from gaussianvision.models import create_gsclip, parameter_report
    say = progress or (lambda _msg: None)
    rows = []

    def reps(b):
        return (repeats, True) if b <= 8 else (large_batch_repeats, False)

    def env():
        return {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                "processor": platform.processor() or platform.machine(), "cpu": _cpu_name(),
                "cpus": os.cpu_count(), "dtype": "float32",
                "base": base, "repeats": repeats, "large_batch_repeats": large_batch_repeats,
                "batches": list(batches), "loadavg_1min": _loadavg()}

    def done(row):
        rows.append(row)
        if on_row is not None:
            on_row({"env": env(), "rows": list(rows)})

    models = {}
    metas = {}
    for cfg in configs:
        torch.manual_seed(0)
        models[cfg] = create_gsclip(base, None, cfg).eval()
        # FLOPs are counted on a shape-only twin: on CPU tensors, attention runs in fused
        # kernels (MHA fast path, CPU flash SDPA) that FlopCounterMode does not see
        metas[cfg] = create_gsclip(base, None, cfg, device="meta").eval()
    if not configs:
        raise ValueError("run_model_bench: give at least one GS config")
    first = models[configs[0]]
    size = first.image_size[0]

    # the RGB tower of the same base (GSCLIP.encode_rgb is exactly open_clip's encode_image)
    img1 = torch.randn(1, 3, *first.image_size, device="meta")
    row = {"tower": f"RGB {base}", "config": None, "tokens": first.base.visual.grid_size[0] * first.base.visual.grid_size[1],
           "n_gaussians": None, "flops_per_image": count_flops(lambda: metas[configs[0]].encode_rgb(img1)),
           "embed_flops_per_image": None, "ratio_to_rgb": 1.0, "trainable_fraction": None,
           "latency_s": {}, "latency_min_s": {}, "images_per_s": {}}
    rgb_flops = row["flops_per_image"]
    for b in batches:
        say(f"RGB {base} batch {b}")
        imgs = torch.randn(b, 3, *first.image_size)
        t, best = time_call(lambda: first.encode_rgb(imgs), *reps(b))
        row["latency_s"][str(b)], row["latency_min_s"][str(b)], row["images_per_s"][str(b)] = t, best, b / best
    done(row)

    for cfg, m in models.items():
        share = parameter_report(metas[cfg])["trainable_fraction"]
        for n in n_gaussians:
            s1 = synthetic_splats(1, n, size).to("meta")
            mm = metas[cfg]
            row = {"tower": f"GS {cfg}", "config": cfg, "tokens": m.visual.num_latents, "n_gaussians": n,
                   "flops_per_image": count_flops(lambda: mm.encode_image(s1)),
                   "embed_flops_per_image": count_flops(lambda: mm.visual.embed(s1)),
                   "trainable_fraction": share, "latency_s": {}, "latency_min_s": {}, "images_per_s": {}}
            row["ratio_to_rgb"] = row["flops_per_image"] / rgb_flops
            for b in batches:
                say(f"GS {cfg} N={n} batch {b}")
                s = synthetic_splats(b, n, size, seed=b)
                t, best = time_call(lambda: m.encode_image(s), *reps(b))
                row["latency_s"][str(b)], row["latency_min_s"][str(b)], row["images_per_s"][str(b)] = t, best, b / best
            done(row)
    return {"env": env(), "rows": rows}


def markdown_table(result: dict) -> str:
    batches = result["env"]["batches"]
    head = ["tower", "tokens", "N", "GFLOPs/img", "FLOPs / RGB", "of which stem+resampler", "trainable"]
    head += [f"ms/call median / min (batch {b})" for b in batches] + [f"img/s at min (batch {b})" for b in batches]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [r["tower"], str(r["tokens"]), "-" if r["n_gaussians"] is None else str(r["n_gaussians"]),
                 f"{r['flops_per_image'] / 1e9:.3g}",
                 "-" if r.get("ratio_to_rgb") is None else f"{r['ratio_to_rgb']:.3f}",
                 "-" if r["embed_flops_per_image"] is None else f"{r['embed_flops_per_image'] / 1e9:.3g}",
                 "-" if r.get("trainable_fraction") is None else f"{100 * r['trainable_fraction']:.2f}%"]
        cells += [f"{1e3 * r['latency_s'][str(b)]:.0f} / {1e3 * r['latency_min_s'][str(b)]:.0f}" for b in batches]
        cells += [f"{r['images_per_s'][str(b)]:.1f}" for b in batches]
        lines.append("| " + " | ".join(cells) + " |")
    e = result["env"]
    lines.append("")
    load = f", load average {e['loadavg_1min']}" if e.get("loadavg_1min") is not None else ""
    cpu = f"{e['cpu']} ({e.get('cpus')} CPUs), " if e.get("cpu") else ""
    lines.append(f"{cpu}torch {e['torch']}, {e['threads']} threads{load}, {e['dtype']}, median and min of {e['repeats']} calls after a warm-up "
                 f"(batches > 8: {e.get('large_batch_repeats', e['repeats'])} call(s), no warm-up); "
                 "FLOPs from torch FlopCounterMode (matmul/conv/attention, 2 per multiply-add); "
                 "trainable = trainable / all CLIP parameters (base + GS modules).")
    return "\n".join(lines) + "\n"
