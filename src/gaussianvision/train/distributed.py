"""Distributed setup for torchrun (env:// rendezvous): gloo on CPU, nccl on GPU.

We all-reduce gradients ourselves (one flat buffer per dtype) instead of wrapping the model in
DistributedDataParallel: the stages call encode_image / encode_rgb / encode_text directly rather
than forward(), which DDP's reducer does not see. The result is the same averaged gradient.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gaussianvision.data.inputs import rank_world

__all__ = ["DistInfo", "init_distributed", "all_reduce_grads", "all_reduce_mean", "barrier", "cleanup",
           "broadcast_object", "gather_object"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK; start the process group when world > 1.

    device: "cpu", "cuda" or None (auto: CUDA when available). Under torchrun each process uses
    cuda:LOCAL_RANK.
    """
    rank, world, local = _launch_env()
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available; use --device cpu")
    if want.startswith("cuda"):
        dev = torch.device(f"cuda:{local}") if want == "cuda" else torch.device(want)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    backend = None
    if world > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            _rendezvous(backend, rank, world)
    return DistInfo(rank, world, local, dev, backend)


RENDEZVOUS_NOTE_S = 10.0  # after this long waiting for the other processes, say so (once)


def _rendezvous(backend: str, rank: int, world: int) -> None:
    """init_process_group in a helper thread while this one waits on it in short joins, so that Ctrl-C and SIGTERM
    still stop the process (their Python handlers run here, between joins), saying on stderr when the other
    processes keep it waiting. Regression (new-user trial): WORLD_SIZE=2 set on one process without torchrun
    waited silently, and neither SIGTERM nor Ctrl-C stopped it (torch gives up after 30 minutes)."""
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    failed: list[BaseException] = []

    def join():
        try:
            dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
        except BaseException as e:  # handed to the waiting thread
            failed.append(e)
    helper = threading.Thread(target=join, name="gsv-rendezvous", daemon=True)
    helper.start()
    start, said = time.monotonic(), False
    while helper.is_alive():
        helper.join(0.2)
        if not said and helper.is_alive() and time.monotonic() - start >= RENDEZVOUS_NOTE_S:
            said = True
            print(f"gsv: rank {rank} of {world}: still waiting for the other processes at {where} after "
                  f"{RENDEZVOUS_NOTE_S:g} s (torchrun starts all of them, or start each with its RANK; Ctrl-C stops "
                  f"this one; torch gives up after {10 if backend == 'nccl' else 30} minutes)", file=sys.stderr,
                  flush=True)
    if failed:
        raise failed[0]


def _launch_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables, checked: ValueError naming the variable.
    Regression (new-user trial): RANK=x or LOCAL_RANK=x was an int() traceback from gsv train, and RANK=0
    WORLD_SIZE=2 without torchrun one from torch about MASTER_ADDR."""
    rank, world = rank_world()
    text = os.environ.get("LOCAL_RANK", "").strip() or "0"
    try:
        local = int(text)
    except ValueError:
        local = -1
    if local < 0:
        raise ValueError(f"the environment variable LOCAL_RANK={text!r}: not a whole number >= 0")
    if world > 1:
        unset = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v, "").strip()]
        if unset:
            raise ValueError(f"WORLD_SIZE={world} (rank {rank}): {' and '.join(unset)} not set; start every process "
                             "with torchrun, which sets them, or set MASTER_ADDR and MASTER_PORT to rank 0's address "
                             "and a free port on every process")
    return rank, world, local


def all_reduce_grads(params, world_size: int) -> None:
    """Average .grad of `params` over ranks (params without a grad contribute zeros)."""
    if world_size <= 1:
        return
    params = [p for p in params if p.requires_grad]
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world_size
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


def all_reduce_mean(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / info.world_size


def broadcast_object(obj, info: DistInfo):
    """Rank 0's `obj` (picklable, from our own code only) on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj, info: DistInfo) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Destroy the process group (a finished torchrun worker of gsv train ends before this: see
    apps/cli/train._end_worker)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
