"""ServeError: a refused request. Every refusal is a JSON answer {"error", "reason", ...} with a
4xx status; the server keeps serving."""
from __future__ import annotations

__all__ = ["ServeError"]


class ServeError(Exception):
    """status: the HTTP status; reason: a stable machine-readable word (counted in /metrics);
    message: one clear sentence; extra: more JSON fields (the limit, the value seen)."""

    def __init__(self, status: int, reason: str, message: str, **extra):
        super().__init__(message)
        self.status, self.reason, self.message, self.extra = status, reason, message, extra

    def body(self) -> dict:
        return {"error": self.message, "reason": self.reason, **self.extra}
