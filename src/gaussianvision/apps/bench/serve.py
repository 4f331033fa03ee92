"""Benchmark: a bounded load test of `gsv serve` on 127.0.0.1.

The server is the real app (apps.serve.app.create_app) on uvicorn, started in this process by
apps.serve.server.serve_in_thread, as tests/test_serve.py does; the clients are threads of the
same process, each with one keep-alive HTTP connection, sending real .gsv payloads (the bundled
photos fitted once up front with the library's `fast` preset) to POST /embed back to back for a
fixed time. Each batching window is its own server over the same loaded model, run one after the
other in the same process. Reported: requests/s, client-side latency p50/p90/p99, the server's
own batch sizes (GET /metrics, warm-up requests subtracted) and errors. Clients and server share
the machine's cores (and the GIL): a loopback measurement, not a network one.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import Counter
from urllib.parse import urlparse

import numpy as np

__all__ = ["fit_payloads", "run_window", "run_serve_bench", "markdown"]


def fit_payloads(size: int, n_gaussians: int, names=None) -> list[bytes]:
    """The bundled photos at size x size, fitted to N Gaussians (fast preset), as float16 .gsv files."""
    from gaussianvision.data.photos import PHOTO_NAMES, bundled_photos
    from gaussianvision.fit import FitConfig, fit_images
    from gaussianvision.splats.format import encode
    import torch
    photos = bundled_photos(size, names or PHOTO_NAMES)
    res = fit_images(torch.stack([p for _, p in photos]), n_gaussians, config=FitConfig.from_options({"preset": "fast"}))
    return [encode(res.splats[i]) for i in range(len(photos))]


def _connect(u) -> http.client.HTTPConnection:
    """A keep-alive connection with Nagle off: http.client writes headers and body separately, and
    Nagle + delayed ACK would add about 40 ms to every request (a client artifact, not the server)."""
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _client(url: str, payloads: list[bytes], deadline: float, offset: int, out: dict) -> None:
    """POST payloads (in turn) to /embed until the deadline; latencies (ms) and errors into out."""
    u = urlparse(url)
    conn, i = _connect(u), offset
    lat, errors = [], Counter()
    while time.perf_counter() < deadline:
        body = payloads[i % len(payloads)]
        i += 1
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/embed", body=body, headers={"Content-Type": "application/octet-stream"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200 or not json.loads(data).get("embeddings"):
                errors[f"status {resp.status}"] += 1
                continue
        except (OSError, http.client.HTTPException, ValueError) as e:
            errors[type(e).__name__] += 1
            conn.close()
            conn = _connect(u)
            continue
        lat.append((time.perf_counter() - t0) * 1e3)
    conn.close()
    out["latency_ms"], out["errors"] = lat, errors


def _metrics(url: str) -> dict:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", "/metrics")
    snap = json.loads(conn.getresponse().read())
    conn.close()
    return snap


def _batches(before: dict, after: dict) -> dict:
    """Forwards and images per forward between two /metrics snapshots."""
    sizes = Counter({int(k): v for k, v in after["batches"]["sizes"].items()})
    sizes.subtract({int(k): v for k, v in before["batches"]["sizes"].items()})
    sizes = +sizes
    forwards = sum(sizes.values())
    images = sum(k * v for k, v in sizes.items())
    return {"forwards": forwards, "mean_images": images / forwards if forwards else None,
            "max": max(sizes, default=0), "sizes": {str(k): v for k, v in sorted(sizes.items())}}


def _pct(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    p50, p90, p99 = np.percentile(np.asarray(values), [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(np.mean(values))}


def run_window(engine, payloads: list[bytes], window_ms: float, clients: int, seconds: float,
               max_batch: int = 64) -> dict:
    """One server with this batching window; `clients` threads for `seconds`; its row."""
    from gaussianvision.apps.serve.app import create_app
    from gaussianvision.apps.serve.server import serve_in_thread
    from gaussianvision.apps.serve.settings import ServeSettings
    settings = ServeSettings(model=engine.name, device=str(engine.device), batch_window_ms=window_ms,
                             max_batch=max_batch).check()
    live = serve_in_thread(create_app(engine, settings))
    try:
        warm: dict = {}
        _client(live.url, payloads, time.perf_counter() + 0.3, 0, warm)  # first forwards, connection set-up
        before = _metrics(live.url)
        outs = [{} for _ in range(clients)]
        start = time.perf_counter()
        threads = [threading.Thread(target=_client, args=(live.url, payloads, start + seconds, k, outs[k]))
                   for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        after = _metrics(live.url)
    finally:
        live.stop()
    lat = [v for o in outs for v in o["latency_ms"]]
    errors = sum((o["errors"] for o in outs), Counter())
    return {"batch_window_ms": window_ms, "clients": clients, "seconds": wall, "requests": len(lat),
            "requests_per_s": len(lat) / wall, "latency_ms": _pct(lat), "errors": sum(errors.values()),
            "error_kinds": dict(errors), "batches": _batches(before, after),
            "server_latency_ms": after["latency_ms"].get("/embed"), "rejects": after.get("rejects", {})}


def run_serve_bench(engine, payloads: list[bytes], windows=(0.0, 5.0), clients: int = 8, seconds: float = 10.0,
                    max_batch: int = 64, log=print) -> dict:
    rows = []
    for w in windows:
        row = run_window(engine, payloads, w, clients, seconds, max_batch)
        rows.append(row)
        log(f"serve: window {w:g} ms, {clients} clients: {row['requests_per_s']:.0f} requests/s, "
            f"p50 {row['latency_ms']['p50'] or 0:.1f} ms, {row['batches']['mean_images'] or 0:.1f} images/forward, "
            f"{row['errors']} errors")
    base = rows[0]["requests_per_s"]
    for r in rows:
        r["requests_per_s_vs_first"] = r["requests_per_s"] / base if base else None
    return {"model": engine.name, "device": str(engine.device), "payload_bytes": [len(p) for p in payloads],
            "clients": clients, "seconds": seconds, "max_batch": max_batch, "rows": rows}


def _ms(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def markdown(res: dict) -> str:
    lines = [f"Model {res['model']} on {res['device']}; {res['clients']} client threads for {res['seconds']:g} s "
             f"per window, POST /embed of one image per request ({min(res['payload_bytes'])}-"
             f"{max(res['payload_bytes'])} B .gsv files, float16); server and clients in one process on 127.0.0.1.",
             "", "| batch window | requests/s | vs first | latency p50 / p90 / p99 ms | server p50 / p99 ms | "
             "images per forward (mean / max) | forwards | errors |", "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lat, srv, b = r["latency_ms"], r["server_latency_ms"] or {}, r["batches"]
        lines.append(f"| {r['batch_window_ms']:g} ms | {r['requests_per_s']:,.0f} | {r['requests_per_s_vs_first']:.2f}x | "
                     f"{_ms(lat['p50'])} / {_ms(lat['p90'])} / {_ms(lat['p99'])} | {_ms(srv.get('p50'))} / "
                     f"{_ms(srv.get('p99'))} | {_ms(b['mean_images'])} / {b['max']} | {b['forwards']:,} | {r['errors']} |")
    return "\n".join(lines) + "\n"
