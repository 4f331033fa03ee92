"""Metrics of a running server, for GET /metrics: requests and rejects, batch sizes, latency.

Updated from the event loop only (no lock). Latency percentiles are over the last
LATENCY_WINDOW answered requests of each route (a bounded memory however long the server runs)."""
from __future__ import annotations

import time
from collections import Counter, deque

import numpy as np

__all__ = ["Metrics", "LATENCY_WINDOW"]

LATENCY_WINDOW = 10_000
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # histogram upper bounds (images per forward)


def _percentiles(values) -> dict:
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "mean": None}
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"count": int(a.size), "p50": round(p50, 3), "p90": round(p90, 3), "p99": round(p99, 3),
            "mean": round(float(a.mean()), 3)}


class Metrics:
    def __init__(self):
        self.started = time.time()
        self.requests: Counter = Counter()   # route -> requests answered (any status)
        self.statuses: Counter = Counter()   # "route status" -> count
        self.rejects: Counter = Counter()    # reason -> refused requests
        self.batches: Counter = Counter()    # images per forward -> forwards
        self.batch_requests = 0              # requests served by the forwards (their sum)
        self.images = 0                      # images embedded
        self.latency_ms: dict[str, deque] = {}

    def answered(self, route: str, status: int, seconds: float | None) -> None:
        """One answer of `route`; seconds None: not timed (a refusal before any handler ran: no latency sample)."""
        self.requests[route] += 1
        self.statuses[f"{route} {status}"] += 1
        if seconds is not None:
            self.latency_ms.setdefault(route, deque(maxlen=LATENCY_WINDOW)).append(seconds * 1e3)

    def rejected(self, reason: str) -> None:
        self.rejects[reason] += 1

    def batch(self, images: int, requests: int) -> None:
        self.batches[images] += 1
        self.batch_requests += requests
        self.images += images

    def _histogram(self) -> dict:
        out = Counter()
        for size, n in self.batches.items():
            out[next((f"<={b}" for b in _BATCH_BUCKETS if size <= b), f">{_BATCH_BUCKETS[-1]}")] += n
        return {k: out[k] for k in [f"<={b}" for b in _BATCH_BUCKETS] + [f">{_BATCH_BUCKETS[-1]}"] if out[k]}

    def snapshot(self) -> dict:
        forwards = sum(self.batches.values())
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "requests": dict(self.requests), "statuses": dict(self.statuses), "rejects": dict(self.rejects),
            "images_embedded": self.images,
            "batches": {"forwards": forwards, "max": max(self.batches, default=0),
                        "mean_images": round(self.images / forwards, 3) if forwards else None,
                        "mean_requests": round(self.batch_requests / forwards, 3) if forwards else None,
                        "sizes": {str(k): v for k, v in sorted(self.batches.items())},
                        "histogram": self._histogram()},
            "latency_ms": {route: _percentiles(list(d)) for route, d in self.latency_ms.items()},
        }
