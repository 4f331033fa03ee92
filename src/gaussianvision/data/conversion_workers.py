"""The fitting processes of a conversion (`workers` > 0): started together, each on one torch thread, deaf to
Ctrl-C, and ended with the converting process however it ends.

    pool = start_workers(2)          # a ProcessPoolExecutor whose processes are already running
    ...                              # FitStream.map_batches(..., pool)
    stop_workers(pool, wait=True)    # done: let them finish; wait=False: an interrupt or failure, end them now

Ctrl-C in a terminal reaches the whole process group: a worker that took it printed KeyboardInterrupt
tracebacks (36-119 lines while it was still importing torch) beside the converting process's one line. So the
workers ignore SIGINT from their start (the disposition a process is started with survives exec, and Python
then installs no KeyboardInterrupt handler), and the converting process ends them itself. Regression (new-user
trial): SIGTERM to the converting process alone left its workers fitting, and it waited 15 s for their
batches, which it then threw away.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor, wait

import torch

__all__ = ["start_workers", "stop_workers"]


def start_workers(n: int) -> ProcessPoolExecutor:
    """A pool of `n` fitting processes (spawned: no copy of this process's threads or CUDA state), all
    started now, with SIGINT ignored."""
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)
    try:
        with _sigint_ignored():
            # a submit starts a process while none is idle: n at once start n (the pool starts them lazily)
            started = [pool.submit(_ready) for _ in range(n)]
        wait(started)
    except BaseException:  # Ctrl-C while they start (importing torch takes seconds)
        stop_workers(pool, wait_for_them=False)
        raise
    return pool


def stop_workers(pool: ProcessPoolExecutor, wait_for_them: bool) -> None:
    """Shut the pool down: waiting for the batches in flight (wait_for_them), or ending its processes at once
    (an interrupt, a failure: their batches would be thrown away)."""
    if not wait_for_them:
        for p in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):  # already gone
                p.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while inside, in the main thread (elsewhere signal dispositions cannot be set: unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _ready() -> int:
    return os.getpid()


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # also where the process started before _sigint_ignored
    torch.set_num_threads(1)  # W worker processes share the cores; oversubscription only slows them
    threading.Thread(target=_exit_with_parent, name="gsv-parent-watch", daemon=True).start()


def _exit_with_parent() -> None:
    """A fitting process ends when the converting process does, however it ended (regression: after a
    kill -9 of gsv convert its workers waited on their queue for ever)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(1)
