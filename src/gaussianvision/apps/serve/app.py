"""The ASGI application: POST /embed, POST /classify, GET /health, GET /metrics.

    app = create_app(engine, ServeSettings(...))   # then uvicorn.run(app, ...)

Every answer is JSON. A refused request is a 4xx {"error", "reason", ...} (counted in /metrics
by reason) and nothing else changes; an unexpected failure is a 500 of the same shape."""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from typing import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .batcher import Batcher
from .engine import Engine, top_k
from .errors import ServeError
from .labels import custom_label_set, label_set
from .metrics import Metrics
from .payloads import read_images
from .settings import ServeSettings

__all__ = ["create_app"]


BODY_TOTAL_FACTOR = 10  # the whole body must come within this many --body-timeout (5 min by default),
SLOW_LINK = 32 << 10  # or within the time --max-body takes at this many bytes/s, whichever is longer


async def read_body(request: Request, limit: int, timeout: float = 30.0) -> bytes:
    """The body, refused (413) as soon as it is over `limit` bytes, declared or streamed, and (408) when its next
    piece takes over `timeout` seconds to come or the whole of it over BODY_TOTAL_FACTOR x `timeout` (or over
    `limit` / SLOW_LINK seconds where that is longer: a larger --max-body on a slow link still comes).
    Regressions (new-user trial, review): a client that sent part of its body and waited held its connection for
    ever, and `gsv serve` never ended on SIGTERM while it did; one that sent a byte every 29 s held it as long."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServeError(413, "body_too_large", f"request body of {declared} bytes, over the limit of {limit}",
                         limit=limit)
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    loop = asyncio.get_running_loop()
    total = max(BODY_TOTAL_FACTOR * timeout, limit / SLOW_LINK)
    deadline = loop.time() + total
    try:
        while True:
            left = deadline - loop.time()
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, min(timeout, left)))
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise ServeError(408, "body_timeout", f"no more of the request body came for {timeout:g} s (after "
                                 f"{size} bytes)" if left > timeout else f"the request body did not all come "
                                 f"within {total:g} s ({size} bytes came)") from None
            size += len(chunk)
            if size > limit:
                raise ServeError(413, "body_too_large", f"request body over the limit of {limit} bytes", limit=limit)
            chunks.append(chunk)
    except ClientDisconnect:  # regression (new-user trial): counted as the server's own failure (500, internal)
        raise ServeError(499, "client_disconnected", f"the client left after {size} bytes of its body") from None
    return b"".join(chunks)


# the query parameters of each route: name -> whether it may be given more than once
PARAMS = {"/embed": {}, "/classify": {"labels": True, "label": True, "template": True, "label_set": False, "top_k": False}}


def _check_params(request: Request, route: str) -> None:
    """One 400 naming a query parameter the route does not take, or a single one given twice (regression:
    `?topk=1` was ignored and `top_k=1&top_k=2` took the last, both without a word)."""
    allowed = PARAMS.get(route, {})
    for name in dict.fromkeys(request.query_params.keys()):
        if name not in allowed:
            takes = ", ".join(allowed) or "none"
            raise ServeError(400, "bad_parameter", f"{route} takes no query parameter {name!r} (it takes: {takes})")
        if not allowed[name] and len(request.query_params.getlist(name)) > 1:
            raise ServeError(400, "bad_parameter", f"{name} given {len(request.query_params.getlist(name))} times; "
                                                   f"give it once")


def _check_token(request: Request, token: str | None) -> None:
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ServeError(401, "unauthorized", "missing or wrong token (send 'Authorization: Bearer TOKEN')")


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.strip().isdigit() or not low <= int(text) <= high:
        raise ServeError(400, "bad_parameter", f"{name}={text!r}: expected a whole number in {low}..{high}")
    return int(text)


class _Service:
    """The handlers over one engine, batcher, metrics and settings."""

    def __init__(self, engine: Engine, settings: ServeSettings):
        self.engine, self.settings, self.metrics = engine, settings, Metrics()
        self.batcher = Batcher(engine, self.metrics, settings.batch_window_ms / 1e3, settings.max_batch)

    async def _embedded(self, request: Request):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind.startswith("multipart/"):  # (curl --data-binary says x-www-form-urlencoded: the body is read)
            # regression (new-user trial): curl -F file=@a.gsv was "not a .gsv file (magic b'----')"
            raise ServeError(415, "form_body", f"a form ({kind}) is not read: send the .gsv bytes themselves as the "
                             "body (curl --data-binary @a.gsv, Content-Type application/octet-stream)")
        body = await read_body(request, self.settings.max_body, self.settings.body_timeout_s)
        images = read_images(body, self.settings.max_images, self.settings.max_gaussians)
        emb = await self.batcher.embed([im.splats for im in images])
        described = [{"payload": im.payload, "image": im.index, "gaussians": im.splats.max_gaussians,
                      "height": im.splats.height, "width": im.splats.width,
                      **({"prefix_of": im.declared} if im.declared is not None else {})} for im in images]
        return emb, described, len(body)

    async def embed(self, request: Request) -> dict:
        emb, described, nbytes = await self._embedded(request)
        return {"model": self.engine.name, "dim": int(emb.shape[1]), "count": len(described), "bytes": nbytes,
                "images": described, "embeddings": emb.tolist()}

    def _labels(self, request: Request):
        q = request.query_params
        # labels=a,b,c: a comma-separated list; label=NAME (repeatable): one class name each, commas kept
        names = [c for item in q.getlist("labels") for c in item.split(",")] + q.getlist("label")
        if q.get("label_set") and names:
            raise ServeError(400, "bad_labels", "give labels or a label_set, not both")
        if q.get("label_set"):
            if q.getlist("template"):  # regression: silently ignored
                raise ServeError(400, "bad_template", "template= goes with labels=; a label_set has its own templates")
            return label_set(q["label_set"])
        if not names:
            raise ServeError(400, "bad_labels", "give class names (labels=cat,dog,...) or a label_set (e.g. cifar10)")
        return custom_label_set(names, q.getlist("template"), self.settings.max_labels, self.settings.max_templates)

    async def classify(self, request: Request) -> dict:
        labels = self._labels(request)
        k = _int_param(request, "top_k", self.settings.top_k, 1, self.settings.max_labels)
        emb, described, nbytes = await self._embedded(request)
        weights = await self.batcher.run_text(self.engine.classifier, labels)
        results = top_k(emb, weights, labels, k, self.engine.logit_scale())
        return {"model": self.engine.name, "label_set": labels.name, "classes": len(labels.classes),
                "count": len(described), "bytes": nbytes,
                "images": [{**d, **r} for d, r in zip(described, results)]}

    async def health(self, request: Request) -> dict:
        return {"status": "ok", "model": self.engine.name, "device": str(self.engine.device),
                "uptime_s": round(time.time() - self.metrics.started, 3)}

    async def metrics_route(self, request: Request) -> dict:
        return {"model": self.engine.name, "device": str(self.engine.device),
                "settings": {"batch_window_ms": self.settings.batch_window_ms, "max_batch": self.settings.max_batch},
                **self.metrics.snapshot()}

    def route(self, path: str, handler: Callable[[Request], Awaitable[dict]], guarded: bool = True):
        async def endpoint(request: Request) -> JSONResponse:
            t0 = time.perf_counter()
            try:
                if guarded:
                    _check_token(request, self.settings.token)
                if path in PARAMS:
                    _check_params(request, path)
                response = JSONResponse(await handler(request))
            except ServeError as e:
                self.metrics.rejected(e.reason)
                headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
                response = JSONResponse(e.body(), status_code=e.status, headers=headers)
            except Exception as e:  # noqa: BLE001 - the server answers and keeps serving
                self.metrics.rejected("internal")
                response = JSONResponse({"error": f"internal error: {type(e).__name__}: {e}", "reason": "internal"},
                                        status_code=500)
            self.metrics.answered(path, response.status_code, time.perf_counter() - t0)
            return response
        return endpoint


ROUTES = ("/embed", "/classify", "/health", "/metrics")


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own refusals (unknown path, wrong method) as JSON too, counted in /metrics like every
    refusal: under their reason (http_404, http_405) and their route, any unknown path as "other" (a
    bounded set of keys whatever is asked). Regression: they were not counted, against docs/serve.md."""
    reason = f"http_{exc.status_code}"
    service = getattr(request.app.state, "service", None)
    if service is not None:
        service.metrics.rejected(reason)
        # no latency sample: a 0 ms refusal would pull down the route's real latencies (regression)
        service.metrics.answered(request.url.path if request.url.path in ROUTES else "other", exc.status_code, None)
    return JSONResponse({"error": exc.detail, "reason": reason}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


def create_app(engine: Engine, settings: ServeSettings) -> Starlette:
    """The Starlette application over a loaded engine; the batcher starts with the server."""
    service = _Service(engine, settings.check())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        yield
        await service.batcher.stop()

    routes = [Route("/embed", service.route("/embed", service.embed), methods=["POST"]),
              Route("/classify", service.route("/classify", service.classify), methods=["POST"]),
              Route("/health", service.route("/health", service.health, guarded=False), methods=["GET"]),
              Route("/metrics", service.route("/metrics", service.metrics_route), methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.state.service = service
    return app
