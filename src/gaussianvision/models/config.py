"""GS tower model configs (JSON) and the open_clip base configs we ship.

A GS config names a default OpenCLIP base and describes only the new, trainable modules;
widths come from the base (the ViT width), so one config fits any ViT base.  Shipped:
``gs-196`` and ``gs-98`` (base ViT-B-16, the paper's token counts) and ``gs-tiny`` (base
``gsv-tiny``: a tiny OpenCLIP architecture for tests, demos and CPU training).

Keys (defaults in ``DEFAULTS``; unknown keys are an error, so typos do not pass silently):
  name               free text
  base               default OpenCLIP architecture name (create_gsclip(base=...) overrides)
  stem.pos_bands     Fourier bands for the normalized position (x, y)
  stem.shape_bands   Fourier bands for the shape features (log sigmas, orientation)
  stem.hidden        hidden width of the stem MLP; 0 = one linear projection
  stem.token_dim     width of the Gaussian tokens; null = the ViT width
  stem.log_sigma_center, stem.log_sigma_width
                     fixed affine normalization of log sigma (see stem.py)
  resampler.num_latents  output tokens (196 = ViT-B/16's 14x14 patches, 98, any >= 1)
  resampler.layers   cross-attention + feed-forward layers (4)
  resampler.heads    attention heads; null = ViT width // 64
  resampler.mlp_ratio  feed-forward hidden = mlp_ratio * width
  resampler.kv_dim   null = every layer projects the Gaussian tokens to full-width keys/values
                     (the original design); an integer = they are projected ONCE, kv_dim wide,
                     shared by the layers, which attend at that width (far cheaper at large N)
  resampler.cross_layers  with kv_dim: how many (first) layers read the Gaussians; the rest
                     attend to the latents only; null = all
  pos_embed          "auto" | "copy" | "interp" | "random"  (see tower.py)
  train_logit_scale  also train the base's logit scale (stage 2); default false
"""
from __future__ import annotations

import copy
import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "ConfigError", "DEFAULTS", "load_config", "list_configs", "config_dir",
    "register_open_clip_configs", "open_clip_config_dir",
]


class ConfigError(ValueError):
    """A GS model config (or base) is invalid or cannot be found."""


DEFAULTS: dict[str, Any] = {
    "name": "custom",
    "base": "ViT-B-16",
    "stem": {
        "pos_bands": 8, "shape_bands": 4, "hidden": 0, "token_dim": None,
        "log_sigma_center": -3.5, "log_sigma_width": 1.5,
    },
    "resampler": {"num_latents": 196, "layers": 4, "heads": None, "mlp_ratio": 2.0,
                  "kv_dim": None, "cross_layers": None},
    "pos_embed": "auto",
    "train_logit_scale": False,
}

POS_EMBED_MODES = ("auto", "copy", "interp", "random")


def config_dir() -> Path:
    return Path(str(resources.files("gaussianvision.models") / "configs"))


def open_clip_config_dir() -> Path:
    return config_dir() / "open_clip"


def list_configs() -> list[str]:
    """Names of the shipped GS configs."""
    return sorted(p.stem for p in config_dir().glob("*.json"))


_REGISTERED = False


def register_open_clip_configs() -> None:
    """Make our OpenCLIP base architectures (e.g. ``gsv-tiny``) known to open_clip by name.

    Idempotent.  After this, ``open_clip.create_model("gsv-tiny")`` and
    ``open_clip.get_tokenizer("gsv-tiny")`` work like for any built-in architecture.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    import open_clip
    d = open_clip_config_dir()
    if str(d) not in {str(p) for p in getattr(open_clip.factory, "_MODEL_CONFIG_PATHS", [])}:
        open_clip.add_model_config(d)
    _REGISTERED = True


def _merge(defaults: Mapping[str, Any], given: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = copy.deepcopy(dict(defaults))
    for k, v in given.items():
        if k not in defaults:
            raise ConfigError(f"{where}: unknown key {k!r}; known keys: {', '.join(defaults)}")
        if isinstance(defaults[k], dict):
            if not isinstance(v, Mapping):
                raise ConfigError(f"{where}.{k}: expected an object, got {type(v).__name__}")
            out[k] = _merge(defaults[k], v, f"{where}.{k}")
        else:
            out[k] = v
    return out


_INT_MAX = 1 << 16  # every size of a config (regression: num_latents 10**12 hung gsv model info in grid_for)


_MAX_MLP_RATIO = 64  # the feed-forward width over the model's (4 in ViTs; 1e12 asked for terabytes)


def _check_int(cfg, section, key, lo, where, allow_none=False):
    v = cfg[section][key]
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= _INT_MAX:
        raise ConfigError(f"{where}: {section}.{key} must be an integer from {lo} to {_INT_MAX}, got {v!r}")


def validate_config(cfg: dict[str, Any], where: str = "config") -> dict[str, Any]:
    _check_int(cfg, "stem", "pos_bands", 0, where)
    _check_int(cfg, "stem", "shape_bands", 0, where)
    _check_int(cfg, "stem", "hidden", 0, where)
    _check_int(cfg, "stem", "token_dim", 1, where, allow_none=True)
    _check_int(cfg, "resampler", "num_latents", 1, where)
    _check_int(cfg, "resampler", "layers", 0, where)
    _check_int(cfg, "resampler", "heads", 1, where, allow_none=True)
    _check_int(cfg, "resampler", "kv_dim", 1, where, allow_none=True)
    _check_int(cfg, "resampler", "cross_layers", 1, where, allow_none=True)
    if cfg["resampler"]["cross_layers"] is not None and cfg["resampler"]["kv_dim"] is None:
        raise ConfigError(f"{where}: resampler.cross_layers needs resampler.kv_dim (shared keys/values)")
    rs = cfg["resampler"]
    if rs["heads"] is not None and rs["kv_dim"] is not None and rs["kv_dim"] % rs["heads"]:
        raise ConfigError(f"{where}: resampler.kv_dim {rs['kv_dim']} is not divisible by resampler.heads {rs['heads']}")
    for key in ("log_sigma_center", "log_sigma_width"):  # NaN or inf gave NaN embeddings
        v = cfg["stem"][key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 100:
            raise ConfigError(f"{where}: stem.{key} must be a number from -100 to 100, got {v!r}")
    if not cfg["stem"]["log_sigma_width"] > 0:
        raise ConfigError(f"{where}: stem.log_sigma_width must be > 0")
    r = rs["mlp_ratio"]
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= _MAX_MLP_RATIO:
        raise ConfigError(f"{where}: resampler.mlp_ratio must be a number > 0 and <= {_MAX_MLP_RATIO}, got {r!r}")
    if cfg["pos_embed"] not in POS_EMBED_MODES:
        raise ConfigError(f"{where}: pos_embed must be one of {POS_EMBED_MODES}, got {cfg['pos_embed']!r}")
    if not isinstance(cfg["train_logit_scale"], bool):
        raise ConfigError(f"{where}: train_logit_scale must be true or false")
    if not isinstance(cfg["base"], str) or not cfg["base"]:
        raise ConfigError(f"{where}: base must be an OpenCLIP model name")
    return cfg


def load_config(config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Resolve a GS config given as a shipped name, a path to a JSON file, or a dict.

    Returns the complete config (defaults filled in), validated.
    """
    if isinstance(config, Mapping):
        return validate_config(_merge(DEFAULTS, config, "config"), "config")
    if not isinstance(config, (str, os.PathLike)):
        raise ConfigError(f"config: expected a name, a JSON path or a dict, got {type(config).__name__}")
    text = str(config)
    path = Path(text)
    if not text.endswith(".json") and (config_dir() / f"{text}.json").is_file():
        path = config_dir() / f"{text}.json"
    elif not path.is_file():
        raise ConfigError(
            f"config {text!r}: not a shipped config ({', '.join(list_configs())}) and no such JSON file"
        )
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, RecursionError, UnicodeDecodeError) as e:  # RecursionError: nested deeper than Python parses
        raise ConfigError(f"config {path}: cannot read JSON: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: expected a JSON object")
    return validate_config(_merge(DEFAULTS, raw, str(path)), str(path))
