"""The pool's long-running roles: `zmqvision sink`, `zmqvision worker`, and the live view
`zmqvision watch`."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

import click

from zmqvision import sockets
from zmqvision.cli.group import cli
from zmqvision.cli.job_setup import check_model, stop_flag
from zmqvision.cli.options import (
    announcer,
    batch_options,
    cache_choice,
    cache_options,
    check_binds,
    child_options,
    curve_option,
    insecure_option,
    model_options,
    output_options,
    setup_logging,
    task_option,
)
from zmqvision.cli.params import ENDPOINT, ENDPOINTS, HOST, EventsType

if TYPE_CHECKING:  # imported by the commands that need them: the others load neither
    from zmqvision.sink import SinkConfig
    from zmqvision.worker import WorkerConfig


@cli.command()
@output_options
@click.option("--bind-results", type=ENDPOINT,
              default=sockets.bind_endpoint(sockets.RESULTS_PORT), show_default=True,
              help="Where workers and ventilators send to.")
@click.option("--bind-events", type=ENDPOINT, default=sockets.bind_endpoint(sockets.EVENTS_PORT),
              show_default=True, help="Where watchers and ventilators subscribe.")
@click.option("--bind-events-fallback", type=ENDPOINT, default=None, hidden=True,
              help="Bind this instead when --bind-events is taken.")
@click.option("--overwrite", is_flag=True,
              help="Start --out afresh. By default an existing --out is the journal: a "
                   "restarted sink continues its jobs and never writes an image twice.")
@click.option("--append", is_flag=True, hidden=True, help="The default (kept for scripts).")
@click.option("--once", is_flag=True, help="Exit after the first job completes.")
@cache_options
@click.option("-v", "--verbose", count=True)
@curve_option
@insecure_option
@child_options
@click.pass_context
def sink(ctx, verbose, announce, parent_pid, log_level, **_):
    """Collect partial results, merge them per image, write records, publish events."""
    from zmqvision.sink import run_sink

    setup_logging(max(verbose, 1), log_level)
    cfg = sink_config(ctx.params)
    check_binds({"--bind-results": cfg.results, "--bind-events": cfg.events},
                 cfg.curve, cfg.insecure)
    sys.exit(run_sink(cfg, stop_flag(parent_pid), on_ready=announcer(announce)))


def sink_config(params: Mapping) -> SinkConfig:
    """The SinkConfig that `zmqvision sink`'s parsed ``params`` describe (the inverse of
    run.sink_args)."""
    from zmqvision.sink import SinkConfig

    return SinkConfig(results=params["bind_results"], events=params["bind_events"],
                      events_fallback=params["bind_events_fallback"], out=params["out"],
                      format=params["fmt"], draw=params["draw"], masks=params["masks"],
                      append=not params["overwrite"], once=params["once"],
                      cache=cache_choice(params["cache_url"], params["no_cache"]),
                      curve=params["curve"], insecure=params["insecure"],
                      embed_file=params["embed_file"])


@cli.command()
@model_options
@task_option
@click.option("--device", "-d", default="CPU", show_default=True,
              help="OpenVINO device: CPU, GPU, NPU, AUTO, MULTI:…, HETERO:….")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Inference threads (share cores between workers on one host).")
@click.option("--requests", type=click.IntRange(1), default=None,
              help="Infer requests in flight [default: 2 x the device's optimum + 1].")
@click.option("--hint", type=click.Choice(["THROUGHPUT", "LATENCY"]), default="THROUGHPUT",
              show_default=True)
@click.option("--score-threshold", type=click.FloatRange(0, 1), default=None)
@click.option("--connect", "host", type=HOST, default=sockets.DEFAULT_HOST, show_default=True,
              help="Host of the ventilator and sink (their default ports).")
@click.option("--tiles", type=ENDPOINTS, default=None,
              help="Ventilator tiles endpoint(s), comma-separated (overrides --connect).")
@click.option("--results", type=ENDPOINT, default=None,
              help="Sink's results endpoint (overrides --connect).")
@click.option("--heartbeat", type=click.FloatRange(0.05), default=1.0, show_default=True,
              help="Seconds between heartbeats.")
@click.option("--id", "worker_id", default=None, help="Worker id [default: host-pid-random].")
@click.option("--stage2", default=None,
              help="Also run this second-stage model for two-stage jobs' crops: "
                   "mobilefacenet (run --identify), plates-rec or ppocr-v4-rec (run "
                   "--model plates/ocr) [default with --model plates/ocr: its reader].")
@batch_options
@click.option("-v", "--verbose", count=True)
@curve_option
@child_options
@click.pass_context
def worker(ctx, verbose, announce, parent_pid, log_level, **_):
    """Infer tiles with OpenVINO; connect to a ventilator and a sink."""
    from zmqvision.worker import run_worker

    setup_logging(max(verbose, 1), log_level)
    check_model(ctx.params)
    cfg = worker_config(ctx.params)
    announce_ready = announcer(announce)
    sys.exit(run_worker(cfg, stop_flag(parent_pid), on_ready=announce_ready and
                        (lambda wid: announce_ready({"worker": wid}))))


def worker_config(params: Mapping) -> WorkerConfig:
    """The WorkerConfig that `zmqvision worker`'s parsed ``params`` describe (the inverse
    of run.worker_args)."""
    from zmqvision.worker import WorkerConfig

    host = params["host"]
    return WorkerConfig(
        tiles=params["tiles"] or sockets.connect_endpoint(sockets.TILES_PORT, host),
        results=params["results"] or sockets.connect_endpoint(sockets.RESULTS_PORT, host),
        model=params["model"], task=params["task"], input_size=params["input_size"],
        device=params["device"], threads=params["threads"], hint=params["hint"],
        requests=params["requests"],
        score_threshold=params["score_threshold"], heartbeat_s=params["heartbeat"],
        worker_id=params["worker_id"],
        curve=params["curve"], stage2=params.get("stage2"),
        batch=params.get("batch", 1), batch_wait_ms=params.get("batch_wait_ms", 2.0),
    )


@cli.command()
@click.option("--connect", "endpoint", type=EventsType(),
              default=sockets.connect_endpoint(sockets.EVENTS_PORT), show_default=True,
              help="The sink's events endpoint (or `zmqvision run`'s), or HOST[:PORT].")
@click.option("--json", "as_json", is_flag=True,
              help="Events as JSON lines on stdout (with --once: the snapshot as JSON).")
@click.option("--once", is_flag=True,
              help="Print one snapshot and exit: 0 if the sink was heard, 1 if not.")
@click.option("--timeout", type=click.FloatRange(0.1), default=5.0, show_default=True,
              help="With --once: how long to wait to hear the sink.")
@curve_option
def watch(endpoint, as_json, once, timeout, curve):
    """Live view of workers, jobs and the sink, from the sink's events."""
    from zmqvision.watch import watch as do_watch

    mode = "once" if once else "json" if as_json else "live"
    sys.exit(do_watch(endpoint, mode=mode, as_json=as_json, timeout=timeout,
                      stop=stop_flag(), curve=curve))
