"""The CPU render backend's threads: the numba kernels release the GIL, so a render's work items (chunks of
images, bands of rows, Gaussians) run on a small pool of plain threads, the calling thread one of them, each
taking the next chunk until none is left (blocking waits: on a loaded machine an OpenMP team that spins was 30x
slower than one thread). serial_torch() keeps torch's own CPU operations on one thread meanwhile.

    threads_for(pixels)                     how many threads a render of that many pixels takes
    run_items(fn, n, make_args, pixels)     fn(*make_args(i0, i1)) over [0, n) on them (other numba kernels)
    with serial_torch(): ...                torch on one thread, the kernels on the threads torch had

raster/cpu_numba.py (the render) and fit/ (the fused SSIM, the fit's loop) use them.
"""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait

import torch

__all__ = ["PARALLEL_PIXELS", "serial_torch", "threads_for", "run_items", "run_chunks"]

_POOLS: dict[int, ThreadPoolExecutor] = {}  # worker count -> pool (the calling thread is one more)
_POOL_PREFIX = "gsv-raster"
# A render of fewer pixels (batch x height x width) runs on the calling thread: one 224 px image's
# forward or backward takes about 1 ms, and splitting it (bands, chunks of Gaussians) over 2 threads
# made it slower (0.88-0.93x on the 2-core machine), while 8 images gained 1.2-1.4x.
PARALLEL_PIXELS = 65_536
_LOCK = threading.Lock()
_LOCAL = threading.local()  # serial_torch() on this thread: .depth
_SERIAL = {"users": 0, "threads": None}  # serial_torch() in the process: threads inside, the count saved


def _num_threads() -> int:
    """Worker threads: torch.get_num_threads() (so torch.set_num_threads governs both), or while any
    thread is inside serial_torch() the count torch had when the first entered."""
    return max(1, int(_SERIAL["threads"] or torch.get_num_threads()))


@contextlib.contextmanager
def serial_torch():
    """Torch's own CPU operations on one thread while inside, the kernels still on the threads torch
    had. The count is saved by the first thread to enter (a thread started meanwhile begins with
    torch's count at 1, so its own would be wrong) and each thread leaving its outermost use sets it
    back (torch's count is per thread under OpenMP, and also the default new threads start with);
    nested uses change nothing more.
    A fit's loop runs many small torch operations between the kernels; torch's workers spin after
    each operation, taking the cores the kernels run on (2-core machine, `fast` at N=400, 224 px:
    torch on 1 thread instead of 2 cut one image's fit from 500 to 392 ms, kernels serial in both,
    and 8 images' from 281 to 238 ms per image, kernels on 2 threads)."""
    with _LOCK:
        if _SERIAL["users"] == 0:
            _SERIAL["threads"] = max(1, int(torch.get_num_threads()))
        _SERIAL["users"] += 1
        saved = _SERIAL["threads"]
    depth = getattr(_LOCAL, "depth", 0)
    if depth == 0:
        torch.set_num_threads(1)
    _LOCAL.depth = depth + 1
    try:
        yield
    finally:
        _LOCAL.depth = depth
        if depth == 0:
            torch.set_num_threads(saved)
        with _LOCK:
            _SERIAL["users"] -= 1
            if _SERIAL["users"] == 0:
                _SERIAL["threads"] = None


def threads_for(pixels: int) -> int:
    """Threads for a render of `pixels` pixels: 1 below PARALLEL_PIXELS, else _num_threads()."""
    return 1 if pixels < PARALLEL_PIXELS else _num_threads()


def run_chunks(fn, n_items: int, make_args, threads: int, per_thread: int = 4) -> None:
    """Call fn(*make_args(i0, i1)) over [0, n_items) in chunks on `threads` threads, the calling
    thread one of them; each takes the next chunk until none is left (or one has failed: then the
    first failure is raised once every thread has stopped).

    The kernels release the GIL (nogil), so chunks run truly in parallel; waiting is
    blocking, which matters on a machine with more runnable threads than cores.
    """
    threads = min(threads, n_items)
    if threads <= 1 or threading.current_thread().name.startswith(_POOL_PREFIX):  # no waiting on its own pool
        fn(*make_args(0, n_items))
        return
    with _LOCK:  # one pool per size, kept: a pool in use by another caller is never shut down
        pool = _POOLS.get(threads - 1)
        if pool is None:
            pool = _POOLS[threads - 1] = ThreadPoolExecutor(threads - 1, thread_name_prefix=_POOL_PREFIX)
    chunks = min(n_items, per_thread * threads)
    bounds = [n_items * c // chunks for c in range(chunks + 1)]
    taken = [0]  # chunks handed out; every participant takes the next one until none is left
    lock = threading.Lock()

    def work() -> None:
        try:
            while True:
                with lock:
                    c = taken[0]
                    taken[0] += 1
                if c >= chunks:
                    return
                fn(*make_args(bounds[c], bounds[c + 1]))
        except BaseException:
            with lock:
                taken[0] = chunks  # a failure: nobody takes a new chunk
            raise

    futures = [pool.submit(work) for _ in range(threads - 1)]
    try:
        work()
    finally:
        futures_wait(futures)  # no chunk runs on after _run returns or raises
    for f in futures:
        f.result()  # a worker's exception is raised here


def run_items(fn, n_items: int, make_args, pixels: int) -> None:
    """fn(*make_args(i0, i1)) over work items [0, n_items) on the render's threads (the calling thread and
    the pool; one thread for work under PARALLEL_PIXELS `pixels`): for other numba kernels of the same
    shape, e.g. fit/_ssim_kernels.py."""
    run_chunks(fn, n_items, make_args, threads_for(pixels))
