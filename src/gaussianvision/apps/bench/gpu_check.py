"""`gsv bench gpu` / `make gpu-check`: one prepared, time-boxed measurement on a GPU machine.

    res = run_gpu_check(GpuCheckConfig())          # the default steps (CUDA), about 7 minutes at most
    res = run_gpu_check(GpuCheckConfig.tiny_preset()) # every step on CPU with a few small images

Steps, each in its own process with its own time limit (bench/gpu_steps.py); a step that fails
or runs out of time is reported with what it measured so far, and the next one runs:
  parity    the CUDA parity tests of the Triton backend (tests/test_raster_triton.py -m requires_cuda)
  kernels   the raster kernels' launch settings side by side (bench/gpu_kernels): forward and backward
            ms at B=1024 N=400 and B=256 N=3136, each setting checked against the reference; the
            later steps run with the fastest correct one
  fit       fit_images(..., device="cuda") at 224 px, 500 iterations, B x N: images/s, PSNR on the
            bundled photos tiled to B, peak memory, share of time in the raster kernels
  ttq       time to quality (bench/ttq) on the GPU: plain Adam, coarse to fine with colors, the presets,
            at B=4096 N=400 and B=512 N=3136: seconds per image to each target dB, images/s
  baseline  LIG-style: random init, one image per launch, the same iterations, at B=64 (on request)
  tower     GS tower vs the RGB ViT-B-16 tower, forward and forward + backward, bf16 autocast (on request)

It needs only what a bare GPU machine has (torch, triton, numpy, pillow, scikit-image...):
open_clip, webdataset and clip_benchmark are optional; wheels in the repository's .whl folder
(`make gpu-wheels`) are installed into a temporary folder for the steps when present.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

__all__ = ["GpuCheckConfig", "run_gpu_check", "machine_info", "summarize", "REPO"]

REPO = Path(__file__).resolve().parents[4]
SRC = REPO / "src"


@dataclass
class GpuCheckConfig:
    tiny: bool = False
    device: str = "cuda"
    backend: str = "auto"
    # the default steps fit one device lease with room to spare; baseline and tower (measured on 2026-12-04,
    # unchanged since) run when asked for: --steps baseline,tower
    steps: tuple = ("parity", "kernels", "ttq", "fit")
    limits: dict = field(default_factory=lambda: {"parity": 60, "kernels": 90, "ttq": 180, "fit": 90,
                                                  "baseline": 50, "tower": 50})
    margin_s: float = 8.0          # kept free at the end of each step (writing, process exit)
    size: int = 224
    photos: int = 8
    iters: int = 500
    batches: tuple = (1, 64, 512, 4096)
    ns: tuple = (400, 3136)
    ttq_rows: tuple = ((4096, 400), (512, 3136))   # (B, N) of the time-to-quality step
    ttq_methods: tuple = ("fast", "balanced", "c2f+colors", "adam")  # bench/ttq.METHODS (presets: their own iterations)
    # (B, N) or (B, N, size) of the kernels step, the first decides the setting; 112 px: fast's coarse phase
    kernel_rows: tuple = ((1024, 400), (256, 3136), (2048, 400, 112))
    kernel_settings: tuple = ()    # () = gpu_kernels.KERNEL_SETTINGS
    kernel_repeats: int = 10
    min_iters: int = 20            # a row never runs fewer iterations (it may then overrun its share)
    probe_iters: int = 10
    profile_iters: int = 5
    baseline_batch: int = 64
    tower_base: str = "ViT-B-16"
    tower_config: str = "gs-196"
    tower_batch: int = 256
    tower_ns: tuple = (400, 3136)
    tower_repeats: int = 10
    wheels: str = str(REPO / ".whl")

    @staticmethod
    def tiny_preset(**kw) -> "GpuCheckConfig":
        base = dict(tiny=True, device="cpu", steps=("parity", "kernels", "ttq", "fit", "baseline", "tower"),
                    limits={"parity": 120, "kernels": 60, "fit": 120, "ttq": 60, "baseline": 60, "tower": 90},
                    kernel_rows=((2, 16),), kernel_repeats=1,
                    kernel_settings=({"name": "tile (2026-12-04)", "BWD_KERNEL": "tile"}, {"name": "chunked (default)"}),
                    margin_s=2.0, size=32, photos=2, iters=5, batches=(1, 2), ns=(16, 64), min_iters=5,
                    probe_iters=2, profile_iters=1, ttq_rows=((2, 16),), baseline_batch=2, tower_base="gsv-tiny",
                    tower_config="gs-tiny", tower_batch=2, tower_ns=(16, 64), tower_repeats=2)
        base.update(kw)
        return GpuCheckConfig(**base)

    @property
    def total_limit_s(self) -> float:
        return float(sum(self.limits[s] for s in self.steps))


def _run(cmd: list[str], timeout: float = 10) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    """GPU name and memory, driver, CUDA, torch and triton versions, CPU, load."""
    import torch
    from gaussianvision.apps.bench.fit import machine_info as cpu_info
    info = cpu_info()
    info.pop("cuda", None)
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info["cuda_runtime"] = torch.version.cuda
    info["gpu"] = info["gpu_memory_gib"] = info["driver"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1),
                    gpu_capability=f"{p.major}.{p.minor}", gpu_count=torch.cuda.device_count())
        smi = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        info["driver"] = smi.splitlines()[0] if smi else None
    return info


def _install_wheels(folder: Path, target: Path) -> tuple[list[str], str | None]:
    """pip-install the wheels of `folder` into `target` (no index, no dependencies).
    Returns (wheel names, error line or None); nothing to do when open_clip is importable."""
    import importlib.util
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if not wheels or importlib.util.find_spec("open_clip") is not None:
        return [], None
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--target", str(target), *map(str, wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return [w.name for w in wheels], f"pip install of {folder} failed: {proc.stderr.strip()[-300:]}"
    return [w.name for w in wheels], None


def _kill_group(proc: subprocess.Popen) -> None:
    import signal
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _run_step(step: str, cfg: dict, limit: float, env: dict, tmp: Path) -> dict:
    """Run one step in a child process under `limit` seconds; its partial result and status."""
    cfg_path, partial = tmp / f"{step}.config.json", tmp / f"{step}.json"
    cfg_path.write_text(json.dumps(dict(cfg, limit_s=limit, repo=str(REPO), started_at=time.time())))
    cmd = [sys.executable, "-m", "gaussianvision.apps.bench.gpu_steps", step, str(cfg_path), str(partial)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), start_new_session=True)
    try:
        rc = proc.wait(timeout=limit)
        timed_out = False
    except subprocess.TimeoutExpired:
        _kill_group(proc)  # the step and anything it started (pytest)
        rc, timed_out = None, True
    out = json.loads(partial.read_text()) if partial.is_file() else {"rows": []}
    out.update(limit_s=limit, seconds=round(time.perf_counter() - t0, 1))
    if timed_out:
        out["status"] = f"timed out after {limit:.0f} s ({len(out['rows'])} rows kept)"
    elif rc != 0:
        out["status"] = f"failed (exit {rc}): {out.get('error', 'no message; see the log')}"
    elif "skipped" in out:
        out["status"] = "skipped: " + out["skipped"]
    else:
        out["status"] = "ok"
    return out


def summarize(res: dict) -> dict:
    """The headline figures: our fitter at B=64 against the LIG-style baseline, per N."""
    steps = res["steps"]
    fit_rows = [r for r in steps.get("fit", {}).get("rows", []) if "error" not in r]
    out = {"speedup_vs_lig": {}}
    for base in steps.get("baseline", {}).get("rows", []):
        ours = next((r for r in fit_rows if r["n"] == base.get("n") and r["batch"] == base.get("batch")), None)
        if ours is None or "error" in base:
            continue
        ours_ips = ours.get("images_per_s_projected", ours["images_per_s"])
        out["speedup_vs_lig"][str(base["n"])] = {
            "ours_images_per_s": ours_ips, "baseline_images_per_s": base["images_per_s"],
            "ratio": ours_ips / base["images_per_s"], "ours_psnr": ours["mean_psnr"],
            "baseline_psnr": base["mean_psnr"]}
    if fit_rows:
        best = max(fit_rows, key=lambda r: r.get("images_per_s_projected", r["images_per_s"]))
        out["best_fit"] = {k: best.get(k) for k in ("batch", "n", "images_per_s", "images_per_s_projected",
                                                     "mean_psnr")}
    return out


def _child_env(wheel_target: Path | None) -> dict:
    env = dict(os.environ)
    paths = [str(SRC)] + ([str(wheel_target)] if wheel_target else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_gpu_check(cfg: GpuCheckConfig, log=print) -> dict:
    """Every step of cfg.steps in order, each under its time limit; the JSON-ready result."""
    t0 = time.perf_counter()
    res = {"schema": 1, "mode": "tiny" if cfg.tiny else "full",
           "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "config": asdict(cfg), "machine": machine_info(), "steps": {}}
    with tempfile.TemporaryDirectory(prefix="gsv-gpu-") as tmp:
        tmp = Path(tmp)
        names, err = _install_wheels(Path(cfg.wheels), tmp / "site")
        res["machine"]["wheels"] = names
        if err:
            log(f"gpu-check: {err}")
            res["machine"]["wheels_error"] = err
        env = _child_env(tmp / "site" if names and not err else None)
        plain = {k: v for k, v in asdict(cfg).items() if k not in ("limits", "steps")}
        for step in cfg.steps:
            log(f"gpu-check: {step} (limit {cfg.limits[step]} s)")
            res["steps"][step] = out = _run_step(step, plain, float(cfg.limits[step]), env, tmp)
            log(f"gpu-check: {step}: {out['status']} in {out['seconds']} s")
            if step == "kernels" and out.get("best"):  # the later steps run with the fastest correct setting
                plain["raster"] = res["config"]["raster"] = out["best"]
                log(f"gpu-check: the later steps run with the kernel setting {out['best']['name']!r}")
    res["summary"] = summarize(res)
    from .fit import loadavg
    res["machine"]["loadavg_end"] = loadavg()
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res



def copy_to(files: list[Path], folder: str | None) -> list[str]:
    """Copy the result files into `folder` (the device machine's $OUT) when it is set."""
    if not folder:
        return []
    dest = Path(folder)
    dest.mkdir(parents=True, exist_ok=True)
    done = []
    for f in files:
        shutil.copyfile(f, dest / f.name)
        done.append(str(dest / f.name))
    return done


def with_steps(cfg: GpuCheckConfig, steps: tuple) -> GpuCheckConfig:
    """cfg with these steps, run in the check's own order (kernels before the steps that use its choice)."""
    order = list(cfg.limits)
    unknown = [s for s in steps if s not in order]
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; the steps: {', '.join(order)}")
    return replace(cfg, steps=tuple(sorted(dict.fromkeys(steps), key=order.index)))
