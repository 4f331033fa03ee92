"""The measurements of `gsv bench gpu`, each run in its own process by bench/gpu_check.py.

    python -m gaussianvision.apps.bench.gpu_steps STEP CONFIG.json PARTIAL.json

STEP is parity | kernels | fit | ttq | baseline | tower. The step reads its settings from CONFIG.json
(the GpuCheckConfig as a dict plus "limit_s", the seconds it has, and "raster", the kernel setting
the kernels step chose, applied before the step runs) and rewrites PARTIAL.json after
every finished row, so that a step killed at its time limit still leaves what it measured.
A row that fails (out of memory, a kernel error) records the error and the step goes on.

Nothing here needs open_clip except the tower step, which says so and skips when it is missing.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from .gpu_kernels import apply_setting, step_kernels
from .render import sync_device

from gaussianvision.atomic import write_text_atomic

__all__ = ["STEPS", "kernel_share", "parse_junit", "main"]

RASTER_KERNELS = ("splat_fwd_kernel", "splat_bwd_kernel", "splat_bwd_tile_kernel")  # raster/_triton_kernels.py
NO_CUDA = "no CUDA device"  # a step's status reads "skipped: no CUDA device"
CUDA_TEST_FILES = ("test_raster_triton.py", "test_fit.py")  # the files with tests marked requires_cuda


class Recorder:
    """The step's partial result, written atomically to disk after every change."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.data: dict = {"rows": []}

    def set(self, **kw) -> None:
        self.data.update(kw)
        self._flush()

    def row(self, row: dict) -> None:
        self.data["rows"].append(row)
        self._flush()

    def _flush(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data, indent=1, default=float))


def _say(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def deadline(cfg: dict) -> float:
    """time.monotonic() at which the step must have finished its rows: the parent's launch time
    ("started_at", wall clock) plus limit_s less margin_s, so that the seconds spent starting this
    process (python, torch, CUDA) count against the step as the parent counts them."""
    left = cfg.get("started_at", time.time()) + cfg["limit_s"] - cfg["margin_s"] - time.time()
    return time.monotonic() + left


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def _error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _device(cfg: dict) -> torch.device | None:
    """The step's device, or None (recorded as skipped) when it asks for CUDA and there is none."""
    dev = torch.device(cfg["device"])
    return None if dev.type == "cuda" and not torch.cuda.is_available() else dev


def _photos(cfg: dict, b: int, device: torch.device) -> torch.Tensor:
    """The bundled photos at cfg size, repeated to a batch of b, on device."""
    from gaussianvision.data.photos import PHOTO_NAMES, bundled_photos
    ph = torch.stack([t for _, t in bundled_photos(cfg["size"], names=PHOTO_NAMES[: cfg["photos"]])])
    return ph.repeat(math.ceil(b / ph.shape[0]), 1, 1, 1)[:b].to(device)


# ------------------------------------------------------------------------------------ 1. parity
def parse_junit(path: str | os.PathLike) -> dict:
    """{"passed", "failed", "skipped", "failures": [test names], "skip_reasons": [...]} of a JUnit XML."""
    out = {"passed": 0, "failed": 0, "skipped": 0, "failures": [], "skip_reasons": []}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "?")
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            out["failed"] += 1
            out["failures"].append(f"{name}: {(bad.get('message') or '').splitlines()[0][:200] if bad.get('message') else ''}")
        elif skip is not None:
            out["skipped"] += 1
            reason = skip.get("message") or ""
            if reason not in out["skip_reasons"]:
                out["skip_reasons"].append(reason)
        else:
            out["passed"] += 1
    return out


def step_parity(cfg: dict, rec: Recorder) -> None:
    """The CUDA tests: the Triton backend against the reference (forward and backward) and a fit on
    CUDA against the same fit on CPU."""
    tests = [Path(cfg["repo"]) / "tests" / name for name in CUDA_TEST_FILES]
    missing = [str(t) for t in tests if not t.is_file()]
    if missing:
        rec.set(skipped=f"{', '.join(missing)} not found (run from a checkout of the repository)")
        return
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the compiled kernels, not the interpreter
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "requires_cuda",
               *map(str, tests), f"--junitxml={xml}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cfg["repo"], env=env, capture_output=True, text=True,
                              timeout=max(5.0, cfg["limit_s"] - 5))
        if not xml.is_file():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise RuntimeError(f"pytest wrote no report (exit {proc.returncode}): {' | '.join(tail)}")
        res = parse_junit(xml)
    res["seconds"] = time.perf_counter() - t0
    res["command"] = " ".join(["python -m pytest -m requires_cuda"] + [f"tests/{n}" for n in CUDA_TEST_FILES])
    if res["passed"] == 0 and res["failed"] == 0 and not torch.cuda.is_available():
        res["skipped_note"] = NO_CUDA
        rec.set(skipped=NO_CUDA)  # regression: reported "ok" with no test run
    rec.set(result=res)
    _say(f"parity: {res['passed']} passed, {res['failed']} failed, {res['skipped']} skipped")


# --------------------------------------------------------------------------------------- 2. fit
def kernel_share(events, wall_us: float, names=RASTER_KERNELS) -> dict:
    """Shares of `wall_us` spent in the raster kernels and in any GPU kernel, from profiler
    key averages (events with .key, .device_type and a self device time in microseconds)."""
    from torch.autograd import DeviceType

    def dev_us(e) -> float:
        return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0)

    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    total = sum(dev_us(e) for e in kernels)
    raster = sum(dev_us(e) for e in kernels if any(n in e.key for n in names))
    wall = max(wall_us, 1e-9)
    return {"raster_kernel_share": raster / wall, "gpu_busy_share": total / wall,
            "raster_of_gpu_time": raster / total if total else None}


def _profile_share(fitter, iters: int, device: torch.device) -> dict | None:
    """Kernel shares over `iters` more iterations of a warmed-up Fitter (CUDA only)."""
    if device.type != "cuda" or iters < 1:
        return None
    from torch.profiler import ProfilerActivity, profile
    sync_device(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fitter.run(iters)
        sync_device(device)
        wall = time.perf_counter() - t0
    return dict(kernel_share(prof.key_averages(), wall * 1e6), profiled_iters=iters)


def _probe(images: torch.Tensor, n: int, cfg: dict, device: torch.device) -> dict:
    """Kernels compiled, then seconds of initialization and of one iteration at this shape."""
    from gaussianvision.fit import FitConfig, Fitter
    fc = FitConfig(device=str(device), backend=cfg["backend"])
    f = Fitter(images, n, fc)
    f.run(2)  # compiles (Triton) or JITs (numba) for this shape
    sync_device(device)
    del f
    g = Fitter(images, n, fc)  # a second one: initialization without first-call costs
    sync_device(device)
    t_init = g.seconds
    k = cfg["probe_iters"]
    t0 = time.perf_counter()
    g.run(k)
    sync_device(device)
    t_it = (time.perf_counter() - t0) / k
    share = _profile_share(g, cfg["profile_iters"], device)
    return {"init_s": t_init, "iter_s": t_it, "share": share}


def _fit_row(batch: int, n: int, cfg: dict, device: torch.device, budget: float) -> dict:
    b = batch
    from gaussianvision.fit import fit_images
    t_row = time.perf_counter()
    images = _photos(cfg, b, device)
    probe = _probe(images, n, cfg, device)
    iters = cfg["iters"]
    left = budget - (time.perf_counter() - t_row) - 2 * probe["init_s"]  # init and the final evaluation
    fits = int(left / max(probe["iter_s"], 1e-9))
    run_iters = max(min(iters, fits), min(iters, cfg["min_iters"]))
    _reset_peak(device)
    sync_device(device)
    t0 = time.perf_counter()
    res = fit_images(images, n, iters=run_iters, device=str(device), backend=cfg["backend"])
    sync_device(device)
    wall = time.perf_counter() - t0
    row = {"batch": b, "n": n, "iters": iters, "iters_run": run_iters, "seconds": wall,
           "images_per_s": b / wall, "mean_psnr": sum(m["psnr"] for m in res.metrics) / b,
           "peak_gib": _peak_gib(device), "init_s": probe["init_s"], "ms_per_iter": 1e3 * probe["iter_s"],
           "image_iters_per_s": b / probe["iter_s"]}
    if run_iters < iters:  # the budget allowed fewer: project the full run from the probe
        row["images_per_s_projected"] = b / (probe["init_s"] + iters * probe["iter_s"])
    if probe["share"]:
        row.update(probe["share"])
    return row


def _each_row(cfg: dict, rec: Recorder, items: list[dict], measure) -> None:
    """measure(device=, budget=, **item) -> row for each item, each with a fair share of the
    step's remaining time; a row that raises is recorded with its error and the next one runs."""
    device = _device(cfg)
    if device is None:
        rec.set(skipped=NO_CUDA)
        return
    end = deadline(cfg)
    for i, item in enumerate(items):
        budget = (end - time.monotonic()) / (len(items) - i)
        _say(" ".join(f"{k}={v}" for k, v in item.items()) + f" ({budget:.0f} s)")
        try:
            row = measure(cfg=cfg, device=device, budget=budget, **item)
        except Exception as e:  # noqa: BLE001 - a failed row is reported, the others still run
            row = dict(item, error=_error(e))
        rec.row(row)
        _say("  " + (row.get("error") or f"{row['images_per_s']:.2f} images/s, {row['mean_psnr']:.2f} dB"))


def step_fit(cfg: dict, rec: Recorder) -> None:
    """Throughput of fit_images at every (batch, N): images/s, PSNR, peak memory, kernel share."""
    _each_row(cfg, rec, [{"batch": b, "n": n} for b in cfg["batches"] for n in cfg["ns"]], _fit_row)


# ------------------------------------------------------------------------------ 2b. time to quality
def _ttq_rows(batch: int, n: int, cfg: dict, device: torch.device, on_row) -> None:
    """bench/ttq's methods on the GPU at one (B, N): seconds per image to each target dB (the
    batch's wall time / B, initialization included) and the images/s that implies."""
    from gaussianvision.fit import fit_images
    from .ttq import time_to_quality
    images = _photos(cfg, batch, device)
    fit_images(images[:2], n, iters=2, device=str(device), backend=cfg["backend"])  # compile the kernels

    def done(r: dict) -> None:  # each method's row is kept as soon as it is measured
        r.update(batch=batch, images_per_s={k: (1 / v if v else None) for k, v in r["seconds_to"].items()})
        on_row(r)

    time_to_quality(images, n, methods=tuple(cfg["ttq_methods"]), iters=cfg["iters"], log=_say,
                    backend=cfg["backend"], on_row=done)


def step_ttq(cfg: dict, rec: Recorder) -> None:
    """Time to quality on the GPU: plain Adam, least-squares colors, coarse to fine (bench/ttq)."""
    device = _device(cfg)
    if device is None:
        rec.set(skipped=NO_CUDA)
        return
    end = deadline(cfg)
    for i, (b, n) in enumerate(cfg["ttq_rows"]):
        budget = (end - time.monotonic()) / (len(cfg["ttq_rows"]) - i)
        _say(f"ttq batch={b} n={n} ({budget:.0f} s)")
        try:
            _ttq_rows(b, n, cfg, device, rec.row)
        except Exception as e:  # noqa: BLE001 - a failed row is reported, the others still run
            rec.row({"batch": b, "n": n, "error": _error(e)})
            _say("  " + _error(e))


# ---------------------------------------------------------------------------------- 3. baseline
def _baseline_row(n: int, cfg: dict, device: torch.device, budget: float) -> dict:
    """LIG-style: random init, one image per launch, the same iterations; as many images of the
    batch as the budget allows (at least two)."""
    from gaussianvision.fit import fit_images
    images = _photos(cfg, cfg["baseline_batch"], device)
    fit_images(images[:1], n, iters=2, init="random", device=str(device), backend=cfg["backend"])  # compile
    t_end = time.monotonic() + budget
    psnrs, t0 = [], time.perf_counter()
    for i in range(images.shape[0]):
        if i >= 2 and time.monotonic() > t_end:
            break
        res = fit_images(images[i:i + 1], n, iters=cfg["iters"], init="random", device=str(device),
                         backend=cfg["backend"])
        psnrs.append(res.metrics[0]["psnr"])
    sync_device(device)
    wall = time.perf_counter() - t0
    done = len(psnrs)
    return {"n": n, "batch": images.shape[0], "images_done": done, "iters": cfg["iters"],
            "seconds_per_image": wall / done, "images_per_s": done / wall, "mean_psnr": sum(psnrs) / done}


def step_baseline(cfg: dict, rec: Recorder) -> None:
    _each_row(cfg, rec, [{"n": n} for n in cfg["ns"]], _baseline_row)


# ------------------------------------------------------------------------------------- 4. tower
def _throughput(fn, batch: int, device: torch.device, budget: float, repeats: int) -> float:
    """Images/s of fn() (one batch per call) after two warm-up calls; stops early at the budget."""
    fn()
    fn()
    sync_device(device)
    t_end = time.monotonic() + budget
    t0, done = time.perf_counter(), 0
    while done < repeats and (done == 0 or time.monotonic() < t_end):
        fn()
        done += 1
    sync_device(device)
    return batch * done / (time.perf_counter() - t0)


def _tower_rows(cfg: dict, device: torch.device, rec: Recorder, deadline: float) -> None:
    from gaussianvision.models import create_gsclip
    from gaussianvision.apps.bench.model import synthetic_splats
    b = cfg["tower_batch"]
    model = create_gsclip(cfg["tower_base"], None, cfg["tower_config"], device=device)
    size = model.image_size[0]
    amp = torch.autocast(device.type, dtype=torch.bfloat16)
    rgb = torch.randn(b, 3, *model.image_size, device=device)
    jobs = [("RGB " + cfg["tower_base"], None, lambda: model.encode_rgb(rgb), model.base.visual)]
    for n in cfg["tower_ns"]:
        s = synthetic_splats(b, n, size).to(device)
        jobs.append((f"GS {cfg['tower_config']}", n, (lambda s=s: model.encode_image(s)), model.visual))
    for i, (tower, n, fwd, module) in enumerate(jobs):
        budget = (deadline - time.monotonic()) / (len(jobs) - i) / 2
        params = [p for p in module.parameters()]
        train = [p for p in params if p.requires_grad] or params  # the RGB tower: trained whole, as in CLIP
        flags = [p.requires_grad for p in params]
        for p in train:
            p.requires_grad_(True)

        def fwd_bwd():
            with amp:
                loss = fwd().float().square().mean()
            loss.backward()
            for p in train:
                p.grad = None

        row = {"tower": tower, "n": n, "batch": b, "trainable_params": sum(p.numel() for p in train)}
        try:
            _reset_peak(device)
            with torch.no_grad(), amp:
                row["forward_images_per_s"] = _throughput(fwd, b, device, budget, cfg["tower_repeats"])
            row["train_images_per_s"] = _throughput(fwd_bwd, b, device, budget, cfg["tower_repeats"])
            row["peak_gib"] = _peak_gib(device)
        except Exception as e:  # noqa: BLE001
            row["error"] = _error(e)
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        rec.row(row)
        _say(f"tower {tower} N={n}: " + (row.get("error") or f"{row['forward_images_per_s']:.0f} / "
                                         f"{row['train_images_per_s']:.0f} images/s"))


def step_tower(cfg: dict, rec: Recorder) -> None:
    """Forward and forward + backward throughput of the GS tower beside the RGB tower (bf16 autocast)."""
    device = _device(cfg)
    if device is None:
        rec.set(skipped=NO_CUDA)
        return
    try:
        import open_clip  # noqa: F401
    except ImportError:
        rec.set(skipped="open_clip is not installed here: skipped (make gpu-wheels, then carry .whl)")
        return
    _tower_rows(cfg, device, rec, deadline(cfg))


STEPS = {"parity": step_parity, "kernels": step_kernels, "ttq": step_ttq, "fit": step_fit, "baseline": step_baseline,
         "tower": step_tower}


def main(argv: list[str] | None = None) -> int:
    step, cfg_path, partial = list(sys.argv[1:] if argv is None else argv)
    cfg = json.loads(Path(cfg_path).read_text())
    rec = Recorder(partial)
    torch.manual_seed(0)
    try:
        apply_setting(cfg.get("raster"))
        STEPS[step](cfg, rec)
    except Exception as e:  # noqa: BLE001 - the parent reports the step as failed with this line
        rec.set(error=_error(e))
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
