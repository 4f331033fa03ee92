"""The CPU render backend's threads (raster/cpu_threads.py): chunks over the pool, failures, nesting, and
serial_torch's thread counts. Renders over several threads (bands, chunks) against one: tests/test_raster_numba.py."""
import pytest
import torch

from gaussianvision.raster import cpu_threads


def test_run_covers_every_item_once_and_stops_on_a_failure():
    """run_chunks' chunks cover [0, n) exactly once over the calling thread and the pool; a chunk that
    raises stops the others taking new chunks, and the exception comes out after every thread stopped."""
    import threading
    import time
    seen, lock = [], threading.Lock()

    def record(i0, i1):
        with lock:
            seen.extend(range(i0, i1))

    cpu_threads.run_chunks(record, 103, lambda i0, i1: (i0, i1), threads=2)
    assert sorted(seen) == list(range(103))
    calls = []

    def failing(i0, i1):
        with lock:
            calls.append(i0)
        time.sleep(0.01)
        if i0 == 0:
            raise ValueError("chunk 0 failed")

    with pytest.raises(ValueError, match="chunk 0 failed"):
        cpu_threads.run_chunks(failing, 64, lambda i0, i1: (i0, i1), threads=2)
    n = len(calls)
    time.sleep(0.1)
    assert len(calls) == n < 8  # nothing ran on after the raise, and the failure stopped the rest early


def test_run_called_from_a_pool_thread_runs_serially():
    """A chunk that itself calls run_chunks (from the pool's thread) must not wait on its own pool:
    the inner call runs on that thread (regression guard: it deadlocked)."""
    import threading
    seen, lock = [], threading.Lock()

    def inner(i0, i1):
        with lock:
            seen.extend(range(i0, i1))

    def outer(i0, i1):
        for _ in range(i0, i1):
            cpu_threads.run_chunks(inner, 10, lambda a, b: (a, b), threads=2)

    t = threading.Thread(target=cpu_threads.run_chunks, args=(outer, 8, lambda a, b: (a, b)), kwargs={"threads": 2},
                         daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive() and sorted(seen) == sorted(list(range(10)) * 8)


def test_serial_torch_restores_threads_nested_across_threads_and_on_error():
    """Inside serial_torch torch runs on one thread and the kernels on the count torch had; a thread
    started inside another's use (torch's count 1 there) still gets that count for its kernels and
    restores it, whichever leaves last; nesting and an exception change nothing."""
    import threading
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []

        def other():  # started while the main thread is inside: begins with torch's count at 1
            seen.append(torch.get_num_threads())
            with cpu_threads.serial_torch():
                seen.append((torch.get_num_threads(), cpu_threads._num_threads()))
            seen.append(torch.get_num_threads())

        with cpu_threads.serial_torch():
            assert torch.get_num_threads() == 1 and cpu_threads._num_threads() == 2
            with cpu_threads.serial_torch():  # nested: the outer count stays
                assert torch.get_num_threads() == 1 and cpu_threads._num_threads() == 2
            t = threading.Thread(target=other)
            t.start()
            t.join(10)
            assert torch.get_num_threads() == 1 and cpu_threads._num_threads() == 2
        assert seen[1] == (1, 2) and seen[2] == 2, seen
        assert torch.get_num_threads() == 2 and cpu_threads._num_threads() == 2
        later = []
        t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        t.start()
        t.join(10)
        assert later == [2]  # threads started afterwards get torch's count back
        with pytest.raises(RuntimeError):
            with cpu_threads.serial_torch():
                raise RuntimeError("left by an exception")
        assert torch.get_num_threads() == 2 and cpu_threads._SERIAL == {"users": 0, "threads": None}
    finally:
        torch.set_num_threads(prev)
