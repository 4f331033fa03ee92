"""gsv serve MODEL: the splat embedding service (gaussianvision.apps.serve) on uvicorn."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from gaussianvision.apps.cli.command import CliError, check_device, parser, run

DESCRIPTION = """Serve a trained GS encoder over HTTP (Starlette on uvicorn; docs/serve.md).

MODEL: a `gsv train` output folder, a checkpoint directory or a
gsclip.safetensors file (what gsv eval reads as gs:PATH).
  POST /embed      body: one .gsv file or several concatenated (any layout);
                   JSON: one L2-normalized embedding per image
  POST /classify   ?labels=cat,dog or ?label_set=cifar10 (world/shape, ...),
                   &top_k=5: zero-shot labels and scores per image
  GET  /health     no token needed
  GET  /metrics    requests, rejects, batch sizes, latency percentiles
Refusals are 4xx JSON {"error", "reason"}: a body over --max-body (413), a
payload the .gsv reader refuses (400), over --max-images or --max-gaussians
(422), an unknown label set (404), a missing or wrong token (401), a body whose
next piece takes over --body-timeout seconds, or all of it over 10 times that
(or the time --max-body takes at 32 KiB/s, if longer) (408). After SIGTERM or Ctrl-C the
requests in flight get 60 s to finish."""

EPILOG = """deployment:
  One process holds one model copy and batches what it receives
  (--batch-window-ms, --max-batch); on a GPU one process usually keeps the
  device busy. For more CPU cores or GPUs run several workers:
    --workers N   uvicorn starts N processes on one port, each with its model
    or one `gsv serve` per GPU (CUDA_VISIBLE_DEVICES=i), each on its own port,
    behind a load balancer (nginx, HAProxy, a cloud one; /health for checks).
  Each worker batches on its own; /metrics describes the worker that answered.
  Ray Serve can host the same app (apps.serve.app.create_app) as a deployment
  with replicas (docs/serve.md).
  The token: --token TOKEN, or GSV_SERVE_TOKEN in the environment (out of
  `ps`); clients send 'Authorization: Bearer TOKEN'. Put TLS in front (the
  load balancer) on an untrusted network.
example:
  gsv serve runs/s2 --port 8000 &
  gsv send photos/ --url http://127.0.0.1:8000 --label-set cifar10"""


def _parser():
    p = parser("serve", DESCRIPTION, epilog=EPILOG)
    p.add_argument("model", help="a `gsv train` output folder or a gsclip.safetensors file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (one model copy each)")
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu, cuda, cuda:1 ...")
    p.add_argument("--token", default=None,
                   help="Bearer token required on every route but /health (default: GSV_SERVE_TOKEN, else none)")
    p.add_argument("--max-body", type=int, default=8 << 20, help="bytes of one request body")
    p.add_argument("--max-images", type=int, default=256, help="images in one request")
    p.add_argument("--max-gaussians", type=int, default=16384, help="Gaussians of one image")
    p.add_argument("--max-labels", type=int, default=1000, help="class names of one /classify request")
    p.add_argument("--max-templates", type=int, default=100,
                   help="prompt templates of one /classify request (each class is embedded once per template)")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its forward")
    p.add_argument("--max-batch", type=int, default=64, help="images in one forward")
    p.add_argument("--top-k", type=int, default=5, help="top_k of a /classify request that gives none")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds to wait for the next piece of a request body; the whole body gets 10 times that, or "
                        "--max-body at 32 KiB/s if longer (then 408)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def settings_of(a):
    """The checked ServeSettings of the options (a CliError naming the bad one)."""
    from gaussianvision.apps.serve.settings import TOKEN_ENV, ServeSettings
    if not 0 <= a.port <= 65535:  # regression (new-user trial): one line for both, "got 70000, 1"
        raise CliError(f"--port must lie in 0..65535, got {a.port}")
    if a.workers < 1:
        raise CliError(f"--workers must be >= 1, got {a.workers}")
    if a.device != "auto":  # regression (new-user trial): 'bogus' was a traceback, 'meta' a server that cannot embed
        check_device(a.device)
    token = a.token if a.token is not None else (os.environ.get(TOKEN_ENV) or None)
    try:
        return ServeSettings(model=a.model, device=a.device, max_body=a.max_body, max_images=a.max_images,
                             max_gaussians=a.max_gaussians, max_labels=a.max_labels,
                             max_templates=a.max_templates,
                             batch_window_ms=a.batch_window_ms, max_batch=a.max_batch, top_k=a.top_k,
                             body_timeout_s=a.body_timeout, token=token).check()
    except ValueError as e:  # "max_body must be ..." -> "--max-body must be ..."
        name, _, rest = str(e).partition(" ")
        flag = {"body_timeout_s": "body-timeout"}.get(name, name.replace("_", "-"))
        raise CliError(f"--{flag} {rest}") from None


def _check_address(host: str, port: int) -> None:
    """A clear line now rather than uvicorn's log and exit when the port is taken."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise CliError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def _serve(a) -> int:
    from gaussianvision.apps.serve.server import run as run_server
    settings = settings_of(a)
    if not Path(settings.model).exists():
        raise CliError(f"{settings.model}: no such file or folder (a `gsv train` output or a gsclip.safetensors)")
    _check_address(a.host, a.port)
    try:
        run_server(settings, a.host, a.port, workers=a.workers, log_level=a.log_level)
    except ValueError as e:  # the model does not load (EvalError), or the device is missing
        raise CliError(str(e)) from None
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    return run("serve", _serve, args)
