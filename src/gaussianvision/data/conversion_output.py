"""The output folder of a conversion: shard names, durable atomic writes, the finished-shard
marker, the claim a process holds on the shard it converts, and the totals (failures.jsonl,
summary.json) over the finished shards.

data/conversion.py writes through these functions (tests patch write_durable here to make a
disk fail); summarize can also be called on its own to re-total a folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import uuid
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no claims (keep to one process per rank there)
    fcntl = None

from gaussianvision.atomic import write_atomic
from gaussianvision.data.inputs import Unit

__all__ = ["shard_name", "json_line", "write_durable", "create_durable", "read_stats", "shard_state", "is_done", "claim", "release", "clear_lock", "unit_digest",
           "changed_shard", "summarize"]

_MAX_LISTED = 20  # duplicate keys listed by name in summary.json


def shard_name(index: int) -> str:
    return f"{index:06d}"


def json_line(obj) -> bytes:
    """One line of strict JSON; any string can be written: a lone surrogate (a tar name's byte that is
    not UTF-8, or one from a source's JSON) becomes its JSON escape \\udcXX, and a number that is not
    finite becomes null (a source's .json is read so already: data/inputs.py). Regression (new-user trial):
    a source's {"a": NaN} was written as NaN, which strict readers refuse."""
    return (strict_json(obj, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


def strict_json(obj, **kwargs) -> str:
    """json.dumps(obj, **kwargs) with every float that is not finite written as null."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError:  # only then walked (a source's metadata may be nested ~1000 deep: review finding)
        return json.dumps(_finite(obj), allow_nan=False, **kwargs)


def _finite(obj):
    """obj with every float that is not finite replaced by None (in dicts, lists and tuples)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _write_synced(tmp: Path, data: bytes) -> None:
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_durable(path: Path, data: bytes) -> None:
    """The project's one atomic write (a full disk leaves no half file behind), synced to disk."""
    write_atomic(path, lambda tmp: _write_synced(tmp, data))


def create_durable(path: Path, data: bytes) -> bool:
    """Write `path` only where it does not exist yet: of several processes that try at once, exactly one
    creates it, whole (staged by write_durable, then hard-linked to the name, which fails if it exists).
    True where this call created it. Where the file system has no hard links, as before: the file is
    written unless it exists (a race between two processes remains there). Regression (new-user trial): two
    runs started on a new folder with different settings both found no config.json and both converted."""
    # a name no other process uses, also on another host of a shared folder (review finding: two ranks with one
    # PID in two containers staged over each other, and both went on)
    staged = path.with_name(f".{path.name}.new{uuid.uuid4().hex}")
    write_durable(staged, data)
    try:
        os.link(staged, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # EPERM, ENOTSUP: no hard links here
        if path.exists():
            return False
        write_durable(path, data)
        return True
    finally:
        staged.unlink(missing_ok=True)


@contextlib.contextmanager
def _summary_lock(out: Path):
    """Held while one process totals the folder and writes the summary: a rank that totals later in lock
    order sees every shard finished before it, so the last summary.json written is the most complete one.
    Regression (new-user trial): a rank whose totals were older renamed its summary over a complete one
    (complete: false, 28 of 40 converted, though every shard was done). .summary.lock exists only while held."""
    path = out / ".summary.lock"
    fd = _lock(path, wait=True)
    try:
        yield
    finally:
        _unlock(path, fd)


def read_stats(path: Path) -> dict | None:
    """A finished shard's stats, or None when the file is missing or damaged (empty, cut short,
    not a stats object: the shard counts as unfinished and is converted again)."""
    try:
        st = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return st if isinstance(st, dict) and isinstance(st.get("keys"), list) and "inputs" in st else None


def shard_state(out: Path, unit: Unit) -> str:
    """"todo", "done" or "repaired" for shard `unit` of `out`, its stats read once:
      todo      not finished: its tar or readable stats (written last) are missing (regression: an empty
                stats file counted as finished, and every later run died reading it)
      done      finished
      repaired  finished from a damaged tar (shard_errors) that has changed since (its tar_identity): it is
                converted again, its stats removed by the claim's holder. Regression (new-user trial): a
                truncated shard, replaced by a good copy, stayed finished with its error and was never retried."""
    n = shard_name(unit.index)
    st = read_stats(out / f"{n}.stats.json") if (out / f"{n}.tar").is_file() else None
    if st is None:
        return "todo"
    if unit.kind != "tar" or not st.get("shard_errors") or st.get("input_identity") is None:
        return "done"
    now = tar_identity(unit)
    return "repaired" if now is not None and now != st["input_identity"] else "done"


def is_done(out: Path, unit: Unit) -> bool:
    """Whether shard `unit` is finished (shard_state's "done" or "repaired")."""
    return shard_state(out, unit) != "todo"


def tar_identity(unit: Unit) -> list[int] | None:
    """[size, mtime in ns] of a tar unit's input file (None for image files, or a tar that cannot be stat'ed):
    kept in the stats of a shard whose tar was damaged, to see a repaired tar on a rerun (shard_state)."""
    if unit.kind != "tar":
        return None
    try:
        st = os.stat(unit.paths[0])
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _lock_path(out: Path, unit: Unit) -> Path:
    return out / f".{shard_name(unit.index)}.lock"


def claim(out: Path, unit: Unit) -> int | None:
    """This process's claim on shard `unit` of `out`: an open descriptor of .NNNNNN.lock holding an
    exclusive flock, or None when another process holds it (it is converting that shard now). The
    lock goes with the process however it ends (no stale claims after a kill -9); Linux's NFS
    client carries it to the server. Two runs into one folder (a rank started twice, ranks of
    different world sizes) so split the shards; without claims both converted every shard and
    each deleted the other's temporary files as leftovers. -1: claimed without a lock (a system or
    file system without flock).

    release() removes the lock file, so a lock won on a file that is no longer the one the path
    names (removed, or removed and made again, between this open and this flock) is no claim: the
    path is opened again (regression of the review: two processes converted one shard)."""
    return _lock(_lock_path(out, unit), wait=False)


def _lock(path: Path, wait: bool) -> int | None:
    """An open descriptor of `path` (made if missing) holding an exclusive flock on the file the path still
    names; None where another process holds it and not `wait`; -1 where there are no locks (not POSIX, or a
    file system without flock: the caller goes on unlocked). Let go by _unlock, which removes the file."""
    if fcntl is None:
        return -1
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:  # ENOLCK, EINVAL: this file system has no locks; convert as before
            os.close(fd)
            path.unlink(missing_ok=True)
            return -1
        if _same_file(fd, path):
            return fd
        os.close(fd)


def _unlock(path: Path, fd: int) -> None:
    """Let go of _lock's `fd`, its file removed while still held (a process that opened it before sees, once
    its flock comes through, that the path names another file or none, and opens it again)."""
    if fd < 0:
        return
    try:
        path.unlink(missing_ok=True)
    except OSError:  # the output's file system failing: the lock still goes with the descriptor
        pass
    os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def release(out: Path, unit: Unit, fd: int) -> None:
    """Give up claim `fd` on shard `unit`, its lock file removed while still held (a process that
    opened it before sees, once its flock comes through, that the path names another file or none,
    and opens it again: claim)."""
    _unlock(_lock_path(out, unit), fd)


def clear_lock(out: Path, unit: Unit) -> None:
    """Remove the lock file a finished shard kept (its process killed between finishing the shard and
    letting it go), unless another process holds it."""
    if _lock_path(out, unit).exists():
        fd = claim(out, unit)
        if fd is not None:
            release(out, unit, fd)


def unit_digest(unit: Unit) -> str:
    """What a shard is made from, as a short hash: its image files (names under the folder, and the key
    of the first) or its tar. A finished shard's stats keep it, so that a rerun on changed inputs is seen."""
    names = [os.path.relpath(p, unit.root) for p in unit.paths] if unit.kind == "files" else list(unit.paths)
    return hashlib.sha256(json.dumps([unit.kind, unit.first_key, names]).encode()).hexdigest()[:16]


def changed_shard(out: Path, units: list[Unit]) -> str | None:
    """The first finished shard of `out` that the inputs `units` would not make again (its unit's files
    differ, or the inputs now have fewer units): its name, with the reason; None when none differs.
    Shards from before the digest was kept are taken as they are."""
    for p in sorted(out.glob("[0-9]*.stats.json")):
        name = p.name.split(".")[0]
        st = read_stats(p)
        if st is None:
            continue  # a damaged stats file: its shard is unfinished (is_done), summarize names it
        k = st.get("unit")
        if not isinstance(k, int) or k >= len(units):
            return f"{name} (the inputs now make {len(units)} shard{'s' if len(units) != 1 else ''})"
        if "inputs_digest" in st and st["inputs_digest"] != unit_digest(units[k]):
            return f"{name} (made from other input files: some were added, removed or renamed)"
    return None


def summarize(out: str | os.PathLike, units: list[Unit] | None = None) -> dict:
    """Totals over the finished shards of `out`; rewrites failures.jsonl and summary.json (one process at a
    time: _summary_lock)."""
    out = Path(out)
    with _summary_lock(out):
        return _summarize(out, units)


def _summarize(out: Path, units: list[Unit] | None) -> dict:
    stats, damaged = [], []  # (path, stats) of the finished shards; the damaged stats files
    for p in sorted(out.glob("[0-9]*.stats.json")):
        st = read_stats(p)
        if st is None:
            damaged.append(p)
        else:
            stats.append((p, st))
    tot = {"inputs": 0, "converted": 0, "failed": 0, "missing_captions": 0, "repaired_captions": 0, "failed_by_stage": {},
           "shard_errors": []}
    failures = []
    psnr_w = 0.0
    first_shard: dict[str, str] = {}
    dups: dict[str, list[str]] = {}
    for p, st in stats:
        for key in st.get("keys", ()):
            if key in first_shard:
                dups.setdefault(key, [first_shard[key]]).append(st["shard"])
            else:
                first_shard[key] = st["shard"]
        for k in ("inputs", "converted", "failed", "missing_captions"):
            tot[k] += st[k]
        tot["repaired_captions"] += st.get("repaired_captions", 0)  # stats of shards written before it existed
        for k, v in st["failed_by_stage"].items():
            tot["failed_by_stage"][k] = tot["failed_by_stage"].get(k, 0) + v
        tot["shard_errors"] += [f"{st.get('source', st['shard'])} ({st['shard']}): {e}" for e in st["shard_errors"]]
        psnr_w += (st["psnr_mean"] or 0.0) * st["converted"]
        fp = p.with_name(p.name.replace(".stats.json", ".failures.jsonl"))
        if fp.is_file():
            failures.append(fp.read_bytes())
    write_durable(out / "failures.jsonl", b"".join(failures))
    tot["shards_done"] = len(stats)
    tot["damaged_stats"] = [p.name for p in damaged]  # their shards are converted again by a rerun
    if units is not None:
        tot["shards_total"] = len(units)
        tot["complete"] = all(is_done(out, u) for u in units)
    tot["psnr_mean"] = psnr_w / tot["converted"] if tot["converted"] else None
    tot["reconciled"] = tot["inputs"] == tot["converted"] + tot["failed"]
    tot["duplicate_keys"] = len(dups)  # keys converted in more than one shard
    tot["duplicates"] = [f"{k}: {', '.join(v)}" for k, v in sorted(dups.items())[:_MAX_LISTED]]
    write_durable(out / "summary.json", (strict_json(tot, indent=2, sort_keys=True) + "\n").encode())
    return tot
