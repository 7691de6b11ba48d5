"""Between the routes and the Pool: admission, coalescing and deadlines.

Everything here runs in the server's event loop (one thread), so the counters and the
table of requests in flight need no locks."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from zmqvision.engine import RequestTimeout
from zmqvision.pool import Pool, PoolClosed


class Overloaded(RuntimeError):
    """No room for the request's images: the answer is 429 with Retry-After."""


class DeadlinePassed(TimeoutError):
    """The request's deadline passed before its record came (504); the pool's request
    was withdrawn if no other caller waits for it."""


class Admission:
    """At most ``limit`` images admitted at once (queued at the pool or in flight); the
    rest are refused at once rather than queued without bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.admitted = 0

    def enter(self, n: int = 1) -> None:
        if self.admitted + n > self.limit:
            raise Overloaded(f"{self.admitted} images in flight (limit {self.limit})")
        self.admitted += n

    def leave(self, n: int = 1) -> None:
        self.admitted -= n


@dataclass(eq=False)
class Flight:
    """One request to the pool and the HTTP requests that wait for it."""

    future: Future  # the pool's
    waiting: asyncio.Future  # the same, in the event loop
    waiters: int = 0
    key: tuple = field(default=())


class Coalescer:
    """The same image with the same settings while one is in flight: one pool request,
    every caller gets its record (named as that caller named it). When the last caller
    leaves (its deadline passed, or it disconnected) the pool's future is cancelled, which
    withdraws the request."""

    def __init__(self) -> None:
        self.flights: dict[tuple, Flight] = {}

    async def run(self, key: tuple, submit: Callable[[], Future]) -> tuple[dict, bool]:
        """``(record, shared)``: shared is True when another caller's request answered."""
        flight = self.flights.get(key)
        shared = flight is not None
        if flight is None:
            future = submit()
            flight = Flight(future, asyncio.wrap_future(future), key=key)
            self.flights[key] = flight
            flight.waiting.add_done_callback(lambda _: self._land(flight))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.waiting), shared
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.waiting.done():
                self._land(flight)
                flight.future.cancel()  # nobody waits: the pool withdraws it

    def _land(self, flight: Flight) -> None:
        if self.flights.get(flight.key) is flight:
            del self.flights[flight.key]
        if flight.waiting.done() and not flight.waiting.cancelled():
            flight.waiting.exception()  # retrieved: no "never retrieved" warning


def content_key(body: bytes, settings: dict[str, Any]) -> tuple:
    """Equal for equal bytes and equal settings (what makes equal records)."""
    digest = hashlib.blake2b(body, digest_size=16).digest()
    return digest, tuple(sorted(settings.items()))


class Detector:
    """One image (or several) through admission, coalescing and a deadline to the pool."""

    def __init__(self, pool: Pool, admission: Admission,
                 on_shared: Callable[[], None] | None = None) -> None:
        self.pool = pool
        self.admission = admission
        self.coalescer = Coalescer()
        self.on_shared = on_shared

    async def detect(self, body: bytes, *, name: str, settings: dict[str, Any],
                     timeout: float) -> dict:
        """The image's record; raises Overloaded, DeadlinePassed, PoolClosed, TypeError or
        ValueError (settings the pool refuses)."""
        self.admission.enter()
        try:
            return await self._one(body, name, settings, timeout)
        finally:
            self.admission.leave()

    async def detect_many(self, images: list[tuple[str, bytes]], *,
                          settings: dict[str, Any], timeout: float) -> list[dict]:
        """Records in the order of ``images``, under one deadline for all; an image whose
        deadline passed gets a record with error type ``timeout`` (as ``Pool.map``)."""
        self.admission.enter(len(images))
        try:
            return list(await asyncio.gather(*(self._or_timeout(body, name, settings,
                                                                timeout)
                                               for name, body in images)))
        finally:
            self.admission.leave(len(images))

    async def _or_timeout(self, body: bytes, name: str, settings: dict[str, Any],
                          timeout: float) -> dict:
        try:
            return await self._one(body, name, settings, timeout)
        except DeadlinePassed as exc:
            return {"image": name, "width": 0, "height": 0, "model": None,
                    "detections": [], "error": {"type": "timeout", "message": str(exc)},
                    "id": None, "hash": None, "tiles": 0, "job": None, "settings": None,
                    "cached": False}

    async def _one(self, body: bytes, name: str, settings: dict[str, Any],
                   timeout: float) -> dict:
        key = content_key(body, settings)

        def submit() -> Future:
            return self.pool.submit(body, name=name, **settings)

        try:
            # On the deadline wait_for cancels run(), whose last waiter cancels the pool's
            # future: the pool withdraws the request.
            record, shared = await asyncio.wait_for(self.coalescer.run(key, submit), timeout)
        except RequestTimeout as exc:
            raise DeadlinePassed(str(exc)) from None
        except asyncio.TimeoutError:
            raise DeadlinePassed(f"{name}: no record after {timeout:g} s") from None
        if shared:
            if self.on_shared is not None:
                self.on_shared()
            if record.get("image") != name:
                record = {**record, "image": name}  # the caller's name for it
        return record


__all__ = ["Admission", "Coalescer", "DeadlinePassed", "Detector", "Overloaded",
           "PoolClosed"]
