"""Running the routes: ``Server`` (its own event loop in a thread: tests, embedding) and
``serve_forever`` (the main thread of ``zmqvision serve``, until its stop flag is set)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from aiohttp import web

from zmqvision import sockets
from zmqvision.pool import Pool
from zmqvision.serve.app import build_app
from zmqvision.serve.config import ServeConfig

SHUTDOWN_S = 5.0  # requests still open at shutdown get this long to finish


async def _start(pool: Pool, config: ServeConfig) -> tuple[web.AppRunner, int]:
    # handler_cancellation: a client that disconnects cancels its handler, which cancels
    # its pool request (withdrawn) rather than inferring an answer nobody reads.
    # keepalive_timeout is the header timeout: aiohttp's keep-alive timer runs from the
    # connection's opening (and from each answer) and closes the connection if no complete
    # request has arrived by then; partial headers do not restart it (aiohttp's own
    # default is an hour).
    runner = web.AppRunner(build_app(pool, config), handler_cancellation=True,
                           access_log=None, shutdown_timeout=SHUTDOWN_S,
                           keepalive_timeout=config.header_timeout)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # the OS's choice for port 0
    return runner, port


async def _serve(pool: Pool, config: ServeConfig, stop: sockets.StopFlag,
                 on_ready: Callable[[dict], None] | None) -> None:
    runner, port = await _start(pool, config)
    try:
        if on_ready is not None:
            on_ready({"url": f"http://{config.host}:{port}", "port": port,
                      "tiles": pool.tiles_endpoint})
        while not stop.is_set():
            await asyncio.sleep(0.1)
    finally:
        await runner.cleanup()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # optional: a faster event loop where it is installed
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve_forever(pool: Pool, config: ServeConfig, stop: sockets.StopFlag,
                  on_ready: Callable[[dict], None] | None = None) -> None:
    """Serve until ``stop`` is set (SIGINT, SIGTERM), then close the listening socket and
    give open requests ``SHUTDOWN_S`` to finish. ``on_ready``: called with the URL once
    listening."""
    loop = _new_loop()
    try:
        loop.run_until_complete(_serve(pool, config, stop, on_ready))
    finally:
        loop.close()


class Server:
    """A server on a thread of its own: ``start()`` returns once it listens (``url``),
    ``stop()`` shuts it down. For tests and for embedding next to other code."""

    def __init__(self, pool: Pool, config: ServeConfig | None = None) -> None:
        self.pool = pool
        self.config = config or ServeConfig(port=0)
        self.stop_flag = sockets.StopFlag()
        self.url: str | None = None
        self.port: int | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="zv-serve", daemon=True)

    def _run(self) -> None:
        try:
            serve_forever(self.pool, self.config, self.stop_flag, self._on_ready)
        except BaseException as exc:  # noqa: BLE001 - start() raises it in the caller
            self._error = exc
            self._ready.set()

    def _on_ready(self, info: dict) -> None:
        self.url, self.port = info["url"], info["port"]
        self._ready.set()

    def start(self, timeout: float = 30.0) -> Server:
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"the server did not start in {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self._thread.join(SHUTDOWN_S + 10)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
