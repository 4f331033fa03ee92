"""Inputs for dataset conversion: a folder of images, or webdataset tar shards.

A source is planned into *units*, each becoming exactly one output shard, so that output shard
k depends only on the input order (what makes conversion resumable and splittable by rank):

  * folder: image files found recursively, sorted by relative path, cut into units of
    `shard_size`; sample keys are the global index (`%09d`), the relative path is the source;
    the caption is the sidecar `name.txt` beside the image, when present; image files given by
    name, brace pattern or glob are a folder of them (their common parent), one file included;
  * tar shards (img2dataset layout: key.jpg|jpeg|png|webp + key.txt + key.json), given as files,
    brace patterns (`shard-{000000..000009}.tar`), globs or a folder of .tar files: one unit per
    input tar, keeping the input keys. A folder holding both image files and .tar shards is
    refused (give 'DIR/*.tar' for its shards); so is a rerun whose input files changed
    (conversion_output.changed_shard).

`iter_unit(unit)` yields `RawSample(key, source, image_bytes | None, image_ext, caption | None,
meta | None, error | None)`; a problem with one sample is reported in `error` and iteration goes
on; a problem of the shard itself (truncated or corrupt; a member ignored) comes as a RawSample
with `whole_shard` set. Tars are read by the project's one tar reader and grouped by its one
grouping (shards.iter_groups: plain, gzip, bzip2 or xz; the same problems read_samples reports). A sample key must be a plain name (shards.check_key): a key with '/',
'..', an absolute path, NUL, a newline, or an empty key (a member named '.jpg') makes its sample
fail with the reason, so no output member can name a path outside its folder.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from gaussianvision.data.images import IMAGE_EXTENSIONS, IMAGE_EXTS, find_images, image_member
from gaussianvision.data.shards import SHARD_ERRORS, Group, check_key, iter_groups, looks_like_tar, show

__all__ = ["Unit", "RawSample", "expand_braces", "expand_urls", "plan_units", "iter_unit", "SourceError"]


class SourceError(ValueError):
    """The conversion input as a whole is unusable (missing, empty, unknown kind)."""


@dataclass(frozen=True)
class Unit:
    index: int
    kind: str  # "files" or "tar"
    paths: tuple[str, ...]  # image files (kind files) or one tar (kind tar)
    root: str = ""
    first_key: int = 0  # global index of the first file (kind files)


@dataclass
class RawSample:
    key: str
    source: str
    image: bytes | None = None
    image_ext: str | None = None
    caption: str | None = None  # None: no caption file, or one with nothing but white space
    caption_note: str | None = None  # what decoding the caption had to repair (decode_caption)
    meta: dict | None = None
    error: str | None = None
    extras: list[str] = field(default_factory=list)
    whole_shard: bool = False  # not a sample: a problem of the shard itself (in error)


_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")
MAX_EXPANDED = 1_000_000  # names a brace pattern may expand to


def expand_braces(pattern: str) -> list[str]:
    """'a-{000..002}.tar' -> ['a-000.tar', 'a-001.tar', 'a-002.tar'], as the shell expands it: padded to the
    wider bound where a bound has a leading zero ('{1..010}' -> 001 ... 010), counting down where the range
    runs down (regression (new-user trial): '{009..000}' matched nothing). At most MAX_EXPANDED names
    (SourceError): '{0..99999999}' is a typo, not 10^8 shards."""
    ranges = _BRACE.findall(pattern)
    total = math.prod(abs(int(hi) - int(lo)) + 1 for lo, hi in ranges)
    if total > MAX_EXPANDED:
        raise SourceError(f"{pattern}: expands to {total:,} names (at most {MAX_EXPANDED:,})")
    return _expand(pattern)


def _expand(pattern: str) -> list[str]:
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    padded = any(len(x) > 1 and x.startswith("0") for x in (lo, hi))
    width = max(len(lo), len(hi)) if padded else 0
    step = 1 if int(hi) >= int(lo) else -1
    out = []
    for i in range(int(lo), int(hi) + step, step):
        out.extend(_expand(pattern[: m.start()] + str(i).zfill(width) + pattern[m.end():]))
    return out


def expand_urls(spec, skipped: list[Path] | None = None) -> list[str]:
    """Tar shards from a directory, brace patterns, globs or lists of those; order kept. With `skipped`, what a
    glob matches that is not a file (a broken link, a folder) goes there instead, as a folder's entries do
    (find_images); a name given as such is always kept, for its reader to report."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    out: list[str] = []
    for item in items:
        item = str(item)
        p = Path(item)
        if p.is_dir():
            named = sorted(q for q in p.iterdir() if named_as_shard(q.name))
            out.extend(str(q) for q in named if q.is_file())
            if skipped is not None:  # a broken link among them: said, as in a glob (review finding)
                skipped.extend(q for q in named if not q.is_file())
            continue
        for one in expand_braces(item):
            if any(c in one for c in "*?["):
                found = sorted(glob.glob(one))
                if skipped is not None:  # regression (new-user trial): one broken link refused the whole glob
                    skipped.extend(Path(q) for q in found if not os.path.isfile(q))
                    found = [q for q in found if os.path.isfile(q)]
                out.extend(found)
            else:
                out.append(one)
    return out


MAX_META_DEPTH = 200  # nesting of a source's .json kept (deeper: no metadata, said; JSON's writer recurses)


def _depth(obj) -> int:
    """How deep lists and dicts nest in obj (without recursion)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def _finite_float(text: str) -> float | None:
    v = float(text)
    return v if math.isfinite(v) else None


def _not_a_file(path: str, what: str) -> str:
    """Why an input named by the user is not a file it can read: "no such ..." only where nothing is there
    (regression (new-user trial): a link loop was "no such image file", where gsv fit says why)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"a broken link (to {os.readlink(path)}): no such {what}" if os.path.islink(path) else f"no such {what}"
    except OSError as e:
        return f"cannot read ({e.strerror or e})"
    return "a folder: give its images or shards by name or pattern" if stat.S_ISDIR(st.st_mode) else \
        "not a regular file"


def plan_units(src, shard_size: int = 1000, skipped: list[Path] | None = None) -> list[Unit]:
    """The ordered list of units of a conversion input; a folder's entries named like images that are
    not files (broken links) and what a glob matches that is not a file go to `skipped` (find_images,
    expand_urls)."""
    if shard_size < 1:
        raise SourceError(f"shard size must be >= 1, got {shard_size}")
    p = Path(str(src))
    if p.is_dir():
        files = find_images(p, skipped)
        broken: list[Path] = []
        paths = expand_urls(p, broken)  # the folder's shards, listed once (its broken links said only if used)
        if files and paths:  # regression: the images were dropped and only the shards read
            raise SourceError(f"{src}: holds image files and .tar shards (an earlier conversion's output?); give one "
                              f"kind: a folder of images only, or the shards as '{p / '*.tar'}' (or their own suffix)")
        if not files and not paths:
            raise SourceError(f"{src}: no image files ({', '.join(IMAGE_EXTS)}) and no tar shards ({', '.join(SHARD_NAMES)})")
        if files:
            return _file_units(files, p, shard_size)
        if skipped is not None:
            skipped.extend(broken)
    else:
        paths = expand_urls(src, skipped)
    if not paths:
        raise SourceError(f"{src}: matches no files")
    images = [t for t in paths if Path(t).suffix.lower() in IMAGE_EXTENSIONS]
    kind = "image file" if images else "tar shard"
    if images and len(images) < len(paths):
        raise SourceError(f"{src}: mixes image files and tar shards; give one kind")
    missing = [t for t in paths if not Path(t).is_file()]
    if missing:
        what = kind if Path(missing[0]).suffix else "file or folder"  # a bare name: not necessarily a shard
        raise SourceError(f"{missing[0]}: {_not_a_file(missing[0], what)}"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    odd = [] if images else [t for t in paths if not _readable_tar(t)]
    if odd:  # regression: any other file was read as a tar shard, "truncated or corrupt", and written as one
        raise SourceError(f"{odd[0]}: not an image file ({', '.join(IMAGE_EXTS)}) or a .tar shard")
    if images:  # image files by name, pattern or glob: a folder of them (their common parent)
        root = Path(os.path.commonpath([str(Path(t).resolve().parent) for t in images]))
        files = sorted((Path(t).resolve() for t in images), key=lambda q: q.relative_to(root).as_posix())
        return _file_units(files, root, shard_size)
    return [Unit(k, "tar", (t,)) for k, t in enumerate(paths)]


TAR_SUFFIXES = {".tar", ".gz", ".tgz", ".bz2", ".tbz", ".tbz2", ".xz", ".txz"}  # names taken as shards
SHARD_NAMES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tbz2", ".tar.xz", ".txz")  # a folder's shards


def named_as_shard(name: str) -> bool:
    """Whether a file in a folder of shards is one: a tar, plain or compressed, by its name in any case
    (regression, new-user trial: a folder's .tar.gz, .tgz and .TAR shards were left out without a word)."""
    return name.lower().endswith(SHARD_NAMES)


def _readable_tar(path: str) -> bool:
    """Whether an input file not named like an image is taken as a tar shard: named like one (TAR_SUFFIXES) or
    without suffix, whatever it holds (a damaged or empty one is read and its damage reported: review finding,
    one cut download must not stop the run), else where its content begins as one (looks_like_tar), or where it
    cannot be opened (the conversion notes it and leaves its shard unfinished)."""
    suffix = Path(path).suffix.lower()
    if not suffix or suffix in TAR_SUFFIXES:
        return True
    try:
        return looks_like_tar(path)
    except OSError:
        return True


def _file_units(files: list[Path], root: Path, shard_size: int) -> list[Unit]:
    """Image files in order, shard_size to a unit; keys count from 0 over all of them."""
    return [Unit(k, "files", tuple(str(f) for f in files[i: i + shard_size]), str(root), i)
            for k, i in enumerate(range(0, len(files), shard_size))]


def decode_caption(data: bytes) -> tuple[str | None, str | None]:
    """(caption, note) of a caption file's bytes: UTF-8 (a UTF-8 or UTF-16 byte-order mark honoured),
    stripped; None when nothing but white space is left (an empty caption counts as missing). The note
    says what had to be repaired, so that it is recorded (regression: bytes that are not UTF-8 became
    U+FFFD and NUL characters without a word): undecodable bytes replaced, NULs removed."""
    notes = []
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            text = data.decode("utf-16", errors="replace")
            notes.append("not UTF-16 throughout: undecodable bytes replaced by U+FFFD")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = data.decode("utf-8-sig", errors="replace")
            notes.append("not UTF-8: undecodable bytes replaced by U+FFFD")
    if "\x00" in text:
        text = text.replace("\x00", "")
        notes.append("NUL characters removed (UTF-16 without a byte-order mark?)")
    text = text.strip()
    return (text or None), ("; ".join(notes) or None)


def _read_caption(path: Path) -> tuple[str | None, str | None]:
    """An image file's caption beside it (decode_caption), or (None, None) without one. A caption path that
    is not a readable file (a folder, a link loop, a fifo, no permission) is a missing caption with a note
    naming it: the image is still converted. Regression (new-user trial): a folder named a.txt stopped the
    whole conversion, blaming the output folder, and a fifo hung it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"caption file {show(path.name)} not read ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):
        return None, f"caption file {show(path.name)} not read (not a regular file)"
    try:
        return decode_caption(path.read_bytes())
    except OSError as e:
        return None, f"caption file {show(path.name)} not read ({e.strerror or e})"


def _iter_files(unit: Unit) -> Iterator[RawSample]:
    root = Path(unit.root)
    for j, f in enumerate(unit.paths):
        path = Path(f)
        s = RawSample(f"{unit.first_key + j:09d}", path.relative_to(root).as_posix())
        try:
            s.image = path.read_bytes()
            s.image_ext = path.suffix.lower().lstrip(".")
        except OSError as e:
            s.error = f"cannot read file ({e.strerror or e})"
        s.caption, s.caption_note = _read_caption(path.with_suffix(".txt"))
        yield s


def _finish(g: Group, shard: str) -> RawSample:
    s = RawSample(g.key, f"{shard}:{g.key}")
    errors, group = list(g.problems), dict(g.fields)
    bad_key = check_key(g.key)
    if bad_key:  # refused: such a key would name output members outside their folder
        names = ", ".join(show(n) for n in g.members)
        errors.insert(0, f"{bad_key} (member{'s' if len(g.members) > 1 else ''} {names})")
    ext = image_member(group)
    if ext is not None:
        s.image, s.image_ext = group.pop(ext), ext
    if "txt" in group:
        s.caption, s.caption_note = decode_caption(group.pop("txt"))
    if "json" in group:
        try:  # a number that is not finite (NaN, Infinity, 1e400) is null: what is written is strict JSON
            meta = json.loads(group.pop("json"), parse_constant=lambda _: None, parse_float=_finite_float)
            s.meta = meta if isinstance(meta, dict) else {"value": meta}
            if _depth(meta) > MAX_META_DEPTH:  # review finding: read at 988 deep, then too deep to write
                s.meta = {"invalid_json": True, "too_deep": True}
        except (ValueError, RecursionError):  # review finding: JSON nested ~1000 deep stopped the whole run
            s.meta = {"invalid_json": True}
    s.extras = sorted(group)
    if errors:
        s.error = "; ".join(errors)
    elif s.image is None:
        s.error = f"no image in sample (found: {', '.join(s.extras) or 'nothing'}" + \
                  (", txt" if s.caption is not None else "") + ")"
    return s


def _shard_note(shard: str, text: str) -> RawSample:
    return RawSample("", shard, error=text, whole_shard=True)


def _iter_tar(unit: Unit) -> Iterator[RawSample]:
    """The samples of one tar (shards.iter_groups, the grouping read_samples uses too); the
    shard's own problems (damage, members ignored, data after its end) as notes."""
    shard, n = unit.paths[0], 0
    try:
        with open(shard, "rb") as f:
            for g in iter_groups(f):
                if g.note is not None:
                    yield _shard_note(shard, g.note)
                    continue
                n += 1
                yield _finish(g, shard)
    except SHARD_ERRORS as e:
        yield _shard_note(shard, f"tar shard is truncated or corrupt after {n} samples ({e})")


def iter_unit(unit: Unit) -> Iterator[RawSample]:
    return _iter_files(unit) if unit.kind == "files" else _iter_tar(unit)


def local_size(path: str) -> int | None:
    """The bytes of a local file; None for a URL (nothing fetched to tell) or a file that cannot be read."""
    if "://" in str(path):
        return None
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def rank_world(rank=None, world_size=None) -> tuple[int, int]:
    """(rank, world size): the arguments, else torchrun's RANK / WORLD_SIZE (0 and 1 when unset), checked:
    whole numbers with 0 <= rank < world size, else a ValueError naming the variable or argument
    (regression: RANK=x was a traceback in gsv convert and the loader; rank 2 of 2 or -1 read wrong shards)."""
    def read(value, name: str, default: int) -> int:
        # a variable set but empty (RANK= WORLD_SIZE=) is unset, as torchrun takes it
        given = value if value is not None else (os.environ.get(name, "").strip() or str(default))
        if isinstance(given, int) and not isinstance(given, bool):
            return given
        if isinstance(given, str):
            try:
                return int(given.strip())
            except ValueError:
                pass
        label = f"the environment variable {name}" if value is None else name.lower()
        raise ValueError(f"{label}={given!r}: not a whole number")
    r, w = read(rank, "RANK", 0), read(world_size, "WORLD_SIZE", 1)
    env = {k: os.environ.get(k, "").strip() for k in ("RANK", "WORLD_SIZE")}
    if rank is None and world_size is None and w > 1 and not env["RANK"]:  # regression (new-user trial): rank 0
        raise ValueError(f"the environment variable WORLD_SIZE={w} is set but RANK is not: give each process its "
                         f"RANK (0 to {w - 1}), or start them with torchrun")     # silently, half the work done
    if rank is None and world_size is None and r > 0 and not env["WORLD_SIZE"]:
        raise ValueError(f"the environment variable RANK={r} is set but WORLD_SIZE is not: set both (or start "
                         "the processes with torchrun)")
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"rank {r} must lie in [0, world size {w}) (world size >= 1)")
    return r, w
