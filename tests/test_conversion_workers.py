"""The fitting processes of gsv convert --workers (data/conversion_workers.py): deaf to Ctrl-C (the converting
process ends them), ended at once on an interrupt instead of waited for, and convert_dataset ending them so."""
import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from gaussianvision.data import conversion
from gaussianvision.data.conversion_workers import start_workers, stop_workers


def _wait_for(path, seconds=60.0):
    end = time.monotonic() + seconds
    while not os.path.exists(path):
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def test_workers_ignore_ctrl_c_and_an_interrupt_ends_them_without_waiting(tmp_path):
    pool = start_workers(1)
    try:
        pid = pool.submit(os.getpid).result(timeout=120)
        os.kill(pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
        time.sleep(0.2)
        assert pool.submit(os.getpid).result(timeout=60) == pid  # the same process, alive and answering
        mark = tmp_path / "running"
        slow = pool.submit(exec, f"import pathlib, time; pathlib.Path({str(mark)!r}).touch(); time.sleep(120)")
        _wait_for(mark)  # the batch is being fitted
    except BaseException:
        stop_workers(pool, wait_for_them=False)
        raise
    stop_workers(pool, wait_for_them=False)
    # regression (new-user trial): the pool was shut down waiting, so this batch ran its 120 s (there: 15 s of
    # fits, thrown away) before the interrupted command could end
    assert slow.done() and isinstance(slow.exception(timeout=0), BrokenProcessPool)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize("interrupted", [False, True])
def test_convert_waits_for_its_workers_only_when_it_finished(tmp_path, monkeypatch, interrupted):
    from PIL import Image
    for i in range(2):
        Image.new("RGB", (24, 24), (40 * i, 90, 200)).save(tmp_path / f"im{i}.png")
    seen = []
    monkeypatch.setattr(conversion, "start_workers", lambda n: seen.append(("start", n)) or "pool")
    monkeypatch.setattr(conversion, "stop_workers", lambda pool, wait_for_them: seen.append((pool, wait_for_them)))

    def pipeline(conv, pending, pool, *rest):
        if interrupted:
            raise KeyboardInterrupt
    monkeypatch.setattr(conversion, "_pipeline", pipeline)
    cfg = conversion.ConvertConfig(n_gaussians=4, size=16, fit_options={"iters": 1}, workers=2, progress=False)
    if interrupted:
        with pytest.raises(KeyboardInterrupt):
            conversion.convert_dataset(tmp_path, tmp_path / "out", cfg)
    else:
        conversion.convert_dataset(tmp_path, tmp_path / "out", cfg)
    assert seen == [("start", 2), ("pool", not interrupted)]


def _report_sigint(queue):
    queue.put(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)


@pytest.mark.skipif(os.name != "posix", reason="an ignored SIGINT passes to a spawned process on POSIX only")
def test_a_process_started_under_sigint_ignored_ignores_it_before_any_initializer():
    """Review finding: the first test sends its SIGINT after _init_worker has run, so it held without
    _sigint_ignored; the tracebacks of the trial came while the workers were still importing."""
    import multiprocessing
    from gaussianvision.data.conversion_workers import _sigint_ignored
    ctx = multiprocessing.get_context("spawn")
    seen = []
    for ignored in (True, False):
        q = ctx.Queue()
        p = ctx.Process(target=_report_sigint, args=(q,))
        if ignored:
            with _sigint_ignored():
                p.start()
        else:
            p.start()
        seen.append(q.get(timeout=120))
        p.join(60)
    assert seen == [True, False]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_workers_that_cannot_start_are_one_convert_error(tmp_path, monkeypatch):
    """Review finding: a system refusing the processes (EAGAIN, ENOMEM) was a raw traceback."""
    from gaussianvision.data import conversion_workers

    class Refusing:
        def __init__(self, *a, **k):
            pass

        def submit(self, *a, **k):
            raise OSError(11, "Resource temporarily unavailable")

        def shutdown(self, **k):
            pass
    monkeypatch.setattr(conversion_workers, "ProcessPoolExecutor", Refusing)
    from PIL import Image
    Image.new("RGB", (24, 24)).save(tmp_path / "a.png")
    cfg = conversion.ConvertConfig(n_gaussians=4, size=16, fit_options={"iters": 1}, workers=2, progress=False)
    with pytest.raises(conversion.ConvertError, match=r"cannot start 2 fitting processes \(--workers\): "
                                                       r"Resource temporarily unavailable$"):
        conversion.convert_dataset(tmp_path, tmp_path / "out", cfg)


def test_ending_workers_never_hangs_on_a_result_cut_off_mid_message():
    """Review finding: a worker ended while it sent a result (a big batch) left the pool's reader thread
    waiting for the rest of the message, kept open by the parent's own end of the pipe: shutdown waited for
    ever. The cut-off message is made here directly: a header promising 1000 bytes, then 10 of them."""
    import struct
    import threading
    pool = start_workers(1)
    writer = pool._result_queue._writer
    os.write(writer.fileno(), struct.pack("!i", 1000) + b"x" * 10)
    time.sleep(0.5)  # the reader thread has the header and waits for the rest
    t = threading.Thread(target=stop_workers, args=(pool,), kwargs={"wait_for_them": False}, daemon=True)
    t.start()
    t.join(60)
    hung = t.is_alive()
    if hung:  # unstick it, so that the test fails instead of hanging the run at exit
        writer.close()
    assert not hung


def test_a_second_ctrl_c_while_the_workers_end_still_lets_the_claims_go(tmp_path, monkeypatch):
    """Review finding: a Ctrl-C during stop_workers skipped the release of the run's shard claims (lock files)."""
    from PIL import Image
    Image.new("RGB", (24, 24)).save(tmp_path / "a.png")
    released = []
    monkeypatch.setattr(conversion, "start_workers", lambda n: "pool")

    def stop(pool, wait_for_them):
        raise KeyboardInterrupt  # the second Ctrl-C
    monkeypatch.setattr(conversion, "stop_workers", stop)

    def pipeline(conv, pending, *rest):
        assert conv._claim(pending[0])  # a shard claimed, as the run claims the one it converts
        real = conv.release_all
        monkeypatch.setattr(conv, "release_all", lambda: released.append(1) or real())
        raise KeyboardInterrupt  # the first
    monkeypatch.setattr(conversion, "_pipeline", pipeline)
    cfg = conversion.ConvertConfig(n_gaussians=4, size=16, fit_options={"iters": 1}, workers=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        conversion.convert_dataset(tmp_path, tmp_path / "out", cfg)
    assert released == [1] and not list((tmp_path / "out").glob("*.lock"))
