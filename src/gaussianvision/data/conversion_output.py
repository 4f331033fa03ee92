"""The output folder of a conversion: shard names, durable atomic writes, the finished-shard
marker and the totals (failures.jsonl, summary.json) over the finished shards.

data/conversion.py writes through these functions (tests patch write_durable here to make a
disk fail); summarize can also be called on its own to re-total a folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from gaussianvision.atomic import write_atomic
from gaussianvision.data.inputs import Unit

__all__ = ["shard_name", "json_line", "write_durable", "is_done", "summarize"]

_MAX_LISTED = 20  # duplicate keys listed by name in summary.json


def shard_name(index: int) -> str:
    return f"{index:06d}"


def json_line(obj) -> bytes:
    """One JSON line; any string can be written: a lone surrogate (a tar name's byte that is
    not UTF-8, or one from a source's JSON) becomes its JSON escape \\udcXX."""
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


def _write_synced(tmp: Path, data: bytes) -> None:
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_durable(path: Path, data: bytes) -> None:
    """The project's one atomic write (a full disk leaves no half file behind), synced to disk."""
    write_atomic(path, lambda tmp: _write_synced(tmp, data))


def is_done(out: Path, unit: Unit) -> bool:
    n = shard_name(unit.index)
    return (out / f"{n}.stats.json").is_file() and (out / f"{n}.tar").is_file()


def summarize(out: str | os.PathLike, units: list[Unit] | None = None) -> dict:
    """Totals over the finished shards of `out`; rewrites failures.jsonl and summary.json."""
    out = Path(out)
    stats_files = sorted(out.glob("[0-9]*.stats.json"))
    tot = {"inputs": 0, "converted": 0, "failed": 0, "missing_captions": 0, "failed_by_stage": {},
           "shard_errors": []}
    failures = []
    psnr_w = 0.0
    first_shard: dict[str, str] = {}
    dups: dict[str, list[str]] = {}
    for p in stats_files:
        st = json.loads(p.read_text())
        for key in st.get("keys", ()):
            if key in first_shard:
                dups.setdefault(key, [first_shard[key]]).append(st["shard"])
            else:
                first_shard[key] = st["shard"]
        for k in ("inputs", "converted", "failed", "missing_captions"):
            tot[k] += st[k]
        for k, v in st["failed_by_stage"].items():
            tot["failed_by_stage"][k] = tot["failed_by_stage"].get(k, 0) + v
        tot["shard_errors"] += [f"{st.get('source', st['shard'])} ({st['shard']}): {e}" for e in st["shard_errors"]]
        psnr_w += (st["psnr_mean"] or 0.0) * st["converted"]
        fp = p.with_name(p.name.replace(".stats.json", ".failures.jsonl"))
        if fp.is_file():
            failures.append(fp.read_bytes())
    write_durable(out / "failures.jsonl", b"".join(failures))
    tot["shards_done"] = len(stats_files)
    if units is not None:
        tot["shards_total"] = len(units)
        tot["complete"] = all(is_done(out, u) for u in units)
    tot["psnr_mean"] = psnr_w / tot["converted"] if tot["converted"] else None
    tot["reconciled"] = tot["inputs"] == tot["converted"] + tot["failed"]
    tot["duplicate_keys"] = len(dups)  # keys converted in more than one shard
    tot["duplicates"] = [f"{k}: {', '.join(v)}" for k, v in sorted(dups.items())[:_MAX_LISTED]]
    write_durable(out / "summary.json", (json.dumps(tot, indent=2, sort_keys=True) + "\n").encode())
    return tot
