"""The model-weights format (one owner): the trainable parameters only (safetensors), config in the metadata.

File: a safetensors file whose tensors are GSCLIP's trainable parameters by name
(``visual.*``, plus ``base.logit_scale`` when trained) and whose metadata holds
  gsv.format = "gsclip-trainable", gsv.version = "1",
  gsv.config = JSON of GSCLIP.config (GS config, base name, width, embed_dim),
  gsv.pretrained = the base's pretrained tag/path ("" when random), and any extra
  string metadata the caller passes (e.g. the training step);
  gsv.unfrozen = JSON list of the base parameters trained too (`gsv train --unfreeze`), stored beside the
  trainable ones, where there are any (such a file is gsv.version "2", so a reader of "1" refuses it by its
  version rather than load it without them).
The frozen base is not stored: it is rebuilt from its name and pretrained weights.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_atomic
from .config import ConfigError

__all__ = ["WeightsError", "save_weights", "load_weights", "read_weights_config",
           "create_gsclip_from_weights", "save_safetensors", "weights_file_hint"]

FORMAT = "gsclip-trainable"
VERSION = "1"
UNFROZEN_VERSION = "2"  # a file with gsv.unfrozen: readers of version 1 would load it without those tensors
READS = (VERSION, UNFROZEN_VERSION)


class WeightsError(ValueError):
    """A trainable-parameter checkpoint is unreadable or does not fit the model."""


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file (every .safetensors the project writes), the file then given the mode any other
    output file gets: 0666 less the umask. Regression (new-user trial): safetensors 0.8 makes its files 0600,
    so the models and checkpoints of a shared runs folder were the only outputs others could not read."""
    from safetensors.torch import save_file
    save_file(tensors, str(path), metadata=metadata)
    try:
        os.chmod(path, 0o666 & ~_umask())
    except OSError:  # a file system without modes (vfat, some FUSE mounts): the file as written (review finding)
        pass


def _umask() -> int:
    try:  # Linux: read, not set (setting it would race with other threads creating files)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def weights_file_hint(folder: str | os.PathLike) -> str:
    """For a message about a folder that holds no checkpoint: '; give the weights file inside it (PATH)' where it
    holds one .safetensors file, the count where several, '' where none (or it is no folder)."""
    inside = sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []
    if len(inside) == 1:
        return f"; give the weights file inside it ({inside[0]})"
    return f"; give one of its {len(inside)} .safetensors files" if inside else ""


def save_weights(model, path: str | os.PathLike, metadata: dict[str, str] | None = None,
                 unfrozen: list[str] | tuple = ()) -> Path:
    """Write model's trainable parameters to `path` atomically (temp name + rename), and the base parameters named
    in `unfrozen` (trained by --unfreeze) beside them, listed in gsv.unfrozen."""
    path = Path(path)
    tensors = {n: p.detach().to("cpu").contiguous() for n, p in model.trainable_named_parameters()}
    every = dict(model.named_parameters())
    tensors.update({n: every[n].detach().to("cpu").contiguous() for n in unfrozen if n not in tensors})
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    kept = sorted(set(unfrozen) - {n for n, _ in model.trainable_named_parameters()})
    if kept:
        meta["gsv.unfrozen"] = json.dumps(kept)
    meta.update({
        "gsv.format": FORMAT, "gsv.version": UNFROZEN_VERSION if kept else VERSION,
        "gsv.config": json.dumps(model.config, sort_keys=True),
        "gsv.pretrained": model.pretrained or "",
    })
    rel = base_relative(model.pretrained, path.parent)
    if rel:  # also relative to this checkpoint's folder: found again after both move together
        meta["gsv.pretrained_rel"] = rel
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: save_safetensors(tensors, tmp, metadata=meta))
    return path


def _read(path: str | os.PathLike) -> tuple[dict[str, str], Any]:
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path}: no such file")
    try:
        f = safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise WeightsError(f"checkpoint {path}: not a safetensors file ({e})") from None
    meta = f.metadata() or {}
    if meta.get("gsv.format") != FORMAT:
        raise WeightsError(f"checkpoint {path}: not a GS-CLIP trainable checkpoint (gsv.format missing)")
    if meta.get("gsv.version") not in READS:
        raise WeightsError(f"checkpoint {path}: version {meta.get('gsv.version')!r}, this code reads "
                           f"{' and '.join(READS)}")
    return meta, f


_CONFIG_KEYS = ("gs", "base", "width", "embed_dim")


def _stored_config(meta: dict[str, str], path) -> dict[str, Any]:
    """The model config a checkpoint's metadata holds (GSCLIP.config), checked; WeightsError where it is missing
    or not that. Regression (new-user trial): a missing, cut or wrong gsv.config was a KeyError, a
    JSONDecodeError or a TypeError traceback from `gsv model info`, `gsv probe` and create_gsclip_from_weights."""
    text = meta.get("gsv.config")
    if text is None:
        raise WeightsError(f"checkpoint {path}: no model config (gsv.config missing from its metadata)")
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise WeightsError(f"checkpoint {path}: its model config (gsv.config) is not JSON ({e})") from None
    if not isinstance(cfg, dict) or any(k not in cfg for k in _CONFIG_KEYS) or \
            not isinstance(cfg["gs"], (dict, str)) or not isinstance(cfg["base"], str):
        raise WeightsError(f"checkpoint {path}: its model config (gsv.config) is not a GS-CLIP config (a JSON object "
                           f"with {', '.join(_CONFIG_KEYS)}; gs a config, base a model name)")
    return cfg


def read_weights_config(path: str | os.PathLike) -> dict[str, Any]:
    """The model config and metadata stored in a checkpoint (no tensors loaded)."""
    meta, _ = _read(path)
    return {"config": _stored_config(meta, path), "pretrained": _pretrained(meta, Path(path)),
            "metadata": {k: v for k, v in meta.items() if not k.startswith("gsv.")}}


def _pretrained(meta: dict[str, str], path: Path) -> str | None:
    return resolve_base(meta.get("gsv.pretrained") or None, meta.get("gsv.pretrained_rel"), path.parent)


def base_relative(pretrained: str | None, folder: str | os.PathLike) -> str | None:
    """A base checkpoint file's path relative to `folder` (where a checkpoint is saved), for
    resolve_base; None for a tag or a missing file."""
    if not pretrained or not os.path.isabs(pretrained) or not os.path.isfile(pretrained):
        return None
    return os.path.relpath(os.path.realpath(pretrained), Path(folder).resolve())


def resolve_base(stored: str | None, rel: str | None, folder: str | os.PathLike) -> str | None:
    """The base weights a checkpoint names: a tag, or a file where it was saved, else where it lies
    relative to the checkpoint's `folder` (runs moved together); as stored when neither exists. The
    relative fallback only stands in for a missing absolute path and only names a .safetensors file
    (a format that cannot run code): a checkpoint's metadata never replaces a tag or opens a pickle."""
    if (stored and rel and os.path.isabs(stored) and not os.path.isfile(stored) and rel.endswith(".safetensors")
            and (Path(folder) / rel).is_file()):
        return str(Path(folder) / rel)
    return stored


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: checkpoint {a!r}, model {b!r}"]


def load_weights(model, path: str | os.PathLike, strict_config: bool = True) -> dict[str, str]:
    """Load trainable parameters into `model` (in place); returns the extra metadata.

    Fails with WeightsError naming the differences when the stored config does not
    match the model's (``strict_config=False`` skips that comparison, names and shapes are
    still checked).  Only the "name" key of the GS config may differ.
    """
    meta, f = _read(path)
    saved = _stored_config(meta, path)
    if strict_config:
        mine = model.config
        diffs = [d for d in _diff(saved, mine) if not d.startswith("gs.name:")]
        if diffs:
            raise WeightsError(f"checkpoint {path}: config does not match the model: " + "; ".join(diffs))
    params = dict(model.trainable_named_parameters())
    params.update(_unfrozen(model, meta, path))
    names = set(f.keys())
    missing, extra = sorted(set(params) - names), sorted(names - set(params))
    if missing or extra:
        raise WeightsError(
            f"checkpoint {path}: parameter names differ (missing {missing[:5]}, unexpected {extra[:5]})"
        )
    tensors = {n: f.get_tensor(n) for n in sorted(names)}
    for n, t in tensors.items():  # check everything before touching the model
        if tuple(t.shape) != tuple(params[n].shape):
            raise WeightsError(f"checkpoint {path}: {n} has shape {list(t.shape)}, model {list(params[n].shape)}")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t.to(device=params[n].device, dtype=params[n].dtype))
    return {k: v for k, v in meta.items() if not k.startswith("gsv.")}


def _unfrozen(model, meta: dict[str, str], path) -> dict[str, torch.nn.Parameter]:
    """The base parameters a checkpoint stores beside the trainable ones (gsv.unfrozen), by name. Regression
    (new-user trial): after --unfreeze the exported file left them out, so the model rebuilt from it was
    another (embeddings at cosine 0.85 to the trained model's)."""
    try:
        names = json.loads(meta.get("gsv.unfrozen", "[]"))
    except ValueError as e:
        raise WeightsError(f"checkpoint {path}: gsv.unfrozen is not JSON ({e})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise WeightsError(f"checkpoint {path}: gsv.unfrozen is not a list of parameter names")
    every = dict(model.named_parameters())
    unknown = [n for n in names if n not in every]
    if unknown:
        raise WeightsError(f"checkpoint {path}: unfrozen base parameters the model does not have: {unknown[:5]}")
    return {n: every[n] for n in names}


def create_gsclip_from_weights(path: str | os.PathLike, pretrained: str | None = "stored",
                                  device: str | torch.device = "cpu", precision: str = "fp32"):
    """Rebuild the model a checkpoint was saved from and load it.

    pretrained: "stored" = the base weights named in the checkpoint, None = random base,
    or another tag/path.
    """
    from .gsclip import create_gsclip
    info = read_weights_config(path)
    cfg = info["config"]
    if pretrained == "stored":
        pretrained = info["pretrained"]
        if not pretrained:  # regression (trial 6): a silently different model
            warnings.warn(f"checkpoint {path}: its model's frozen base had random weights (no pretrained base) and is "
                          "not stored, so the base rebuilt here is another random one and the embeddings differ from "
                          "the saved model's; train on a pretrained base, or give the base's weights (pretrained=TAG "
                          "or FILE; gs:PATH@PRETRAINED in gsv eval)", UserWarning, stacklevel=2)
    try:
        model = create_gsclip(cfg["base"], pretrained, cfg["gs"], device=device, precision=precision)
    except ConfigError as e:
        raise WeightsError(f"checkpoint {path}: cannot rebuild its model: {e}") from None
    load_weights(model, path)
    model.kept_base = set(_unfrozen(model, _read(path)[0], path))  # saved again with the model, as trained
    return model
