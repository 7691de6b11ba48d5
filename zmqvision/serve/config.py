"""The server's settings (``zmqvision serve`` flags), frozen once parsed."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PORT = 8000


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0: one the OS picks (tests); Server.port tells which
    # Seconds a request may take unless it asks for another deadline (query ``timeout``,
    # header ``Request-Timeout``); at most ``max_timeout``.
    timeout: float = 30.0
    max_timeout: float = 300.0
    # Images admitted at once (in flight or queued at the pool): past it, 429 with
    # Retry-After. Bounds the server's memory and every request's wait.
    max_queue: int = 256
    max_body: int = 32 << 20  # bytes of one request body: past it, 413
    max_batch: int = 64  # images in one /v1/detect/batch request
    # Seconds to receive a request's body once its headers are in: past it 408 and the
    # connection closed. A slow body never holds a worker or an admission slot (the pool
    # sees an image only once its bytes are all here).
    read_timeout: float = 30.0
    # Seconds for a request's headers to arrive complete, counted from the connection's
    # opening or its previous answer; past it the connection is closed without an answer
    # (a slowloris client sending a byte a second). The same clock closes an idle
    # keep-alive connection, so behind a load balancer set it above the balancer's own
    # idle timeout (AWS ALB: 60 s), or the balancer may reuse a connection being closed.
    header_timeout: float = 75.0
    max_settings: int = 64  # distinct job settings one server accepts (each is a job)
    retry_after_s: int = 1
