"""A conversion's settings (ConvertConfig), the checks made before it starts (check_settings), the settings an
output folder was made with (its config.json: check_config creates it or compares against it; stored_settings
reads it), the rank of this process (resolve_rank), and the check that no input lies in the output folder
(check_apart). data/conversion.py runs the conversion; what it refuses is one ConvertError line.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gaussianvision.data.images import DEFAULT_MAX_PIXELS, MIN_SIDE
from gaussianvision.data import conversion_output as output
from gaussianvision.data.inputs import Unit, rank_world
from gaussianvision.fit import FitConfig
from gaussianvision.fit.metrics import SSIM_WINDOW
from gaussianvision.fit.presets import spelled_out

__all__ = ["ConvertConfig", "ConvertError", "resolve_rank", "stored_settings", "check_config", "check_settings",
           "check_apart"]

# settings that do not change the bytes of the output and may differ between runs
_RUNTIME_FIELDS = {"workers", "rank", "world_size", "device", "progress"}


class ConvertError(ValueError):
    """Conversion cannot start (bad settings, or an output directory made with other settings)."""


@dataclass
class ConvertConfig:
    n_gaussians: int
    size: int = 224
    fit_options: dict = field(default_factory=dict)  # passed to fit_images as keyword arguments
    layout: str = "interleaved"
    dtype: str = "float16"
    zstd: bool = False
    progressive: bool = False  # Gaussians in progressive order (fit/progressive.py), flagged in each .gsv
    progressive_order: str = "nested"  # nested fit, or "eliminate" / "greedy": a plain fit reordered
    batch_size: int = 16
    shard_size: int = 1000
    keep_image: bool = False
    require_caption: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = MIN_SIDE
    workers: int = 0  # 0: fit in this process
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    progress: bool = True

    def fingerprint(self, src) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in _RUNTIME_FIELDS}
        d["input"] = str(src)
        d["fit_options"] = spelled_out(d["fit_options"])  # a preset's settings: resuming under new ones is refused
        if not self.progressive:
            d.pop("progressive")  # output folders written before the field existed still resume
        if not self.progressive or self.progressive_order == "eliminate":
            d.pop("progressive_order")  # the only order before the field: those folders still resume
        return json.loads(json.dumps(d, default=str))


def resolve_rank(rank=None, world_size=None, device="cpu") -> tuple[int, int, str]:
    """(rank, world_size, device) from arguments, else torchrun's RANK / WORLD_SIZE / LOCAL_RANK."""
    try:
        r, w = rank_world(rank, world_size)
    except ValueError as e:
        raise ConvertError(str(e)) from None
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return r, w, device


def stored_settings(out: str | os.PathLike) -> dict | None:
    """The settings an output folder was started with (its config.json), None when there are none or
    they cannot be read: a resumed run must give the same ones."""
    path = Path(out) / "config.json"
    try:
        old = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return old if isinstance(old, dict) else None


def check_config(out: Path, fp: dict) -> None:
    path = out / "config.json"
    if not path.is_file() and output.create_durable(path, (json.dumps(fp, indent=2, sort_keys=True) + "\n").encode()):
        return  # this process made the folder's settings
    old = stored_settings(out)
    if not old:  # review finding: a damaged config.json (or a folder of that name, or {}) read as other settings
        raise ConvertError(f"{path}: unreadable or not the settings of a conversion; restore it (a rerun must give "
                           "the settings it holds), or convert into a new --output")
    if old != fp:
        diff = sorted(k for k in set(fp) | set(old or {}) if (old or {}).get(k) != fp.get(k))
        shown = "; ".join(f"{k}: was {_short((old or {}).get(k))}, now {_short(fp.get(k))}" for k in diff[:3])
        raise ConvertError(f"{out}: made with different settings ({shown}); rerun with the same settings "
                           "(every rank and machine spells --input the same way) to resume, or use a new --output")


def _short(value) -> str:
    """A stored setting for a message (regression: 'input differ' said neither value)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def check_settings(cfg: ConvertConfig) -> None:
    """Every setting checked without fitting (see _probe_fit for the rest); ConvertError."""
    if cfg.n_gaussians < 1:
        raise ConvertError(f"n_gaussians must be >= 1, got {cfg.n_gaussians}")
    if not SSIM_WINDOW <= cfg.size <= math.isqrt(cfg.max_pixels):
        # regression (new-user trial): 0 was refused without a word of why, though `gsv fit --size 0` takes it
        own = (" (each image at its own size, gsv fit's --size 0, is not offered here: a dataset's samples are "
               "square crops of one size, as the encoder's training and evaluation read them)") if cfg.size == 0 else ""
        raise ConvertError(f"size must be from {SSIM_WINDOW} (the SSIM window each fit reports with) to "
                           f"{math.isqrt(cfg.max_pixels)} pixels a side (max_pixels {cfg.max_pixels}), got {cfg.size}"
                           + own)
    if cfg.batch_size < 1:
        raise ConvertError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.workers < 0:
        raise ConvertError(f"workers must be >= 0 (0: fit in this process), got {cfg.workers}")
    if cfg.layout not in ("interleaved", "quantized"):
        raise ConvertError(f"layout must be 'interleaved' or 'quantized', got {cfg.layout!r}")
    if cfg.zstd and cfg.layout != "quantized":
        raise ConvertError("zstd compresses the quantized layout only (--layout quantized), not the interleaved one")
    if cfg.layout == "quantized" and cfg.dtype != "float16":  # regression: accepted, recorded, and ignored
        raise ConvertError(f"dtype {cfg.dtype} applies to the interleaved layout; the quantized one stores its own "
                           "fixed-point fields (leave --dtype out)")
    try:
        FitConfig.from_options(cfg.fit_options)
    except ValueError as e:
        raise ConvertError(str(e) if str(e).startswith("fit options") else f"fit options {cfg.fit_options}: {e}") from None
    try:
        dev = torch.device(cfg.device)
    except (ValueError, RuntimeError):  # torch's message lists every device type it knows
        raise ConvertError(f"device {cfg.device!r}: not a device; use cpu or cuda (cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConvertError(f"device {cfg.device!r}: use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConvertError(f"device {cfg.device!r}: CUDA is not available on this machine (use --device cpu)")


def check_apart(units: list[Unit], out: Path) -> None:
    """ConvertError when an input lies in the output folder: an input tar there is overwritten by the
    output shard of its name (regression: 'DIR/{000000..000001}.tar' into DIR replaced the source
    shards), and a folder's images or shards would be read as input by the next run."""
    where = out.resolve()
    for u in units:
        own = Path(u.paths[0]).resolve().parent if u.kind == "tar" else Path(u.root).resolve()
        if own == where or where in own.parents:
            named = u.paths[0] if u.kind == "tar" else u.root
            raise ConvertError(f"{named}: an input inside the output folder {out} (its output shards would overwrite "
                               f"the input's, or be read as input by the next run); give another --output")
