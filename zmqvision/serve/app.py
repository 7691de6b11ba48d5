"""The routes of ``zmqvision serve`` (aiohttp): ``/v1/detect``, ``/v1/detect/batch``, the
KServe v2 REST routes, ``/metrics``. See the package doc for the parts behind them.

Status codes: 200 a record without error; 400 a body that is not an image (the record's
error type: ``corrupt_image``, ``unsupported_format``, ``empty_file``) or bad options; 408
a body that did not arrive within ``read_timeout`` (and the connection closed; headers that
do not arrive within ``header_timeout`` get no answer, only the connection closed); 413 a
body over ``max_body``; 422 an image over the pixel limit (``too_large``); 429 no room
(with ``Retry-After``); 502 the worker could not infer it; 503 no worker alive (with
``Retry-After``) or the pool closed; 504 the deadline passed (the request is withdrawn
from the pool)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from zmqvision import __version__
from zmqvision.pool import Pool, PoolClosed
from zmqvision.serve import kserve
from zmqvision.serve.config import ServeConfig
from zmqvision.serve.detector import Admission, DeadlinePassed, Detector, Overloaded
from zmqvision.serve.metrics import CONTENT_TYPE, Metrics
from zmqvision.serve.options import BadOptions, SettingsGate, timeout_of

log = logging.getLogger("zmqvision.serve")

# A record's error type → the answer's status.
ERROR_STATUS = {"too_large": 422, "corrupt_image": 400, "unsupported_format": 400,
                "empty_file": 400, "inference_failed": 502, "timeout": 504}
TIMEOUT_HEADER = "Request-Timeout"
DISCONNECTED = 499  # nginx's "client closed request": a status only the metrics see

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Failure(Exception):
    """An answer other than a record: status, error type, message, extra headers."""

    def __init__(self, status: int, kind: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers or {}


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(doc, separators=(",", ":")).encode(), status=status,
                        content_type="application/json", headers=headers)


class Routes:
    """The handlers, over one pool; state built here, nothing global."""

    def __init__(self, pool: Pool, config: ServeConfig) -> None:
        self.pool = pool
        self.config = config
        self.metrics = Metrics(pool)
        self.admission = Admission(config.max_queue)
        self.metrics.admitted.set_function(lambda: self.admission.admitted)
        self.detector = Detector(pool, self.admission, on_shared=self.metrics.coalesced.inc)
        self.gate = SettingsGate(config.max_settings, pool.defaults.max_pixels,
                                 pool.stream_idle_s)
        self.model = pool.defaults.model
        spec = pool.plan(pool.defaults).spec
        self.version, self.model_ref = spec.version, spec.ref

    # ------------------------------------------------------------------ the application

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body,
                              middlewares=[self.middleware])
        r = app.router
        r.add_post("/v1/detect", self.detect)
        r.add_post("/v1/detect/batch", self.detect_batch)
        r.add_get("/v2", self.server_metadata)
        r.add_get("/v2/health/live", self.live)
        r.add_get("/v2/health/ready", self.ready)
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            r.add_get(base, self.model_metadata)
            r.add_get(base + "/ready", self.model_ready)
            r.add_post(base + "/infer", self.infer)
        r.add_get("/metrics", self.render_metrics)
        return app

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Metrics of every request, and ``Failure`` → its JSON answer."""
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "other"
        status = 500
        self.metrics.in_flight.inc()
        try:
            try:
                response = await handler(request)
            except Failure as f:
                if f.status == 429:
                    self.metrics.rejected.inc()
                doc = ({"error": f"{f.kind}: {f}"} if route.startswith("/v2") else
                       {"error": {"type": f.kind, "message": str(f)}})
                response = _json(doc, f.status, f.headers)
                if f.status == 408:
                    await self._answer_and_close(request, response)
            except web.HTTPException as exc:
                status = exc.status
                raise
            status = response.status
            return response
        except asyncio.CancelledError:
            status = DISCONNECTED
            raise
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    @staticmethod
    async def _answer_and_close(request: web.Request, response: web.Response) -> None:
        """Send the answer now and close the connection: the rest of a slow body is not
        waited for (aiohttp would otherwise read it for up to 10 s more, its lingering
        time, before closing)."""
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        if request.protocol is not None:
            request.protocol.force_close()  # the transport flushes the answer, then closes

    # ------------------------------------------------------------------ reading requests

    async def _body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.config.max_body:
            raise Failure(413, "too_large", f"the body has {length} bytes, more than the "
                          f"limit ({self.config.max_body})")
        try:
            # aiohttp answers 413 past client_max_size (a chunked body has no length)
            return await asyncio.wait_for(request.read(), self.config.read_timeout)
        except asyncio.TimeoutError:
            raise Failure(408, "request_timeout", "the body did not arrive within "
                          f"{self.config.read_timeout:g} s") from None

    async def _files(self, request: web.Request) -> tuple[list[tuple[str, bytes]],
                                                          dict[str, str]]:
        """The files of a multipart body (as ``curl -F image=@x.jpg`` sends them) and its
        other fields (options, like the query's)."""
        files: list[tuple[str, bytes]] = []
        fields: dict[str, str] = {}
        try:
            await asyncio.wait_for(self._read_parts(request, files, fields),
                                   self.config.read_timeout)
        except asyncio.TimeoutError:
            raise Failure(408, "request_timeout", "the body did not arrive within "
                          f"{self.config.read_timeout:g} s") from None
        except (ValueError, AssertionError) as exc:  # a malformed multipart body
            raise Failure(400, "bad_request", f"malformed multipart body: {exc}") from None
        return files, fields

    async def _read_parts(self, request: web.Request, files: list[tuple[str, bytes]],
                          fields: dict[str, str]) -> None:
        total = 0
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            chunks = []
            while chunk := await part.read_chunk(1 << 16):
                total += len(chunk)
                if total > self.config.max_body:
                    raise Failure(413, "too_large", "the body is larger than the limit "
                                  f"({self.config.max_body} bytes)")
                chunks.append(chunk)
            data = b"".join(chunks)
            if part.filename is not None or part.name in ("image", "images"):
                files.append((part.filename or part.name or "upload", data))
            elif part.name:
                fields[part.name] = data.decode(errors="replace")

    async def _images(self, request: web.Request) -> tuple[list[tuple[str, bytes]],
                                                           dict[str, str]]:
        options: dict[str, str] = dict(request.query)
        if request.content_type.startswith("multipart/"):
            files, fields = await self._files(request)
            options.update(fields)
        else:
            files = [(options.get("name", "upload"), await self._body(request))]
        return files, options

    def _settings(self, options: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.gate.settings(options)
        except BadOptions as exc:
            raise Failure(400, "bad_request", str(exc)) from None

    def _timeout(self, options: dict[str, Any], request: web.Request) -> float:
        try:
            return timeout_of(options, request.headers.get(TIMEOUT_HEADER),
                              self.config.timeout, self.config.max_timeout)
        except BadOptions as exc:
            raise Failure(400, "bad_request", f"timeout: {exc}") from None

    def _check_model(self, options: dict[str, Any]) -> None:
        model = options.get("model")
        if model is not None and model != self.model:
            raise Failure(404, "unknown_model", f"this server serves {self.model!r}, "
                          f"not {model!r}")

    # ------------------------------------------------------------------ detecting

    async def _detect(self, calls: Callable[[], Awaitable[Any]]) -> Any:
        if not self.is_ready():  # nothing could answer: say so now, not at the deadline
            raise Failure(503, "unavailable", "no worker is alive",
                          {"Retry-After": str(self.config.retry_after_s)})
        try:
            return await calls()
        except Overloaded as exc:
            raise Failure(429, "overloaded", str(exc),
                          {"Retry-After": str(self.config.retry_after_s)}) from None
        except DeadlinePassed as exc:
            raise Failure(504, "timeout", str(exc)) from None
        except PoolClosed as exc:
            raise Failure(503, "unavailable", str(exc)) from None
        except (TypeError, ValueError) as exc:  # settings the pool's plan refuses
            raise Failure(400, "bad_request", str(exc)) from None

    def _count(self, record: dict) -> None:
        if record.get("cached"):
            self.metrics.cache_hits.inc()

    async def detect(self, request: web.Request) -> web.Response:
        files, options = await self._images(request)
        if len(files) != 1:
            raise Failure(400, "bad_request", f"{len(files)} images in the request; "
                          "/v1/detect takes one (several: /v1/detect/batch)")
        self._check_model(options)
        settings, timeout = self._settings(options), self._timeout(options, request)
        name, body = files[0]
        record = await self._detect(lambda: self.detector.detect(
            body, name=name, settings=settings, timeout=timeout))
        self._count(record)
        error = record.get("error")
        return _json(record, ERROR_STATUS.get(error["type"], 500) if error else 200)

    async def detect_batch(self, request: web.Request) -> web.Response:
        """Several images (multipart files): ``{"records": [...]}`` in their order, each
        with its own error; 200 unless the request as a whole could not be taken."""
        files, options = await self._images(request)
        if not files or len(files) > self.config.max_batch:
            raise Failure(400, "bad_request", f"{len(files)} images; a batch holds 1 to "
                          f"{self.config.max_batch}")
        self._check_model(options)
        settings, timeout = self._settings(options), self._timeout(options, request)
        records = await self._detect(lambda: self.detector.detect_many(
            files, settings=settings, timeout=timeout))
        for record in records:
            self._count(record)
        return _json({"records": records})

    # ------------------------------------------------------------------ KServe v2

    def is_ready(self) -> bool:
        """A worker with this server's model is alive (a worker of another model that
        joined the cluster could only answer ``model_mismatch``)."""
        return self.pool.workers_alive(self.model_ref) > 0

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json(kserve.server_metadata(__version__))

    async def live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.is_ready()
        return _json({"ready": ready}, 200 if ready else 503)

    def _model(self, request: web.Request) -> None:
        name, version = request.match_info["name"], request.match_info.get("version")
        if name != self.model or version not in (None, "", self.version):
            raise Failure(404, "unknown_model", f"no model {name!r}"
                          + (f" version {version!r}" if version else "")
                          + f"; this server serves {self.model!r} version {self.version!r}")

    async def model_metadata(self, request: web.Request) -> web.Response:
        self._model(request)
        return _json(kserve.model_metadata(self.model, self.version))

    async def model_ready(self, request: web.Request) -> web.Response:
        self._model(request)
        ready = self.is_ready()
        return _json({"name": self.model, "ready": ready}, 200 if ready else 503)

    async def infer(self, request: web.Request) -> web.Response:
        self._model(request)
        body = await self._body(request)
        try:
            req = kserve.parse_infer(body, request.headers.get(kserve.HEADER))
        except kserve.InferError as exc:
            raise Failure(400, "bad_request", str(exc)) from None
        options = {**request.query, **req.parameters}
        settings, timeout = self._settings(options), self._timeout(options, request)
        record = await self._detect(lambda: self.detector.detect(
            req.image, name=req.id or "upload", settings=settings, timeout=timeout))
        self._count(record)
        error = record.get("error")
        if error:
            raise Failure(ERROR_STATUS.get(error["type"], 500), error["type"],
                          error.get("message", ""))
        payload, header_length = kserve.infer_response(self.model, self.version, req, record)
        headers = {} if header_length is None else {kserve.HEADER: str(header_length)}
        return web.Response(body=payload, headers=headers, content_type=(
            "application/json" if header_length is None else "application/octet-stream"))

    # ------------------------------------------------------------------ metrics

    async def render_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": CONTENT_TYPE})


def build_app(pool: Pool, config: ServeConfig) -> web.Application:
    return Routes(pool, config).app()
