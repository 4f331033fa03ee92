"""Can a host be reached: one short TCP connect, before a download that would otherwise retry for
a minute offline (open_clip's hub weights, clip_benchmark's datasets)."""
from __future__ import annotations

import socket
from urllib.parse import urlparse

__all__ = ["unreachable"]

_SEEN: dict[tuple[str, int], str | None] = {}  # (host, port) -> why not reachable, when remembered


def unreachable(url: str, timeout: float, remember: bool = False) -> tuple[str, str | None]:
    """(host, None when `url`'s host answers a TCP connect within `timeout` s, else the reason).
    remember: probe each host once per process."""
    u = urlparse(url)
    host = u.hostname or url
    port = u.port or (80 if u.scheme == "http" else 443)
    if remember and (host, port) in _SEEN:
        return host, _SEEN[(host, port)]
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        why = None
    except OSError as e:
        why = str(e)
    if remember:
        _SEEN[(host, port)] = why
    return host, why
