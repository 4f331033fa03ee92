"""The one atomic write (gaussianvision/atomic.py): a file appears whole under its name or not at all."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from gaussianvision import atomic
from gaussianvision.atomic import write_atomic, write_text_atomic


class Boom(Exception):
    pass


def _half_then_fail(data: bytes):
    """A writer that puts half of `data` into the temporary file, then fails."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            assert tmp.stat().st_size == len(data) // 2  # the half really is on disk
            raise Boom("disk full")
    return write


def test_the_file_appears_whole_and_no_temporary_is_left(tmp_path):
    seen = []

    def write(tmp: Path) -> None:
        assert tmp.parent == tmp_path and tmp.name != "out.bin"
        assert not (tmp_path / "out.bin").exists()  # nothing under the final name while writing
        tmp.write_bytes(b"abc" * 1000)
        seen.append(tmp)

    write_atomic(tmp_path / "out.bin", write)
    assert (tmp_path / "out.bin").read_bytes() == b"abc" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    assert not seen[0].exists()


def test_the_temporary_keeps_the_suffix_for_writers_that_go_by_it(tmp_path):
    names = []
    write_atomic(tmp_path / "fig.png", lambda tmp: (names.append(tmp.name), tmp.write_bytes(b"x")))
    assert names[0].endswith(".png") and names[0].startswith(".fig.png.tmp")


def test_a_failing_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    with pytest.raises(Boom, match="disk full"):
        write_atomic(tmp_path / "out.bin", _half_then_fail(b"0123456789" * 100))
    assert list(tmp_path.iterdir()) == []


def test_a_failing_write_keeps_the_existing_file_as_it_was(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old contents")
    with pytest.raises(Boom):
        write_atomic(path, _half_then_fail(b"new contents, longer than the old ones"))
    assert path.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_an_existing_file_is_replaced_on_success(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old contents, longer than the new ones\n")
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_failing_rename_removes_the_temporary_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    path.write_text("old\n")

    def no_rename(src, dst):
        raise OSError("rename refused")

    monkeypatch.setattr(atomic.os, "replace", no_rename)
    with pytest.raises(OSError, match="rename refused"):
        write_text_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_an_interrupt_inside_the_write_also_cleans_up(tmp_path):
    """KeyboardInterrupt is not an Exception: the temporary file is removed all the same."""
    def write(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "out.bin", write)
    assert list(tmp_path.iterdir()) == []


def test_write_text_atomic_mkdir_and_encoding(tmp_path):
    path = tmp_path / "a" / "b" / "page.html"
    with pytest.raises(FileNotFoundError):
        write_text_atomic(path, "x")
    write_text_atomic(path, "héllo ✓\n", mkdir=True, encoding="utf-8")
    assert path.read_bytes() == "héllo ✓\n".encode("utf-8")
    assert sorted(p.name for p in path.parent.iterdir()) == ["page.html"]


def test_text_is_written_exactly_as_path_write_text_writes_it(tmp_path):
    """Same bytes as the hand-written writes it replaced (tmp.write_text(text); no newline added)."""
    text = "a\nb\r\nc"
    write_text_atomic(tmp_path / "new.txt", text)
    (tmp_path / "old.txt").write_text(text)
    assert (tmp_path / "new.txt").read_bytes() == (tmp_path / "old.txt").read_bytes()


def test_the_file_gets_the_usual_permissions(tmp_path):
    """The temporary file is created like any other file (umask), so the renamed one is too."""
    write_text_atomic(tmp_path / "a.txt", "x")
    (tmp_path / "b.txt").write_text("x")
    assert os.stat(tmp_path / "a.txt").st_mode == os.stat(tmp_path / "b.txt").st_mode


# ------------------------------------------------------------------ the writers that use it
def _eval_result(d: Path) -> Path:
    from gaussianvision.eval.report import result_record, write_result
    return write_result(d, result_record("cars", "ViT-B-32", "openai", "zeroshot_classification", {"acc1": 0.5}))


def _eval_tables(d: Path) -> Path:
    from gaussianvision.eval.report import write_tables
    return Path(write_tables(d, ["model", "acc"], [["a", 0.5]])["markdown"])


def _html_report(d: Path) -> Path:
    from gaussianvision.apps.report.html import Report
    rep = Report(d, "t")
    rep.text("hello")
    return rep.write()


def _gpu_docs(d: Path, monkeypatch) -> Path:
    """A file rewritten in place (the block between the markers): its old text is the `before`."""
    from gaussianvision.apps.bench import gpu_report
    monkeypatch.setattr(gpu_report, "tables", lambda res: "the tables\n")
    path = d / "gpu.md"
    if not path.exists():
        path.write_text(f"intro\n{gpu_report.BEGIN}\nold\n{gpu_report.END}\n")
    gpu_report.fill_docs(path, {})
    return path


def _gpu_partial(d: Path) -> Path:
    from gaussianvision.apps.bench.gpu_steps import Recorder
    rec = Recorder(d / "partial.json")
    rec.row({"n": 1})
    return rec.path


def _cli_text(d: Path) -> Path:
    from gaussianvision.apps.cli.command import write_json
    write_json(d / "sub" / "r.json", {"a": 1})
    return d / "sub" / "r.json"


def _bench_markdown(d: Path) -> Path:
    from gaussianvision.apps.cli.bench_load import write_markdown
    env = {"platform": "p", "cpus": 1, "torch": "t", "load_average_1_5_15": [0, 0, 0], "date": "d"}
    write_markdown(d / "load.md", "title", env, "body\n")
    return d / "load.md"


def _splat_cache(d: Path) -> Path:
    from gaussianvision.eval.datasets import SplatCache, SplatSettings
    cache = SplatCache(d, SplatSettings())
    cache._store("ab" + "0" * 62, b"gsv bytes")
    return cache._path("ab" + "0" * 62)


def _demo_figure(d: Path) -> Path:
    pytest.importorskip("matplotlib")
    from gaussianvision.apps.demo.report import _plt, _save
    fig = _plt().figure(figsize=(1, 1))
    return _save(fig, d / "fig.png")


SITES = {"eval result": _eval_result, "eval tables": _eval_tables, "html report": _html_report,
         "gpu docs": _gpu_docs, "gpu partial": _gpu_partial, "cli write_json": _cli_text,
         "bench markdown": _bench_markdown, "splat cache": _splat_cache, "demo figure": _demo_figure}


def _call(site, d, monkeypatch):
    fn = SITES[site]
    return fn(d, monkeypatch) if "monkeypatch" in fn.__code__.co_varnames else fn(d)


def _listing(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("site", list(SITES))
def test_each_writer_goes_through_the_one_atomic_write(site, tmp_path, monkeypatch):
    """Every place that once renamed a temporary file by hand now writes through write_atomic: when
    its rename fails, the folder is left as it was (no new file, no temporary, old files intact)."""
    ok, failing = tmp_path / "ok", tmp_path / "failing"
    ok.mkdir(), failing.mkdir()
    written = _call(site, ok, monkeypatch)
    assert written.is_file() and written.stat().st_size > 0
    assert [n for n in _listing(ok) if ".tmp" in n] == []

    if site == "gpu docs":
        (failing / "gpu.md").write_text((ok / "gpu.md").read_text().replace("the tables", "older tables"))
    before = _listing(failing)
    renamed_to = []

    def refuse(src, dst):
        renamed_to.append(Path(dst).name)
        raise OSError("rename refused")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError, match="rename refused"):
        _call(site, failing, monkeypatch)
    assert renamed_to == [written.name]
    assert _listing(failing) == before


def test_a_name_near_the_file_systems_limit_is_written(tmp_path):
    """Regression: a 250-byte name could be written but not its temporary name (.NAME.tmpPID.SUFFIX)."""
    for name in ("M" * 250 + ".png", "é" * 120 + ".gsv"):
        path = tmp_path / name
        write_atomic(path, lambda tmp: tmp.write_bytes(b"x"))
        assert path.read_bytes() == b"x" and sorted(p.name for p in tmp_path.iterdir()).count(name) == 1
    assert len(list(tmp_path.iterdir())) == 2  # no temporary left


def test_a_missing_folder_is_named_not_the_temporary(tmp_path):
    """Regression: save('nofolder/x.gsv') raised FileNotFoundError naming '.x.gsv.tmpPID.gsv'."""
    with pytest.raises(FileNotFoundError) as e:
        write_atomic(tmp_path / "nofolder" / "x.gsv", lambda tmp: tmp.write_bytes(b"1"))
    assert e.value.filename == str(tmp_path / "nofolder" / "x.gsv") and "nofolder does not exist" in str(e.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        write_atomic(tmp_path / "file" / "x.gsv", lambda tmp: tmp.write_bytes(b"1"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_check_writable_makes_and_removes_one_file_or_raises(tmp_path):
    from gaussianvision.atomic import check_writable
    check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the probe is gone
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OSError):
        check_writable(tmp_path / "a-file")  # not a folder: nothing can be made in it
