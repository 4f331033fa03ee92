"""Training checkpoints: a directory per saved step, made visible atomically.

Layout of OUT/checkpoints/:
  step-00000120/weights.safetensors   trainable parameters only (names as in model.named_parameters())
  step-00000120/optimizer.pt          AdamW (and GradScaler) state
  step-00000120/state.json            step, epoch, data position, config, RNG states
  latest                              text file naming the newest complete step directory

A step directory is written under a temporary name and renamed when complete; `latest` is then
replaced atomically, so a crash at any moment leaves the previous checkpoint usable.
"""
from __future__ import annotations

import base64
import json
import os
import random
import shutil
from pathlib import Path

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "rng_state", "set_rng_state",
           "trainable_state", "load_trainable", "CheckpointError"]


class CheckpointError(ValueError):
    """Missing or inconsistent checkpoint."""


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict:
    """All RNG states that influence training, JSON-serialisable."""
    st = {"torch": _b64(torch.get_rng_state()), "python": repr(random.getstate())}
    try:
        import numpy as np
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        st["numpy"] = {"keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        st["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return st


def set_rng_state(st: dict) -> None:
    import ast
    torch.set_rng_state(_unb64(st["torch"]))
    v = ast.literal_eval(st["python"])
    random.setstate((v[0], tuple(v[1]), v[2]))
    if "numpy" in st:
        import numpy as np
        n = st["numpy"]
        np.random.set_state(("MT19937", np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in st["cuda"]])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (requires_grad), detached, contiguous, on CPU."""
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, weights: dict[str, torch.Tensor], strict: bool = True) -> list[str]:
    """Copy `weights` into the model's parameters of the same names; returns the names loaded.

    strict: every name in `weights` must exist with the same shape.
    """
    params = dict(model.named_parameters())
    loaded = []
    for name, t in weights.items():
        p = params.get(name)
        if p is None or p.shape != t.shape:
            if strict:
                why = "not in the model" if p is None else f"shape {list(t.shape)} != {list(p.shape)}"
                raise CheckpointError(f"checkpoint tensor {name!r}: {why}")
            continue
        with torch.no_grad():
            p.copy_(t.to(p.device, p.dtype))
        loaded.append(name)
    if not loaded:
        raise CheckpointError("checkpoint holds no tensor matching the model's parameters")
    return loaded


def save_checkpoint(out_dir: str | os.PathLike, step: int, model: torch.nn.Module, optimizer_state: dict,
                    state: dict, keep: int = 2) -> Path:
    """Write OUT/checkpoints/step-XXXXXXXX atomically and point `latest` at it; keep `keep` newest."""
    from safetensors.torch import save_file
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    tmp = root / f".{name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "weights.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(dict(state, step=step), indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    ptr = root / f".latest.tmp{os.getpid()}"
    ptr.write_text(name + "\n")
    os.replace(ptr, root / "latest")
    old = sorted(p for p in root.glob("step-*") if p.is_dir())
    for p in old[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(path: str | os.PathLike) -> Path | None:
    """Resolve OUT, OUT/checkpoints or a step directory to the newest complete step directory."""
    p = Path(path)
    if (p / "state.json").is_file():
        return p
    for root in (p / "checkpoints", p):
        ptr = root / "latest"
        if ptr.is_file():
            d = root / ptr.read_text().strip()
            if (d / "state.json").is_file():
                return d
    return None


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> tuple[dict, dict[str, torch.Tensor], dict | None]:
    """(state, trainable weights, optimizer state or None) of a checkpoint directory (or OUT)."""
    from safetensors.torch import load_file
    d = latest_checkpoint(path)
    if d is None:
        raise CheckpointError(f"no checkpoint found at {path} (expected OUT/checkpoints/latest or a step directory)")
    state = json.loads((d / "state.json").read_text())
    weights = load_file(str(d / "weights.safetensors"))
    opt = None
    if (d / "optimizer.pt").is_file():
        opt = torch.load(d / "optimizer.pt", map_location=map_location, weights_only=False)
    state["path"] = str(d)
    return state, weights, opt
