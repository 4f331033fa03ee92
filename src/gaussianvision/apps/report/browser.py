"""Open a report in headless Chromium and count the figures that loaded."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["find_chromium", "check_in_browser", "screenshot"]

_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--allow-file-access-from-files"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> str:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([exe, *_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                           text=True, timeout=timeout)
    return r.stdout


def check_in_browser(html_path: str | Path, timeout: float = 90.0) -> tuple[int, int]:
    """(figures loaded, figures on the page) as seen by headless Chromium after the load event."""
    url = Path(html_path).resolve().as_uri()
    dom = _run(["--virtual-time-budget=10000", "--dump-dom", url], timeout)
    m = re.search(r'data-figures="(\d+)/(\d+)"', dom)
    if not m:
        raise RuntimeError(f"the page {html_path} did not report its figures (load event never ran?)")
    return int(m.group(1)), int(m.group(2))


def screenshot(html_path: str | Path, png_path: str | Path, size: str = "1200,1600", timeout: float = 90.0) -> Path:
    url = Path(html_path).resolve().as_uri()
    png_path = Path(png_path).resolve()
    _run([f"--screenshot={png_path}", f"--window-size={size}", "--virtual-time-budget=10000", url], timeout)
    if not png_path.exists():
        raise RuntimeError(f"Chromium wrote no screenshot for {html_path}")
    return png_path
