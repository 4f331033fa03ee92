"""gsv demo's options (new-user trial): --threads within 0..the cores, --out that is a file, --tiny in the
help. run_demo is replaced by a recorder, so no test runs the pipeline (the code before the fix ran it
for the options it took: the recorder then fails the test)."""
import pytest

from gaussianvision.apps.cli.main import main as gsv
from gaussianvision.apps.demo import run as demo_run


@pytest.fixture
def ran(monkeypatch):
    """The run_demo calls that got through the options; each fails the test unless it expects one."""
    calls = []

    def record(out, mode="full", force=False, progress=False, threads=0, overrides=None):
        calls.append({"out": out, "mode": mode, "threads": threads})
        raise SystemExit(0)  # what passed the checks stops here: nothing is run
    monkeypatch.setattr(demo_run, "run_demo", record)
    return calls


def _refused(argv, capsys) -> str:
    """gsv demo ARGV ends with exit code 2 and one line on stderr (no traceback); that line."""
    try:
        rc = gsv(["demo", *argv])
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("value", ["-1", "-8"])
def test_negative_threads_are_refused(value, ran, tmp_path, capsys):
    err = _refused(["--threads", value, "--out", str(tmp_path / "d")], capsys)
    assert err.startswith(f"gsv demo: argument --threads: must be from 0 to {demo_run._cores()}, got {value}")
    assert ran == []


def test_threads_above_the_cores_are_refused(ran, tmp_path, capsys):
    cores = demo_run._cores()
    for value in (cores + 1, 1000):
        err = _refused(["--threads", str(value), "--out", str(tmp_path / "d")], capsys)
        assert f"argument --threads: must be from 0 to {cores}, got {value}" in err
    assert ran == []


def test_threads_up_to_the_cores_are_taken(ran, tmp_path):
    cores = demo_run._cores()
    for value in (0, cores):
        with pytest.raises(SystemExit):
            gsv(["demo", "--tiny", "--threads", str(value), "--out", str(tmp_path / "d")])
    assert [c["threads"] for c in ran] == [0, cores] and ran[0]["mode"] == "tiny"


def test_the_library_refuses_threads_out_of_range_too():
    assert demo_run._threads(1) == 1
    assert 1 <= demo_run._threads(0) <= demo_run._cores()
    for bad in (-1, demo_run._cores() + 1):
        with pytest.raises(ValueError, match=f"threads must be from 0 .* got {bad}"):
            demo_run._threads(bad)


def test_out_naming_a_file_says_it_is_not_a_folder(ran, tmp_path, capsys):
    f = tmp_path / "a.png"
    f.write_bytes(b"not a folder")
    err = _refused(["--tiny", "--out", str(f)], capsys)
    assert err.startswith(f"gsv demo: --out {f}: is not a folder (")
    assert f.read_bytes() == b"not a folder" and ran == []


def test_out_under_a_file_is_one_line(ran, tmp_path, capsys):
    f = tmp_path / "a.png"
    f.write_bytes(b"")
    err = _refused(["--tiny", "--out", str(f / "sub")], capsys)
    assert err.startswith(f"gsv demo: --out {f / 'sub'}: cannot create the folder") and ran == []


def test_tiny_is_in_the_help_beside_quick(capsys):
    with pytest.raises(SystemExit) as e:
        gsv(["demo", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--tiny" in out and "the tests' size" in out and "--quick" in out
    assert "--threads THREADS torch threads, 0 to the CPU cores here" in out


def test_quick_and_tiny_together_are_refused(ran, tmp_path, capsys):
    err = _refused(["--quick", "--tiny", "--out", str(tmp_path / "d")], capsys)
    assert "--tiny: not allowed with argument --quick" in err and ran == []
