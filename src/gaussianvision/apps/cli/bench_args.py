"""Argument checks shared by the `gsv bench` suites (not a suite: `gsv bench args` is refused as unknown)."""
from __future__ import annotations

import argparse
import os

from gaussianvision.apps.cli.command import CliError

__all__ = ["file_name", "check_pixels", "name_list"]


def file_name(text: str) -> str:
    """argparse type: a plain file name (a result file's stem), so that what is written stays in --out;
    regression (new-user trial): --name /tmp/x/abs or ../esc/rel wrote the results outside --out. A result
    file's suffix is dropped (regression (new-user trial): --name x.json wrote x.json.json and x.json.md)."""
    while text.lower().endswith((".json", ".md")):  # x.json.md too (review finding: it wrote x.json.json)
        text = text[:text.rindex(".")]
    seps = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    if not text.strip() or text in (".", "..") or any(s in text for s in seps) or "\0" in text:
        raise argparse.ArgumentTypeError(f"expected a plain file name (no folder, not '.' or '..'), got {text!r}")
    return text


def name_list(text: str | None, flag: str) -> list[str] | None:
    """A comma-separated option's names (stripped, empty ones dropped); None where the option was not given;
    one CliError line where it was given with no name (regression (new-user trial): --sections '' ran every
    section for minutes, --columns '' every column, --configs '' a traceback)."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise CliError(f"{flag} {text!r}: give at least one name (comma-separated)")
    return names


def check_pixels(asked, height: int, width: int, where: str = "") -> None:
    """asked: (N, what set it) pairs, each at most one Gaussian per pixel of height x width images, as gsv fit
    refuses it (fit.config.too_many_gaussians); one CliError line naming the first N over."""
    from gaussianvision.fit.config import too_many_gaussians
    for n, what in asked:
        if reason := too_many_gaussians(n, height, width, what, where=where):
            raise CliError(reason)
