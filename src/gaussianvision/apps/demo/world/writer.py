"""Byte-reproducible webdataset tars and reading them back.

Tar members carry no timestamps, owners or modes from the environment, so the same samples give
the same bytes on every machine and run (the shards' sha256 go into the world's manifest).
A shard is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Iterator

from gaussianvision.atomic import write_text_atomic as _write_text_atomic

# the world's shards use the project's one deterministic, atomic tar writer
from gaussianvision.data.shards import ShardWriter as TarShardWriter
from gaussianvision.data.shards import read_samples

__all__ = ["TarShardWriter", "iter_tar", "file_sha256", "write_text_atomic"]


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """The project's one atomic write (gaussianvision/atomic.py), making the folder."""
    _write_text_atomic(path, text, mkdir=True)


def iter_tar(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {ext: bytes}) per sample, grouping consecutive members by key as webdataset
    does (the key is everything before the first '.' of the member's base name); read by the
    project's one tar reader (a damaged tar raises after the samples before the damage)."""
    for raw in read_samples(path):
        yield raw["__key__"].rpartition("/")[2], {k: v for k, v in raw.items() if not k.startswith("__")}


def dumps_json(obj) -> bytes:
    """Canonical JSON bytes (sorted keys, compact) so equal metadata gives equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
