"""The one tar reader (data/shards.py) under damage: no hang, bounded memory, the samples
before the damage kept and every loss reported; hostile member names never reach an output."""
import io
import random
import signal
import subprocess
import sys
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from conftest import random_splats
from gaussianvision.data.shards import ShardWriter, read_samples
from gaussianvision.data.sources import Unit, iter_unit
from gaussianvision.splats import encode

KEYS = [f"k{i}" for i in range(4)]


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> bytes:
    """A real small splat shard: 4 samples of .gsv + .txt, 8 members."""
    path = tmp_path_factory.mktemp("fuzz") / "000000.tar"
    with ShardWriter(path) as w:
        for i, key in enumerate(KEYS):
            w.write(key, {"gsv": encode(random_splats(1, 3 + 9 * i, 16, 16, seed=i)), "txt": f"text {i}".encode()})
    return path.read_bytes()


def layout(data: bytes) -> list[tuple[str, int, int]]:
    """(member name, header offset, end offset of its padded data)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [(m.name, m.offset, m.offset_data + -(-m.size // 512) * 512) for m in tf]


def with_field(data: bytes, header: int, start: int, value: bytes) -> bytes:
    """`data` with a header field replaced and the header's checksum made valid again."""
    hdr = bytearray(data[header: header + 512])
    hdr[start: start + len(value)] = value
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    return data[:header] + bytes(hdr) + data[header + 512:]


SIZES = [b"-0000001000", b"-0000000001", b"00000000000", b"00000000001", b"77777777777",
         b"\x80" + b"\0" * 6 + b"\x7f" + b"\xff" * 3, b"\xff" * 11, b"12x45670000", b"00000001000", b"00000177777"]
TYPES = b"1234567xgLKSVMZ"


def mutations(data: bytes) -> list[tuple[str, int, bytes]]:
    """(label, offset of the damage, damaged shard): 660+ deterministic cases."""
    rng = random.Random(18)
    out = []
    for pos in sorted(rng.sample(range(len(data)), 300)):
        out.append((f"flip@{pos}", pos, data[:pos] + bytes([data[pos] ^ rng.randrange(1, 256)]) + data[pos + 1:]))
    for cut in range(0, len(data), len(data) // 150):
        out.append((f"cut@{cut}", cut, data[:cut]))
    for name, hdr, _ in layout(data):
        out += [(f"size {v!r} of {name}", hdr, with_field(data, hdr, 124, v.ljust(12, b"\0"))) for v in SIZES]
        out += [(f"type {chr(t)} of {name}", hdr, with_field(data, hdr, 156, bytes([t]))) for t in TYPES]
    return out


def plain(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if k != "__skipped__"}


def read_all(data: bytes):
    """(complete samples, skipped-member notes, damage message or None)."""
    got, error = [], None
    try:
        for s in read_samples("fuzz.tar", io.BytesIO(data)):
            got.append(s)
    except tarfile.ReadError as e:
        error = str(e)
    return got, [n for s in got for n in s.get("__skipped__", [])], error


@pytest.fixture
def no_hang():
    """Turn a hang into a test failure (the old parser looped forever on a negative size)."""
    def boom(*_):
        raise TimeoutError("the tar reader did not finish")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_negative_size_ends_with_a_clear_error_not_a_hang(shard, tmp_path):
    hdr = layout(shard)[2][1]  # k1.gsv
    bad = tmp_path / "neg.tar"
    bad.write_bytes(with_field(shard, hdr, 124, b"-0000001000\0"))
    code = ("import sys; from gaussianvision.data.shards import read_samples\n"
            "keys = []\n"
            "try:\n    for s in read_samples(sys.argv[1]):\n        keys.append(s['__key__'])\n"
            "except Exception as e:\n    print(type(e).__name__, e)\nprint(keys)")
    try:
        r = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("read_samples loops forever on a tar header with a negative size")
    lines = r.stdout.splitlines()
    assert lines[-1] == "['k0']", r.stdout + r.stderr
    assert lines[0].startswith("ShardDamage") and "size field" in lines[0] and "after 'k0' are lost" in lines[0]


def test_fuzzed_shards_end_bounded_keep_the_prefix_and_report_every_loss(shard, no_hang):
    want, _, err = read_all(shard)
    assert [s["__key__"] for s in want] == KEYS and err is None
    members = layout(shard)
    cases = mutations(shard)
    assert len(cases) >= 600
    reported = 0
    for label, damage, data in cases:
        tracemalloc.start()
        got, skipped, error = read_all(data)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 2 * len(shard) + (256 << 10), (label, peak)
        intact = sum(1 for k in KEYS if max(e for n, _, e in members if n.startswith(k + ".")) <= damage)
        assert [s["__key__"] for s in got[:intact]] == KEYS[:intact], label  # the samples before the damage
        assert [plain(s) for s in got[:intact]] == want[:intact], label
        lost = [(s["__key__"], sorted(s)) for s in got] != [(s["__key__"], sorted(s)) for s in want]
        assert not lost or error or skipped, f"{label}: samples lost silently"
        reported += bool(error or skipped)
    assert reported > 300


@pytest.mark.parametrize("flag, what", [(b"2", "symbolic link"), (b"5", "directory"), (b"1", "hard link")])
def test_links_and_directories_are_reported_not_dropped_silently(shard, flag, what):
    name, hdr, _ = layout(shard)[4]  # k2.gsv
    got, skipped, error = read_all(with_field(shard, hdr, 156, flag))
    assert error is None and [s["__key__"] for s in got] == KEYS  # the samples after it are kept
    assert skipped == [f"member {name} is a {what}, not a regular file: not read"]
    assert "gsv" not in got[2] and got[2]["txt"] == b"text 2"


def test_loader_counts_what_the_reader_reports(shard, tmp_path):
    from gaussianvision.data.loader import SplatShards
    hdr = layout(shard)[4][1]
    (tmp_path / "a.tar").write_bytes(with_field(shard, hdr, 156, b"2"))
    (tmp_path / "b.tar").write_bytes(shard[: layout(shard)[6][1] + 100])  # cut inside k3's header
    ds = SplatShards(tmp_path)
    with pytest.warns(UserWarning) as rec:
        keys = [x["key"] for x in ds]
    assert keys == ["k0", "k1", "k3", "k0", "k1", "k2"]
    msgs = [str(w.message) for w in rec]
    assert any("a.tar:k2" in m and "symbolic link" in m for m in msgs), msgs
    assert any("b.tar" in m and "after 'k2' are lost" in m for m in msgs), msgs
    assert any("b.tar:k2" in m and "any later member of it is lost" in m for m in msgs), msgs
    assert ds.problems == 3 == len(msgs)  # a.tar:k2 (its .gsv is a link), b.tar:k2 (kept), b.tar's damage


def test_compressed_tar_reads_like_the_plain_one(shard):
    import bz2
    import gzip
    import lzma
    want = [s for s in read_samples("p.tar", io.BytesIO(shard))]
    for pack in (gzip.compress, bz2.compress, lzma.compress):
        got = [s for s in read_samples("p.tar", io.BytesIO(pack(shard)))]
        assert [{k: v for k, v in s.items()} for s in got] == want
    got, _, error = read_all(gzip.compress(shard)[:-40])
    assert "gzip stream is cut or corrupt" in error and [s["__key__"] for s in got] == KEYS[: len(got)]


HOSTILE = ["../../etc/evil", "/tmp/x", "a/b", "..", "", "nul\0x", "new\nline", "back\\slash", "k" * 91]


@pytest.mark.parametrize("key", HOSTILE)
def test_hostile_keys_are_refused(key, tmp_path):
    from gaussianvision.data.shards import check_key
    assert check_key(key)
    with pytest.raises(ValueError, match="cannot name members"), ShardWriter(tmp_path / "o.tar") as w:
        w.write(key, {"gsv": b"x"})
    assert not list(tmp_path.iterdir())


def test_hostile_source_members_become_failed_samples(tmp_path):
    members = [("ok.jpg", b"j"), ("../../etc/evil.jpg", b"j"), ("/tmp/x.jpg", b"j"), ("a\nb.jpg", b"j"),
               ("sub/dir.jpg", b"j"), (".jpg", b"j"), ("fine.jpg", b"j")]
    src = tmp_path / "hostile.tar"
    with tarfile.open(src, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    got = list(iter_unit(Unit(0, "tar", (str(src),))))
    assert [(s.key, s.error is None) for s in got] == [
        ("ok", True), ("../../etc/evil", False), ("/tmp/x", False), ("a\nb", False), ("sub/dir", False),
        ("", False), ("fine", True)]
    assert "path separator" in got[1].error and "control character" in got[3].error
    assert got[5].error == "empty sample key (member .jpg)"


def test_no_member_of_a_converted_shard_escapes_its_folder(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_convert import cfg, good_sample, write_tar
    from gaussianvision.data.convert import convert_dataset
    members = good_sample("ok", 1) + good_sample("../../etc/evil", 2) + good_sample("/tmp/x", 3)
    src = write_tar(tmp_path / "src.tar", members + good_sample("sub/k", 4) + good_sample("fine", 5))
    s = convert_dataset(str(src), tmp_path / "out", cfg())
    assert (s["inputs"], s["converted"], s["failed"]) == (5, 2, 3)
    with tarfile.open(tmp_path / "out" / "000000.tar") as tf:
        names = tf.getnames()
        assert all("/" not in n and not n.startswith(".") for n in names), names
        tf.extractall(tmp_path / "x")
    assert sorted(p.name for p in (tmp_path / "x").rglob("*")) == sorted(names)
    assert not (tmp_path / "etc").exists() and sorted({n.split(".")[0] for n in names}) == ["fine", "ok"]


def test_a_shard_that_cannot_be_finished_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno
    import os
    from gaussianvision.data import shards

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    w = ShardWriter(tmp_path / "000000.tar")
    w.write("k", {"txt": b"x"})
    monkeypatch.setattr(shards.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        w.close()
    assert list(tmp_path.iterdir()) == []
