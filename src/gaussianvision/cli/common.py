"""Helpers shared by the CLI commands: JSON output, errors, resolved-config files."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["CliError", "emit", "write_json", "write_text", "parser", "run"]


class CliError(Exception):
    """A user-facing error: printed as 'gsv CMD: message', exit code 2."""


def parser(cmd: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gsv {cmd}", description=description)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    return p


def _default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def emit(obj, as_json: bool, human: str | None = None) -> None:
    """Print `obj` as JSON (as_json) or the human text (default: indented JSON)."""
    if as_json or human is None:
        print(json.dumps(obj, indent=None if as_json else 2, default=_default))
    else:
        print(human)


def key_value(text: str, option: str, form: str = "KEY=VALUE", example: str = "") -> tuple[str, str]:
    """One "KEY=VALUE" item of a repeatable option -> (KEY stripped, VALUE as given); a CliError
    naming the option and the item when there is no '=' or no key."""
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise CliError(f"{option} {text!r}: expected {form}" + (f", e.g. {example}" if example else ""))
    return key.strip(), value


def fit_option(text: str) -> tuple[str, object]:
    """--fit-option KEY=VALUE -> (KEY, VALUE parsed as JSON, or the bare word)."""
    key, value = key_value(text, "--fit-option", example="relocate_every=10")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value  # a bare word such as backend=numba


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically (temporary name, then rename), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    write_text(path, json.dumps(obj, indent=2, default=_default) + "\n")


def run(cmd: str, fn, args) -> int:
    """Call fn(args); turn our known errors into one clear line and exit code 2."""
    from gaussianvision.data.images import ImageLoadError
    from gaussianvision.splats.types import SplatsError
    try:
        return int(fn(args) or 0)
    except (CliError, SplatsError, ImageLoadError, FileNotFoundError) as e:
        print(f"gsv {cmd}: {e}", file=sys.stderr)
        return 2
