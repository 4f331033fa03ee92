"""Byte-reproducible webdataset tars and reading them back.

Tar members carry no timestamps, owners or modes from the environment, so the same samples give
the same bytes on every machine and run (the shards' sha256 go into the world's manifest).
A shard is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterator

__all__ = ["TarShardWriter", "iter_tar", "file_sha256", "write_text_atomic"]


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class TarShardWriter:
    """Write samples (key -> {ext: bytes}) to one tar; members of a sample stay together.

    Used as a context manager; on an exception the partial file is removed instead of renamed.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/' (webdataset splits on them)")
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> None:
        self._tar.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._tar.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def iter_tar(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {ext: bytes}) per sample, grouping consecutive members by key as webdataset
    does (the key is everything before the first '.' of the member's base name)."""
    key, cur = None, {}
    with tarfile.open(path, "r") as tar:
        for m in tar:
            if not m.isfile():
                continue
            base = os.path.basename(m.name)
            k, _, ext = base.partition(".")
            if k != key and cur:
                yield key, cur
                cur = {}
            key = k
            cur[ext] = tar.extractfile(m).read()
    if cur:
        yield key, cur


def dumps_json(obj) -> bytes:
    """Canonical JSON bytes (sorted keys, compact) so equal metadata gives equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
