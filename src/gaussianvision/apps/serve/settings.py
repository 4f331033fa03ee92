"""ServeSettings: what `gsv serve` is configured with (the limits, batching, token, device).

Several uvicorn workers each build their app in their own process: the settings travel to them
as JSON in the environment variable SETTINGS_ENV (the token stays in GSV_SERVE_TOKEN)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

__all__ = ["ServeSettings", "SETTINGS_ENV", "TOKEN_ENV"]

SETTINGS_ENV = "GSV_SERVE_SETTINGS"
TOKEN_ENV = "GSV_SERVE_TOKEN"


@dataclass(frozen=True)
class ServeSettings:
    model: str = ""                  # a `gsv train` output folder or a gsclip.safetensors file
    device: str = "auto"             # auto: cuda when there is one, else cpu
    max_body: int = 8 << 20          # bytes of one request body
    max_images: int = 256            # images in one request (over all its payloads)
    max_gaussians: int = 16384       # Gaussians of one image
    max_labels: int = 1000           # class names of one /classify request
    max_templates: int = 100         # prompt templates of one /classify request (clip_benchmark's sets have up to 80)
    batch_window_ms: float = 5.0     # how long the first request of a batch waits for others
    max_batch: int = 64              # images in one forward
    top_k: int = 5                   # /classify's default top-k
    body_timeout_s: float = 30.0     # the longest wait for the next piece of a request body, x10 for all of it (408)
    token: str | None = None         # Bearer token for every route but /health (None: open)

    def check(self) -> "ServeSettings":
        for name in ("max_body", "max_images", "max_gaussians", "max_labels", "max_templates", "max_batch", "top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.batch_window_ms <= 10_000:
            raise ValueError(f"batch_window_ms must lie in [0, 10000], got {self.batch_window_ms}")
        if not 0 < self.body_timeout_s <= 3600:
            raise ValueError(f"body_timeout_s must lie in (0, 3600] seconds, got {self.body_timeout_s}")
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be empty")
        return self

    def to_env(self) -> dict[str, str]:
        """The environment that carries these settings to worker processes (token apart)."""
        env = {SETTINGS_ENV: json.dumps({k: v for k, v in asdict(self).items() if k != "token"})}
        if self.token:
            env[TOKEN_ENV] = self.token
        return env

    @classmethod
    def from_env(cls, environ=os.environ) -> "ServeSettings":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in json.loads(environ.get(SETTINGS_ENV, "{}")).items() if k in known}
        return cls(**values, token=environ.get(TOKEN_ENV) or None).check()
