"""GS-CLIP: CLIP image encoders that read 2D Gaussian splats (see docs/models.md).

Importing this package registers our OpenCLIP base architectures (``gsv-tiny``) with
open_clip, so ``open_clip.create_model("gsv-tiny")`` works afterwards.
"""
from .config import ConfigError, list_configs, load_config, register_open_clip_configs
from .stem import SplatStem, splat_features
from .resampler import PerceiverResampler
from .tower import GSVisionTower
from .gsclip import GSCLIP, create_base, create_gsclip, create_rgb_clip
from .weights import (WeightsError, create_gsclip_from_weights, load_weights,
                         read_weights_config, save_weights)
from .params import parameter_report

try:
    register_open_clip_configs()
except ImportError:  # open_clip is the "clip" extra; the factories raise with a hint
    pass

__all__ = [
    "ConfigError", "list_configs", "load_config", "register_open_clip_configs",
    "SplatStem", "splat_features", "PerceiverResampler", "GSVisionTower",
    "GSCLIP", "create_base", "create_gsclip", "create_rgb_clip",
    "WeightsError", "save_weights", "load_weights", "read_weights_config",
    "create_gsclip_from_weights", "parameter_report",
]
