"""The fitting processes of a conversion (`workers` > 0): started together, each on one torch thread, deaf to
Ctrl-C, and ended with the converting process however it ends.

    pool = start_workers(2)          # a ProcessPoolExecutor whose processes are running (WorkerStartError if not)
    ...                              # FitStream.map_batches(..., pool)
    stop_workers(pool, wait_for_them=True)   # done: let them finish; False: an interrupt or failure, end them now

Ctrl-C in a terminal reaches the whole process group: a worker that took it printed KeyboardInterrupt
tracebacks (36-119 lines while it was still importing torch) beside the converting process's one line. So the
workers ignore SIGINT from their start (POSIX: the disposition a process is started with survives exec, and
Python then installs no KeyboardInterrupt handler; elsewhere from their initializer on), and the converting
process ends them itself. Regression (new-user trial): SIGTERM to the converting process alone left its
workers fitting, and it waited 15 s for their batches, which it then threw away.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch

__all__ = ["WorkerStartError", "start_workers", "stop_workers"]

JOIN_SECONDS = 5.0  # how long an ended worker is waited for (SIGTERM ends it at once: it holds no handler)


class WorkerStartError(RuntimeError):
    """The fitting processes could not be started (the system refused a process, or one failed as it started)."""


def start_workers(n: int) -> ProcessPoolExecutor:
    """A pool of `n` fitting processes (spawned: no copy of this process's threads or CUDA state), all
    started and answering now, with SIGINT ignored."""
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)
    try:
        with _sigint_ignored():
            # a submit starts a process while none is idle: n at once start n (the pool starts them lazily)
            started = [pool.submit(os.getpid) for _ in range(n)]
        for f in started:
            f.result()
    except (OSError, BrokenProcessPool) as e:  # review finding: a worker failing at its start was "killed, or OOM"
        stop_workers(pool, wait_for_them=False)
        raise WorkerStartError(getattr(e, "strerror", None) or str(e)) from None
    except BaseException:  # Ctrl-C while they start (importing torch takes seconds)
        stop_workers(pool, wait_for_them=False)
        raise
    return pool


def stop_workers(pool: ProcessPoolExecutor, wait_for_them: bool) -> None:
    """Shut the pool down: waiting for the batches in flight (wait_for_them), or ending its processes at once
    (an interrupt, a failure: their batches would be thrown away)."""
    if not wait_for_them:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for p in processes:
            with contextlib.suppress(Exception):  # already gone
                p.terminate()
        deadline = time.monotonic() + JOIN_SECONDS  # one wait for them all (review finding: 5 s each)
        for p in processes:
            with contextlib.suppress(Exception):
                p.join(max(0.0, deadline - time.monotonic()))
        # A worker ended while it sent a result leaves the pool's reader thread waiting for the rest of the
        # message, which the parent's own copy of the pipe's write end keeps from ever ending: closed, the read
        # ends (EOF) and the pool shuts down as broken. Review finding: shutdown then waited for ever.
        writer = getattr(getattr(pool, "_result_queue", None), "_writer", None)
        if writer is not None:
            with contextlib.suppress(OSError):
                writer.close()
    pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while inside, in the main thread where Python's own handler (or another Python one) is
    set; elsewhere, or under a handler set outside Python (which could not be put back), nothing changes."""
    before = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if before is None:
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # where the start did not already (another thread, Windows)
    torch.set_num_threads(1)  # W worker processes share the cores; oversubscription only slows them
    threading.Thread(target=_exit_with_parent, name="gsv-parent-watch", daemon=True).start()


def _exit_with_parent() -> None:
    """A fitting process ends when the converting process does, however it ended (regression: after a
    kill -9 of gsv convert its workers waited on their queue for ever)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(1)
