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
