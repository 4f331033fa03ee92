"""Training checkpoints: a directory per saved step, made visible atomically.

Layout of OUT/checkpoints/:
  step-00000120/weights.safetensors   trainable parameters only (names as in model.named_parameters())
  step-00000120/optimizer.safetensors AdamW state tensors   } no pickle (see optstate.py);
  step-00000120/optimizer.json        the rest, scaler state  } read only by --resume
  step-00000120/state.json            step, epoch, data position, config, RNG states
  latest                              text file naming the newest complete step directory

A step directory is written under a temporary name and renamed when complete; `latest` is then
replaced atomically, so a crash at any moment leaves the previous checkpoint usable. Loading OUT
takes the step directory `latest` names when it is complete, else the newest complete one (each
damaged or missing one tried first is named in a warning). A resume that falls back renames the
newer step directories to step-N.bad (set_aside_newer), so nothing later loads them.
"""
from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

import torch

from gaussianvision.models.weights import base_relative

from ..atomic import write_text_atomic
from .optstate import read_optimizer, write_optimizer

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "rng_state", "set_rng_state",
           "trainable_state", "load_trainable", "CheckpointError", "step_dirs",
           "holds_checkpoints", "find_checkpoint", "set_aside_newer", "read_state"]


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
    """The parameters that train (requires_grad), and those a model keeps from an earlier run's training (a GS
    model's kept_base: base blocks unfrozen there, frozen here), detached, contiguous, on CPU."""
    kept = getattr(model, "kept_base", ())
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters()
            if p.requires_grad or n in kept}


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
    """Write OUT/checkpoints/step-XXXXXXXX atomically and point `latest` at it; keep `keep` newest
    (0: all). Only older steps are removed: a newer directory is never touched."""
    from gaussianvision.models.weights import save_safetensors
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    tmp = root / f".{name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_safetensors(trainable_state(model), tmp / "weights.safetensors")
    write_optimizer(tmp, optimizer_state)
    task = state.get("task")
    rel = base_relative(task.get("pretrained"), final) if isinstance(task, dict) else None
    if rel:  # runs moved together find their base
        state = dict(state, task=dict(task, pretrained_rel=rel))
    (tmp / "state.json").write_text(json.dumps(dict(state, step=step), indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_text_atomic(root / "latest", name + "\n")
    older = [d for d in step_dirs(root) if _step_of(d) < step]
    for d in older[:max(0, len(older) - (keep - 1))] if keep > 0 else []:
        shutil.rmtree(d, ignore_errors=True)
    return final


_STEP_DIR = re.compile(r"step-[0-9]+")


def _step_of(d: Path) -> int:
    return int(d.name[len("step-"):])


def step_dirs(root: str | os.PathLike) -> list[Path]:
    """The step-N directories of a checkpoints folder (named exactly step-<digits>), oldest first
    (complete or not)."""
    root = Path(root)
    found = [d for d in root.glob("step-*") if _STEP_DIR.fullmatch(d.name) and d.is_dir()]
    return sorted(found, key=_step_of)


def _root(path: Path) -> Path:
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def holds_checkpoints(path: str | os.PathLike) -> bool:
    """Whether OUT (or OUT/checkpoints) holds any step directory or a `latest` pointer."""
    root = _root(Path(path))
    return bool(step_dirs(root)) or (root / "latest").is_file()


def latest_checkpoint(path: str | os.PathLike) -> Path | None:
    """OUT, OUT/checkpoints or a step directory -> the step directory `latest` names if it has a
    state.json, else the newest that has one (load_checkpoint checks the rest and falls back
    further when it must)."""
    p = Path(path)
    if (p / "state.json").is_file():
        return p
    root = _root(p)
    done = [d for d in step_dirs(root) if (d / "state.json").is_file()]
    named = [d for d in done if d.name == _latest_name(root)]
    return (named or done or [None])[-1]


def read_state(d: str | os.PathLike) -> dict:
    """A step directory's state.json (step, data positions, the run's task and config): no weights are
    read. CheckpointError naming the file when it is missing, not JSON, or lacks step or positions."""
    d = Path(d)
    f = d / "state.json"
    if not f.is_file():
        raise CheckpointError(f"{d}: no state.json")
    try:
        state = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) \
            or not isinstance(state.get("data_positions"), list):
        raise CheckpointError(f"{f}: no step or data positions")
    return state


def _read_weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    f = d / "weights.safetensors"
    if not f.is_file():
        raise CheckpointError(f"{d}: no weights.safetensors")
    try:
        return load_file(str(f))
    except Exception as e:  # safetensors raises its own error types for cut or garbled files
        raise CheckpointError(f"{f}: unreadable ({e})") from None


def _load_dir(d: Path, optimizer: bool, map_location) -> tuple[dict, dict[str, torch.Tensor], dict | None]:
    state = read_state(d)
    weights = _read_weights(d)
    opt = read_optimizer(d, map_location) if optimizer else None
    state["path"] = str(d)
    return state, weights, opt


def find_checkpoint(path: str | os.PathLike, map_location="cpu", optimizer: bool = False
                    ) -> tuple[tuple[dict, dict[str, torch.Tensor], dict | None], list[str]]:
    """((state, weights, optimizer state or None), [why each candidate tried first was unusable]).

    path: a step directory (loaded as it is), or OUT / OUT/checkpoints: the directory `latest` names
    when it is complete, else the newest complete one. Prints nothing; CheckpointError when there
    is no checkpoint or none is complete."""
    p = Path(path)
    if (p / "state.json").is_file() or _STEP_DIR.fullmatch(p.name):
        return _load_dir(p, optimizer, map_location), []
    root = _root(p)
    dirs = step_dirs(root)
    if not dirs:
        raise CheckpointError(f"no checkpoint found at {path} (expected OUT/checkpoints/step-N directories)")
    named = _latest_name(root)
    bad = [f"{root / 'latest'} names {named}, which is missing"] if named and named not in {d.name for d in dirs} else []
    for d in sorted(dirs, key=lambda d: (d.name == named, _step_of(d)), reverse=True):
        try:
            return _load_dir(d, optimizer, map_location), bad
        except CheckpointError as e:
            bad.append(str(e))
    raise CheckpointError(f"{root}: no complete checkpoint ({'; '.join(bad)})")


def load_checkpoint(path: str | os.PathLike, map_location="cpu",
                    optimizer: bool = False) -> tuple[dict, dict[str, torch.Tensor], dict | None]:
    """(state, trainable weights, optimizer state or None) of a step directory, or of the checkpoint
    find_checkpoint chooses under OUT / OUT/checkpoints (each unusable one tried first named in a
    warning on stderr).

    optimizer: also read the optimizer state (only --resume needs it; it is never read otherwise).
    Raises CheckpointError when there is no checkpoint or none is complete.
    """
    found, bad = find_checkpoint(path, map_location, optimizer)
    for why in bad:
        print(f"warning: checkpoint unusable: {why}; using {found[0]['path']}", file=sys.stderr)
    return found


def set_aside_newer(used: str | os.PathLike) -> list[tuple[str, Path]]:
    """Rename the step directories newer than `used` (the checkpoint a resume continues from) to
    step-N.bad (step-N.bad2, ... when taken): kept for inspection, never loaded, never deleted.
    -> [(old name, new path)]."""
    used = Path(used)
    moved = []
    for d in step_dirs(used.parent):
        if _step_of(d) > _step_of(used):
            new, n = d.with_name(d.name + ".bad"), 1
            while new.exists():
                n += 1
                new = d.with_name(f"{d.name}.bad{n}")
            os.replace(d, new)
            moved.append((d.name, new))
    return moved


def _latest_name(root: Path) -> str:
    ptr = root / "latest"
    try:
        return ptr.read_text(errors="replace").strip() if ptr.is_file() else ""
    except OSError:
        return ""
