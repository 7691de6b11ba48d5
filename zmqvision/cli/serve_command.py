"""`zmqvision serve`: the pool behind an HTTP inference API."""

from __future__ import annotations

import click

from zmqvision import sockets
from zmqvision.cli.group import cli
from zmqvision.cli.job_setup import check_model, stop_flag
from zmqvision.cli.options import (
    announcer,
    cache_choice,
    cache_options,
    check_binds,
    child_options,
    curve_option,
    insecure_option,
    model_options,
    setup_logging,
)
from zmqvision.cli.params import ENDPOINT, HOST


def _byte_size(ctx, param, value):
    """``33554432``, ``512K``, ``32M`` or ``1G`` → bytes."""
    if isinstance(value, int):
        return value
    text = str(value).strip().upper().removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    try:
        n = int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size like 32M", ctx, param) from None
    if n < 1:
        raise click.BadParameter(f"{value!r} is not a positive size", ctx, param)
    return n


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0: every one).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port (0: one the OS picks, announced on stdout).")
@model_options
@click.option("--connect", "connect_host", type=HOST, default=None,
              help="Front a running cluster: the sink at this host; workers connect to "
                   "--bind [default: an embedded pool of --workers on this machine].")
@click.option("--bind", "bind_tiles", type=ENDPOINT, default=None,
              help="With --connect: where workers connect for tiles "
                   f"[default: {sockets.bind_endpoint(sockets.TILES_PORT)}].")
@click.option("--sink-results", type=ENDPOINT, default=None,
              help="With --connect: the sink's results endpoint [default: from --connect].")
@click.option("--sink-events", type=ENDPOINT, default=None,
              help="With --connect: the sink's events endpoint [default: from --connect].")
@click.option("--workers", "-w", type=click.IntRange(1), default=1, show_default=True,
              help="Embedded worker processes.")
@click.option("--device", "-d", default="CPU", show_default=True,
              help="OpenVINO device of the embedded workers.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Inference threads per embedded worker.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=30.0,
              show_default=True,
              help="A request's deadline in seconds unless it asks for another (query "
                   "timeout=, header Request-Timeout); past it: 504, the request withdrawn.")
@click.option("--max-queue", type=click.IntRange(1), default=256, show_default=True,
              help="Images admitted at once; past it: 429 with Retry-After.")
@click.option("--header-timeout", type=click.FloatRange(0, min_open=True), default=75.0,
              show_default=True,
              help="Seconds for a request's headers to arrive, from the connection's "
                   "opening or its last answer (also the keep-alive idle limit); past it "
                   "the connection is closed (slowloris).")
@click.option("--read-timeout", type=click.FloatRange(0, min_open=True), default=30.0,
              show_default=True,
              help="Seconds for a request's body to arrive once its headers have; past it: "
                   "408 and the connection closed.")
@click.option("--max-body", default="32M", show_default=True, callback=_byte_size,
              help="Largest request body (bytes, or 512K, 32M); past it: 413.")
@click.option("--max-pixels", type=click.IntRange(1), default=None,
              help="Refuse images with more pixels (422, too_large) [default: the CLI's].")
@click.option("--batch", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Tiles per inference of the embedded workers (`zmqvision worker "
                   "--batch`); not with --connect.")
@cache_options
@click.option("-v", "--verbose", count=True)
@curve_option
@insecure_option
@child_options
def serve(host, port, model, input_size, connect_host, bind_tiles, sink_results,
          sink_events, workers, device, threads, timeout, max_queue, header_timeout,
          read_timeout, max_body, max_pixels, batch,
          cache_url, no_cache, verbose, curve, insecure, announce, parent_pid, log_level):
    """Serve the pool over HTTP: /v1/detect, KServe v2 (/v2/...), /metrics."""
    from zmqvision import Pool
    from zmqvision.serve import ServeConfig, serve_forever

    level = setup_logging(verbose, log_level)
    check_model({"model": model, "input_size": input_size})
    if connect_host is None and (bind_tiles or sink_results or sink_events):
        raise click.BadParameter("--bind, --sink-results and --sink-events go with "
                                 "--connect", param_hint="--connect")
    if connect_host is not None and batch != 1:
        raise click.BadParameter("--batch is for the embedded workers; give it to the "
                                 "cluster's workers (zmqvision worker --batch)",
                                 param_hint="--batch")
    cache = cache_choice(cache_url, no_cache)
    settings = {"input_size": input_size}
    if max_pixels is not None:
        settings["max_pixels"] = max_pixels
    config = ServeConfig(host=host, port=port, timeout=timeout,
                         max_timeout=max(timeout, ServeConfig.max_timeout),
                         max_queue=max_queue, max_body=max_body,
                         header_timeout=header_timeout, read_timeout=read_timeout)
    stop = stop_flag(parent_pid)
    if connect_host is None:
        pool = Pool(model=model, workers=workers, device=device, threads=threads,
                    cache=cache, log_level=level, batch=batch, **settings)
    else:
        check_binds({"--bind": bind_tiles or ""}, curve, insecure)
        pool = Pool.connect(connect_host, tiles=bind_tiles, sink=sink_results,
                            events=sink_events, curve=curve, model=model, cache=cache,
                            insecure=insecure, **settings)
    with pool:
        announce_ready = announcer(announce)

        def ready(info: dict) -> None:
            click.echo(f"zmqvision serve: {model} on {info['url']}", err=True)
            if announce_ready is not None:
                announce_ready(info)

        serve_forever(pool, config, stop, on_ready=ready)
