"""Issue 18: one clear line and exit code 2 for every bad option or output path of gsv fit,
render and show; no temporary file left on any failure; --size is WIDTHxHEIGHT; fit's progress
bar and per-image seconds."""
import json
import os
import stat
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import random_splats
from gaussianvision.apps.cli.main import main as gsv
from gaussianvision.data.images import save_png
from gaussianvision.splats import save


def _one_line(capsys, *words) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def _leftovers(*folders) -> list[str]:
    return [p.name for d in folders for p in Path(d).iterdir() if ".tmp" in p.name]


@pytest.fixture()
def gsv_file(tmp_path):
    path = tmp_path / "a.gsv"
    save(path, random_splats(1, 10, 12, 16))
    return path


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "in" / "p.png"
    path.parent.mkdir()
    save_png(torch.rand(3, 20, 28, generator=torch.Generator().manual_seed(0)), path)
    return path


# ------------------------------------------------------------------ render and show --out
@pytest.mark.parametrize("cmd", ["render", "show"])
def test_out_naming_a_folder_is_one_line_and_leaves_no_temp_file(cmd, gsv_file, tmp_path, capsys):
    folder = tmp_path / "pics"
    folder.mkdir()
    assert gsv([cmd, str(gsv_file), "--out", str(folder), "--backend", "reference"]) == 2
    _one_line(capsys, "is a folder")
    assert _leftovers(folder, tmp_path) == [] and list(folder.iterdir()) == []


@pytest.mark.parametrize("cmd", ["render", "show"])
def test_out_naming_a_pipe_is_refused_and_the_pipe_kept(cmd, gsv_file, tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert gsv([cmd, str(gsv_file), "--out", str(fifo), "--backend", "reference"]) == 2
    _one_line(capsys, "not a regular file")
    assert stat.S_ISFIFO(fifo.stat().st_mode) and _leftovers(tmp_path) == []


@pytest.mark.parametrize("cmd", ["render", "show"])
def test_out_under_a_file_is_one_line(cmd, gsv_file, tmp_path, capsys):
    assert gsv([cmd, str(gsv_file), "--out", str(gsv_file / "x.png"), "--backend", "reference"]) == 2
    _one_line(capsys, "cannot create its folder")


@pytest.mark.parametrize("cmd", ["render", "show"])
def test_unknown_backend_is_an_option_error(cmd, gsv_file, tmp_path, capsys):
    assert gsv([cmd, str(gsv_file), "--out", str(tmp_path / "o.png"), "--backend", "bogus"]) == 2
    _one_line(capsys, "--backend bogus", "unknown render backend")
    assert not (tmp_path / "o.png").exists()


def test_render_size_is_width_by_height(gsv_file, tmp_path, capsys):
    out = tmp_path / "w.png"
    assert gsv(["render", str(gsv_file), "--out", str(out), "--size", "30x10", "--backend", "reference"]) == 0
    assert Image.open(out).size == (30, 10)  # PIL: (width, height)
    assert "(30x10, width x height)" in capsys.readouterr().out
    assert gsv(["render", str(gsv_file), "--out", str(out), "--size", "8x6", "--json", "--backend", "reference"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["width"], d["height"]) == (8, 6) and Image.open(out).size == (8, 6)
    assert "width first" in _help(["render", "--help"], capsys)


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit):
        gsv(argv)
    return capsys.readouterr().out


@pytest.mark.parametrize("size", ["0x10", "3x-4", "10", "axb", "10x10x3", "100000x100000"])
def test_render_bad_size_is_one_line(size, gsv_file, tmp_path, capsys):
    assert gsv(["render", str(gsv_file), "--out", str(tmp_path / "o.png"), "--size", size]) == 2
    _one_line(capsys, "--size")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("scale", ["inf", "1e308", "nan", "0"])
def test_render_bad_scale_is_one_line(scale, gsv_file, tmp_path, capsys):
    """Regression: --scale inf and 1e308 ended in an OverflowError traceback."""
    assert gsv(["render", str(gsv_file), "--out", str(tmp_path / "o.png"), "--scale", scale]) == 2
    _one_line(capsys, "--scale")


def test_show_draws_a_huge_header_at_a_display_size(tmp_path, capsys, monkeypatch):
    """Regression: a valid file whose header says 65536 x 65536 made gsv show allocate 51 GB; it is drawn at
    most SHOW_MAX_SIDE a side (the same splats, scaled: they are resolution-free). --sigma 1e20 hung matplotlib."""
    from gaussianvision.apps.cli import show
    s = random_splats(1, 6, 12, 16)
    big = s.scaled(65536, 49152)
    save(tmp_path / "big.gsv", big)
    drawn, real = [], show.render
    monkeypatch.setattr(show, "render", lambda sp, backend="auto": drawn.append((sp.height, sp.width)) or real(sp, backend=backend))
    assert gsv(["show", str(tmp_path / "big.gsv"), "--out", str(tmp_path / "b.png"), "--backend", "reference"]) == 0
    assert drawn == [(2048, 1536)] and (tmp_path / "b.png").is_file()
    capsys.readouterr()
    assert gsv(["show", str(tmp_path / "big.gsv"), "--out", str(tmp_path / "c.png"), "--sigma", "1e20"]) == 2
    _one_line(capsys, "--sigma", "at most 10")


# ------------------------------------------------------------------ fit options and --out
@pytest.mark.parametrize("opts,words", [
    (["--size", "-1"], ["--size", "-1"]),
    (["--size", "3"], ["--size", "3", "11"]),
    (["--size", "100x300"], ["--size"]),
    (["--backend", "bogus"], ["--backend bogus"]),
])
def test_fit_bad_option_is_refused_before_any_work(opts, words, photo, tmp_path, capsys):
    out = tmp_path / "o"
    assert gsv(["fit", str(photo), "-n", "4", "--iters", "1", "--out", str(out), *opts]) == 2
    _one_line(capsys, *words)
    assert not out.exists()


def test_fit_out_naming_a_file_or_a_device_is_one_line(photo, tmp_path, capsys):
    for out in (photo, Path("/dev/null")):
        assert gsv(["fit", str(photo), "-n", "4", "--iters", "1", "--out", str(out)]) == 2
        _one_line(capsys, "--out", "not a folder")
    assert Path("/dev/null").is_char_device()


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs sysfs")
def test_fit_out_where_no_folder_can_be_made_is_one_line(photo, capsys):
    assert gsv(["fit", str(photo), "-n", "4", "--iters", "1", "--out", "/sys/kernel/x"]) == 2
    _one_line(capsys, "--out /sys/kernel/x", "cannot create")


def test_fit_every_input_failing_is_exit_2_with_a_summary(tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "y.png").write_bytes(b"not an image")
    out = tmp_path / "o"
    assert gsv(["fit", str(tmp_path / "x.png"), str(tmp_path / "y.png"), "-n", "4", "--out", str(out)]) == 2
    cap = capsys.readouterr()
    assert "gsv fit: every input failed (2 of 2)" in cap.err and "Traceback" not in cap.err
    assert "x.png" in cap.out and "y.png" in cap.out  # which, and why
    assert json.loads((out / "results.json").read_text())["failed"] == 2


def test_fit_some_inputs_failing_names_them_and_exits_0(photo, tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"")
    out = tmp_path / "o"
    assert gsv(["fit", str(photo), str(tmp_path / "x.png"), "-n", "4", "--iters", "1", "--size", "16",
                "--out", str(out), "--backend", "reference"]) == 0
    text = capsys.readouterr().out
    assert "FAILED" in text and "x.png" in text and "fitted 1, failed 1" in text


# ------------------------------------------------------------------ fit progress and seconds
def test_fit_draws_a_progress_bar_unless_json_or_no_progress(photo, tmp_path, capsys):
    args = ["fit", str(photo), "-n", "4", "--iters", "2", "--size", "16", "--out", str(tmp_path / "o"),
            "--backend", "reference"]
    assert gsv(args) == 0
    err = capsys.readouterr().err
    assert "gsv fit" in err and "1/1" in err
    assert gsv(args + ["--no-progress"]) == 0
    assert "gsv fit" not in capsys.readouterr().err
    assert gsv(args + ["--json"]) == 0
    assert capsys.readouterr().err == ""


def test_fit_seconds_is_the_per_image_share_of_the_batch(photo, tmp_path, capsys):
    save_png(torch.rand(3, 20, 28), photo.parent / "q.png")
    assert gsv(["fit", str(photo.parent), "-n", "4", "--iters", "2", "--size", "16", "--batch-size", "2",
                "--out", str(tmp_path / "o"), "--backend", "reference", "--json"]) == 0
    rs = json.loads(capsys.readouterr().out)["results"]
    assert len(rs) == 2 and rs[0]["batch_seconds"] == rs[1]["batch_seconds"] > 0
    for r in rs:
        assert r["batch_size"] == 2 and r["seconds"] == pytest.approx(r["batch_seconds"] / 2)


def test_fit_images_metrics_name_the_batch_time_and_the_share():
    from gaussianvision.fit import fit_images
    res = fit_images(torch.rand(3, 3, 12, 12), 4, iters=2, backend="reference")
    total = res.metrics[0]["batch_seconds"]
    assert total > 0 and all(m["batch_seconds"] == total for m in res.metrics)
    assert all(m["seconds"] == total / 3 for m in res.metrics)


def test_text_and_png_writes_leave_no_temporary_file_on_failure(tmp_path, monkeypatch):
    """cli.command.write_text and data.images.save_png go through the one atomic write."""
    from gaussianvision.apps.cli.command import write_text

    def half_then_full(self, *a, **k):
        with open(self if isinstance(self, (str, Path)) else a[0], "w") as f:
            f.write("half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OSError, match="No space"):
        write_text(tmp_path / "sub" / "a.json", "{}")
    assert list((tmp_path / "sub").iterdir()) == []
    monkeypatch.setattr(Image.Image, "save", half_then_full)
    with pytest.raises(OSError, match="No space"):
        save_png(torch.zeros(3, 4, 4), tmp_path / "a.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


@pytest.mark.parametrize("args", [["info", "GSV"], ["--version"], ["--help"]])
def test_a_reader_that_left_the_pipe_costs_no_traceback(gsv_file, args):
    """`gsv info a.gsv | head -0`: stdout's reader is gone before anything is written. Regression: a
    BrokenPipeError traceback (or Python's 'Exception ignored' at exit), for gsv's own --version and
    --help too; now exit 1 and nothing on stderr."""
    import subprocess
    import sys
    r, w = os.pipe()
    os.close(r)  # the reader leaves first: every write to the pipe fails
    argv = [str(gsv_file) if a == "GSV" else a for a in args]
    try:
        run = subprocess.run([sys.executable, "-c", "import sys; from gaussianvision.apps.cli.main import main; "
                              "sys.exit(main(sys.argv[1:]))", *argv],
                             stdout=w, stderr=subprocess.PIPE, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
                                  "PYTHONUNBUFFERED": "1"})
    finally:
        os.close(w)
    assert run.returncode == 1 and run.stderr == "", run.stderr[-2000:]


def test_a_broken_pipe_that_is_not_stdout_is_an_error_line(capsys, monkeypatch):
    """Only stdout's reader leaving ends gsv quietly; a pipe or socket of the command's own that breaks
    is the usual one line and exit 2 (stdout_closed tells them apart with poll)."""
    import errno
    import types
    from gaussianvision.apps.cli import command

    def broken(args):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")
    assert command.run("send", broken, types.SimpleNamespace()) == 2
    assert capsys.readouterr().err.strip() == "gsv send: [Errno 32] Broken pipe"
    r, w = os.pipe()
    try:
        monkeypatch.setattr(command.sys, "stdout", types.SimpleNamespace(fileno=lambda: w))
        assert not command.stdout_closed()
        os.close(r)
        r = None
        assert command.stdout_closed()
    finally:
        os.close(w)
        if r is not None:
            os.close(r)


def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch):
    """Regression: Ctrl-C during gsv fit / convert printed a 40-line KeyboardInterrupt traceback."""
    from gaussianvision.apps.cli import info
    from gaussianvision.apps.cli.main import main

    def interrupted(argv):
        raise KeyboardInterrupt
    monkeypatch.setattr(info, "main", interrupted)
    assert main(["info", "x.gsv"]) == 130
    assert capsys.readouterr().err.strip() == "gsv: interrupted"
    # each command says what it keeps (regression: every command's line spoke of gsv convert)
    from gaussianvision.apps.cli import main as main_mod
    monkeypatch.setattr(main_mod, "_dispatch", interrupted)
    for command, words in (("train", "rerun with --resume"), ("convert", "finished shards are kept"),
                           ("fit", "results.json is not")):
        assert main([command]) == 130
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"gsv {command}: interrupted (") and words in err and len(err.splitlines()) == 1


def test_an_unreadable_image_says_so_not_corrupt(tmp_path, monkeypatch):
    """Regression: a file without read permission was reported as 'truncated or corrupt'."""
    from gaussianvision.data import images
    from gaussianvision.data.images import ImageLoadError, load_image
    save_png(torch.rand(3, 12, 12), tmp_path / "x.png")

    def denied(fp, *a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(images.Image, "open", denied)
    with pytest.raises(ImageLoadError, match=r"x.png: cannot read \(Permission denied\)$"):
        load_image(tmp_path / "x.png")


@pytest.mark.parametrize("argv, words", [
    (["bench", "load", "--samples", "-5"], "--samples: must be >= 8, got -5"),
    (["bench", "load", "--workers", "a"], "--workers: expected a whole number, got 'a'"),
    (["bench", "load", "--workers", "0,-1"], "--workers: must be >= 0, got -1"),
    (["bench", "codec", "--n", "0"], "--n: must be >= 1, got 0"),
    (["bench", "codec", "--size", "100000"], "--size: must be from 11 to 2048"),
    (["bench", "codec", "--backend", "nope"], "--backend nope"),
    (["bench", "model", "--repeats", "0"], "--repeats: must be >= 1, got 0"),
    (["bench", "model", "--batch", "1,x"], "--batch: expected a whole number, got 'x'"),
])
def test_bench_options_are_checked_before_any_work(argv, words, tmp_path, capsys):
    """Regression: these were tracebacks (ZeroDivisionError, StatisticsError, ValueError) or, for 0, the default."""
    try:
        rc = gsv([*argv, "--out", str(tmp_path / "o")])
    except SystemExit as e:  # argparse's own exit, as on the command line
        rc = e.code
    assert rc == 2
    _one_line(capsys, words)
    assert not (tmp_path / "o").exists()


def test_bench_out_that_cannot_be_written_is_said_before_the_run(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert gsv(["bench", "model", "--quick", "--out", str(tmp_path / "file" / "sub")]) == 2
    _one_line(capsys, "cannot create the folder")
    assert gsv(["bench", "model", "--quick", "--out", str(tmp_path / "file")]) == 2  # regression: "(File exists)"
    _one_line(capsys, f"--out {tmp_path / 'file'}: is not a folder (a file of that name exists")
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("cmd", ["render", "show"])
def test_out_not_named_png_is_refused(cmd, gsv_file, tmp_path, capsys):
    """Regression: gsv render --out x.jpg wrote PNG bytes under the JPEG name."""
    assert gsv([cmd, str(gsv_file), "--out", str(tmp_path / "x.jpg"), "--backend", "reference"]) == 2
    _one_line(capsys, "written as PNG; name it .png")
    assert not (tmp_path / "x.jpg").exists()


def test_the_entry_point_exits_with_mains_code_after_freezing_what_is_left():
    """The gsv script and python -m gaussianvision.apps.cli go through main.run: main's exit code, and the
    objects left collected once and frozen, so that the interpreter's exit does not collect them again
    (0.6-0.9 s of a one-photo gsv fit). main() itself leaves the collector alone (a process that goes on)."""
    import subprocess
    import sys
    src = str(Path(__file__).resolve().parents[1] / "src")
    code = ("import atexit, gc, sys; from gaussianvision.apps.cli import main as m; "
            "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0)); m.main = lambda: 3; m.run()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": src})
    assert (out.returncode, out.stdout.split()) == (3, ["frozen", "True"]), out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-m", "gaussianvision.apps.cli", "--version"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": src})
    assert out.returncode == 0 and out.stdout.strip(), out.stderr[-2000:]
    import gc
    frozen = gc.get_freeze_count()
    assert gsv(["--version"]) == 0 and gc.get_freeze_count() == frozen


def test_a_ctrl_c_after_the_command_finished_changes_nothing():
    """Regression (new-user trial): a Ctrl-C (or SIGTERM) arriving while main.run collected the garbage of a
    finished command gave a KeyboardInterrupt traceback and exit 130; the command's result stands."""
    import subprocess
    import sys
    src = str(Path(__file__).resolve().parents[1] / "src")
    code = ("import gc, os, signal, time; from gaussianvision.apps.cli import main as m; real = gc.collect\n"
            "def collect(*a):\n"
            "    os.kill(os.getpid(), signal.SIGINT); os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2)\n"
            "    return real(*a)\n"
            "gc.collect = collect; m.main = lambda: 3; m.run()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": src})
    assert out.returncode == 3 and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_a_shard_given_as_a_gsv_file_says_what_it_is(tmp_path, capsys):
    """Regression (new-user trial): gsv info / render / show on a convert shard said "not a .gsv file (magic
    b's3_0')"; a tar is now named as one, with how to take a sample's .gsv out of it."""
    import io
    import tarfile
    data = fmt_encode_one()
    shard = tmp_path / "000000.tar"
    with tarfile.open(shard, "w") as t:
        info = tarfile.TarInfo("s3_0.gsv")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    for cmd in (["info", str(shard)], ["render", str(shard), "--out", str(tmp_path / "r.png")],
                ["show", str(shard), "--out", str(tmp_path / "s.png")]):
        assert gsv(cmd) == 2, cmd
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"{shard}: a tar archive, not a .gsv file (gsv convert's shards are tar archives with a "
                            f"KEY.gsv member per sample); list its members with `tar -tf {shard}` and take one out "
                            f"with `tar -xf {shard} KEY.gsv`") and len(err.splitlines()) == 1, err
    junk = tmp_path / "junk.gsv"
    junk.write_bytes(b"x" * 600)
    assert gsv(["info", str(junk)]) == 2 and "not a .gsv file (magic b'xxxx'" in capsys.readouterr().err


def fmt_encode_one() -> bytes:
    from gaussianvision.splats import format as fmt
    return fmt.encode(random_splats(1, 4, 16, 16))


@pytest.mark.parametrize("env, says", [
    ({"RANK": "x", "WORLD_SIZE": "2"}, "the environment variable RANK='x': not a whole number"),
    ({"LOCAL_RANK": "x"}, "the environment variable LOCAL_RANK='x': not a whole number >= 0"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "rank 2 must lie in [0, world size 2)"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "WORLD_SIZE=2 (rank 0): MASTER_ADDR and MASTER_PORT not set; start every "
                                        "process with torchrun"),
])
def test_train_bad_launch_variables_are_one_line(env, says, tmp_path, capsys, monkeypatch):
    """Regression (new-user trial): RANK=x / LOCAL_RANK=x were int() tracebacks from gsv train, and RANK=0
    WORLD_SIZE=2 without torchrun a traceback from torch about MASTER_ADDR (gsv convert said each in a line)."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert gsv(["train", "--stage", "2", "--data", str(tmp_path), "--steps", "1", "--out", str(tmp_path / "run"),
                "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gsv train: ") and says in err and "\n" not in err, err


def test_a_process_kept_waiting_for_the_others_says_so(capsys, monkeypatch):
    """Regression (new-user trial): WORLD_SIZE=2 on one process without torchrun waited in the rendezvous without a
    word (torch gives up after 30 minutes). Now a note after RENDEZVOUS_NOTE_S; a quick rendezvous says nothing."""
    import time
    from gaussianvision.train import distributed
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29555")
    monkeypatch.setattr(distributed, "RENDEZVOUS_NOTE_S", 0.05)
    for wait in (0.0, 0.5):
        monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: time.sleep(wait))
        distributed._rendezvous("gloo", 0, 2)
        time.sleep(0.1)  # a note, had it been due, would be out by now
        err = capsys.readouterr().err
        if wait:
            assert err == ("gsv: rank 0 of 2: still waiting for the other processes at 127.0.0.1:29555 after 0.05 s "
                           "(torchrun starts all of them, or start each with its RANK; Ctrl-C stops this one; torch "
                           "gives up after 30 minutes)\n"), err
        else:
            assert err == ""


def test_sigterm_stops_a_process_waiting_for_the_others(tmp_path):
    """Regression (new-user trial): a gsv train started alone with WORLD_SIZE=2 ignored SIGTERM and Ctrl-C while
    it waited for the other process (torch blocks in C++, where Python's handlers cannot run); only SIGKILL
    ended it. Now it stops as an interrupted command, exit 130."""
    import signal
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "gaussianvision.apps.cli", "train", "--stage", "2", "--data",
                             str(tmp_path), "--model-config", "gs-tiny", "--steps", "1", "--out", str(tmp_path / "run"),
                             "--device", "cpu"], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _listening(port):  # rank 0 is in the rendezvous
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.decode().strip().startswith("gsv train: interrupted"), err


def _listening(port: int) -> bool:
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("argv, flag", [
    (["bench", "fit", "--sections", ""], "--sections ''"),
    (["bench", "fit", "--sections", ","], "--sections ','"),
    (["bench", "fit", "--inits", ""], "--inits ''"),
    (["bench", "fit", "--methods", " "], "--methods ' '"),
    (["bench", "model", "--quick", "--configs", ""], "--configs ''"),
    (["bench", "wire", "--columns", ""], "--columns ''"),
])
def test_an_empty_name_list_is_refused_not_taken_as_the_default(argv, flag, tmp_path, capsys):
    """Regression (new-user trial): --sections '' ran every section (minutes), --columns '' every column,
    --configs '' was a traceback; now one line, exit 2, nothing written."""
    assert gsv([*argv, "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, f"{flag}: give at least one name")
    assert not (tmp_path / "o").exists()
