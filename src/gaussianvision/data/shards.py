"""Webdataset tar shards: a deterministic atomic writer and a light sample reader.

`ShardWriter(path)` writes members with fixed metadata (mtime 0, uid/gid 0, mode 0644), so the
same samples give the same bytes; it writes to a temporary name beside `path` and renames on
`close()` (a killed run leaves only a `.tmp` file, never a half shard under the final name).

`read_samples(path)` yields dicts {"__key__": key, ext: bytes, ...} grouped by key the way
webdataset does (consecutive members sharing the part of the name before the first dot). It is
the project's one tar reader (the bounded member parser `iter_members` of data/tar_members.py, and
`iter_groups` here, the one grouping, used by the conversion input too): plain USTAR/pax/GNU tars, also gzip, bzip2 or xz compressed; a damaged
shard gives the samples before the damage, then raises ShardDamage (a tarfile.ReadError) naming
where and what was lost; links, devices, members over the size limits, duplicates and a sample
the damage may have cut are listed per sample in "__skipped__". Nothing but ShardDamage or
OSError comes out of it. It never hangs and memory follows the data: every header moves forward,
member data is read in 1 MiB chunks, a sample holds at most MAX_SAMPLE_BYTES, and a compressed
stream may expand at most 200x (+64 MiB). Data after the end-of-archive marker (a concatenated
tar) is not read: a ShardWarning.

Sample keys written by ShardWriter are plain names (`check_key`: no '/', '..', absolute paths,
NUL, newlines or dots), so no member of our output can name a path outside its folder.
"""
from __future__ import annotations

import contextlib
import io
import os
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from gaussianvision.data.tar_members import (MAX_MEMBER_BYTES, SHARD_ERRORS, Member, ShardDamage,  # noqa: F401
                                             ShardWarning, iter_members, show)

__all__ = ["ShardWriter", "ShardDamage", "Member", "read_samples", "samples_until_damage", "iter_members", "check_key",
           "split_member",
           "tmp_name", "shuffle_buffer", "MAX_MEMBER_BYTES", "MAX_SAMPLE_BYTES", "ShardWarning", "Group",
           "iter_groups", "show", "SHARD_ERRORS", "looks_like_tar"]

MAX_SAMPLE_BYTES = 256 << 20  # members past this many bytes held by their sample are skipped likewise
_MAX_KEY_BYTES = 90  # key + '.' + extension must fit a USTAR name (100 bytes)


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
        bad = check_key(key)
        if bad:
            raise ValueError(f"{bad}: cannot name members of {self.path}")
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
        """Finish the tar, flush it to disk and move it to its final name; on a write error
        (a full disk) the temporary file is removed and the error raised."""
        try:
            self._tar.close()
            self._fp.flush()
            os.fsync(self._fp.fileno())
            self._fp.close()
            # not write_atomic: the tar streams into its temporary file sample by sample; renamed on close
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop the unfinished shard (its temporary file); errors of closing it are ignored."""
        for close in (self._tar.close, self._fp.close):
            with contextlib.suppress(OSError, ValueError):
                close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            self.close()
        else:
            self.abort()


def split_member(name: str) -> tuple[str, str]:
    """Tar member name -> (sample key, extension): the key is everything before the first dot
    of the base name, with its folder kept, as webdataset groups members."""
    d, sep, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return d + sep + stem, ext  # '/a.jpg' keeps its '/' (check_key refuses it; regression: it read as key 'a')


def check_key(key: str) -> str | None:
    """Why `key` cannot name the members of an output shard, or None when it can: a key is one
    plain name (no '/' or '\\', hence no '..' and no absolute path), without dots, control
    characters (NUL, newline, ...), valid UTF-8, and short enough for a USTAR member name."""
    if not key:
        return "empty sample key"
    if "/" in key or "\\" in key:
        return f"sample key {key!r} holds a path separator (keys must be plain names)"
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        return f"sample key {key!r} holds a control character (NUL, newline, ...)"
    if "." in key:
        return f"sample key {key!r} holds a dot"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:  # bytes of the tar name that are not UTF-8 (kept as surrogates)
        return f"sample key {key!r} is not valid UTF-8"
    if size > _MAX_KEY_BYTES:
        return f"sample key of {size} bytes (limit {_MAX_KEY_BYTES})"
    return None


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


def _open(path, fileobj):
    return contextlib.nullcontext(fileobj) if fileobj is not None else open(path, "rb")


def looks_like_tar(path: str | os.PathLike) -> bool:
    """Whether the file at `path` begins as a shard iter_groups reads: a tar header (or an empty archive's zero
    block), or a gzip, bzip2 or xz stream. For inputs not named .tar (a .tar is read, and its damage reported)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")):
        return True
    try:
        tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
    except tarfile.EOFHeaderError:  # the zero block that ends (here: is) an archive
        return True
    except tarfile.HeaderError:
        return False
    return True


def read_samples(path: str | os.PathLike, fileobj=None, max_sample: int | None = None) -> Iterator[dict]:
    """Samples of one tar shard, in order, as {"__key__", "__shard__", ext: bytes} (iter_groups);
    what was not read (links, devices, oversize members, a duplicate, a sample cut by damage)
    is listed in the sample's "__skipped__". A damaged shard raises ShardDamage (a
    tarfile.ReadError) after the samples before the damage, its message naming what was lost;
    members ignored and data after the end-of-archive marker are a ShardWarning."""
    name = str(path)
    with _open(path, fileobj) as f:
        for g in iter_groups(f, name, max_sample=max_sample):
            if g.note is not None:
                warnings.warn(f"{name}: {g.note}", ShardWarning, stacklevel=2)
                continue
            sample = {"__key__": g.key, "__shard__": name, **g.fields}
            if g.problems:
                sample["__skipped__"] = g.problems
            yield sample


def samples_until_damage(path: str | os.PathLike, on_damage: Callable[[BaseException], None] | None = None
                         ) -> Iterator[dict]:
    """read_samples(path) up to any damage: a SHARD_ERRORS error ends the samples, passed to
    `on_damage` (not raised). Only the reading is guarded: what the caller does with each sample
    raises as it would (a MissingMember is an OSError too)."""
    raws = read_samples(path)
    while True:
        try:
            raw = next(raws, None)
        except SHARD_ERRORS as e:
            if on_damage is not None:
                on_damage(e)
            return
        if raw is None:
            return
        yield raw


# ------------------------------------------------------------------ members -> samples
@dataclass
class Group:
    """One sample: a run of consecutive members sharing a key (webdataset's grouping), with
    its fields {ext: bytes} (extensions lower-cased), member names and the problems that make
    it incomplete. A Group with `note` set is no sample: a member ignored or data not read."""
    key: str
    fields: dict[str, bytes] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    note: str | None = None
    held: int = 0


def _ignored(key: str, ext: str) -> bool:
    """A member that is no sample's field: no extension, an extension of our reserved "__" names, or, as
    webdataset skips them, a top-level "__...__" metadata name. A key that only starts with "__" (say
    __a.jpg) is a sample, as webdataset reads it (it had been left out with a warning)."""
    name = f"{key}.{ext}" if ext else key
    return not ext or ext.startswith("__") or ("/" not in name and name.startswith("__") and name.endswith("__"))


class _Grouper:
    def __init__(self, max_sample: int):
        self.max_sample, self.cur, self.last = max_sample, None, None
        self.seen: set[str] = set()
        self.notes: list[str] = []

    def room(self, name: str) -> int:
        """Bytes the member `name` may hold: what its sample has left of max_sample."""
        key, ext = split_member(name)
        if _ignored(key, ext):
            return 0
        return self.max_sample - (self.cur.held if self.cur is not None and self.cur.key == key else 0)

    def add(self, m: Member) -> Iterator[Group]:
        key, ext = split_member(m.name)
        ext = ext.lower()
        if _ignored(key, ext):
            self.notes.append(f"member {show(repr(m.name))} ignored (no extension, a reserved __ extension or a __...__ metadata name)")
        else:
            if self.cur is None or self.cur.key != key:
                yield from self.flush()
                self._open(key)
            g = self.cur
            g.members.append(m.name)
            if m.data is None:
                g.problems.append(m.skipped)
            elif ext in g.fields:
                g.problems.append(f"member {show(m.name)} appears twice")
            else:
                g.fields[ext], g.held = m.data, g.held + len(m.data)
        yield from self.pending_notes()

    def _open(self, key: str) -> None:
        # a key that appears again after other keys would duplicate its first sample downstream
        self.cur = Group(key, problems=["duplicate key: appears twice in the shard"] if key in self.seen else [])
        self.seen.add(key)

    def damaged(self, e: ShardDamage) -> Iterator[Group]:
        """The open sample, and the one whose member the damage cut, flagged as incomplete."""
        cut = None if e.member is None else split_member(e.member)
        if cut is not None and _ignored(*cut):
            cut = None
        if self.cur is not None and cut is not None and cut[0] != self.cur.key:
            yield from self.flush()  # its members are whole
        if cut is not None and self.cur is None:
            self._open(cut[0])
            self.cur.members.append(e.member)
        if self.cur is not None:
            self.cur.problems.append(f"the shard is damaged after this sample's last member read ({e}): "
                                     f"any later member of it is lost")
        yield from self.flush()

    def flush(self) -> Iterator[Group]:
        if self.cur is not None:
            self.last, g, self.cur = self.cur.key, self.cur, None
            yield g
        yield from self.pending_notes()

    def pending_notes(self) -> Iterator[Group]:
        while self.notes:
            yield Group("", note=self.notes.pop(0))


def iter_groups(f, shard: str = "", max_member: int = MAX_MEMBER_BYTES,
                max_sample: int | None = None) -> Iterator[Group]:
    """The samples of the tar stream `f` (see iter_members), grouped as webdataset does:
    consecutive members sharing the part of the name before the first dot of the base name.
    The one grouping of the project (read_samples, conversion input), so both report alike:
    a member over the sample's room (at most `max_sample` bytes held per sample, default
    MAX_SAMPLE_BYTES), a non-file member, an extension twice, a key seen before, or the damage
    are the sample's `problems`; members ignored (_ignored: no extension, a "__" extension, a
    top-level "__...__" name) and data after the end marker come as notes. Damage: the groups before it, then ShardDamage."""
    g = _Grouper(MAX_SAMPLE_BYTES if max_sample is None else max_sample)
    try:
        for m in iter_members(f, max_member, g.room, g.notes):
            yield from g.add(m)
    except ShardDamage as e:
        yield from g.damaged(e)
        lost = "the whole shard is lost" if g.last is None else f"the samples after {g.last!r} are lost"
        raise ShardDamage(f"{shard + ': ' if shard else ''}{e}; {lost}", e.member) from None
    yield from g.flush()
