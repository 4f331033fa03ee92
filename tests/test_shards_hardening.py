"""The one tar reader (data/shards.py) under damage: no hang, bounded memory, the samples
before the damage kept and every loss reported; hostile member names never reach an output."""
import io
import random
import signal
import subprocess
import sys
import tarfile
import tracemalloc
import warnings
from pathlib import Path

import pytest

from conftest import random_splats
from gaussianvision.data.shards import ShardWriter, read_samples
from gaussianvision.data.inputs import Unit, iter_unit
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
    from test_data_conversion import cfg, good_sample, write_tar
    from gaussianvision.data.conversion import convert_dataset
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


# ------------------------------------------------------------------ shard review fixes (issue 18)
def ustar(name: bytes, size: int, kind: bytes = b"0", size_field: bytes | None = None) -> bytes:
    """One hand-made USTAR header with a valid checksum."""
    h = bytearray(512)
    h[:len(name)] = name
    h[100:108], h[108:116], h[116:124] = b"0000644\0", b"0000000\0", b"0000000\0"
    h[124:136] = size_field if size_field is not None else b"%011o\0" % size
    h[136:148], h[156:157], h[257:265] = b"00000000000\0", kind, b"ustar\x0000"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def entry(name: bytes, data: bytes, kind: bytes = b"0") -> bytes:
    return ustar(name, len(data), kind) + data + b"\0" * (-len(data) % 512)


def pax_entry(records: list[tuple[bytes, bytes]]) -> bytes:
    body = b""
    for k, v in records:
        rec = b" %s=%s\n" % (k, v)
        n = next(n for n in range(1, 10 ** 5) if len(str(n)) + len(rec) == n)
        body += str(n).encode() + rec
    return entry(b"././@PaxHeader", body, b"x")


END = b"\0" * 1024


def members_of(data: bytes) -> list[tuple[str, bytes | None, str | None]]:
    from gaussianvision.data.shards import iter_members
    return [(m.name, m.data, m.skipped) for m in iter_members(io.BytesIO(data))]


@pytest.mark.parametrize("size", ["²".encode(), "１".encode(), b"1" * 5000, b"12 ", b"", b"-5", b"9" * 21])
def test_a_pax_size_that_is_not_a_plain_number_is_shard_damage(size):
    from gaussianvision.data.shards import ShardDamage
    with pytest.raises(ShardDamage, match="corrupt pax header"):
        members_of(pax_entry([(b"size", size)]) + entry(b"a.jpg", b"x") + END)
    assert members_of(pax_entry([(b"size", b"1")]) + entry(b"a.jpg", b"x") + END) == [("a.jpg", b"x", None)]


def long_name_tars() -> dict[str, bytes]:
    """Real pax and GNU tars (Python's tarfile) with member names and link targets past 100 bytes."""
    out = {}
    for label, fmt in (("pax", tarfile.PAX_FORMAT), ("gnu", tarfile.GNU_FORMAT)):
        bio = io.BytesIO()
        with tarfile.open(fileobj=bio, mode="w", format=fmt) as tf:
            for i, name in enumerate(["d" * 60 + "/" + "e" * 50 + "/k0.jpg", "d" * 60 + "/" + "e" * 50 + "/k0.txt",
                                      "short/k1.jpg", "f" * 120 + ".txt", "caf\u00e9-\u00fc" * 20 + ".txt"]):
                info = tarfile.TarInfo(name)
                data = f"data {i}".encode() * (i + 1)
                info.size = len(data)
                if label == "pax" and i == 2:
                    info.pax_headers = {"comment": "x" * 300}
                tf.addfile(info, io.BytesIO(data))
            link = tarfile.TarInfo("g" * 130 + ".lnk")
            link.type, link.linkname = tarfile.SYMTYPE, "t" * 150
            tf.addfile(link)
            last = tarfile.TarInfo("z.jpg")
            last.size = 3
            tf.addfile(last, io.BytesIO(b"end"))
        out[label] = bio.getvalue()
    return out


@pytest.mark.parametrize("label", ["pax", "gnu"])
def test_long_names_of_pax_and_gnu_tars_are_read_exactly(label):
    data = long_name_tars()[label]
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        want = [(m.name, tf.extractfile(m).read() if m.isfile() else None) for m in tf]
    got = members_of(data)
    assert [(n, d) for n, d, _ in got] == want and len(want[0][0]) > 100
    assert got[5][2] == f"member {'g' * 130}.lnk is a symbolic link, not a regular file: not read"
    keys = [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in read_samples("t", io.BytesIO(data))]
    assert keys == [("d" * 60 + "/" + "e" * 50 + "/k0", ["jpg", "txt"]), ("short/k1", ["jpg"]), ("f" * 120, ["txt"]),
                    ("caf\u00e9-\u00fc" * 20, ["txt"]), ("g" * 130, []), ("z", ["jpg"])]


@pytest.mark.parametrize("order", ["LK", "KL", "xL", "Lx", "xKL"])
def test_metadata_entries_in_any_order_apply_to_the_next_member(order):
    meta = {"L": entry(b"././@LongLink", b"k" * 150 + b".jpg\0", b"L"),
            "K": entry(b"././@LongLink", b"t" * 150 + b"\0", b"K"),
            "x": pax_entry([(b"path", b"p" * 120 + b".jpg"), (b"mtime", b"1.5")])}
    data = b"".join(meta[c] for c in order) + ustar(b"short", 0, b"2") + entry(b"b.jpg", b"x") + END
    name = ("k" * 150 if order.index("L") > order.find("x") else "p" * 120) + ".jpg" if "L" in order else "p" * 120 + ".jpg"
    assert members_of(data) == [(name, None, f"member {name} is a symbolic link, not a regular file: not read"),
                                ("b.jpg", b"x", None)]


def pax_gnu_mutations() -> list[tuple[str, bytes]]:
    rng = random.Random(1818)
    cases = []
    for label, data in long_name_tars().items():
        for pos in rng.sample(range(len(data) - 1024), 150):
            cases.append((f"{label} flip@{pos}", data[:pos] + bytes([data[pos] ^ rng.randrange(1, 256)]) + data[pos + 1:]))
        for pos in rng.sample(range(len(data) - 1024), 40):  # digits and separators: pax lengths and sizes
            cases.append((f"{label} digit@{pos}", data[:pos] + rng.choice([b"9", b"0", b" ", b"=", b"\n", b"\xb2"])
                          + data[pos + 1:]))
        cases += [(f"{label} cut@{c}", data[:c]) for c in range(0, len(data), len(data) // 40)]
    for v in ["²".encode(), b"1" * 5000, b"99999999999999999999", b"1e3", b"\xff", b"0x10"]:
        for k in (b"size", b"path"):
            cases.append((f"pax {k}={v[:8]!r}", pax_entry([(k, v)]) + entry(b"a.jpg", b"x") + END))
    for body in (b"\0" * 10, b"\xff" * 200, "é".encode() * 80 + b"\0", b""):
        cases.append((f"GNU L {body[:4]!r}", entry(b"././@LongLink", body, b"L") + entry(b"a.jpg", b"x") + END))
    return cases


def test_fuzzed_pax_and_gnu_tars_raise_nothing_but_shard_damage(no_hang):
    cases = pax_gnu_mutations()
    assert len(cases) >= 400
    for label, data in cases:
        try:
            members_of(data)
        except tarfile.ReadError:
            pass
        except Exception as e:  # anything else is a traceback for the user
            pytest.fail(f"{label}: {type(e).__name__}: {e}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                list(read_samples("f.tar", io.BytesIO(data)))
        except tarfile.ReadError:
            pass


def test_non_utf8_member_names_make_a_failed_sample_not_a_crash(tmp_path):
    from gaussianvision.data.shards import check_key
    assert "not valid UTF-8" in check_key("caf\udce9")
    src = tmp_path / "latin1.tar"
    with tarfile.open(src, "w", format=tarfile.USTAR_FORMAT, encoding="latin-1") as tf:
        for name in ("ok.jpg", "caf\u00e9.jpg", "fine.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tf.addfile(info, io.BytesIO(b"j"))
    got = list(iter_unit(Unit(0, "tar", (str(src),))))
    assert [(s.key, s.error is None) for s in got] == [("ok", True), ("caf\udce9", False), ("fine", True)]
    assert "not valid UTF-8" in got[1].error and got[1].error.isascii()


def test_a_member_claiming_more_data_than_the_file_holds_costs_no_memory(tmp_path):
    """A 612-byte tar whose header claims 250 MB: memory follows the data present (read in chunks)."""
    from gaussianvision.data.shards import ShardDamage
    path = tmp_path / "claim.tar"
    path.write_bytes(ustar(b"a.jpg", 250 << 20) + b"x" * 100)
    tracemalloc.start()
    with pytest.raises(ShardDamage, match="truncated"):
        list(read_samples(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 << 20, peak


def zero_bomb(path: Path, members: list[tuple[bytes, int]]) -> Path:
    """A .tar.bz2 of members of zeros, made by concatenating bz2 streams (bz2 reads them as one):
    one stream of 8 MiB of zeros is ~50 bytes, so the test's memory stays small."""
    import bz2
    zeros = bz2.compress(b"\0" * (8 << 20))
    with open(path, "wb") as f:
        for name, mib in members:
            f.write(bz2.compress(ustar(name, mib << 20)))
            for _ in range(mib // 8):
                f.write(zeros)
        f.write(bz2.compress(END))
    return path


@pytest.mark.parametrize("members", [[(b"a.x%d" % i, 200) for i in range(6)], [(b"a.jpg", 8192), (b"b.jpg", 8)]])
def test_a_decompression_bomb_stops_early_with_bounded_memory(tmp_path, members, no_hang):
    """Six 200 MB members under one key, or an 8 GB member to skip, in a few kB of bzip2: the reader
    stops once the data expands more than 200x (+64 MiB) and says so."""
    import time
    from gaussianvision.data.shards import ShardDamage
    path = zero_bomb(tmp_path / "bomb.tar.bz2", members)
    assert path.stat().st_size < 100_000
    t0 = time.perf_counter()
    tracemalloc.start()
    with pytest.raises(ShardDamage, match="expands more than 200x"):
        list(read_samples(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 5 and peak < 150 << 20, peak


def test_a_sample_holds_at_most_max_sample_bytes(tmp_path):
    src = tmp_path / "big.tar"
    src.write_bytes(b"".join(entry(b"a.%d" % i, b"z" * 40_000) for i in range(4)) + entry(b"b.jpg", b"j") + END)
    got = list(read_samples(src, max_sample=100_000))
    assert [s["__key__"] for s in got] == ["a", "b"] and sorted(k for k in got[0] if not k.startswith("__")) == ["0", "1"]
    assert got[0]["__skipped__"] == [f"member a.{i} is 40000 bytes (limit {100_000 - 80_000}), not read" for i in (2, 3)]
    assert "__skipped__" not in got[1]


def test_a_sample_over_the_sample_limit_fails_in_conversion_input(tmp_path, monkeypatch):
    from gaussianvision.data import shards
    monkeypatch.setattr(shards, "MAX_SAMPLE_BYTES", 50_000)
    src = tmp_path / "big.tar"
    src.write_bytes(entry(b"a.jpg", b"j" * 40_000) + entry(b"a.txt", b"t" * 40_000) + entry(b"b.jpg", b"j") + END)
    got = list(iter_unit(Unit(0, "tar", (str(src),))))
    assert [(s.key, s.error) for s in got] == [("a", "member a.txt is 40000 bytes (limit 10000), not read"), ("b", None)]


def test_a_sample_cut_at_a_header_is_not_converted_as_complete(tmp_path):
    from test_data_conversion import good_sample, write_tar
    p = write_tar(tmp_path / "c.tar", good_sample("k1", 1) + good_sample("k2", 2))
    cut = [o for n, o, _ in layout(p.read_bytes()) if n == "k2.txt"][0]
    p.write_bytes(p.read_bytes()[:cut])  # k2.jpg whole, then the shard ends at k2.txt's header
    got = list(iter_unit(Unit(0, "tar", (str(p),))))
    assert [(s.key, s.whole_shard) for s in got] == [("k1", False), ("k2", False), ("", True)]
    assert got[0].error is None and "any later member of it is lost" in got[1].error


def test_duplicates_are_reported_the_same_way_by_both_readers(tmp_path):
    from test_data_conversion import write_tar
    p = write_tar(tmp_path / "d.tar", [("a.gsv", b"1"), ("a.gsv", b"2"), ("b.gsv", b"3"), ("a.txt", b"4")])
    got = list(read_samples(p))
    assert [(s["__key__"], s.get("gsv"), s.get("__skipped__")) for s in got] == [
        ("a", b"1", ["member a.gsv appears twice"]), ("b", b"3", None),
        ("a", None, ["duplicate key: appears twice in the shard"])]
    raw = list(iter_unit(Unit(0, "tar", (str(p),))))
    assert [(s.key, s.error) for s in raw] == [
        ("a", "member a.gsv appears twice"), ("b", "no image in sample (found: gsv)"),
        ("a", "duplicate key: appears twice in the shard")]


def test_a_concatenated_tar_is_reported_not_dropped_silently(shard, tmp_path):
    from gaussianvision.data.shards import ShardWarning
    (tmp_path / "cat.tar").write_bytes(shard + shard)
    with pytest.warns(ShardWarning, match="data after the end-of-archive marker"):
        assert [s["__key__"] for s in read_samples(tmp_path / "cat.tar")] == KEYS
    notes = [s.error for s in iter_unit(Unit(0, "tar", (str(tmp_path / "cat.tar"),))) if s.whole_shard]
    assert len(notes) == 1 and "data after the end-of-archive marker" in notes[0]
    (tmp_path / "one.tar").write_bytes(shard + b"\0" * 20480)  # padding alone is fine
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(read_samples(tmp_path / "one.tar"))) == 4


@pytest.mark.parametrize("which", ["convert", "world"])
def test_the_data_writers_leave_no_temp_file_when_interrupted(tmp_path, monkeypatch, which):
    """convert's JSON files and the world's text files go through gaussianvision/atomic.py: an
    interrupted write (here Ctrl-C in the middle) leaves neither the file nor a temporary."""
    from gaussianvision.data import conversion_output
    from gaussianvision.apps.demo.world import writer

    def half_then_interrupt(self, data, *a, **k):
        open(self, "w").write(data[:1])
        raise KeyboardInterrupt
    if which == "convert":
        def interrupt(fd):
            raise KeyboardInterrupt
        monkeypatch.setattr(conversion_output.os, "fsync", interrupt)  # after the data is written, before the rename
        with pytest.raises(KeyboardInterrupt):
            conversion_output.write_durable(tmp_path / "summary.json", b"{}")
    else:
        monkeypatch.setattr(Path, "write_text", half_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            writer.write_text_atomic(tmp_path / "sub" / "manifest.json", "{}")
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_compressed_stream_cut_inside_a_member_flags_that_sample_only(shard):
    """The damage lies inside k2.gsv's data (the first member of k2): k1 is whole and unflagged."""
    import gzip
    start = [h for n, h, _ in layout(shard) if n == "k2.gsv"][0] + 512 + 50
    packed = gzip.compress(shard[:start]) + b"garbage"  # a bad gzip stream right inside k2.gsv
    got, _, error = read_all(packed)
    assert [(s["__key__"], "__skipped__" in s) for s in got] == [("k0", False), ("k1", False), ("k2", True)]
    assert "gzip stream is cut or corrupt" in error and "in member k2.gsv" in error and "after 'k2' are lost" in error


def test_keys_starting_with_two_underscores_are_samples_as_webdataset_reads_them(tmp_path):
    # webdataset skips only top-level "__...__" metadata members; "__a.jpg" had been left out with a warning
    from test_data_conversion import write_tar
    members = [("__meta__", b"m"), ("__a.jpg", b"1"), ("__a.cls", b"2"), ("b.__x", b"3"), ("b.txt", b"4"),
               ("__c.json__", b"5"), ("d/__e__.txt", b"6")]
    p = write_tar(tmp_path / "u.tar", members)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in read_samples(p)]
    assert got == [("__a", ["cls", "jpg"]), ("b", ["txt"]), ("d/__e__", ["txt"])]
    wds = pytest.importorskip("webdataset")  # an optional extra (the GPU machine lacks it)
    theirs = [(s["__key__"], sorted(k for k in s if not k.startswith("__")))
              for s in wds.WebDataset(str(p), shardshuffle=False, empty_check=False)]
    # the same samples and fields, but for b's "__x", which webdataset keeps as a field and we leave out (an
    # extension of the reader's own "__" names: it could have been "__key__")
    assert theirs == got
