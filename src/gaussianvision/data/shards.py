"""Webdataset tar shards: a deterministic atomic writer and a light sample reader.

`ShardWriter(path)` writes members with fixed metadata (mtime 0, uid/gid 0, mode 0644), so the
same samples give the same bytes; it writes to a temporary name beside `path` and renames on
`close()` (a killed run leaves only a `.tmp` file, never a half shard under the final name).

`read_samples(path)` yields dicts {"__key__": key, ext: bytes, ...} grouped by key the way
webdataset does (consecutive members sharing the part of the name before the first dot).
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Iterator

__all__ = ["ShardWriter", "read_samples", "tmp_name"]


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


class ShardWriter:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp_name(self.path)
        self._fp = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._fp, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0
        self.bytes = 0

    def write(self, key: str, fields: dict[str, bytes]) -> None:
        """One sample: fields maps extension ('gsv', 'txt', 'json', ...) to bytes."""
        if "." in key.rpartition("/")[2] or not key:
            raise ValueError(f"sample key {key!r}: must be non-empty without a dot in its last component")
        for ext, data in fields.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
            self.bytes += len(data)
        self.count += 1

    def close(self) -> Path:
        """Finish the tar, flush it to disk and move it to its final name."""
        self._tar.close()
        self._fp.flush()
        os.fsync(self._fp.fileno())
        self._fp.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._tar.close()
            self._fp.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            self.close()
        else:
            self.abort()


def read_samples(path: str | os.PathLike, fileobj=None) -> Iterator[dict]:
    """Samples of one tar shard, in order, as {"__key__", "__shard__", ext: bytes}."""
    name = str(path)
    cur: dict | None = None
    with tarfile.open(name if fileobj is None else None, "r|*", fileobj=fileobj) as tf:
        for m in tf:
            if not m.isfile():
                continue
            d, _, base = m.name.rpartition("/")
            stem, _, ext = base.partition(".")
            key = f"{d}/{stem}" if d else stem
            if cur is None or cur["__key__"] != key:
                if cur is not None:
                    yield cur
                cur = {"__key__": key, "__shard__": name}
            cur[ext] = tf.extractfile(m).read()
    if cur is not None:
        yield cur
