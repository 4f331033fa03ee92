"""The bounded tar member parser behind data/shards.py (the project's one tar reader).

`iter_members(f)` yields the file members of a tar stream (plain USTAR/pax/GNU, or gzip, bzip2
or xz compressed) with their data, and raises ShardDamage (a tarfile.ReadError) at the first
damage, naming where. Every header moves the reader forward, member data is read in 1 MiB
chunks (memory follows the data that is really there), members over MAX_MEMBER_BYTES are
skipped without reading them, and a compressed stream may expand at most 200x (+64 MiB). Links,
devices and other non-file members are reported, not returned. data/shards.py groups the
members into samples (iter_groups, read_samples) and writes shards (ShardWriter).
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import re
import tarfile
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Iterator

__all__ = ["ShardDamage", "SHARD_ERRORS", "ShardWarning", "Member", "iter_members", "show", "MAX_MEMBER_BYTES"]

MAX_MEMBER_BYTES = 256 << 20  # a tar member larger than this is skipped without reading it
_META_LIMIT = 1 << 20  # pax / GNU long-name entries


class ShardDamage(tarfile.ReadError):
    """A tar shard is damaged (truncated, corrupt header, bad compressed stream) from some point
    on; the members before that point are good. `member`: the member whose data was cut (None
    when the damage is in a header)."""

    def __init__(self, message: str, member: str | None = None):
        super().__init__(message)
        self.member = member


# What reading a shard can raise, after the samples before the problem: damage (cut, garbled:
# ShardDamage) or a file that cannot be opened or read (OSError). The one list, for every reader.
SHARD_ERRORS = (ShardDamage, OSError)


class ShardWarning(UserWarning):
    """Something of a readable shard was not read (data after its end-of-archive marker, a
    member without extension or with a reserved '__' name)."""


def show(name: str, limit: int | None = 300) -> str:
    """A name (or a message naming one) for one line of output: bytes that are not UTF-8 (kept as
    surrogates) as \\xNN-like escapes, and control characters (a newline, a tab; format characters, the
    line and paragraph separators) as their Python escapes, so a message can always be printed and
    written and stays one line; cut after `limit` characters (None: never). Regression: a file named
    with a newline broke gsv fit's report line in two."""
    text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    if not text.isprintable():  # spaces of other scripts (U+3000, no-break) print: only controls and separators
        text = "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c)[0] == "C" or
                       unicodedata.category(c) in ("Zl", "Zp") else c for c in text)
    return text if limit is None or len(text) <= limit else text[:limit] + "..."


@dataclass
class Member:
    """One tar entry: `data` holds a regular file's bytes; entries that are not read (links,
    devices, directories with data, members over the size limit) have data None and `skipped`
    saying why."""
    name: str
    data: bytes | None
    skipped: str | None = None


_OCTAL = re.compile(rb" *([0-7]*)[ \0]*")
_NOT_FILES = {b"1": "hard link", b"2": "symbolic link", b"3": "character device", b"4": "block device",
              b"5": "directory", b"6": "fifo"}
_FILES = (b"0", b"\0", b"7")
_META = (b"x", b"g", b"L", b"K")
_COMPRESSED = {b"\x1f\x8b": ("gzip", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
               b"BZh": ("bzip2", bz2.BZ2File), b"\xfd7zXZ": ("xz", lzma.LZMAFile)}
_CHUNK = 1 << 20  # member data is read in chunks: memory follows the data that is really there
_BOMB_RATIO, _BOMB_SLACK = 200, 64 << 20  # decompressed bytes allowed per compressed byte, plus this
_TAIL_SCAN = 1 << 20  # bytes after the end-of-archive marker looked at for a concatenated tar


def _number(field: bytes, what: str, pos: int) -> int:
    """A header number: octal digits (NUL/space padded) or GNU base-256 (positive only)."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    m = _OCTAL.fullmatch(field)
    if m is None:
        raise ShardDamage(f"corrupt tar header at byte {pos} ({what} field {bytes(field)!r})")
    return int(m.group(1) or b"0", 8)


def _parse_header(hdr: bytes, pos: int) -> tuple[bytes, str, int]:
    """A 512-byte header -> (type flag, name, size), or ShardDamage."""
    if hdr[257:262] != b"ustar":
        raise ShardDamage(f"corrupt tar header at byte {pos} (not a USTAR/POSIX header)")
    chk = _number(hdr[148:156], "checksum", pos)
    unsigned = sum(hdr[:148]) + 256 + sum(hdr[156:])
    signed = unsigned - 2 * sum(b for b in hdr[:148] + hdr[156:] if b >= 128)
    if chk not in (unsigned, signed):
        raise ShardDamage(f"bad tar header checksum at byte {pos}")
    size = _number(hdr[124:136], "size", pos)
    name = hdr[:100].split(b"\0", 1)[0]
    prefix = hdr[345:500].split(b"\0", 1)[0] if hdr[257:263] == b"ustar\0" else b""
    name = (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")
    kind = hdr[156:157]
    if kind == b"\0" and name.endswith("/"):
        kind = b"5"
    return kind, name, size


def _pax(data: bytes, pos: int) -> dict[str, str]:
    """Records 'LEN key=value\\n' of a pax extended header."""
    out, i = {}, 0
    while i < len(data) and data[i:i + 1] != b"\0":
        sp = data.find(b" ", i, i + 20)
        length = int(data[i:sp]) if sp > i and data[i:sp].isdigit() else 0  # bytes.isdigit: ASCII only
        rec = data[sp + 1: i + length]
        if length <= 0 or i + length > len(data) or not rec.endswith(b"\n") or b"=" not in rec:
            raise ShardDamage(f"corrupt pax header at byte {pos}")
        k, _, v = rec[:-1].partition(b"=")
        out[k.decode("utf-8", "replace")] = v.decode("utf-8", "surrogateescape")
        i += length
    return out


class _Counted:
    """The compressed file under a decompressor, counting the bytes read from it."""

    def __init__(self, f):
        self.f, self.count = f, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.count += len(data)
        return data


class _Headed:
    """A stream that cannot seek (a download) with its first bytes, already read, put back in front."""

    def __init__(self, head: bytes, f):
        self.head, self.f = head, f

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.f.read(n)
        if n is None or n < 0:
            data, self.head = self.head + self.f.read(), b""
            return data
        data, self.head = self.head[:n], self.head[n:]
        return data + (self.f.read(n - len(data)) if len(data) < n else b"")


class _Stream:
    """Reads of a (possibly compressed) tar stream with its position; read errors of the
    stream (a cut or corrupt compressed stream, an I/O error) become ShardDamage, and so does
    a compressed stream expanding more than _BOMB_RATIO times (past _BOMB_SLACK): a bomb.
    A stream that cannot seek (an HTTP response) is read as well (review finding: every remote
    shard was 'cannot read the shard (seek)')."""

    def __init__(self, f):
        try:
            head = f.read(6)
            if getattr(f, "seekable", lambda: True)():
                f.seek(0)
            else:
                f = _Headed(head, f)
        except (OSError, ValueError) as e:
            raise ShardDamage(f"cannot read the shard ({e})") from None
        self.kind, opener = next((c for magic, c in _COMPRESSED.items() if head.startswith(magic)), ("", None))
        self.raw = _Counted(f) if opener else None
        self.f = opener(self.raw) if opener else f
        self.pos = 0

    def read(self, n: int) -> bytes:
        try:
            data = self.f.read(n)
        except (EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as e:
            what = f"{self.kind} stream is cut or corrupt" if self.kind else "read error"
            raise ShardDamage(f"{what} at tar byte {self.pos} ({e})") from None
        self.pos += len(data)
        if self.raw is not None and self.pos > _BOMB_RATIO * self.raw.count + _BOMB_SLACK:
            raise ShardDamage(f"{self.kind} stream expands more than {_BOMB_RATIO}x ({self.raw.count} bytes "
                              f"gave {self.pos}): a decompression bomb? not read further")
        return data

    def _chunks(self, n: int) -> Iterator[bytes]:
        """Up to n bytes (less at the end of the data) in chunks of at most _CHUNK."""
        left = n
        while left > 0:
            chunk = self.read(min(left, _CHUNK))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    def read_chunked(self, n: int) -> bytes:
        """Up to n bytes (less at the end of the data), read in chunks: memory follows the data."""
        return b"".join(self._chunks(n))

    def skip(self, n: int) -> int:
        """Skip n bytes in bounded chunks; the number skipped (less at the end of the data)."""
        return sum(map(len, self._chunks(n)))


def iter_members(f, max_member: int = MAX_MEMBER_BYTES, room=None, notes: list | None = None) -> Iterator[Member]:
    """The entries of the tar stream `f` (a binary file object, seekable or not; plain, gzip, bzip2 or
    xz), in order. Empty directory entries and pax/GNU metadata are consumed, not yielded.
    Damage raises ShardDamage after the members before it; time and memory stay bounded by
    the stream's length (member data is read in chunks, as far as it is there, and at most
    `max_member` bytes, or `room(name)` when smaller, of one member). Data after the
    end-of-archive marker (a concatenated tar) is not read: said in `notes`."""
    s = _Stream(f)
    ext: dict[str, str] = {}
    while True:
        pos = s.pos
        hdr = s.read(512)
        if len(hdr) < 512:
            where = "inside a member header" if hdr else "at a member boundary"
            raise ShardDamage(f"tar ends {where} at byte {s.pos}: no end-of-archive marker (truncated)")
        if hdr.count(0) == 512:
            _check_tail(s, pos, notes)
            return
        kind, name, size = _parse_header(hdr, pos)
        if kind in _META:  # overrides for the next member that is not metadata, merged in any order
            ext.update(_metadata(kind, name, _member_data(s, name, size, _META_LIMIT, True), pos))
            continue
        name, size = ext.pop("path", name), _pax_size(ext.pop("size", None), size, pos)
        ext = {}
        m = _member(s, kind, name, size, min(max_member, room(name) if room else max_member))
        if m is not None:
            yield m


def _member(s: _Stream, kind: bytes, name: str, size: int, limit: int) -> Member | None:
    if kind in _FILES:
        data = _member_data(s, name, size, limit)
        return Member(name, data) if data is not None else Member(
            name, None, f"member {show(name)} is {size} bytes (limit {limit}), not read")
    _member_data(s, name, size, -1)
    if kind == b"5" and size == 0:
        return None  # an empty directory entry: nothing to say
    what = _NOT_FILES.get(kind, f"member of unsupported type {kind!r}")
    return Member(name, None, f"member {show(name)} is a {what}, not a regular file: not read")


def _check_tail(s: _Stream, pos: int, notes: list | None) -> None:
    """After the first zero block: anything but zeros (in the next _TAIL_SCAN bytes) is a
    concatenated tar or other data, which is not read."""
    try:
        tail = s.read(_TAIL_SCAN)
    except ShardDamage:
        return  # a cut or bad stream after the end marker loses nothing
    if tail.count(0) != len(tail) and notes is not None:
        notes.append(f"data after the end-of-archive marker at byte {pos} (a concatenated tar?) is not read")


def _metadata(kind: bytes, name: str, data: bytes, pos: int) -> dict[str, str]:
    """The overrides a pax ('x'; 'g' is checked, then ignored) or GNU long-name ('L'; 'K', the
    long link name, is ignored) entry gives the next member."""
    if kind in (b"L", b"K"):
        if name != "././@LongLink":
            raise ShardDamage(f"corrupt tar header at byte {pos} (GNU long-name entry named {show(name)!r})")
        return {"path": data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")} if kind == b"L" else {}
    records = _pax(data, pos)
    return records if kind == b"x" else {}


def _pax_size(value: str | None, size: int, pos: int) -> int:
    if value is None:
        return size
    if not (value.isascii() and value.isdigit() and len(value) <= 20):
        raise ShardDamage(f"corrupt pax header at byte {pos} (size {value[:30]!r})")
    return int(value)


def _member_data(s: _Stream, name: str, size: int, limit: int, meta: bool = False) -> bytes | None:
    """A member's data (None: over `limit`, not read) and its block padding; a metadata entry
    over the limit is damage."""
    if meta and size > limit:
        raise ShardDamage(f"tar metadata entry of {size} bytes at byte {s.pos - 512} (limit {limit})")
    try:
        data = s.read_chunked(size) if size <= limit else None
        got = len(data) if data is not None else s.skip(size)
        padded = s.skip(-size % 512) == -size % 512
    except ShardDamage as e:  # a bad stream (or a bomb) inside this member's data: it is the one cut
        raise ShardDamage(f"{e} in member {show(name)}", name) from None
    if got < size or not padded:
        raise ShardDamage(f"unexpected end of data in member {show(name)} at byte {s.pos} (truncated)", name)
    return data

