"""The Python client: one function, standard library only.

    from gaussianvision.apps.serve.client import send
    answer = send(splats_or_bytes, "http://127.0.0.1:8000")                       # /embed
    answer = send(data, url, labels=["cat", "dog"], token="...")                 # /classify (a name may hold commas)
    answer = send(data, url, label_set="cifar10", top_k=3)

`data`: .gsv bytes (one file or several concatenated), a Splats (encoded as float16) or a .gsv file's path. Returns
the server's JSON answer as a dict; raises ClientError with one clear line (the server's own
message for a refusal, the reason for an unreachable server)."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

__all__ = ["send", "check_server", "check_request", "ClientError"]


class ClientError(Exception):
    """A request that got no answer, or a refusal (status: the HTTP status, None when unreachable)."""

    def __init__(self, message: str, status: int | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.body = status, body or {}


def check_request(url: str, timeout: float | None) -> None:
    """ClientError for a URL that is not http(s)://HOST[:PORT] or a timeout that is not a positive
    number of seconds (regression: 'notaurl' and a timeout of nan were said 'not JSON', ftp:// 'Name
    or service not known', port 99999 'Connection refused')."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError when out of range or not a number
    except ValueError as e:
        raise ClientError(f"{url}: not a usable URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"{url}: expected http://HOST:PORT or https://HOST:PORT (e.g. http://127.0.0.1:8000)")
    if port == 0:
        raise ClientError(f"{url}: port 0 is not a server's port")
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):  # regression: sent to ...?x=1/health
        raise ClientError(f"{url}: give the server's address without ?query or #fragment (the routes, /embed and "
                          f"/classify, are added to it)")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout < float("inf")):  # None: wait as long as it takes (urllib's)
        raise ClientError(f"timeout {timeout!r}: expected a positive number of seconds or None")


def _query(labels, label_set, top_k) -> tuple[str, str]:
    if labels is None and label_set is None:
        if top_k is not None:
            raise ClientError(f"top_k {top_k}: goes with labels or a label_set (/classify); /embed has no labels")
        return "/embed", ""
    if isinstance(labels, (str, bytes)):  # regression: "cat,dog" was sent as the labels c, a, t, ",", d, o, g
        raise ClientError(f"labels {labels!r}: give a list of class names (e.g. ['cat', 'dog']), not one string")
    # each name its own label= parameter, taken whole by the server: a name may hold a comma
    params = [("label_set", label_set)] if label_set else [("label", str(c)) for c in labels]
    if top_k is not None:
        params.append(("top_k", str(top_k)))
    return "/classify", "?" + urllib.parse.urlencode(params)


def send(data, url: str, labels: list[str] | None = None, label_set: str | None = None,
         top_k: int | None = None, token: str | None = None, timeout: float = 60.0) -> dict:
    """POST .gsv bytes (or Splats, or a .gsv file's path) to URL's /embed, or /classify with labels or a
    label set."""
    check_request(url, timeout)
    data = _body(data)
    route, query = _query(labels, label_set, top_k)
    req = urllib.request.Request(url.rstrip("/") + route + query, data=bytes(data), method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read())
        except ValueError:
            body = {}
        raise ClientError(f"{url}{route}: {e.code} {body.get('error') or e.reason}", e.code, body) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ClientError(f"{url}: cannot reach the server ({reason})") from None
    except ValueError as e:
        raise ClientError(f"{url}{route}: the answer is not JSON ({e})") from None


def _body(data) -> bytes | bytearray | memoryview:
    """The bytes to send: as given, a Splats encoded, or a .gsv file's path read. Regression (new-user trial):
    a path gave AttributeError: 'str' object has no attribute 'validate'."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    if isinstance(data, (str, os.PathLike)):
        try:
            return Path(data).read_bytes()
        except OSError as e:
            raise ClientError(f"{data}: cannot read ({e.strerror or e})") from None
    from gaussianvision.splats.format import encode
    from gaussianvision.splats.types import Splats
    if not isinstance(data, Splats):
        raise TypeError(f"send: data must be .gsv bytes, a Splats or a .gsv file's path, got {type(data).__name__}")
    return encode(data)


def check_server(url: str, timeout: float = 10.0, token: str | None = None) -> dict:
    """GET URL/health: the server's answer, or ClientError when nothing answers there; then GET
    URL/metrics with `token` (as send would give it), so that a missing or wrong token is a
    ClientError now, not after the caller has fitted its first batch (regression)."""
    check_request(url, timeout)
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as r:
            health = json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise ClientError(f"{url}/health: {e.code} {e.reason} (is this a gsv serve?)", e.code) from None
    except (urllib.error.URLError, OSError) as e:
        raise ClientError(f"{url}: cannot reach the server ({getattr(e, 'reason', e)})") from None
    except ValueError:
        raise ClientError(f"{url}/health: the answer is not JSON (is this a gsv serve?)") from None
    req = urllib.request.Request(url.rstrip("/") + "/metrics", method="GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        urllib.request.urlopen(req, timeout=timeout).close()
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise ClientError(f"{url}: 401 missing or wrong token (give the server's token: --token, or "
                              f"GSV_SERVE_TOKEN)", 401) from None
    except (urllib.error.URLError, OSError):
        pass  # /health answered: a failure here is the request's to report
    return health
