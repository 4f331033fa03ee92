"""The training loop shared by every stage: AdamW, warmup + cosine, accumulation, clipping,
mixed precision on GPU, gradient all-reduce across ranks, atomic checkpoints, exact resume,
NaN/Inf stop, progress bar, JSONL and optional TensorBoard logs.

A *stage* provides the model and the loss (see stages.py):
    stage.model                       nn.Module; parameters with requires_grad train
    stage.loss(batch) -> (loss, logs) scalar tensor and a dict of floats
    stage.after_step()                optional (e.g. clamp CLIP's logit scale)
    stage.describe() -> dict          what is needed to rebuild the model (saved in state.json
                                      and train_config.json under the key "task", the name
                                      earlier checkpoints use)
    stage.resume_keys() -> dict       optional: describe() keys a resumed run must share, each with
                                      its "not used" value (see resume.py)
    stage.begin_step(step) -> list    optional: parameters to hold fixed in this optimizer step
    stage.export(out_dir)             optional, called at the end on rank 0
"""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..atomic import write_text_atomic
from ..data.loader import DataError
from .checkpoint import CheckpointError, holds_checkpoints, latest_checkpoint, rng_state, save_checkpoint
from .distributed import DistInfo, all_reduce_grads, all_reduce_mean, barrier, gather_object
from .resume import restore, stage_resume_keys
from .schedule import cosine_lr, set_lr

SKIPPED_FILE = "skipped.json"  # the samples and shards a run left out, by name

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
        if isinstance(v, list) and v and all(isinstance(t, torch.Tensor) for t in v):  # images of several sizes
            out[k] = [t.to(device) for t in v]
        else:
            out[k] = v.to(device) if hasattr(v, "to") and not isinstance(v, (str, list)) else v
    return out


def _total_steps(source, cfg: TrainConfig, params) -> int:
    """The run's optimizer steps (from --steps, or --epochs over a source of known length), after
    checking the settings train() relies on."""
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
    return total


def train(stage, source, cfg: TrainConfig, info: DistInfo | None = None) -> dict:
    """Run (or resume) training; returns a summary with the per-step losses.

    source: an object with batches(epoch, start) (see sources.py) yielding this rank's micro-batches.
    Raises TrainingDiverged on a non-finite loss, CheckpointError on an unusable --resume.
    """
    run = _Run(stage, source, cfg, info or DistInfo())
    logs = _Logs(run)
    try:
        with _StopAtCtrlC(run.info) as ctrl_c:
            while run.step < run.stop_at:
                run.one_step(logs)
                if ctrl_c.requested:  # the step is whole: keep it, then stop as Ctrl-C does
                    if run.saved_step != run.step:
                        run.save()
                    raise KeyboardInterrupt
    finally:
        logs.close()
    return run.finish()


class _StopAtCtrlC:
    """In a one-process run on the main thread, the first Ctrl-C lets the current step finish, and the loop
    then writes a checkpoint of it before stopping (regression: a run without --save-every lost every step);
    a second Ctrl-C stops at once. Several processes keep Python's default (every rank must stop at the
    same step to write one checkpoint), as does a run on another thread (no signal handler there)."""

    def __init__(self, info: DistInfo):
        self.active = info.world_size == 1 and threading.current_thread() is threading.main_thread()
        self.requested, self._previous = False, None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("gsv train: stopping after this step and writing its checkpoint (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> "_StopAtCtrlC":
        if self.active:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self._previous)


class _Run:
    """One run's model, optimizer, data position and schedule: set up (fresh or resumed) on creation;
    one_step() trains one optimizer step, save() writes a checkpoint, finish() exports and sums up."""

    def __init__(self, stage, source, cfg: TrainConfig, info: DistInfo):
        self.stage, self.source, self.cfg, self.info = stage, source, cfg, info
        self.model = stage.model
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.total = _total_steps(source, cfg, self.params)
        if info.enabled:  # every rank starts from rank 0's weights, whatever its own initialization
            import torch.distributed as dist
            with torch.no_grad():
                for p in self.params:
                    dist.broadcast(p.data, src=0)
        self.optimizer = _adamw(_param_groups(self.model, cfg.weight_decay), cfg)
        self.ac, amp_dtype = _autocast(info.device, cfg.precision)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.out = Path(cfg.out)
        self.config_json = {k: v for k, v in asdict(cfg).items() if k not in ("resume", "progress", "stop_after")}
        self.step, self.epoch, self.position = self._start()
        self.resumed = self.step > 0
        self.stop_at = self.total if not cfg.stop_after else min(self.total, self.step + int(cfg.stop_after))
        self.it = source.batches(self.epoch, self.position)
        self.losses: list[float] = []
        self.last_ckpt = latest_checkpoint(self.out)
        self.saved_step: int | None = None  # the step of the last checkpoint this run wrote
        self.global_batch = cfg.batch_size * info.world_size

    def _start(self) -> tuple[int, int, int]:
        """(step, epoch, position) to start from: a resumed checkpoint's, or zeros for a fresh run."""
        cfg, out = self.cfg, self.out
        held = holds_checkpoints(out)
        if cfg.resume and held:
            return restore(out, self.config_json, self.stage, self.info, self.model, self.optimizer, self.scaler)
        if cfg.resume and self.info.is_main:
            print(f"gsv train: --resume: no checkpoint in {out}, starting fresh")
        elif not cfg.resume and held:
            raise CheckpointError(f"{out} already holds a training run ({latest_checkpoint(out) or out / 'checkpoints'}); "
                                  "continue it with --resume or choose another --out")
        return 0, 0, 0

    def one_step(self, logs: "_Logs") -> None:
        cfg, stage = self.cfg, self.stage
        lr = cosine_lr(self.step, cfg.lr, cfg.warmup, self.total, cfg.min_lr)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        # Parameters the stage holds fixed this step (stage rgb's locked text tower): no gradient,
        # so AdamW leaves them and their moments untouched (no weight decay either).
        held = stage.begin_step(self.step) if hasattr(stage, "begin_step") else ()
        step_loss, step_logs = self._accumulate(lr)
        all_reduce_grads(self.params, self.info.world_size)
        for p in held:
            p.grad = None
        grad_norm = None
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if hasattr(stage, "after_step"):
            stage.after_step()
        self.step += 1
        self.losses.append(step_loss)
        logs.record(self, step_loss, lr, step_logs, grad_norm)
        if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == self.stop_at:
            self.save()

    def _accumulate(self, lr: float) -> tuple[float, dict]:
        """Forward and backward over cfg.accum micro-batches -> (mean loss over ranks, mean logs)."""
        cfg = self.cfg
        step_loss, step_logs = 0.0, {}
        for micro in range(cfg.accum):
            batch = self._next_batch()
            with self.ac:
                loss, logs = self.stage.loss(batch)
            value = all_reduce_mean(loss.detach().float().item(), self.info)
            if not math.isfinite(value):
                where = f"step {self.step + 1}, micro-batch {micro + 1}/{cfg.accum}, epoch {self.epoch}"
                keep = f"the last good checkpoint is {self.last_ckpt}" if self.last_ckpt else "no checkpoint was written yet"
                raise TrainingDiverged(f"loss is {value} at {where} (lr {lr:.3g}); training stopped; {keep}. "
                                       "Try a lower --lr, a longer --warmup, --grad-clip or --precision fp32.")
            self.scaler.scale(loss / cfg.accum).backward()
            step_loss += value / cfg.accum
            for k, v in logs.items():
                step_logs[k] = step_logs.get(k, 0.0) + float(v) / cfg.accum
        return step_loss, step_logs

    def _next_batch(self) -> dict:
        batch = next(self.it, None)
        if batch is None:  # this rank's epoch is over: next epoch, deterministic order
            self.epoch, self.position = self.epoch + 1, 0
            self.it = self.source.batches(self.epoch, 0)
            batch = next(self.it, None)
            if batch is None:  # a DataError, which the CLI says in one line (regression: a traceback)
                raise DataError(f"the data gave no full batch of {self.cfg.batch_size} samples in a whole epoch: "
                                "fewer usable samples than one global batch (empty, unreadable or too few); "
                                "lower --batch-size or add data")
        self.position += 1
        return _to_device(batch, self.info.device)

    def save(self) -> None:
        info, step = self.info, self.step
        self.saved_step = step
        positions = gather_object([self.epoch, self.position], info)
        rngs = gather_object(rng_state(), info)
        if info.is_main:
            opt_state = {"optimizer": self.optimizer.state_dict(),
                         "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None}
            state = {"train_config": self.config_json, "task": self.stage.describe(),
                     "resume_keys": stage_resume_keys(self.stage), "epoch": self.epoch,
                     "data_positions": positions, "rng": rngs, "world_size": info.world_size,
                     "samples_seen": step * self.global_batch * self.cfg.accum}
            self.last_ckpt = save_checkpoint(self.out, step, self.model, opt_state, state, keep=self.cfg.keep)
        barrier(info)

    def finish(self) -> dict:
        if self.info.is_main and self.step == self.total and hasattr(self.stage, "export"):
            self.stage.export(self.out)
        barrier(self.info)
        losses = self.losses
        counts, names = _left_out(self.source, self.info)
        summary = {"steps": self.step, "total_steps": self.total, "losses": losses,
                   "final_loss": losses[-1] if losses else None,
                   "checkpoint": str(self.last_ckpt) if self.last_ckpt else None, "epoch": self.epoch,
                   "position": self.position, **counts}
        if self.info.is_main and any(names.values()):  # named, not only counted (regression: counts only)
            path = self.out / SKIPPED_FILE
            write_text_atomic(path, json.dumps({"skipped_samples": sorted(f"{u}:{k}" for u, k in names["skipped_samples"]),
                                                "damaged_shards": sorted(names["damaged_shards"])}, indent=1) + "\n")
            summary["skipped_file"] = str(path)
        return summary


class _Logs:
    """Rank 0's train_config.json, log.jsonl (trimmed to the resumed step), TensorBoard writer and
    progress bar; nothing on the other ranks."""

    def __init__(self, run: _Run):
        self.f = self.tb = self.bar = None
        self.t_last, self.samples_since = time.perf_counter(), 0
        info, cfg, out = run.info, run.cfg, run.out
        if not info.is_main:
            return
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps({"train": run.config_json, "task": run.stage.describe()},
                                                          indent=2, default=str) + "\n")
        if run.resumed:
            _trim_log(out / "log.jsonl", run.step)
        self.f = open(out / "log.jsonl", "a" if run.resumed else "w")
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                self.close()
                raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
            self.tb = SummaryWriter(str(out / "tensorboard"))
        if cfg.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=run.total, initial=run.step, desc=f"train {run.stage.describe().get('stage', '')}",
                            unit="step")
        self.t_last = time.perf_counter()

    def record(self, run: _Run, step_loss: float, lr: float, step_logs: dict, grad_norm: float | None) -> None:
        step = run.step
        self.samples_since += run.global_batch * run.cfg.accum
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
        if self.f is None or not (step % max(1, run.cfg.log_every) == 0 or step == run.total):
            return
        now = time.perf_counter()
        rec = {"step": step, "epoch": run.epoch, "loss": step_loss, "lr": lr,
               "samples_per_s": self.samples_since / max(now - self.t_last, 1e-9), **step_logs}
        if grad_norm is not None:
            rec["grad_norm"] = grad_norm
        self.t_last, self.samples_since = now, 0
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step":
                    self.tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        for h in (self.bar, self.f, self.tb):
            if h is not None:
                h.close()


def _left_out(source, info: DistInfo) -> tuple[dict, dict]:
    """({"skipped_samples": n, "damaged_shards": n}, the same as sets of (url, key) and url): distinct over
    all ranks, the union of each rank's sets (with --in-memory every rank reads every shard; streamed, a
    shard may be read by two ranks). A source that only counts gives empty sets."""
    keys = ("skipped_samples", "damaged_shards")
    if hasattr(source, "left_out"):
        sets = gather_object(source.left_out(), info)
        union = {k: set().union(*(s.get(k, ()) for s in sets)) for k in keys}
        return {k: len(v) for k, v in union.items()}, union
    counts = source.skipped() if hasattr(source, "skipped") else {}
    return ({k: int(round(all_reduce_mean(float(counts.get(k, 0)), info) * info.world_size)) for k in keys},
            {k: set() for k in keys})


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
    write_text_atomic(path, "".join(kept))
