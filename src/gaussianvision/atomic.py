"""The one atomic write: a file appears complete under its name or not at all.

    write_atomic(path, lambda tmp: tmp.write_bytes(data))
    write_text_atomic(path, text)
    check_writable(folder)      # OSError unless a file can be made there

check_writable is the one probe of a folder before long work (gsv's --out, numba's cache folder).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["write_atomic", "write_text_atomic", "check_writable"]


def check_writable(folder: str | os.PathLike) -> None:
    """OSError (the system's reason) unless a file can be made in `folder`: one is made and removed.
    os.access is not asked: it said yes to root on sysfs, and no on some network mounts that write.
    A folder that takes files but keeps them (append-only) passes: writing is what matters."""
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".gsv-write-check-")
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """write(tmp) to a temporary name beside `path` (same suffix, so writers that go by the
    suffix still work), then rename it to `path`; on any failure the temporary file is removed
    and the error re-raised."""
    path = Path(path)
    if not path.parent.is_dir():  # regression: the error named the temporary file, not the folder
        if path.parent.exists():
            raise NotADirectoryError(20, f"{path.parent} is not a folder", str(path))
        raise FileNotFoundError(2, f"its folder {path.parent} does not exist", str(path))
    tmp = _temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _temporary(path: Path, limit: int = 255) -> Path:
    """.NAME.tmpPID.SUFFIX beside path, NAME cut so that the name keeps within `limit` bytes (the usual
    file-system limit; regression: a 250-byte NAME could be written but not its temporary name)."""
    tail, name = f".tmp{os.getpid()}{path.suffix}", path.name
    while name and len(f".{name}{tail}".encode("utf-8", "surrogateescape")) > limit:
        name = name[:-1]
    return path.with_name(f".{name}{tail}")


def write_text_atomic(path: str | os.PathLike, text: str, mkdir: bool = False,
                      encoding: str | None = None) -> None:
    """write_atomic of `text` (Path.write_text: the locale's encoding unless `encoding` is given);
    mkdir: create the parent folder first."""
    if mkdir:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding=encoding))
