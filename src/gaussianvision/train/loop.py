"""The training loop shared by every stage: AdamW, warmup + cosine, accumulation, clipping,
mixed precision on GPU, gradient all-reduce across ranks, atomic checkpoints, exact resume,
NaN/Inf stop, progress bar, JSONL and optional TensorBoard logs.

A *task* provides the model and the loss (see stages.py):
    task.model                       nn.Module; parameters with requires_grad train
    task.loss(batch) -> (loss, logs) scalar tensor and a dict of floats
    task.after_step()                optional (e.g. clamp CLIP's logit scale)
    task.describe() -> dict          what is needed to rebuild the model (saved in state.json)
    task.export(out_dir)             optional, called at the end on rank 0
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .checkpoint import (CheckpointError, holds_checkpoints, latest_checkpoint, load_checkpoint, load_trainable,
                         rng_state, save_checkpoint, set_rng_state)
from .optstate import apply_optimizer_state
from .distributed import DistInfo, all_reduce_grads, all_reduce_mean, barrier
from .schedule import cosine_lr, set_lr

__all__ = ["TrainConfig", "TrainingDiverged", "train"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; training stopped, the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    out: str
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 32
    lr: float = 5e-4
    min_lr: float = 0.0
    warmup: int = 0
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-6
    accum: int = 1
    grad_clip: float | None = 1.0
    precision: str = "amp"  # amp | fp32 (amp is used on CUDA only; CPU runs in fp32)
    seed: int = 0
    log_every: int = 10
    save_every: int = 0  # 0: only at the end
    keep: int = 2
    resume: bool = False
    stop_after: int | None = None  # stop (checkpointed) after this many steps in this run: time-limited jobs
    tensorboard: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)  # stage-specific settings, saved in state.json

    # settings a resumed run must share with the original one
    RESUME_KEYS = ("steps", "batch_size", "accum", "seed", "lr", "warmup", "min_lr", "weight_decay")


def _adamw(groups, cfg) -> torch.optim.AdamW:
    """AdamW, fused (one kernel over all tensors) where torch has it for the parameters' device:
    about 5x faster than the per-tensor loop on the CPU for the demo's teacher, whose 3.2M-entry
    token embedding dominates the step. The same update up to float rounding."""
    kw = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    params = [p for g in groups for p in g["params"]]
    if params and all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (RuntimeError, ValueError):  # fused not available for this build or device
            pass
    return torch.optim.AdamW(groups, **kw)


def _param_groups(model, weight_decay):
    # no decay on gains, biases, scalars and what the model names (embeddings, latents): open_clip's rule
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and n not in skip]
    rest = [p for n, p in named if p.ndim < 2 or n in skip]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups


def _autocast(device: torch.device, precision: str):
    if precision == "amp" and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype), dtype
    return nullcontext(), torch.float32


def _to_device(batch: dict, device: torch.device) -> dict:
    out = {}
    for k, v in batch.items():
        out[k] = v.to(device) if hasattr(v, "to") and not isinstance(v, (str, list)) else v
    return out


def _gather_positions(pos: tuple[int, int], info: DistInfo) -> list:
    if not info.enabled:
        return [list(pos)]
    import torch.distributed as dist
    out = [None] * info.world_size
    dist.all_gather_object(out, list(pos))
    return out


def train(task, source, cfg: TrainConfig, info: DistInfo | None = None) -> dict:
    """Run (or resume) training; returns a summary with the per-step losses.

    source: an object with batches(epoch, start) (see sources.py) yielding this rank's micro-batches.
    Raises TrainingDiverged on a non-finite loss, CheckpointError on an unusable --resume.
    """
    info = info or DistInfo()
    model = task.model
    device = info.device
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: the model has no parameter with requires_grad=True")
    if cfg.accum < 1:
        raise ValueError(f"--accum must be >= 1, got {cfg.accum}")
    if cfg.precision not in ("amp", "fp32"):
        raise ValueError(f"--precision must be amp or fp32, got {cfg.precision!r}")
    try:
        per_epoch = len(source) // cfg.accum
    except TypeError:
        per_epoch = None
    if cfg.steps:
        total = int(cfg.steps)
    elif cfg.epochs:
        if per_epoch is None:
            raise ValueError("--epochs needs a data source of known length; give --steps for streamed shards")
        total = max(1, int(math.ceil(cfg.epochs * per_epoch)))
    else:
        raise ValueError("give --steps or --epochs")
    if per_epoch == 0:
        raise ValueError(f"the data holds less than one optimizer step ({cfg.accum} x batch {cfg.batch_size})")

    if info.enabled:  # every rank starts from rank 0's weights, whatever its own initialization
        import torch.distributed as dist
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)
    optimizer = _adamw(_param_groups(model, cfg.weight_decay), cfg)
    ac, amp_dtype = _autocast(device, cfg.precision)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    out = Path(cfg.out)
    step, epoch, position = 0, 0, 0
    config_json = {k: v for k, v in asdict(cfg).items() if k not in ("resume", "progress", "stop_after")}
    if cfg.resume and holds_checkpoints(out):
        step, epoch, position = _restore(out, config_json, task, info, model, optimizer, scaler)
    elif cfg.resume and info.is_main:
        print(f"gsv train: --resume: no checkpoint in {out}, starting fresh")
    elif holds_checkpoints(out):
        raise CheckpointError(f"{out} already holds a training run ({latest_checkpoint(out) or out / 'checkpoints'}); "
                              "continue it with --resume or choose another --out")
    resumed = step > 0

    log_f = None
    tb = None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps({"train": config_json, "task": task.describe()},
                                                          indent=2, default=str) + "\n")
        if resumed:
            _trim_log(out / "log.jsonl", step)
        log_f = open(out / "log.jsonl", "a" if resumed else "w")
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
            tb = SummaryWriter(str(out / "tensorboard"))

    bar = None
    if cfg.progress and info.is_main:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=step, desc=f"train {task.describe().get('stage', '')}", unit="step")

    it = source.batches(epoch, position)
    losses: list[float] = []
    last_ckpt = latest_checkpoint(out)
    t_last, samples_since = time.perf_counter(), 0
    global_batch = cfg.batch_size * info.world_size

    def save(step_):
        nonlocal last_ckpt
        positions = _gather_positions((epoch, position), info)
        rngs = _gather_rng(info)
        if info.is_main:
            opt_state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None}
            state = {"train_config": config_json, "task": task.describe(), "epoch": epoch,
                     "data_positions": positions, "rng": rngs, "world_size": info.world_size,
                     "samples_seen": step_ * global_batch * cfg.accum}
            last_ckpt = save_checkpoint(out, step_, model, opt_state, state, keep=cfg.keep)
        barrier(info)

    stop_at = total if not cfg.stop_after else min(total, step + int(cfg.stop_after))
    try:
        while step < stop_at:
            lr = cosine_lr(step, cfg.lr, cfg.warmup, total, cfg.min_lr)
            set_lr(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
            # Parameters the task holds fixed this step (stage rgb's locked text tower): no gradient,
            # so AdamW leaves them and their moments untouched (no weight decay either).
            held = task.begin_step(step) if hasattr(task, "begin_step") else ()
            step_loss, step_logs = 0.0, {}
            for micro in range(cfg.accum):
                batch = next(it, None)
                if batch is None:  # this rank's epoch is over: next epoch, deterministic order
                    epoch, position = epoch + 1, 0
                    it = source.batches(epoch, 0)
                    batch = next(it, None)
                    if batch is None:
                        raise ValueError("the data source yielded no batch for a whole epoch")
                position += 1
                batch = _to_device(batch, device)
                with ac:
                    loss, logs = task.loss(batch)
                value = all_reduce_mean(loss.detach().float().item(), info)
                if not math.isfinite(value):
                    where = f"step {step + 1}, micro-batch {micro + 1}/{cfg.accum}, epoch {epoch}"
                    keep = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                    raise TrainingDiverged(f"loss is {value} at {where} (lr {lr:.3g}); training stopped; {keep}. "
                                           "Try a lower --lr, a longer --warmup, --grad-clip or --precision fp32.")
                scaler.scale(loss / cfg.accum).backward()
                step_loss += value / cfg.accum
                for k, v in logs.items():
                    step_logs[k] = step_logs.get(k, 0.0) + float(v) / cfg.accum
            all_reduce_grads(params, info.world_size)
            for p in held:
                p.grad = None
            grad_norm = None
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            scaler.step(optimizer)
            scaler.update()
            if hasattr(task, "after_step"):
                task.after_step()
            step += 1
            losses.append(step_loss)
            samples_since += global_batch * cfg.accum
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            if info.is_main and (step % max(1, cfg.log_every) == 0 or step == total):
                now = time.perf_counter()
                rec = {"step": step, "epoch": epoch, "loss": step_loss, "lr": lr,
                       "samples_per_s": samples_since / max(now - t_last, 1e-9), **step_logs}
                if grad_norm is not None:
                    rec["grad_norm"] = grad_norm
                t_last, samples_since = now, 0
                log_f.write(json.dumps(rec) + "\n")
                log_f.flush()
                if tb is not None:
                    for k, v in rec.items():
                        if k != "step":
                            tb.add_scalar(f"train/{k}", v, step)
            if (cfg.save_every and step % cfg.save_every == 0) or step == stop_at:
                save(step)
    finally:
        if bar is not None:
            bar.close()
        if log_f is not None:
            log_f.close()
        if tb is not None:
            tb.close()

    if info.is_main and step == total and hasattr(task, "export"):
        task.export(out)
    barrier(info)
    return {"steps": step, "total_steps": total, "losses": losses, "final_loss": losses[-1] if losses else None,
            "checkpoint": str(last_ckpt) if last_ckpt else None, "epoch": epoch, "position": position,
            **_skipped(source, info)}


def _skipped(source, info: DistInfo) -> dict:
    """The source's counts of left-out samples and damaged shards, summed over ranks."""
    counts = source.skipped() if hasattr(source, "skipped") else {}
    return {k: int(round(all_reduce_mean(float(counts.get(k, 0)), info) * info.world_size))
            for k in ("skipped_samples", "damaged_shards")}


def _check_resume(state: dict, config_json: dict, task, info: DistInfo) -> None:
    """CheckpointError naming the first setting that differs from the run being resumed."""
    old = state.get("train_config", {})
    for k in TrainConfig.RESUME_KEYS:
        if k in old and old[k] != config_json[k] and not (isinstance(old[k], list) and list(config_json[k]) == old[k]):
            why = "; the learning-rate schedule depends on it" if k in ("steps", "warmup", "lr", "min_lr") else ""
            raise CheckpointError(f"--resume: {k} was {old[k]!r} in {state['path']}, now {config_json[k]!r}{why}")
    if state.get("world_size", 1) != info.world_size:
        raise CheckpointError(f"--resume: the run used {state.get('world_size')} process(es), now {info.world_size}; "
                              "the data order depends on it")
    old_task, now_task = state.get("task", {}), (task.describe() if hasattr(task, "describe") else {})
    for k in ("word_loss", "word_boost", "hflip"):
        if k in old_task and k in now_task and old_task[k] != now_task[k]:
            raise CheckpointError(f"--resume: {k.replace('_', '-')} was {old_task[k]!r} in {state['path']}, "
                                  f"now {now_task[k]!r}; resume with the run's settings")


def _restore(out, config_json, task, info, model, optimizer, scaler) -> tuple[int, int, int]:
    """Load the newest complete checkpoint of `out` into model, optimizer and scaler; set the RNGs.
    -> (step, epoch, position) of this rank."""
    try:
        state, weights, opt_state = load_checkpoint(out, optimizer=True)
    except CheckpointError as e:
        raise CheckpointError(f"--resume: {e}; nothing was deleted (to start over, move it away or choose "
                              "another --out)") from None
    _check_resume(state, config_json, task, info)
    load_trainable(model, weights)
    apply_optimizer_state(optimizer, opt_state["optimizer"], state["path"])
    if opt_state.get("scaler"):
        scaler.load_state_dict(opt_state["scaler"])
    positions = state["data_positions"]
    if len(positions) <= info.rank:
        raise CheckpointError(f"--resume: {state['path']} holds no data position for rank {info.rank}")
    rngs = state.get("rng", [])
    if len(rngs) > info.rank:
        set_rng_state(rngs[info.rank])
    epoch, position = positions[info.rank]
    return int(state["step"]), int(epoch), int(position)


def _trim_log(path: Path, step: int) -> None:
    """Drop the log lines after `step` (logged after the checkpoint, before the run stopped) and a
    torn last line, so the resumed run's lines follow without repeats."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            kept.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def _gather_rng(info: DistInfo) -> list:
    st = rng_state()
    if not info.enabled:
        return [st]
    import torch.distributed as dist
    out = [None] * info.world_size
    dist.all_gather_object(out, st)
    return out
