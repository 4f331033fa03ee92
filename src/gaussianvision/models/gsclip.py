"""GSCLIP: an OpenCLIP model whose image tower reads splats, and its factories.

GSCLIP keeps the whole OpenCLIP base model (``.base``: frozen RGB image tower, frozen text
tower, logit scale) and adds the trainable GS tower (``.visual``).  The GS tower runs its
tokens through the base's own ``ln_pre`` and transformer blocks (shared, not copied), so the
RGB teacher of stage 1 (``encode_rgb``) and the GS student use the same frozen weights.

The OpenCLIP contract is kept: ``encode_image(splats, normalize)``, ``encode_text(tokens,
normalize)`` and ``forward(image, text)`` returning ``{"image_features", "text_features",
"logit_scale"[, "logit_bias"]}`` (features L2-normalized, logit_scale already exponentiated),
so ``open_clip.loss.ClipLoss()(**model(splats, text))``, open_clip's zero-shot classifier
builder and clip_benchmark's evaluation work unchanged (Splats has ``.to(device)``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import warnings
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gaussianvision.net import unreachable

from gaussianvision.splats.types import Splats
from .config import ConfigError, load_config, register_open_clip_configs
from .tower import GSVisionTower

__all__ = ["GSCLIP", "create_gsclip", "create_rgb_clip", "create_base", "hub_access", "PRECISIONS"]

PRECISIONS = ("fp32", "fp16", "bf16", "pure_fp16", "pure_bf16", "amp", "amp_bf16", "amp_bfloat16")


def _tower_dtype(precision: str) -> torch.dtype:
    if precision in ("bf16", "pure_bf16"):
        return torch.bfloat16
    if precision in ("fp16", "pure_fp16"):
        return torch.float16
    return torch.float32


class GSCLIP(nn.Module):
    """OpenCLIP-compatible CLIP with a splat image tower; see the module docstring.

    Shapes: splats (B images, N Gaussians each, may mix N via counts) -> [B, D] image
    features; text tokens [B, context_length] int64 -> [B, D]; images [B, 3, S, S] normalized
    with ``rgb_mean``/``rgb_std`` -> [B, D] (``encode_rgb``).
    """

    output_dict = True

    def __init__(self, base: nn.Module, config: Mapping[str, Any], base_name: str = "custom",
                 pretrained: str | None = None):
        super().__init__()
        cfg = load_config(config)
        self.base = base
        self.visual = GSVisionTower(cfg, base.visual)
        self.gs_config = cfg
        self.base_name = base_name
        self.pretrained = pretrained
        self.kept_base: set[str] = set()  # frozen base parameters trained before (--unfreeze): stored with the model
        self.lock_frozen()

    # ---------------------------------------------------------------- freezing
    def lock_frozen(self) -> None:
        """THE place that freezes: every base parameter (RGB tower, blocks, text) is frozen;
        the GS tower (and the logit scale when the config says so) trains."""
        for p in self.base.parameters():
            p.requires_grad_(False)
        for p in self.visual.parameters():
            p.requires_grad_(True)
        if self.gs_config["train_logit_scale"]:
            self.base.logit_scale.requires_grad_(True)
        self.base.eval()

    def train(self, mode: bool = True) -> "GSCLIP":
        super().train(mode)
        self.base.eval()  # frozen parts stay in eval mode (no dropout, fixed statistics)
        return self

    @property
    def config(self) -> dict[str, Any]:
        """What a trainable checkpoint must match: the GS config and the base's shape."""
        return {
            "gs": self.gs_config,
            "base": self.base_name,
            "width": self.visual.width,
            "embed_dim": int(self.visual.proj.shape[1]),
        }

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.trainable_named_parameters()]

    def no_weight_decay(self) -> set[str]:
        return {"visual.class_embedding", "visual.positional_embedding", "visual.resampler.latents",
                "base.logit_scale"}

    # ---------------------------------------------------------------- the base's facts
    @property
    def logit_scale(self) -> nn.Parameter:
        return self.base.logit_scale

    @property
    def logit_bias(self):
        return getattr(self.base, "logit_bias", None)

    @property
    def preprocess_cfg(self) -> dict:
        return dict(getattr(self.base.visual, "preprocess_cfg", {}))

    @property
    def rgb_mean(self) -> tuple[float, ...]:
        return tuple(self.base.visual.image_mean)

    @property
    def rgb_std(self) -> tuple[float, ...]:
        return tuple(self.base.visual.image_std)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.base.visual.image_size)

    @property
    def context_length(self) -> int:
        return int(self.base.context_length)

    def tokenizer(self):
        """open_clip's tokenizer for the base architecture."""
        import open_clip
        return open_clip.get_tokenizer(self.base_name)

    # ---------------------------------------------------------------- encoders
    def _backbone(self, x: torch.Tensor) -> torch.Tensor:
        v = self.base.visual
        x = v.ln_pre(x.to(v.transformer.get_cast_dtype()))
        return v.transformer(x)

    def encode_image_with_tokens(self, image: Splats) -> tuple[torch.Tensor, torch.Tensor]:
        """splats -> (embedding [B, D] unnormalized, output tokens [B, Q, width])."""
        if not isinstance(image, Splats):
            raise TypeError(
                f"GSCLIP.encode_image: expected Splats, got {type(image).__name__} "
                "(for pixel images use encode_rgb)"
            )
        return self.visual.head(self._backbone(self.visual.embed(image)))

    def encode_image(self, image: Splats, normalize: bool = False) -> torch.Tensor:
        feats, _ = self.encode_image_with_tokens(image)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids [B, L] (model.tokenizer()(["a cat", ...])) -> [B, D]."""
        if not isinstance(text, torch.Tensor) or text.dim() != 2 or text.dtype not in (torch.int64, torch.int32):
            got = f"a tensor {list(text.shape)} of {text.dtype}" if isinstance(text, torch.Tensor) else type(text).__name__
            raise TypeError(f"GSCLIP.encode_text: expected token ids [B, L] (model.tokenizer()(captions)), got {got}")
        return self.base.encode_text(text, normalize=normalize)

    def encode_rgb_with_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The original frozen RGB tower: images -> (embedding [B, D], tokens [B, P, width])."""
        v = self.base.visual
        x = v.transformer(v._embeds(images.to(v.conv1.weight.dtype)))
        pooled, tokens = v._pool(x)
        return pooled @ v.proj, tokens

    def encode_rgb(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Images [B, 3, S, S], normalized with rgb_mean/rgb_std -> [B, D] (the stage-1 teacher)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            got = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"GSCLIP.encode_rgb: expected images [B, 3, H, W], got {got}")
        if tuple(images.shape[-2:]) != tuple(self.image_size):  # regression (new-user trial): open_clip's own
            h, w = self.image_size                             # "size of tensor a (785) must match ... (65)"
            raise ValueError(f"GSCLIP.encode_rgb: the base takes {h}x{w} images (model.image_size), got "
                             f"{images.shape[-2]}x{images.shape[-1]}")
        feats = self.base.encode_image(images.to(self.base.visual.conv1.weight.dtype))
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, image: Splats | None = None, text: torch.Tensor | None = None) -> dict:
        out = {
            "image_features": self.encode_image(image, normalize=True) if image is not None else None,
            "text_features": self.encode_text(text, normalize=True) if text is not None else None,
            "logit_scale": self.base.logit_scale.exp(),
        }
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out


class _DropRandomInitNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init(asked: bool):
    """open_clip warns on the root logger that a model without pretrained weights is random; when the
    caller asked for exactly that (pretrained=None), the warning is noise on every gsv command."""
    if not asked:
        yield
        return
    root, f = logging.getLogger(), _DropRandomInitNote()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


_WEIGHT_FILES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")  # what names a checkpoint file, not a tag
_SCHEMAS = ("hf-hub:", "local-dir:")  # open_clip's model-name schemas: a config read from the hub or a folder


def create_base(base: str = "ViT-B-16", pretrained: str | os.PathLike | None = None,
                device: str | torch.device = "cpu", precision: str = "fp32",
                cache_dir: str | None = None) -> nn.Module:
    """An OpenCLIP model by name (our ``gsv-tiny`` included), dict output, eval mode.

    pretrained: None (random init, no download), an OpenCLIP tag (downloads where the hub
    is reachable) or a local checkpoint file (works offline).
    """
    register_open_clip_configs()
    import open_clip
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    name = str(base)
    if open_clip.get_model_config(name.replace("/", "-")) is None and not name.startswith(_SCHEMAS):
        arch, _, tag = name.partition(":")
        if tag and open_clip.get_model_config(arch.replace("/", "-")) is not None:
            # regression (new-user trial): 'ViT-B-16:openai' reached open_clip, whose message lists every model
            raise ConfigError(f"base {name!r}: an architecture name is {arch!r} alone; its pretrained tag "
                              f"{tag!r} is given apart (pretrained=)")
        known = open_clip.list_models()
        hint = [m for m in known if name.lower()[:4] in m.lower()][:8] or known[:8]
        raise ConfigError(f"base {name!r}: unknown OpenCLIP architecture (e.g. {', '.join(hint)})")
    if pretrained is not None:
        pretrained = str(pretrained)
        tag = open_clip.get_pretrained_cfg(name, pretrained)
        if not tag and not os.path.isfile(pretrained):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            if "/" in pretrained or os.sep in pretrained or pretrained.endswith(_WEIGHT_FILES):
                # a path: said as one (regression (new-user trial): a missing file was "neither a checkpoint ...")
                why = "not a file" if os.path.exists(pretrained) else "no such file"
                raise ConfigError(f"pretrained {pretrained!r}: {why} (a checkpoint file of {name}, or a tag: {tags})")
            raise ConfigError(f"pretrained {pretrained!r}: neither a checkpoint file nor a tag of {name} (tags: {tags})")
    if pretrained is not None and os.path.isfile(pretrained):
        _not_a_gs_model(name, pretrained)
    dev = torch.device(device)
    try:
        if dev.type == "meta":
            # shape-only model (parameter counting): no memory, no initialization cost
            with torch.device("meta"), _quiet_random_init(True):
                model = open_clip.create_model(name, pretrained=None, device=dev, precision=precision,
                                               output_dict=True, cache_dir=cache_dir)
        else:
            with hub_access(name, pretrained, cache_dir), _quiet_random_init(pretrained is None), \
                    warnings.catch_warnings():
                # torch's weights-only reader warns about a pickle's protocol before it refuses the file or
                # reads its tensors: the refusal is said in one line below, the warning is noise either way
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                model = open_clip.create_model(name, pretrained=pretrained, device=dev, precision=precision,
                                               output_dict=True, cache_dir=cache_dir)
    except ConfigError:
        raise  # ours (hub_access: offline), already one clear line
    except pickle.UnpicklingError as e:
        # torch's message advises weights_only=False, which would run the file's code: only its reason is kept
        raise ConfigError(f"base {name!r} (pretrained={pretrained!r}): not a usable checkpoint of it (torch's "
                          f"weights-only reader refused it: {_unpickler_reason(e)}; nothing in it was run; give a "
                          ".safetensors file, or a state dict saved by torch.save with its default protocol)") from None
    except (RuntimeError, KeyError, ValueError, OSError, EOFError, AssertionError) as e:
        # open_clip's loader: a file that is no checkpoint (other keys, a truncated zip, ...): one line, its
        # first sentence (regression: tracebacks, or every missing key, KBs long); AssertionError: its check of a
        # checkpoint of another width ("text pos_embed width changed!", new-user trial: a traceback)
        why = str(e).strip().splitlines()[0] if str(e).strip() else ("a check in open_clip failed"
                                                                      if isinstance(e, AssertionError) else "")
        why = why if len(why) <= 300 else why[:300] + " ..."
        what = "not a usable checkpoint of it " if pretrained is not None and os.path.isfile(pretrained) else ""
        raise ConfigError(f"base {name!r} (pretrained={pretrained!r}): {what}({type(e).__name__}: {why})") from None
    return model.eval()


def _not_a_gs_model(name: str, path: str) -> None:
    """ConfigError where a base's weights file is a GS model's (gsv train's gsclip.safetensors). Regression (new-user
    trial): given as --pretrained it was "not a usable checkpoint of it (RuntimeError: shape '[1, 5, 5, -1]' ...)"."""
    if not path.endswith(".safetensors"):
        return
    try:
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            fmt = (f.metadata() or {}).get("gsv.format")
    except Exception:  # not readable as safetensors: open_clip's loader says why below
        return
    if fmt == "gsclip-trainable":
        raise ConfigError(f"pretrained {path!r}: a GS model's weights (gsv train's gsclip.safetensors), not weights of "
                          f"the open_clip base {name}; give the base the GS model was trained on (its teacher, e.g. "
                          "TEACHER_RUN/open_clip_model.safetensors), or read the GS model with gs:PATH / "
                          "create_gsclip_from_weights")


_ADVICE = ("Weights only load failed", "Check the documentation", "Please file", "(1) ", "(2) ")


def _unpickler_reason(e: Exception) -> str:
    """torch's reason for refusing a file in weights-only loading, without the advice around it (to load with
    weights_only=False, or to allow-list the global: either would run the file's code). E.g. "Unsupported
    operand 149" (a pickle of protocol 4 or later), "Unsupported global: GLOBAL eval was not an allowed global
    by default", "Trying to load unsupported GLOBAL posix.system whose module posix is blocked" (review finding:
    the allow-list advice came through, and a blocked module's reason was lost)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.partition("WeightsUnpickler error:")[2]
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not any(line.startswith(a) for a in _ADVICE)]
    reason = lines[0].split(". Please use")[0].rstrip(". ") if lines else ""
    return reason[:200] or type(e).__name__


def _recorded(base: str, pretrained) -> str | None:
    """`pretrained` as a model records it: a tag as given, a checkpoint file by its absolute path (a
    path relative to the folder training ran in would not be found from anywhere else)."""
    if pretrained is None:
        return None
    import open_clip
    p = str(pretrained)
    return os.path.abspath(p) if os.path.isfile(p) and not open_clip.get_pretrained_cfg(base, p) else p


def _offline_reason() -> str | None:
    """Why the Hugging Face hub cannot be used now (None: it can): HF_HUB_OFFLINE, or no
    connection to its host (one short probe per process instead of the hub's retries)."""
    from huggingface_hub import constants
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    if constants.HF_HUB_OFFLINE or env:
        return "HF_HUB_OFFLINE is set"
    host, why = unreachable(constants.ENDPOINT or "https://huggingface.co", timeout=2.0, remember=True)
    return None if why is None else f"{host} is not reachable (offline?)"


def _cached_weights(name: str, tag: str, cache_dir: str | None) -> bool | None:
    """Whether the hub weights of an OpenCLIP tag are in the local cache (None: cannot tell)."""
    import huggingface_hub
    import open_clip
    hub = (open_clip.get_pretrained_cfg(name, tag) or {}).get("hf_hub")
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    names = [filename, os.path.splitext(filename)[0] + ".safetensors", "open_clip_model.safetensors"]
    return any(isinstance(huggingface_hub.try_to_load_from_cache(repo, n, cache_dir=cache_dir), str)
               for n in names)


OFFLINE_FIX = ("give a local checkpoint file instead of the tag (--pretrained PATH, or rgb:BASE:PATH in gsv eval: "
               "an open_clip .safetensors/.bin/.pt), or download it once online; HF_HUB_OFFLINE=1 skips "
               "the network check and uses the local Hugging Face cache")


@contextlib.contextmanager
def hub_access(name: str, pretrained: str | None, cache_dir: str | None):
    """Offline, hub weights load from the local cache at once or fail with one clear line
    (instead of ~50 s of download retries); online, or for local files, nothing changes."""
    from_hub = (pretrained and not os.path.isfile(pretrained)) or name.startswith("hf-hub:")
    reason = _offline_reason() if from_hub else None
    if reason is None:
        yield
        return
    what = f"pretrained {pretrained!r} of {name}" if pretrained else name
    if pretrained and _cached_weights(name, pretrained, cache_dir) is False:
        raise ConfigError(f"{what}: {reason} and its weights are not in the local Hugging Face cache; "
                          f"{OFFLINE_FIX}")
    from huggingface_hub import constants
    before, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    except Exception as e:
        raise ConfigError(f"{what}: {reason} and loading from the local cache failed "
                          f"({type(e).__name__}: {str(e)[:160]}); {OFFLINE_FIX}") from None
    finally:
        constants.HF_HUB_OFFLINE = before


def create_gsclip(base: str | None = None, pretrained: str | os.PathLike | None = None,
                  config: str | os.PathLike | Mapping[str, Any] = "gs-196",
                  device: str | torch.device = "cpu", precision: str = "fp32",
                  cache_dir: str | None = None) -> GSCLIP:
    """Build a GSCLIP: the OpenCLIP base (frozen) + a GS tower from a JSON config.

    base: OpenCLIP architecture; None = the config's ``base``.  config: a shipped name
    (``gs-196``, ``gs-98``, ``gs-tiny``), a JSON path or a dict.  ``device="meta"`` builds
    shapes only (for parameter counts).  precision: as open_clip; with "bf16"/"fp16" (and
    the "pure_" forms) the GS tower is cast to that dtype too, otherwise it stays float32.
    """
    cfg = load_config(config)
    base_name = base or cfg["base"]
    model = create_base(base_name, pretrained, device, precision, cache_dir)
    gs = GSCLIP(model, cfg, base_name=base_name, pretrained=_recorded(base_name, pretrained))
    _cast_tower(gs.visual, _tower_dtype(precision))
    return gs


def _cast_tower(tower: nn.Module, dtype: torch.dtype) -> None:
    from open_clip.transformer import LayerNormFp32
    tower.to(dtype=dtype)
    for m in tower.modules():
        if isinstance(m, LayerNormFp32):  # open_clip's fp32-only norm (copied from a "bf16" base)
            m.float()


def create_rgb_clip(base: str = "ViT-B-16", pretrained: str | os.PathLike | None = None,
                    device: str | torch.device = "cpu", precision: str = "fp32",
                    cache_dir: str | None = None) -> nn.Module:
    """The RGB baseline: the plain OpenCLIP model (encode_image takes normalized images),
    frozen and in eval mode, with the same forward dict as GSCLIP."""
    model = create_base(base, pretrained, device, precision, cache_dir)
    for p in model.parameters():
        p.requires_grad_(False)
    return model
