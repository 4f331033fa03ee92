"""Loading the model and running the server.

    engine = load_engine("runs/s2", device="auto")        # gsv eval's loader (gs:PATH), on its device
    run(ServeSettings(model="runs/s2"), host, port, workers=1)   # uvicorn, blocking
    live = serve_in_thread(create_app(engine, settings))  # a running server in this process (tests, the load test)

With workers > 1 uvicorn starts that many processes, each loading the model and building its
app from the environment (ServeSettings.to_env / app_from_env): one model copy per worker."""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass

from .app import create_app
from .engine import Engine, pick_device
from .settings import ServeSettings

__all__ = ["load_engine", "run", "serve_in_thread", "LiveServer", "app_from_env"]


def load_engine(model: str, device: str = "auto") -> Engine:
    """A GS model as `gsv eval --model gs:PATH` loads it (a `gsv train` folder or checkpoint
    directory, or a gsclip.safetensors file), on `device`. ValueError with the reason."""
    from gaussianvision.eval.models import load_eval_model
    dev = pick_device(device)
    em = load_eval_model(f"gs:{model}", device=dev)  # EvalError is a ValueError
    return Engine(em.model, em.tokenizer, dev, name=em.label)


def app_from_env():
    """uvicorn's factory in each worker process: settings from the environment."""
    settings = ServeSettings.from_env()
    return create_app(load_engine(settings.model, settings.device), settings)


# After SIGTERM (or Ctrl-C) the requests in flight get this long to finish; then their connections are closed and
# the server ends. Regression (new-user trial): a client holding a half-sent body kept `gsv serve` alive for ever.
SHUTDOWN_SECONDS = 60


def run(settings: ServeSettings, host: str, port: int, workers: int = 1, log_level: str = "info") -> None:
    import uvicorn
    settings.check()
    if workers > 1:
        os.environ.update(settings.to_env())
        uvicorn.run(f"{__name__}:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, timeout_graceful_shutdown=SHUTDOWN_SECONDS)
        return
    app = create_app(load_engine(settings.model, settings.device), settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=SHUTDOWN_SECONDS)


@dataclass
class LiveServer:
    url: str
    server: object   # uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                    timeout: float = 30.0) -> LiveServer:
    """Run `app` on uvicorn in a daemon thread of this process (port 0: a free one); returns once
    it accepts connections."""
    import uvicorn
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on",
                                           timeout_graceful_shutdown=SHUTDOWN_SECONDS))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="gsv-serve")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    return LiveServer(f"http://{host}:{sock.getsockname()[1]}", server, thread)
