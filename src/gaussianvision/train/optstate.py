"""Optimizer and loss-scaler state on disk without pickle: nothing read back can run code.

A step directory holds
  optimizer.safetensors  every tensor of the optimizer's state_dict, keyed "state.<param index>.<name>"
                         (e.g. state.3.exp_avg, state.3.step) or "param_groups.<group>.<name>"
  optimizer.json         everything else: {"format", "state": per-parameter plain values,
                         "param_groups": the groups without their tensors, "scaler": GradScaler state
                         or null}; tuples are written as {"__tuple__": [...]} so they come back as tuples

Reading gives back exactly the dict that was saved (same tensors bit for bit, same dtypes, same
plain values). Any unreadable or inconsistent file is a CheckpointError "unreadable: ...", so a
resume falls back to an older checkpoint. Checkpoints of older versions hold `optimizer.pt`
(a pickle); it is read only with torch.load(weights_only=True) on torch >= 2.6 (before that,
weights_only could be bypassed: CVE-2025-32434), and never written.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

__all__ = ["OPT_TENSORS", "OPT_JSON", "LEGACY_PT", "FORMAT", "write_optimizer", "read_optimizer",
           "apply_optimizer_state"]

OPT_TENSORS, OPT_JSON, LEGACY_PT = "optimizer.safetensors", "optimizer.json", "optimizer.pt"
FORMAT = "gsv-optimizer/1"
LEGACY_MIN_TORCH = (2, 6)
_GROUP_NUMBERS = ("lr", "eps", "weight_decay")  # what AdamW needs in every group besides params and betas
_SCALER_NUMBERS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")


def _error(msg: str) -> Exception:
    from .checkpoint import CheckpointError
    return CheckpointError(msg)


# ------------------------------------------------------------------ plain values <-> JSON
def _plain(v):
    if isinstance(v, tuple):
        return {"__tuple__": [_plain(x) for x in v]}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"optimizer state value of type {type(v).__name__} cannot be saved")


def _unplain(v):
    if isinstance(v, dict):
        if set(v) == {"__tuple__"}:
            return tuple(_unplain(x) for x in v["__tuple__"])
        return {k: _unplain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_unplain(x) for x in v]
    return v


# ------------------------------------------------------------------ write
def _split(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt_state.get("optimizer") or {}
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, dict] = {}
    for idx, entry in sd.get("state", {}).items():
        state[str(int(idx))] = {}
        for name, v in entry.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{int(idx)}.{name}"] = v.detach().to("cpu").contiguous()
            else:
                state[str(int(idx))][name] = _plain(v)
    groups = []
    for i, g in enumerate(sd.get("param_groups", [])):
        groups.append({k: _plain(v) for k, v in g.items() if not isinstance(v, torch.Tensor)})
        tensors.update({f"param_groups.{i}.{k}": v.detach().to("cpu").contiguous()
                        for k, v in g.items() if isinstance(v, torch.Tensor)})
    doc = {"format": FORMAT, "state": state, "param_groups": groups, "scaler": _plain(opt_state.get("scaler"))}
    return tensors, doc


def write_optimizer(d: Path, opt_state: dict) -> None:
    """{"optimizer": optimizer.state_dict(), "scaler": scaler state or None} -> d/optimizer.{safetensors,json}."""
    from gaussianvision.models.weights import save_safetensors
    tensors, doc = _split(opt_state)
    save_safetensors(tensors, d / OPT_TENSORS)
    (d / OPT_JSON).write_text(json.dumps(doc, indent=1) + "\n")


# ------------------------------------------------------------------ read
def _join(doc, tensors: dict[str, torch.Tensor]) -> dict:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file")
    state = {int(k): dict(_unplain(v)) for k, v in doc["state"].items()}
    groups = [dict(_unplain(g)) for g in doc["param_groups"]]
    for key, t in tensors.items():
        m = re.fullmatch(r"(state|param_groups)\.(\d+)\.([A-Za-z_][\w.]*)", key)
        if m is None:
            raise ValueError(f"unexpected tensor {key!r}")
        where, i, name = m.group(1), int(m.group(2)), m.group(3)
        if where == "state":
            state.setdefault(i, {})[name] = t
        elif i < len(groups):
            groups[i][name] = t
        else:
            raise ValueError(f"tensor {key!r} of a missing parameter group")
    return {"optimizer": {"state": state, "param_groups": groups}, "scaler": _unplain(doc.get("scaler"))}


def _check(opt: dict) -> None:
    """ValueError unless `opt` is shaped like AdamW's state: what load_state_dict and step() rely on."""
    sd = opt.get("optimizer") if isinstance(opt, dict) else None
    if not isinstance(sd, dict) or not isinstance(sd.get("state"), dict) or not isinstance(sd.get("param_groups"), list):
        raise ValueError("no optimizer state")
    ids = []
    for g in sd["param_groups"]:
        ok = isinstance(g, dict) and isinstance(g.get("params"), list) \
            and all(isinstance(i, int) and not isinstance(i, bool) for i in g["params"])
        ok = ok and all(isinstance(g.get(k), (int, float)) and not isinstance(g.get(k), bool) for k in _GROUP_NUMBERS)
        betas = g.get("betas") if ok else None
        if not ok or not isinstance(betas, (tuple, list)) or len(betas) != 2 \
                or not all(isinstance(b, (int, float)) for b in betas):
            raise ValueError("a parameter group lacks params, lr, betas, eps or weight_decay")
        ids += g["params"]
    if len(set(ids)) != len(ids) or not set(sd["state"]) <= set(ids):
        raise ValueError("parameter indices of the state and the groups disagree")
    for i, entry in sd["state"].items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), torch.Tensor) for k in ("exp_avg", "exp_avg_sq")) \
                or not isinstance(entry.get("step"), (torch.Tensor, int, float)):
            raise ValueError(f"state of parameter {i} lacks step, exp_avg or exp_avg_sq")
    scaler = opt.get("scaler")
    if scaler is not None and not (isinstance(scaler, dict) and all(
            isinstance(scaler.get(k), (int, float)) and not isinstance(scaler.get(k), bool) for k in _SCALER_NUMBERS)):
        raise ValueError("the loss-scaler state lacks " + ", ".join(_SCALER_NUMBERS))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def read_optimizer(d: Path, map_location="cpu") -> dict:
    """{"optimizer": state_dict, "scaler": dict or None} of a step directory; CheckpointError when the
    files are missing, unreadable or inconsistent (never a pickle, except a legacy optimizer.pt, see above)."""
    from safetensors.torch import load_file
    fj, ft = d / OPT_JSON, d / OPT_TENSORS
    if not fj.is_file() and (d / LEGACY_PT).is_file():
        return _read_legacy(d / LEGACY_PT, map_location)
    if not fj.is_file() or not ft.is_file():
        raise _error(f"{d}: no {OPT_JSON if not fj.is_file() else OPT_TENSORS}")
    try:
        opt = _join(json.loads(fj.read_text()), load_file(str(ft), device=str(map_location)))
        _check(opt)
    except Exception as e:  # json, safetensors and the checks above: any damage is "unreadable"
        raise _error(f"{d}/optimizer.*: unreadable ({_first_line(e)})") from None
    return opt


def _torch_version() -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", torch.__version__.split("+")[0])[:2])


def _read_legacy(f: Path, map_location) -> dict:
    """An optimizer.pt of an older gsv: torch.load(weights_only=True), only on torch >= 2.6."""
    import pickle
    if _torch_version() < LEGACY_MIN_TORCH:
        raise _error(f"{f}: refused: an optimizer.pt of an older gsv is read only with torch >= 2.6 (this is "
                     f"{torch.__version__}, whose weights_only loading can run code: CVE-2025-32434); "
                     "upgrade torch to resume from it")
    try:
        opt = torch.load(f, map_location=map_location, weights_only=True)
        _check(opt)
    except pickle.UnpicklingError as e:
        what = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if what is None:
            raise _error(f"{f}: unreadable ({_first_line(e)})") from None
        raise _error(f"{f}: refused: it holds {what.group(1)}, not only tensors and plain values "
                     "(nothing in it was run)") from None
    except Exception as e:  # a cut or garbled file
        raise _error(f"{f}: unreadable ({_first_line(e)})") from None
    return opt


# ------------------------------------------------------------------ apply
def apply_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict, where: str) -> None:
    """Load `saved` (read_optimizer()["optimizer"]) into `optimizer`, with this build's kernel
    choice (fused); CheckpointError when it does not fit the optimizer's parameters."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved_ids = [i for g in saved.get("param_groups", []) for i in g["params"]]
    if len(saved_ids) != len(params):
        raise _mismatch(where, f"{len(saved_ids)} parameters saved, {len(params)} trainable now")
    by_id = dict(zip(saved_ids, params))
    for i, entry in saved.get("state", {}).items():
        for name in ("exp_avg", "exp_avg_sq"):
            if i not in by_id or entry[name].shape != by_id[i].shape:
                raise _mismatch(where, f"parameter {i}: {name} of another shape")
    for g in saved.get("param_groups", []):
        g["fused"] = optimizer.defaults.get("fused")
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError) as e:
        raise _mismatch(where, str(e)) from None


def _mismatch(where: str, why: str) -> Exception:
    return _error(f"--resume: the optimizer state in {where} does not match the trainable parameters ({why}); "
                  "was the run started with other --word-loss or --unfreeze settings?")
