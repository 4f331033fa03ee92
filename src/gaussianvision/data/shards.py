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

__all__ = ["ShardWriter", "read_samples", "tmp_name", "shuffle_buffer"]


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


def _split_member(name: str) -> tuple[str, str]:
    """Tar member name -> (sample key, extension): the key is everything before the first dot
    of the base name, with its folder kept, as webdataset groups members."""
    d, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext


def shuffle_buffer(items, size: int, rng):
    """Yield `items` mixed through a buffer of `size` (webdataset-style): once the buffer is full,
    each new item swaps with a random buffered one, which is yielded; the rest come out shuffled.
    The order is a pure function of the items and `rng`'s state."""
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(len(buf))
        buf[j], item = item, buf[j]
        yield item
    rng.shuffle(buf)
    yield from buf


def _fast_members(data: bytes) -> tuple[list[tuple[str, int, int]], Exception | None] | None:
    """(name, data offset, size) of the regular files of a plain USTAR tar, parsed directly
    (several times faster than tarfile for small members); None when the tar uses features
    this parser leaves to tarfile (pax/GNU long names, links, ...). A damaged tar gives the
    members before the damage and the error to raise after them."""
    out, pos, n = [], 0, len(data)
    while pos + 512 <= n:
        hdr = data[pos: pos + 512]
        if hdr.count(0) == 512:
            return out, None  # end-of-archive marker
        if hdr[257:262] != b"ustar":
            return None
        try:
            chk = int(hdr[148:156].rstrip(b"\0 ").decode() or "0", 8)
            size = int(hdr[124:136].rstrip(b"\0 ").decode() or "0", 8)
        except ValueError:
            return out, tarfile.ReadError(f"corrupt tar header at byte {pos}")
        if chk != sum(hdr[:148]) + 256 + sum(hdr[156:]):
            return out, tarfile.ReadError(f"bad tar header checksum at byte {pos}")
        kind = hdr[156:157]
        if kind not in (b"0", b"\0"):
            return None
        name = hdr[:100].split(b"\0", 1)[0]
        prefix = hdr[345:500].split(b"\0", 1)[0]
        name = (prefix + b"/" + name if prefix else name).decode("utf-8", errors="replace")
        if pos + 512 + size > n:
            return out, tarfile.ReadError(f"unexpected end of data in member {name}")
        out.append((name, pos + 512, size))
        pos += 512 + (size + 511) // 512 * 512
    return out, tarfile.ReadError("tar ends without its end-of-archive marker (truncated)")


def read_samples(path: str | os.PathLike, fileobj=None) -> Iterator[dict]:
    """Samples of one tar shard, in order, as {"__key__", "__shard__", ext: bytes}."""
    name = str(path)
    if fileobj is None:
        with open(name, "rb") as f:
            data = f.read()
        parsed = _fast_members(data)
        if parsed is not None:
            members, err = parsed
            cur: dict | None = None
            for mname, off, size in members:
                key, ext = _split_member(mname)
                if cur is None or cur["__key__"] != key:
                    if cur is not None:
                        yield cur
                    cur = {"__key__": key, "__shard__": name}
                cur[ext] = data[off: off + size]
            if cur is not None and err is None:
                yield cur  # with an error, the last sample may be missing members: dropped
            if err is not None:
                raise err
            return
        fileobj = io.BytesIO(data)
    cur: dict | None = None
    with tarfile.open(name if fileobj is None else None, "r|*", fileobj=fileobj) as tf:
        for m in tf:
            if not m.isfile():
                continue
            key, ext = _split_member(m.name)
            if cur is None or cur["__key__"] != key:
                if cur is not None:
                    yield cur
                cur = {"__key__": key, "__shard__": name}
            cur[ext] = tf.extractfile(m).read()
    if cur is not None:
        yield cur
