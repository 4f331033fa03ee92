"""Dataset conversion: bad inputs, reconciliation, kill-and-resume, two ranks, CLI."""
import io
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gaussianvision.data import conversion_output as output
from gaussianvision.data.conversion import ConvertConfig, ConvertError, convert_dataset, summarize
from gaussianvision.data.shards import read_samples
from gaussianvision.data.inputs import SourceError, expand_braces, plan_units
from gaussianvision.splats import decode

FIT = {"iters": 2, "init": "grid", "backend": "reference"}


def cfg(**kw):
    base = dict(n_gaussians=8, size=16, fit_options=FIT, batch_size=3, shard_size=3, progress=False)
    base.update(kw)
    return ConvertConfig(**base)


def img_bytes(mode="RGB", size=(24, 20), fmt="PNG", seed=0):
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    im = Image.fromarray(arr, "RGB")
    if mode == "RGBA":
        im = im.convert("RGBA")
    elif mode in ("L", "P", "CMYK"):
        im = im.convert(mode)
    elif mode == "I;16":
        im = Image.new("I;16", im.size)
        im.frombytes((np.asarray(im.convert("L"), dtype="<u2") * 257).tobytes(), "raw", "I;16")
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def bomb_png(w=20000, h=20000) -> bytes:
    """A tiny PNG whose header claims w x h pixels (400M > the 64M default limit)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def good_sample(key, seed, caption=True, ext="jpg"):
    m = [(f"{key}.{ext}", img_bytes(fmt="JPEG" if ext == "jpg" else ext.upper(), seed=seed))]
    if caption:
        m.append((f"{key}.txt", f"caption {key}".encode()))
    m.append((f"{key}.json", json.dumps({"url": f"http://x/{key}"}).encode()))
    return m


MIXED_GOOD = ["good", "rgba", "pal", "gray", "cmyk", "i16ok", "webp", "nocap", "dup"]
MIXED_BAD = {  # key -> (stage, reason pattern)
    "zero": ("decode", "empty"),
    "trunc": ("decode", "truncated or corrupt"),
    "nonimg": ("decode", "not an image"),
    "tiny": ("decode", "too small"),
    "bomb": ("decode", "decompression bomb"),
    "noimage": ("read", "no image in sample"),
    "i16": ("read", "i16.txt appears twice"),
}


def mixed_members():
    jpg = img_bytes(fmt="JPEG", size=(64, 48), seed=9)
    m = good_sample("good", 1)
    m += [("rgba.png", img_bytes("RGBA", seed=2)), ("rgba.txt", b"transparent")]
    m += [("pal.png", img_bytes("P", seed=3)), ("pal.txt", b"palette")]
    m += [("gray.jpg", img_bytes("L", fmt="JPEG", seed=4)), ("gray.txt", b"gray")]
    m += [("cmyk.jpg", img_bytes("CMYK", fmt="JPEG", seed=5)), ("cmyk.txt", b"cmyk")]
    m += [("i16.png", img_bytes("I;16", seed=6)), ("i16.txt", b"sixteen bit"), ("i16.txt", b"again")]
    m += [("i16ok.png", img_bytes("I;16", seed=6)), ("i16ok.txt", b"sixteen bit")]
    m += [("webp.webp", img_bytes(fmt="WEBP", seed=7)), ("webp.txt", b"webp")]
    m += [("nocap.png", img_bytes(seed=8))]
    m += [("zero.jpg", b""), ("zero.txt", b"zero bytes")]
    m += [("trunc.jpg", jpg[: len(jpg) // 2]), ("trunc.txt", b"truncated")]
    m += [("nonimg.png", b"this is not an image at all"), ("nonimg.txt", b"text")]
    m += [("tiny.png", img_bytes(size=(4, 4))), ("tiny.txt", b"tiny")]
    m += [("bomb.png", bomb_png()), ("bomb.txt", b"bomb")]
    m += good_sample("dup", 10)
    m += [("noimage.txt", b"caption only"), ("noimage.json", b"{}")]
    m += [("dup.jpg", img_bytes(fmt="JPEG", seed=11))]  # key dup again, not adjacent: a second sample
    return m


def test_mixed_shard_good_and_broken_samples(tmp_path):
    src = write_tar(tmp_path / "mixed.tar", mixed_members())
    s = convert_dataset(str(src), tmp_path / "out", cfg())
    inputs = len(MIXED_GOOD) + len(MIXED_BAD) + 1  # + the duplicate of "dup"
    assert (s["inputs"], s["converted"], s["failed"]) == (inputs, len(MIXED_GOOD), len(MIXED_BAD) + 1)
    assert s["reconciled"] and s["complete"] and s["missing_captions"] == 1
    stats = json.loads((tmp_path / "out" / "000000.stats.json").read_text())
    assert stats["inputs"] == stats["converted"] + stats["failed"] == inputs
    fails = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    by_key = {f["key"]: f for f in fails}
    for key, (stage, pattern) in MIXED_BAD.items():
        assert by_key[key]["stage"] == stage and pattern in by_key[key]["reason"], by_key[key]
        assert by_key[key]["source"].endswith(f"mixed.tar:{key}")
    dup = [f for f in fails if f["key"] == "dup"]
    assert len(dup) == 1 and "duplicate key" in dup[0]["reason"]
    samples = list(read_samples(tmp_path / "out" / "000000.tar"))
    assert [x["__key__"] for x in samples] == MIXED_GOOD  # input order, each once
    for x in samples:
        sp = decode(x["gsv"])
        assert (sp.height, sp.width, sp.max_gaussians) == (16, 16, 8)
        info = json.loads(x["json"])
        assert info["key"] == x["__key__"] and info["n_gaussians"] == 8 and np.isfinite(info["psnr"])
        assert info["caption_missing"] == (x["__key__"] == "nocap")
        assert set(x) == {"__key__", "__shard__", "gsv", "txt", "json"}
    assert json.loads(samples[0]["json"])["original_size"] == [24, 20]
    assert json.loads(samples[0]["json"])["meta"] == {"url": "http://x/good"}
    assert samples[1]["txt"] == b"transparent" and samples[7]["txt"] == b""


def test_truncated_tar_keeps_earlier_samples_and_records_the_damage(tmp_path):
    src = write_tar(tmp_path / "t.tar", good_sample("a", 1) + good_sample("b", 2) + good_sample("c", 3))
    with tarfile.open(src) as tf:
        cut = tf.getmember("b.jpg").offset_data + 100
    data = src.read_bytes()
    src.write_bytes(data[:cut])  # inside b's image
    s = convert_dataset(str(src), tmp_path / "out", cfg())
    assert (s["inputs"], s["converted"], s["failed"]) == (2, 1, 1) and s["reconciled"]
    assert "truncated or corrupt" in s["shard_errors"][0]
    fail = json.loads((tmp_path / "out" / "failures.jsonl").read_text())
    assert fail["key"] == "b" and "any later member of it is lost" in fail["reason"]
    # regression (new-user trial): the damaged shard was finished for good; a repaired tar is converted again,
    # an unchanged one is not
    assert convert_dataset(str(src), tmp_path / "out", cfg())["run"]["shards_converted"] == 0
    src.write_bytes(data)
    s = convert_dataset(str(src), tmp_path / "out", cfg())
    assert s["run"]["shards_converted"] == 1 and (s["inputs"], s["converted"], s["failed"]) == (3, 3, 0)
    assert s["shard_errors"] == [] and s["complete"]
    assert convert_dataset(str(src), tmp_path / "out", cfg())["run"]["shards_converted"] == 0
    # a tar that was still being copied when it was read, complete by the time its shard was written (review
    # finding: its identity was taken then, so the rerun saw no change): the identity is the one read
    import gaussianvision.data.conversion as conversion
    src.write_bytes(data[:cut])
    real_finish = conversion._Converter.finish

    def copy_completes(self, sh):
        src.write_bytes(data + b"\0" * 1024)  # the copy ends (another size) while the fits ran
        return real_finish(self, sh)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conversion._Converter, "finish", copy_completes)
        assert "truncated or corrupt" in convert_dataset(str(src), tmp_path / "out3", cfg())["shard_errors"][0]
    s = convert_dataset(str(src), tmp_path / "out3", cfg())
    assert s["run"]["shards_converted"] == 1 and s["converted"] == 3 and s["shard_errors"] == []
    src.write_bytes(data[: cut - 100 - 512 + 200])  # inside b's header: tarfile itself would stop quietly
    s = convert_dataset(str(src), tmp_path / "out2", cfg())
    # the open sample a may have lost members after the cut header: it fails, never passes as complete
    assert (s["inputs"], s["converted"], s["failed"]) == (1, 0, 1)
    assert "no end-of-archive marker" in s["shard_errors"][0]
    fail = json.loads((tmp_path / "out2" / "failures.jsonl").read_text())
    assert fail["key"] == "a" and "any later member of it is lost" in fail["reason"]


def make_folder(root: Path, n=7) -> Path:
    root.mkdir()
    for i in range(n):
        sub = root / ("sub" if i % 2 else "")
        sub.mkdir(exist_ok=True)
        (sub / f"img{i}.png").write_bytes(img_bytes(seed=20 + i, size=(20 + i, 18)))
        if i != 3:
            (sub / f"img{i}.txt").write_text(f"photo number {i}\n")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return root


def tar_bytes(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


@pytest.fixture(scope="module")
def folder_and_reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("conv")
    src = make_folder(base / "photos")
    ref = convert_dataset(str(src), base / "ref", cfg())
    return src, base / "ref", ref


def run_cli(args, env_extra=None, cwd=None):
    env = dict(os.environ, **(env_extra or {}))
    env.pop("MASTER_ADDR", None)
    return subprocess.Popen([sys.executable, "-m", "gaussianvision.apps.cli.main", "convert", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)


# `gsv convert` that dies by SIGKILL right after its Nth sample is written (argv[1]; the rest: the
# command's arguments): the test's hook, patched into the subprocess, not a switch of the library
KILL_AFTER_SAMPLES = """
import os, signal, sys
from gaussianvision.apps.cli.main import main
from gaussianvision.data import conversion

class KillingWriter(conversion.ShardWriter):
    written = 0

    def write(self, *args, **kwargs):
        super().write(*args, **kwargs)
        KillingWriter.written += 1
        if KillingWriter.written >= int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)

conversion.ShardWriter = KillingWriter
sys.exit(main(["convert", *sys.argv[2:]]))
"""


def run_cli_killed_after(n: int, args):
    env = dict(os.environ)
    env.pop("MASTER_ADDR", None)
    return subprocess.Popen([sys.executable, "-c", KILL_AFTER_SAMPLES, str(n), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


CLI_ARGS = ["--gaussians", "8", "--size", "16", "--iters", "2", "--init", "grid", "--fit-option",
            "backend=reference", "--batch-size", "3", "--shard-size", "3", "--no-progress"]


def test_folder_reference_run(folder_and_reference):
    src, ref, s = folder_and_reference
    assert (s["inputs"], s["converted"], s["failed"], s["shards_total"]) == (8, 7, 1, 3)
    keys = [x["__key__"] for p in sorted(ref.glob("*.tar")) for x in read_samples(p)]
    assert keys == [f"{i:09d}" for i in range(8) if i != 0]  # broken.jpg sorts first and fails
    texts = {json.loads(x["json"])["source"]: x["txt"] for p in sorted(ref.glob("*.tar")) for x in read_samples(p)}
    assert texts["sub/img1.png"] == b"photo number 1" and texts["sub/img3.png"] == b""


def test_kill_and_resume_equals_uninterrupted_run(folder_and_reference, tmp_path):
    src, ref, s_ref = folder_and_reference
    out = tmp_path / "out"
    # SIGKILL in the middle of shard 1 (shard 0 holds 2 samples + 1 failure, so the 3rd write is in shard 1)
    p = run_cli_killed_after(3, ["--input", str(src), "--output", str(out), *CLI_ARGS])
    _, err = p.communicate(timeout=300)
    assert p.returncode == -9, err.decode()[-2000:]
    assert (out / "000000.tar").is_file() and (out / "000000.stats.json").is_file()
    assert not (out / "000001.tar").exists() and not (out / "000001.stats.json").exists()
    assert list(out.glob(".000001.tar.tmp*"))  # the half-written shard only under its temporary name
    s = convert_dataset(str(src), out, cfg())
    assert s["run"]["shards_skipped"] == 1 and s["run"]["shards_converted"] == 2
    assert not list(out.glob(".*tmp*"))
    assert tar_bytes(out) == tar_bytes(ref)  # same samples, same bytes: no loss, no duplicates
    assert {k: s[k] for k in ("inputs", "converted", "failed")} == {k: s_ref[k] for k in ("inputs", "converted", "failed")}
    assert (out / "failures.jsonl").read_bytes() == (ref / "failures.jsonl").read_bytes()
    again = convert_dataset(str(src), out, cfg())
    assert again["run"]["shards_converted"] == 0 and tar_bytes(out) == tar_bytes(ref)


def test_a_damaged_stats_file_makes_its_shard_unfinished_and_a_rerun_converts_it(folder_and_reference, tmp_path):
    """Regression: an empty or cut stats file counted as a finished shard, and every later run died
    with a JSONDecodeError reading it."""
    import shutil
    src, ref, _ = folder_and_reference
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    (out / "000001.stats.json").write_text("")
    (out / "000002.stats.json").write_text('{"shard": "000002.tar", "inp')
    s = summarize(out, plan_units(str(src), 3))
    assert s["damaged_stats"] == ["000001.stats.json", "000002.stats.json"] and not s["complete"]
    s = convert_dataset(str(src), out, cfg())
    assert (s["run"]["shards_converted"], s["run"]["shards_skipped"], s["damaged_stats"]) == (2, 1, [])
    assert s["complete"] and tar_bytes(out) == tar_bytes(ref)
    assert (out / "failures.jsonl").read_bytes() == (ref / "failures.jsonl").read_bytes()


def test_a_fitting_process_that_dies_is_one_line(folder_and_reference, tmp_path, monkeypatch):
    """Regression: a worker killed (the OOM killer) ended gsv convert with a BrokenProcessPool traceback."""
    from concurrent.futures.process import BrokenProcessPool
    import gaussianvision.data.conversion as conversion

    def broken(*a, **k):
        raise BrokenProcessPool("A process in the process pool was terminated abruptly")
    monkeypatch.setattr(conversion, "_pipeline", broken)
    with pytest.raises(ConvertError, match=r"a fitting process \(--workers\) died: killed, or out of memory .*"
                                           r"kept the 0 shards finished in this run; rerun to resume"):
        convert_dataset(str(folder_and_reference[0]), tmp_path / "out", cfg())


def test_a_worker_pool_gives_the_same_bytes(folder_and_reference, tmp_path):
    """workers=1: the batches are fitted in a spawned process (FitStream.map_batches), same shards."""
    src, ref, _ = folder_and_reference
    s = convert_dataset(str(src), tmp_path / "out", cfg(workers=1))
    assert s["complete"] and tar_bytes(tmp_path / "out") == tar_bytes(ref)
    assert (tmp_path / "out" / "failures.jsonl").read_bytes() == (ref / "failures.jsonl").read_bytes()


def test_one_image_that_fails_to_fit_costs_only_itself(tmp_path, monkeypatch):
    """The batch is refitted image by image: the others are converted, the bad one is a 'fit' failure."""
    import gaussianvision.fit.stream as stream_mod
    real = stream_mod.fit_images

    def fit(images, n, **kw):
        if (images.mean(dim=(1, 2, 3)) > 0.99).any():  # the white image
            raise RuntimeError("boom")
        return real(images, n, **kw)
    monkeypatch.setattr(stream_mod, "fit_images", fit)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 255 if i == 1 else 60 * i, np.uint8)).save(src / f"{i}.png")
    s = convert_dataset(str(src), tmp_path / "out", cfg(shard_size=10))
    assert (s["converted"], s["failed"], s["failed_by_stage"]) == (2, 1, {"fit": 1})
    fail = json.loads((tmp_path / "out" / "failures.jsonl").read_text())
    assert fail["source"] == "1.png" and fail["reason"] == "fit failed: RuntimeError: boom"


def test_two_ranks_split_the_shards(folder_and_reference, tmp_path):
    src, ref, _ = folder_and_reference
    out = tmp_path / "out"
    procs = [run_cli(["--input", str(src), "--output", str(out), "--json", *CLI_ARGS],
                     {"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)}) for r in range(2)]
    results = []
    for p in procs:
        o, e = p.communicate(timeout=300)
        assert p.returncode == 0, e.decode()[-2000:]
        results.append(json.loads(o))
    assert [r["run"]["shards_converted"] for r in results] == [2, 1]  # units 0, 2 and unit 1
    assert tar_bytes(out) == tar_bytes(ref)
    s = summarize(out, plan_units(str(src), 3))
    assert s["complete"] and (s["inputs"], s["converted"], s["failed"]) == (8, 7, 1)


def test_a_shard_another_process_converts_is_left_to_it_and_its_temporary_file_kept(folder_and_reference, tmp_path):
    """Regression: a rank started twice into one folder converted every shard again and deleted the
    other's temporary files as leftovers. A held claim (what the other process holds) is left alone."""
    src, ref, _ = folder_and_reference
    out = tmp_path / "out"
    out.mkdir()
    units = plan_units(str(src), 3)
    held = output.claim(out, units[1])  # another process converting shard 1 (flock: per open file)
    assert held is not None and held >= 0
    theirs = out / ".000001.tar.tmp99999.tar"
    theirs.write_bytes(b"half written")
    assert output.claim(out, units[1]) is None
    s = convert_dataset(str(src), out, cfg())
    assert s["run"]["shards_converted"] == 2 and s["run"]["shards_busy"] == ["000001.tar"]
    assert theirs.read_bytes() == b"half written" and not s["complete"]
    assert not (out / ".000000.lock").exists() and (out / ".000001.lock").exists()  # released: lock file gone
    output.release(out, units[1], held)  # it ended unfinished (killed): the next run converts the shard
    s = convert_dataset(str(src), out, cfg())
    assert (s["run"]["shards_converted"], s["run"]["shards_skipped"], s["run"]["shards_busy"]) == (1, 2, [])
    assert s["complete"] and tar_bytes(out) == tar_bytes(ref) and not list(out.glob(".*"))


def test_a_claim_won_on_a_lock_file_removed_meanwhile_is_taken_again(tmp_path, monkeypatch):
    """B opens the lock file, A lets go (removing it) and C makes it anew and claims it before B's
    flock: B's lock is on a file no longer named, so B must see the shard busy, not convert it too."""
    from gaussianvision.data.inputs import Unit
    unit, held, real = Unit(index=3, kind="files", paths=()), [], output.fcntl.flock

    def flock(fd, op):
        if not held:  # between B's open and B's flock
            held.append(None)
            (tmp_path / ".000003.lock").unlink()
            held[0] = output.claim(tmp_path, unit)  # C
        return real(fd, op)
    monkeypatch.setattr(output.fcntl, "flock", flock)
    assert output.claim(tmp_path, unit) is None and held[0] >= 0
    output.release(tmp_path, unit, held[0])
    again = output.claim(tmp_path, unit)
    assert again >= 0 and (tmp_path / ".000003.lock").exists()
    output.release(tmp_path, unit, again)
    assert not (tmp_path / ".000003.lock").exists()


def test_a_run_whose_samples_all_failed_beside_a_busy_shard_still_fails(tmp_path, monkeypatch, capsys):
    """Review: exit 0 whenever another process held a shard, even when every sample this run read failed."""
    import gaussianvision.apps.cli.convert as convert_cli
    s = {"run": {"rank": 0, "world_size": 1, "shards_converted": 1, "shards_skipped": 0, "shards_busy": ["000001.tar"],
                 "unopened": []}, "inputs": 3, "converted": 0, "failed": 3, "reconciled": True, "shards_done": 1,
         "shards_total": 2, "complete": False, "failed_by_stage": {"decode": 3}, "missing_captions": 0,
         "shard_errors": [], "duplicate_keys": 0}
    monkeypatch.setattr(convert_cli, "convert_dataset", lambda *a: s)
    assert convert_cli.main(["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--gaussians", "8"]) == 1
    assert "no sample converted: all 3 failed" in capsys.readouterr().err
    s.update(inputs=0, failed=0, failed_by_stage={}, shards_done=0)
    monkeypatch.setattr(convert_cli, "convert_dataset", lambda *a: s)
    assert convert_cli.main(["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--gaussians", "8"]) == 0


def test_the_report_names_the_shards_left_to_another_process():
    s = {"run": {"rank": 0, "world_size": 1, "shards_converted": 0, "shards_skipped": 0, "shards_busy": ["000001.tar"]},
         "inputs": 0, "converted": 0, "failed": 0, "reconciled": True, "shards_done": 0, "shards_total": 1,
         "complete": False, "failed_by_stage": {}, "missing_captions": 0, "shard_errors": [], "duplicate_keys": 0}
    from gaussianvision.apps.cli.convert import _report
    assert "left 1 to another process converting them now (000001.tar)" in _report(s, Path("out"))


def test_rerun_with_other_settings_is_refused(folder_and_reference, tmp_path):
    src, ref, _ = folder_and_reference
    with pytest.raises(ConvertError, match="n_gaussians"):
        convert_dataset(str(src), ref, cfg(n_gaussians=9))
    with pytest.raises(ConvertError, match=r"\(input: was \".*\", now \".*other.*\"\); rerun with the same settings "
                                           r"\(every rank and machine spells --input the same way\)"):
        (tmp_path / "other").symlink_to(src)  # the same folder spelled another way: said, with both values
        convert_dataset(str(tmp_path / "other"), ref, cfg())


def test_rank_variables_set_but_empty_are_unset(monkeypatch):
    """Regression (trial): RANK= WORLD_SIZE= was refused as 'not a whole number'."""
    from gaussianvision.data.inputs import rank_world
    monkeypatch.setenv("RANK", "")
    monkeypatch.setenv("WORLD_SIZE", " ")
    assert rank_world() == (0, 1)


@pytest.mark.parametrize("env, message", [
    ({"RANK": "x"}, "the environment variable RANK='x': not a whole number"),
    ({"WORLD_SIZE": "two"}, "the environment variable WORLD_SIZE='two': not a whole number"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "rank 2 must lie in [0, world size 2)"),
    # regression (new-user trial): WORLD_SIZE=2 alone ran as rank 0 and did half the work without a word; RANK=1
    # alone said "rank 1 must lie in [0, world size 1)"
    ({"WORLD_SIZE": "2"}, "the environment variable WORLD_SIZE=2 is set but RANK is not: give each process its "
                          "RANK (0 to 1), or start them with torchrun"),
    ({"RANK": "1"}, "the environment variable RANK=1 is set but WORLD_SIZE is not"),
])
def test_bad_rank_variables_are_one_error(env, message, monkeypatch):
    """Regression: RANK=x was a ValueError traceback in gsv convert and in the loader."""
    from gaussianvision.data.conversion import resolve_rank
    from gaussianvision.data.inputs import rank_world
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConvertError) as e:
        resolve_rank()
    assert str(e.value).startswith(message)
    with pytest.raises(ValueError, match=re.escape(message)):
        rank_world()
    assert rank_world(1, 3) == (1, 3)  # given values win over the environment
    for bad in ((2, 2), (-1, 2), (0, 0), (True, 2)):
        with pytest.raises(ValueError):
            rank_world(*bad)


def test_a_rerun_on_changed_inputs_is_refused_and_the_same_inputs_resume(tmp_path):
    """Regression: after files were added to (or removed from) the input folder a rerun skipped the
    finished shards, never converted the new files, shifted no keys and said "reconciled"."""
    src = make_folder(tmp_path / "in", n=4)  # 5 files: shards of 3 and 2
    out = tmp_path / "out"
    convert_dataset(str(src), out, cfg())
    s = convert_dataset(str(src), out, cfg())  # the same inputs: nothing to do
    assert s["run"]["shards_skipped"] == 2 and s["converted"] == 4
    (src / "extra.png").write_bytes(img_bytes(seed=99))  # sorts first: every key after it shifts
    with pytest.raises(ConvertError, match=r"changed since .* was started: shard 000000 \(made from other input"):
        convert_dataset(str(src), out, cfg())
    (src / "extra.png").unlink()
    for name in ("img0.png", "img0.txt", "img2.png", "img2.txt"):  # 3 files: one shard now
        (src / name).unlink()
    with pytest.raises(ConvertError, match=r"shard 000000 \(made from other input"):
        convert_dataset(str(src), out, cfg())
    st = json.loads((out / "000000.stats.json").read_text())
    del st["inputs_digest"]  # a shard from before the digest: taken as it is, but not one the inputs lack
    (out / "000000.stats.json").write_text(json.dumps(st))
    with pytest.raises(ConvertError, match=r"shard 000001 \(the inputs now make 1 shard\)"):
        convert_dataset(str(src), out, cfg())


def test_a_folder_of_images_and_shards_is_refused_and_so_is_converting_into_the_input(tmp_path):
    """Regression: a folder holding any .tar was read as shards only and its images silently dropped
    (e.g. after a run whose output was its input folder)."""
    src = make_folder(tmp_path / "in", n=2)
    with pytest.raises(ConvertError, match="an input inside the output folder"):
        convert_dataset(str(src), src, cfg())
    assert not list(src.glob("*.tar")) and not (src / "config.json").exists()
    shards = tmp_path / "shards"  # regression: a brace pattern into the output folder overwrote its source tars
    shards.mkdir()
    write_tar(shards / "000000.tar", good_sample("k0", 0))
    source = (shards / "000000.tar").read_bytes()
    for given in (str(shards / "{000000..000000}.tar"), str(shards / "*.tar"), str(shards)):
        with pytest.raises(ConvertError, match="000000.tar: an input inside the output folder"):
            convert_dataset(given, shards, cfg())
    assert (shards / "000000.tar").read_bytes() == source and not (shards / "config.json").exists()
    assert convert_dataset(str(src), src / "splats", cfg())["complete"]  # an output inside the images' folder:
    assert convert_dataset(str(src), src / "splats", cfg())["run"]["shards_converted"] == 0  # its tars never inputs
    write_tar(src / "old.tar", good_sample("k1", 1))
    with pytest.raises(SourceError, match=r"holds image files and .tar shards .*give one kind"):
        plan_units(str(src), 3)
    assert [u.kind for u in plan_units(str(src / "*.tar"), 3)] == ["tar"]  # the way to say "the shards"
    with pytest.raises(SourceError, match=r"nothing-here: no such file or folder$"):
        plan_units(str(tmp_path / "nothing-here"), 3)
    with pytest.raises(SourceError, match=r"gone.tar: no such tar shard$"):
        plan_units(str(tmp_path / "gone.tar"), 3)
    for name in ("notes.xyz", "data.zip"):  # regression: read as a tar shard, "truncated or corrupt", and
        (tmp_path / name).write_bytes(b"not a tar")  # written out as a converted shard
        with pytest.raises(SourceError, match=rf"{re.escape(name)}: not an image file \(jpg, .*\) or a .tar shard$"):
            plan_units(str(tmp_path / name), 3)
    for name in ("cut.tar.gz", "empty.tgz", "junk.tar"):  # named as shards: read, their damage reported (one cut
        (tmp_path / name).write_bytes(b"" if "empty" in name else b"not a tar")  # download must not stop the run)
        assert [u.kind for u in plan_units(str(tmp_path / name), 3)] == ["tar"]
    import gzip
    plain = write_tar(tmp_path / "bare", good_sample("k2", 2))  # a tar by its content, whatever its name
    (tmp_path / "s.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))
    (tmp_path / "empty.shard").write_bytes(bytes(1024))  # an empty archive
    for name in ("bare", "s.tar.gz", "empty.shard"):
        assert [u.kind for u in plan_units(str(tmp_path / name), 3)] == ["tar"]


def test_cli_json_and_keep_image(tmp_path):
    from gaussianvision.apps.cli.main import main
    a = write_tar(tmp_path / "s-000.tar", good_sample("k1", 1) + good_sample("k2", 2, ext="png"))
    write_tar(tmp_path / "s-001.tar", good_sample("k3", 3) + [("bad.jpg", b"nope")])
    assert a.is_file()
    out = tmp_path / "out"
    import contextlib
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["convert", "--input", str(tmp_path / "s-{000..001}.tar"), "--output", str(out), "--json",
                   "--keep-image", *CLI_ARGS])
    assert rc == 0
    s = json.loads(buf.getvalue())
    assert (s["inputs"], s["converted"], s["failed"], s["shards_total"]) == (4, 3, 1, 2)
    first = next(read_samples(out / "000000.tar"))
    assert first["jpg"] == dict(good_sample("k1", 1))["k1.jpg"]  # source bytes kept verbatim
    rc = main(["convert", "--input", str(tmp_path / "nothing-*.tar"), "--output", str(out), *CLI_ARGS])
    assert rc == 2
    # bad fit options: one clear error before any image is fitted
    for bad, said in ((["--relocate-every", "-1"], "gsv convert: --relocate-every must be >= 0"),
                      (["--fit-option", "lr_mean=1"], "gsv convert: fit options ['lr_mean']")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["convert", "--input", str(a), "--output", str(tmp_path / "bad"), *CLI_ARGS, *bad])
        assert rc == 2 and err.getvalue().startswith(said) and not (tmp_path / "bad").exists()


def test_brace_expansion():
    assert expand_braces("a-{008..011}.tar") == ["a-008.tar", "a-009.tar", "a-010.tar", "a-011.tar"]
    assert expand_braces("x{1..2}-{0..1}") == ["x1-0", "x1-1", "x2-0", "x2-1"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert expand_braces("s{011..009}") == ["s011", "s010", "s009"]  # regression (new-user trial): nothing
    assert expand_braces("s{1..010}")[:2] == ["s001", "s002"] and expand_braces("s{0..10}")[-1] == "s10"  # as bash
    assert expand_braces("s{5..5}") == ["s5"]
    with pytest.raises(SourceError, match=r"s\{0\.\.99999999\}: expands to 100,000,000 names \(at most 1,000,000\)"):
        expand_braces("s{0..99999999}")  # review finding: counting down it built 10^8 names


def cli_main(args):
    """gsv convert in this process -> (exit code, stdout, stderr)."""
    import contextlib
    from gaussianvision.apps.cli.main import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["convert", *args])
    return rc, out.getvalue(), err.getvalue()


BAD_OPTIONS = [(["--init", "bogus"], "bogus"), (["--fit-option", "lr_means=abc"], "lr_means"),
               (["--size", "0"], "got 0 (each image at its own size, gsv fit's --size 0, is not offered here"), (["--device", "gpu0"], "device 'gpu0'"),
               (["--size", "5"], "size must be from 11 (the SSIM window each fit reports with) to 8000 pixels"),
               (["--size", "20000"], "to 8000 pixels a side (max_pixels 64000000), got 20000"),
               (["--device", "tpu"], "device 'tpu': not a device; use cpu or cuda (cuda:N)"),
               (["--workers", "-1"], "workers must be >= 0 (0: fit in this process), got -1"),
               (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
               (["--fit-option", "iters=2.0"], "iters=2.0: expected a whole number"),
               (["--zstd"], "zstd compresses the quantized layout only (--layout quantized), not the interleaved one"),
               (["--layout", "quantized", "--dtype", "float32"],  # regression: accepted, recorded, ignored
                "dtype float32 applies to the interleaved layout; the quantized one stores its own fixed-point fields")]
if not __import__("torch").cuda.is_available():
    BAD_OPTIONS.append((["--device", "cuda"], "CUDA is not available"))


@pytest.mark.parametrize("bad, says", BAD_OPTIONS)
def test_bad_options_fail_before_anything_is_written(tmp_path, bad, says):
    src = write_tar(tmp_path / "s.tar", good_sample("k1", 1) + good_sample("k2", 2))
    out = tmp_path / "out"
    rc, _, err = cli_main(["--input", str(src), "--output", str(out), *CLI_ARGS, *bad])
    assert rc == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("gsv convert: ") and not out.exists()
    rc, _, err = cli_main(["--input", str(src), "--output", str(out), *CLI_ARGS])  # the corrected rerun
    assert rc == 0, err


def test_a_run_that_converts_nothing_exits_nonzero(tmp_path):
    src = write_tar(tmp_path / "s.tar", [("a.jpg", b"nope"), ("b.jpg", b"nope"), ("c.txt", b"no image")])
    rc, out, err = cli_main(["--input", str(src), "--output", str(tmp_path / "out"), *CLI_ARGS])
    assert rc == 1, err
    assert "inputs 3 = converted 0 + failed 3" in out
    # the first failure's reason (regression (new-user trial): one bad image read 'all 1 failed (decode 1)')
    assert err.strip() == "gsv convert: no sample converted: all 3 failed (decode 2, read 1; first: " \
                          f"{src}:a: not an image Pillow can read); see " \
                          f"{tmp_path / 'out' / 'failures.jsonl'}"
    rc, out, _ = cli_main(["--input", str(src), "--output", str(tmp_path / "out"), *CLI_ARGS, "--json"])
    assert rc == 1 and json.loads(out)["error"] == err.strip().removeprefix("gsv convert: ")


def test_a_single_image_file_converts_and_an_unreadable_shard_converts_nothing(tmp_path):
    """--input one image: a folder of one (it was read as a tar: 'corrupt tar header', 0 converted,
    exit 0). Input whose every shard is unreadable: exit 1 with one line saying so (it exited 0)."""
    from PIL import Image
    img = tmp_path / "one.png"
    Image.fromarray((np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)).save(img)
    rc, out, err = cli_main(["--input", str(img), "--output", str(tmp_path / "o1"), *CLI_ARGS])
    assert rc == 0, err
    assert "inputs 1 = converted 1 + failed 0" in out
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "two.PNG").write_bytes(img.read_bytes())
    rc, out, err = cli_main(["--input", str(tmp_path / "*" / "*.PNG"), "--output", str(tmp_path / "o4"), *CLI_ARGS])
    assert rc == 0 and "inputs 1 = converted 1 + failed 0" in out, err  # a glob of images (it read them as tars)
    (tmp_path / "mix").mkdir()
    (tmp_path / "mix" / "a.png").write_bytes(img.read_bytes())
    write_tar(tmp_path / "mix" / "b.tar", good_sample("k1", 1))
    for bad_input, says in ((tmp_path / "missing.png", f"{tmp_path / 'missing.png'}: no such image file"),
                            (tmp_path / "mix" / "*", "mixes image files and tar shards")):
        rc, _, err = cli_main(["--input", str(bad_input), "--output", str(tmp_path / "o5"), *CLI_ARGS])
        assert rc == 2 and says in err and err.count("\n") == 1, err
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar archive at all" * 40)
    rc, out, err = cli_main(["--input", str(bad), "--output", str(tmp_path / "o2"), *CLI_ARGS])
    assert rc == 1 and "converted 0" in out
    assert err.startswith(f"gsv convert: no sample converted: 1 shard(s) unreadable (first: {bad} (000000.tar): ")
    assert err.count("\n") == 1, err
    empty = write_tar(tmp_path / "empty.tar", [])  # a valid tar with nothing in it: nothing converted either
    rc, out, err = cli_main(["--input", str(empty), "--output", str(tmp_path / "o3"), *CLI_ARGS])
    assert rc == 1 and err.strip() == f"gsv convert: no sample converted: the input holds no samples ({empty})"


def test_empty_key_is_a_counted_failure_and_gzip_tar_is_not_truncated(tmp_path):
    import gzip
    plain = write_tar(tmp_path / "p.tar", good_sample("k1", 1) + [(".jpg", img_bytes(fmt="JPEG", seed=2))])
    (tmp_path / "g.tar").write_bytes(gzip.compress(plain.read_bytes()))
    for name in ("p.tar", "g.tar"):
        s = convert_dataset(str(tmp_path / name), tmp_path / f"out-{name}", cfg())
        assert (s["inputs"], s["converted"], s["failed"]) == (2, 1, 1) and s["shard_errors"] == [], s
        fail = json.loads((tmp_path / f"out-{name}" / "failures.jsonl").read_text())
        assert (fail["key"], fail["stage"], fail["reason"]) == ("", "read", "empty sample key (member .jpg)")


def test_the_caption_line_explains_only_repaired_captions(tmp_path):
    """Regression (new-user trial): with captions only missing, the summary's line still explained repairs
    ("not UTF-8, NUL characters"), as if the missing ones were malformed."""
    write_tar(tmp_path / "a.tar", good_sample("k1", 1, caption=False) + good_sample("k2", 2))
    rc, out, err = cli_main(["--input", str(tmp_path / "a.tar"), "--output", str(tmp_path / "out"), *CLI_ARGS])
    assert rc == 0, err
    assert "\ncaptions: 1 missing or empty, 0 repaired\n" in out + "\n" and "UTF-8" not in out
    write_tar(tmp_path / "b.tar", good_sample("k3", 3)[:1] + [("k3.txt", b"bad \xff byte")])
    rc, out, err = cli_main(["--input", str(tmp_path / "b.tar"), "--output", str(tmp_path / "out2"), *CLI_ARGS])
    assert rc == 0 and "captions: 0 missing or empty, 1 repaired (not UTF-8, or NUL characters: caption_note" in out


def test_duplicate_keys_across_shards_are_reported(tmp_path):
    write_tar(tmp_path / "a.tar", good_sample("k1", 1) + good_sample("k2", 2))
    write_tar(tmp_path / "b.tar", good_sample("k3", 3) + good_sample("k1", 4))
    rc, out, err = cli_main(["--input", str(tmp_path / "*.tar"), "--output", str(tmp_path / "out"), *CLI_ARGS])
    assert rc == 0, err
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["converted"] == 4 and s["duplicate_keys"] == 1
    assert s["duplicates"] == ["k1: 000000.tar, 000001.tar"]
    assert "duplicate keys across shards: 1 (k1: 000000.tar, 000001.tar)" in out


def _failing_write(code, on_shard):
    """ShardWriter.write that fails in `on_shard` like a full disk (tarfile's write raising)."""
    from gaussianvision.data.shards import ShardWriter
    real = ShardWriter.write

    def write(self, key, fields):
        if self.path.name == on_shard:
            raise OSError(code, os.strerror(code))
        return real(self, key, fields)
    return write


def test_full_disk_keeps_finished_shards_and_says_so(tmp_path, monkeypatch):
    import errno
    from gaussianvision.data.shards import ShardWriter
    write_tar(tmp_path / "a.tar", good_sample("k1", 1))
    write_tar(tmp_path / "b.tar", good_sample("k2", 2))
    monkeypatch.setattr(ShardWriter, "write", _failing_write(errno.ENOSPC, "000001.tar"))
    out = tmp_path / "out"
    rc, _, err = cli_main(["--input", str(tmp_path / "*.tar"), "--output", str(out), *CLI_ARGS])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.strip() == (f"gsv convert: {out}: No space left on device while writing 000001.tar; "
                           f"kept the 1 shard finished in this run (000000.tar); free space and rerun to resume")
    assert sorted(p.name for p in out.iterdir()) == ["000000.failures.jsonl", "000000.stats.json", "000000.tar",
                                                     "config.json"]
    monkeypatch.undo()
    rc, _, err = cli_main(["--input", str(tmp_path / "*.tar"), "--output", str(out), *CLI_ARGS])
    assert rc == 0 and json.loads((out / "summary.json").read_text())["converted"] == 2


def test_read_only_output_is_one_clear_line(tmp_path, monkeypatch):
    import errno
    from gaussianvision.data import conversion_output
    src = write_tar(tmp_path / "a.tar", good_sample("k1", 1))

    def refuse(path, data):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    monkeypatch.setattr(conversion_output, "write_durable", refuse)
    rc, _, err = cli_main(["--input", str(src), "--output", str(tmp_path / "out"), *CLI_ARGS])
    assert rc == 2 and err.strip() == f"gsv convert: {tmp_path / 'out'}: cannot write the output (Read-only file system)"
    monkeypatch.undo()
    (tmp_path / "afile").write_text("x")  # regression (new-user trial): "cannot write the output (File exists)"
    rc, _, err = cli_main(["--input", str(src), "--output", str(tmp_path / "afile"), *CLI_ARGS])
    assert rc == 2 and err.strip() == f"gsv convert: {tmp_path / 'afile'}: is not a folder (the output is a folder " \
                                      f"of shards; give a new or existing folder)", err
    assert (tmp_path / "afile").read_text() == "x"


def test_non_utf8_member_names_and_sources_fail_one_sample_not_the_run(tmp_path):
    """A latin-1 member name (b'caf\\xe9.jpg') and a lone surrogate in a source's JSON: the first
    sample fails with the reason, the second converts; every record is written; a rerun resumes."""
    members = good_sample("ok", 1) + [(n.replace("caf", "caf\udce9"), d) for n, d in good_sample("caf", 2)]
    members += [("odd.jpg", img_bytes(fmt="JPEG", seed=3)), ("odd.json", b'{"t": "\\udce9"}')]
    src = tmp_path / "s.tar"
    with tarfile.open(src, "w", format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="surrogateescape") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    for _ in range(2):
        rc, stdout, err = cli_main(["--input", str(src), "--output", str(out), *CLI_ARGS])
        assert rc == 0 and "Traceback" not in err, err
    s = json.loads((out / "summary.json").read_text())
    assert (s["inputs"], s["converted"], s["failed"]) == (3, 2, 1)
    fail = json.loads((out / "failures.jsonl").read_text())
    assert fail["key"] == "caf\udce9" and "not valid UTF-8" in fail["reason"]
    odd = [x for x in read_samples(out / "000000.tar") if x["__key__"] == "odd"][0]
    assert json.loads(odd["json"])["meta"] == {"t": "\udce9"}


@pytest.mark.parametrize("fails_on, says", [("000001.stats.json", "000001.stats.json"),
                                            ("000001.failures.jsonl", "000001.failures.jsonl"),
                                            ("summary.json", "the summary (failures.jsonl, summary.json)")])
def test_a_write_error_names_the_file_being_written(tmp_path, monkeypatch, fails_on, says):
    import errno
    from gaussianvision.data import conversion_output
    write_tar(tmp_path / "a.tar", good_sample("k1", 1))
    write_tar(tmp_path / "b.tar", good_sample("k2", 2))
    real = conversion_output.write_durable

    def write(path, data):
        if path.name == fails_on:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)
    monkeypatch.setattr(conversion_output, "write_durable", write)
    out = tmp_path / "out"
    rc, _, err = cli_main(["--input", str(tmp_path / "*.tar"), "--output", str(out), *CLI_ARGS])
    done = "1 shard finished in this run (000000.tar)" if fails_on.startswith("000001") else \
        "2 shards finished in this run (000000.tar, 000001.tar)"
    assert rc == 2 and err.strip() == (f"gsv convert: {out}: No space left on device while writing {says}; "
                                       f"kept the {done}; free space and rerun to resume"), err


def test_key_json_says_why_a_fit_stopped_and_the_size_as_shown(tmp_path):
    """Regressions: key.json had no "stopped" (a --target-psnr run could not tell which samples stopped),
    and original_size ignored the EXIF orientation (a 60x100 photo stored on its side read 100x60)."""
    src = tmp_path / "in"
    src.mkdir()
    arr = (np.random.default_rng(1).random((60, 100, 3)) * 255).astype(np.uint8)  # stored 100 wide, 60 high
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: 60 wide, 100 high
    Image.fromarray(arr).save(src / "turned.jpg", exif=exif)
    Image.fromarray(arr).save(src / "plain.png")
    convert_dataset(str(src), tmp_path / "out", cfg(fit_options={**FIT, "target_psnr": 1.0}))
    infos = {j["key"]: j for j in (json.loads(s["json"]) for s in read_samples(tmp_path / "out" / "000000.tar"))}
    # keys follow the sorted file names: plain.png, then turned.jpg
    assert {k: v["original_size"] for k, v in infos.items()} == {"000000000": [100, 60], "000000001": [60, 100]}
    assert all(v["stopped"] == "target" and v["iterations"] == 0 for v in infos.values())
    convert_dataset(str(src), tmp_path / "out2", cfg())
    assert all("stopped" not in json.loads(s["json"]) for s in read_samples(tmp_path / "out2" / "000000.tar"))


def test_an_input_tar_that_cannot_be_opened_is_left_unfinished_and_a_rerun_converts_it(tmp_path, monkeypatch):
    """Regression: a tar that could not be opened (permissions, a file system away) was written as a
    finished shard of 0 samples, and reruns skipped it for ever."""
    import builtins
    from gaussianvision.data import conversion
    shard = write_tar(tmp_path / "a.tar", good_sample("k1", 1) + good_sample("k2", 2))
    out = tmp_path / "out"

    def denied(path, *a, **k):
        if str(path) == str(shard):
            raise PermissionError(13, "Permission denied")
        return builtins.open(path, *a, **k)
    monkeypatch.setattr(conversion, "open", denied, raising=False)
    rc, text, err = cli_main(["--input", str(shard), "--output", str(out), *CLI_ARGS])
    assert rc == 1 and f"could not open 1 input shard(s) (first: {shard}: cannot open (Permission denied))" in err
    assert not (out / "000000.stats.json").exists() and not (out / "000000.tar").exists()
    monkeypatch.undo()
    rc, text, err = cli_main(["--input", str(shard), "--output", str(out), *CLI_ARGS])
    assert rc == 0 and "converted 1 shards, skipped 0 finished" in text and "inputs 2 = converted 2 + failed 0" in text


def test_captions_white_space_is_missing_and_repairs_are_recorded(tmp_path):
    """A caption of white space counts as missing (and --require-caption refuses it); bytes that are not
    UTF-8 and NULs are repaired, noted per sample and counted; BOMs are honoured. Regression: "   " was a
    present empty caption and latin-1 / UTF-16 bytes became U+FFFD and NULs without a word."""
    caps = {"blank": b"   \n", "latin": "caf\xe9".encode("latin-1"), "u16bom": "thé".encode("utf-16"),
            "u16raw": "tea".encode("utf-16-le"), "u8bom": "\ufeffplain".encode("utf-8"), "good": "ok ü".encode()}
    members = []
    for i, (key, data) in enumerate(caps.items()):
        members += [(f"{key}.png", img_bytes(seed=i)), (f"{key}.txt", data)]
    src = write_tar(tmp_path / "caps.tar", members)
    s = convert_dataset(str(src), tmp_path / "out", cfg())
    assert (s["converted"], s["missing_captions"], s["repaired_captions"]) == (6, 1, 2)
    got = {x["__key__"]: (x["txt"].decode(), json.loads(x["json"])) for x in read_samples(tmp_path / "out" / "000000.tar")}
    assert got["blank"][0] == "" and got["blank"][1]["caption_missing"] is True
    assert got["latin"][0] == "caf\ufffd" and "not UTF-8" in got["latin"][1]["caption_note"]
    assert got["u16raw"][0] == "tea" and "NUL characters removed" in got["u16raw"][1]["caption_note"]
    for key, text in (("u16bom", "thé"), ("u8bom", "plain"), ("good", "ok ü")):
        assert got[key][0] == text and "caption_note" not in got[key][1], key
    r = convert_dataset(str(src), tmp_path / "req", cfg(require_caption=True))
    assert (r["converted"], r["failed_by_stage"]) == (5, {"caption": 1})


def test_utf16_caption_with_bad_bytes_is_noted():
    """Regression (review): the UTF-16 path replaced undecodable bytes without a note."""
    from gaussianvision.data.inputs import decode_caption
    text, note = decode_caption(b"\xff\xfe" + "hi".encode("utf-16-le") + b"\x00\xd8")
    assert text == "hi\ufffd" and "undecodable bytes replaced" in note
    assert decode_caption("thé".encode("utf-16")) == ("thé", None)


def test_a_caption_path_that_is_no_file_is_a_missing_caption_and_the_run_goes_on(tmp_path):
    """Regression (new-user trial): a folder named a.txt beside a.png stopped the whole image-folder conversion
    ("Is a directory while writing the output"), a link loop likewise, and a fifo hung it. Such a caption is
    missing, with a note naming it; every image is converted."""
    src = tmp_path / "imgs"
    src.mkdir()
    for i, name in enumerate(("a", "b", "c", "d")):
        (src / f"{name}.png").write_bytes(img_bytes(seed=i))
    (src / "a.txt").mkdir()
    (src / "b.txt").symlink_to(src / "loop.txt")
    (src / "loop.txt").symlink_to(src / "b.txt")
    os.mkfifo(src / "c.txt")
    (src / "d.txt").write_text("a dog")
    s = convert_dataset(str(src), tmp_path / "out", cfg())
    assert (s["converted"], s["failed"], s["missing_captions"], s["repaired_captions"]) == (4, 0, 3, 0)
    got = {json.loads(x["json"])["source"]: (x["txt"].decode(), json.loads(x["json"]))
           for t in sorted((tmp_path / "out").glob("*.tar")) for x in read_samples(t)}
    assert got["a.png"][1]["caption_note"] == "caption file a.txt not read (not a regular file)"
    assert got["b.png"][1]["caption_note"] == "caption file b.txt not read (Too many levels of symbolic links)"
    assert got["c.png"][1]["caption_note"] == "caption file c.txt not read (not a regular file)"
    assert got["d.png"][0] == "a dog" and "caption_note" not in got["d.png"][1]


def test_a_folder_of_shards_takes_compressed_and_upper_case_tars(tmp_path):
    """Regression (new-user trial): a folder's .tar.gz, .tgz and .TAR shards were left out without a word (only
    *.tar was listed), so 6 of 8 samples vanished from a run that said 'reconciled'."""
    import gzip
    src = tmp_path / "shards"
    src.mkdir()
    for i, name in enumerate(("p.tar", "q.tar.gz", "r.tgz", "S.TAR")):
        plain = write_tar(tmp_path / f"{i}.tar", good_sample(f"k{i}a", 2 * i) + good_sample(f"k{i}b", 2 * i + 1))
        data = plain.read_bytes()
        (src / name).write_bytes(gzip.compress(data) if name.endswith(("gz", "tgz")) else data)
    (src / "notes.json").write_text("{}")  # not a shard
    (src / "t.tar").symlink_to(tmp_path / "gone.tar")  # a broken link: skipped and said (review finding)
    skipped = []
    assert [Path(u.paths[0]).name for u in plan_units(str(src), 10, skipped)] == ["S.TAR", "p.tar", "q.tar.gz", "r.tgz"]
    assert skipped == [src / "t.tar"]
    s = convert_dataset(str(src), tmp_path / "out", cfg())
    assert (s["inputs"], s["converted"], s["failed"]) == (8, 8, 0)


def test_two_starts_with_different_settings_cannot_both_claim_a_new_folder(folder_and_reference, tmp_path, monkeypatch):
    """Regression (new-user trial): two runs started on a new folder at once both found no config.json, both
    wrote theirs (the last rename won) and both converted: shards of two settings, reported complete. Here the
    other run's config.json appears while this one is writing its own: this run is refused, theirs is kept."""
    src, _, _ = folder_and_reference
    out = tmp_path / "out"
    theirs = cfg(fit_options={**FIT, "iters": 3})
    real = output.write_durable

    def other_run_first(path, data):
        if path.name.startswith(".config.json"):  # this run is staging its config.json
            out.mkdir(exist_ok=True)
            (out / "config.json").write_text(json.dumps(theirs.fingerprint(str(src)), indent=2, sort_keys=True))
        real(path, data)
    monkeypatch.setattr(output, "write_durable", other_run_first)
    with pytest.raises(ConvertError, match=r"made with different settings \(fit_options: was .*\"iters\": 3}, now .*\"iters\": 2}\)"):
        convert_dataset(str(src), out, cfg())
    assert json.loads((out / "config.json").read_text()) == theirs.fingerprint(str(src))
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # nothing converted, nothing staged left
    monkeypatch.undo()
    assert convert_dataset(str(src), out, theirs)["complete"]


def test_an_older_total_never_replaces_a_newer_summary(folder_and_reference, tmp_path, monkeypatch):
    """Regression (new-user trial): each rank totals the folder and renames summary.json into place, so a rank
    whose totals were older (here: made before the last shard finished) could rename its summary over the
    complete one. Totals and write now happen under one lock: the later total waits and writes last."""
    import shutil
    import threading
    src, ref, _ = folder_and_reference
    units = plan_units(str(src), 3)
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    last = out / "000002.stats.json"
    kept = last.read_bytes()
    last.unlink()  # the slow rank totals before the last shard is finished
    real = output.write_durable
    slow_totalled, go_on = threading.Event(), threading.Event()

    def write(path, data):
        if path.name == "summary.json" and threading.current_thread().name == "slow":
            slow_totalled.set()
            go_on.wait(10)
        real(path, data)
    monkeypatch.setattr(output, "write_durable", write)
    slow = threading.Thread(target=summarize, args=(out, units), name="slow")
    slow.start()
    assert slow_totalled.wait(10)
    last.write_bytes(kept)  # the last shard finishes; its rank totals the folder
    fast = threading.Thread(target=summarize, args=(out, units), name="fast")
    fast.start()
    fast.join(2)  # without the lock it finishes here, before the slow rank's write
    go_on.set()
    slow.join(10)
    fast.join(10)
    s = json.loads((out / "summary.json").read_text())
    assert s["complete"] and s["converted"] == json.loads((ref / "summary.json").read_text())["converted"]


def test_config_without_hard_links_is_still_written_once(tmp_path, monkeypatch):
    """create_durable on a file system without hard links: written where missing, kept where present."""
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))
    monkeypatch.setattr(output.os, "link", no_links)
    assert output.create_durable(tmp_path / "c.json", b"first") and (tmp_path / "c.json").read_bytes() == b"first"
    assert not output.create_durable(tmp_path / "c.json", b"second")
    assert (tmp_path / "c.json").read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


@pytest.mark.parametrize("damage", ["cut", "folder", "empty object"])
def test_a_damaged_config_json_is_named_as_such(folder_and_reference, tmp_path, damage):
    """Review finding: a cut config.json (or a folder of that name) read 'made with different settings (a: was
    null, now 1; ...)', as if the settings differed."""
    src, _, _ = folder_and_reference
    out = tmp_path / "out"
    out.mkdir()
    if damage == "cut":
        (out / "config.json").write_text('{"fit_opt')
    elif damage == "empty object":  # trial: {} read as "made with different settings (a: was null, ...)"
        (out / "config.json").write_text("{}")
    else:
        (out / "config.json").mkdir()
    with pytest.raises(ConvertError, match=re.escape(f"{out / 'config.json'}: unreadable or not the settings of a "
                                                     "conversion; restore it")):
        convert_dataset(str(src), out, cfg())


def test_two_processes_of_one_pid_stage_the_config_apart(tmp_path, monkeypatch):
    """Review finding: the staged name carried the PID only, so two ranks of one PID (containers on two hosts of a
    shared folder) staged over each other and both went on. Here the other process's staging, same PID, lands
    between this one's staging and its link: each links its own bytes, and the second is told it exists."""
    real = output.write_durable
    staged = []

    def write(path, data):
        staged.append(path.name)
        real(path, data)
        if len(staged) == 1:  # the other process stages now (same PID), and links first
            assert output.create_durable(tmp_path / "config.json", b"theirs")
    monkeypatch.setattr(output, "write_durable", write)
    assert not output.create_durable(tmp_path / "config.json", b"mine")
    assert (tmp_path / "config.json").read_bytes() == b"theirs" and staged[0] != staged[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_sigterm_ends_convert_as_ctrl_c_does(tmp_path):
    """Regression (new-user trial): SIGTERM (timeout, a scheduler's preemption) ended gsv convert with no word,
    exit 143, and left .NNNNNN.lock files behind; it now ends as Ctrl-C does: one line, exit 130, nothing left."""
    import signal
    import time
    src = make_folder(tmp_path / "photos")
    out = tmp_path / "out"
    slow = ["--gaussians", "8", "--size", "16", "--iters", "100000", "--init", "grid", "--fit-option",
            "backend=reference", "--batch-size", "1", "--shard-size", "1", "--no-progress"]
    proc = run_cli(["--input", str(src), "--output", str(out), *slow])
    deadline = time.monotonic() + 60
    while not list(out.glob(".*.lock")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert list(out.glob(".*.lock")), "the run never claimed a shard"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    err = err.decode().strip()
    assert proc.returncode == 130 and err == ("gsv convert: interrupted (finished shards are kept; rerun the same "
                                              "command to convert the rest)"), err
    assert not list(out.glob(".*.lock")) and not list(out.glob(".*tmp*"))


def test_absolute_member_names_fail_and_a_sources_nan_is_written_as_null(tmp_path):
    """Regressions (new-user trial): a member /abs.jpg was converted as key 'abs' (the docs say a key holding
    '/' fails at the read stage), and a source's {"a": NaN} was written into the sample's .json as NaN, which
    strict JSON readers refuse."""
    members = [("/abs.jpg", img_bytes(fmt="JPEG", seed=1)), ("/abs.txt", b"absolute")]
    members += [("nan.png", img_bytes(seed=2)), ("nan.txt", b"meta"),
                ("nan.json", b'{"a": NaN, "b": [Infinity, 1.5], "c": {"d": -Infinity}}')]
    src = write_tar(tmp_path / "odd.tar", members)
    s = convert_dataset(str(src), tmp_path / "out", cfg())
    assert (s["converted"], s["failed"]) == (1, 1)
    fail = json.loads((tmp_path / "out" / "failures.jsonl").read_text())
    assert fail["stage"] == "read" and "sample key '/abs' holds a path separator" in fail["reason"], fail

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    (sample,) = read_samples(tmp_path / "out" / "000000.tar")
    assert strict(sample["json"])["meta"] == {"a": None, "b": [None, 1.5], "c": {"d": None}}
    assert output.json_line({"x": float("nan"), "y": (1.0, float("inf"))}) == b'{"x": null, "y": [1.0, null]}\n'


def test_a_sources_json_nested_deep_is_kept_or_refused_never_the_end_of_the_run(tmp_path):
    """Review finding: walking a source's .json nested 700 deep to clean its numbers was a RecursionError
    that stopped the whole conversion; 2000 deep stopped it in json.loads (before this session too)."""
    members = []
    for key, depth in (("d150", 150), ("d700", 700), ("d988", 988), ("d2000", 2000)):
        members += [(f"{key}.png", img_bytes(seed=depth)), (f"{key}.json", ("[" * depth + "1e400" + "]" * depth).encode())]
    s = convert_dataset(str(write_tar(tmp_path / "deep.tar", members)), tmp_path / "out", cfg())
    assert (s["converted"], s["failed"]) == (4, 0)
    metas = {x["__key__"]: json.loads(x["json"])["meta"] for x in read_samples(tmp_path / "out" / "000000.tar")}
    assert metas["d2000"]["invalid_json"] is True  # too deep for the reader, or read and too deep to keep
    # read, but deeper than MAX_META_DEPTH: at 988 deep the record's writer, two levels deeper, failed (review)
    assert metas["d700"] == {"invalid_json": True, "too_deep": True} and metas["d988"]["invalid_json"] is True
    inner = metas["d150"]["value"]
    for _ in range(149):
        (inner,) = inner
    assert inner == [None]  # 1e400 overflows to inf: null


def test_a_required_caption_that_cannot_be_read_says_why(tmp_path):
    """Regression (new-user trial): with --require-caption a caption file that is a folder was failed as
    'missing caption (no .txt, or nothing but white space in it)', its reason lost."""
    src = tmp_path / "imgs"
    src.mkdir()
    (src / "a.png").write_bytes(img_bytes(seed=1))
    (src / "a.txt").mkdir()
    s = convert_dataset(str(src), tmp_path / "out", cfg(require_caption=True))
    assert (s["converted"], s["failed"]) == (0, 1)
    fail = json.loads((tmp_path / "out" / "failures.jsonl").read_text())
    assert fail["reason"] == "missing caption (caption file a.txt not read (not a regular file))", fail


def test_an_input_named_that_is_a_link_loop_says_so(tmp_path):
    """Regression (new-user trial): --input loop.png, a symbolic link loop, was 'no such image file'."""
    (tmp_path / "loop.png").symlink_to(tmp_path / "other.png")
    (tmp_path / "other.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(SourceError, match=r"loop\.png: cannot read \(Too many levels of symbolic links\)$"):
        plan_units(str(tmp_path / "loop.png"))
    with pytest.raises(SourceError, match=r"gone\.png: no such image file$"):
        plan_units(str(tmp_path / "gone.png"))


def test_the_progress_total_of_tar_inputs_is_foreseen_by_their_bytes(tmp_path):
    """Regression (new-user trial): two tars of 24 and 8 inputs showed 16/48 after the first (the mean per shard
    times the shards); now the inputs per byte of the tars done times the bytes of all: 32."""
    from gaussianvision.data.conversion import _Progress
    from gaussianvision.data.inputs import Unit
    (tmp_path / "a.tar").write_bytes(b"x" * 300)
    (tmp_path / "b.tar").write_bytes(b"x" * 100)
    units = [Unit(0, "tar", (str(tmp_path / "a.tar"),)), Unit(1, "tar", (str(tmp_path / "b.tar"),)),
             Unit(2, "files", ("c.png", "d.png"))]
    progress = _Progress(cfg(), units)
    assert progress.known == 2 and progress._tar_inputs([{"unit": 0, "inputs": 24}]) == 32
    assert progress._tar_inputs([{"unit": 0, "inputs": 24}, {"unit": 1, "inputs": 8}]) == 32
    remote = _Progress(cfg(), [Unit(0, "tar", ("http://h/a.tar",)),
                                  Unit(1, "tar", ("http://h/b.tar",))])
    assert remote._tar_inputs([{"unit": 0, "inputs": 24}]) == 48  # sizes unknown: per shard
    # review finding: one remote or empty tar among local ones brought back the per-shard mean for all
    (tmp_path / "z.tar").write_bytes(b"")
    mixed = _Progress(cfg(), units[:2] + [Unit(3, "tar", ("http://h/c.tar",)), Unit(4, "tar", (str(tmp_path / "z.tar"),))])
    assert mixed._tar_inputs([{"unit": 0, "inputs": 24}]) == 24 + 8 + 24 + 0


def test_a_sample_with_two_images_names_the_one_not_converted(tmp_path):
    """Regression (new-user trial): a sample holding e.jpg and e.png was converted from the .jpg and the .png
    dropped without a word; now its .json names it (other_images), and one image alone says nothing."""
    members = [("e.png", img_bytes(seed=3)), ("e.jpg", img_bytes(fmt="JPEG", seed=1)), ("e.txt", b"two"),
               *good_sample("f", 2)]
    s = convert_dataset(str(write_tar(tmp_path / "two.tar", members)), tmp_path / "out", cfg(keep_image=True))
    assert (s["converted"], s["failed"]) == (2, 0)
    by_key = {x["__key__"]: x for x in read_samples(tmp_path / "out" / "000000.tar")}
    assert json.loads(by_key["e"]["json"])["other_images"] == ["png"] and "jpg" in by_key["e"] and "png" not in by_key["e"]
    assert "other_images" not in json.loads(by_key["f"]["json"])
