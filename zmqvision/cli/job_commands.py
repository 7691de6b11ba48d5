"""`zmqvision run` (one machine, the whole job) and `zmqvision ventilate` (a job's images
handed to a pool)."""

from __future__ import annotations

import click

from zmqvision import sockets
from zmqvision.cli import entry
from zmqvision.cli.group import cli
from zmqvision.cli.job_setup import (
    check_inputs,
    check_model,
    finish,
    input_counter,
    interrupted_run,
    interrupted_ventilate,
    show_tiling,
    stage2_worker_model,
    stop_flag,
    vent_config,
)
from zmqvision.cli.options import (
    batch_options,
    cache_choice,
    cache_options,
    check_binds,
    curve_option,
    insecure_option,
    job_options,
    live_options,
    model_options,
    output_options,
    setup_logging,
    task_option,
)
from zmqvision.cli.params import ENDPOINT, HOST, INPUTS


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=INPUTS)
@model_options
@task_option
@job_options
@live_options
@output_options
@click.option("--workers", "-w", type=click.IntRange(1), default=1, show_default=True,
              help="Worker processes (1 lets OpenVINO's THROUGHPUT hint use all cores).")
@click.option("--device", "-d", default="CPU", show_default=True,
              help="OpenVINO device: CPU, GPU, NPU, AUTO, MULTI:…, HETERO:….")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Inference threads per worker [default: cores / workers].")
@click.option("--events", type=ENDPOINT, default=sockets.connect_endpoint(sockets.EVENTS_PORT),
              envvar="ZMQVISION_EVENTS", show_default=True,
              help="Where to publish events for `zmqvision watch` (also $ZMQVISION_EVENTS; "
                   "tcp://127.0.0.1:0: a free port).")
@click.option("--resume", is_flag=True,
              help="Keep --out and do only the images it has no record of yet.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@batch_options
@cache_options
@click.option("-v", "--verbose", count=True)
@insecure_option
def run(inputs, workers, device, threads, events, resume, progress, batch, batch_wait_ms,
        cache_url, no_cache, verbose, out, fmt, draw, masks, insecure, embed_file, **kw):
    """Run the whole job on this machine: sink, workers and ventilator."""
    from zmqvision.console import JobProgressBar
    from zmqvision.run import RunPlan, run_job
    from zmqvision.sink import SinkConfig
    from zmqvision.worker import WorkerConfig

    level = setup_logging(verbose)
    check_binds({"--events": events}, None, insecure)
    check_model(kw)
    if resume and fmt != "jsonl":
        raise click.BadParameter("--resume needs the JSONL format", param_hint="--resume")
    if embed_file and not kw["embed"]:
        raise click.BadParameter("needs --embed", param_hint="--embed-file")
    cache = cache_choice(cache_url, no_cache)
    job = vent_config(inputs, kw, resume=out if resume else None, cache=cache)
    show_tiling(job)
    check_inputs(job)
    plan = RunPlan(
        job=job,
        sink=SinkConfig(out=out, format=fmt, draw=draw, masks=masks, events=events,
                        events_fallback="tcp://127.0.0.1:0", once=False, append=resume,
                        cache=cache, insecure=insecure, embed_file=embed_file),
        worker=WorkerConfig(model=kw["model"], task=kw["task"], input_size=kw["input_size"],
                            device=device, threads=threads,
                            score_threshold=kw["score_threshold"],
                            stage2=stage2_worker_model(job), batch=batch,
                            batch_wait_ms=batch_wait_ms),
        workers=workers,
        log_level=level,
    )
    stop = stop_flag()
    counter = input_counter(job)
    bar = JobProgressBar(progress, counter)
    try:
        with bar:
            done = run_job(plan, stop, on_progress=bar.update, on_wait=bar.note)
    except Exception as exc:
        if stop.is_set():
            raise interrupted_run(out, fmt) from exc
        raise
    finally:
        if counter is not None:
            counter.stop()
    entry.skip_teardown()  # the job is over: records closed, children reaped, threads joined
    finish(done, bar)


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=INPUTS)
@model_options
@task_option
@job_options
@live_options
@click.option("--bind", "bind_tiles", type=ENDPOINT,
              default=sockets.bind_endpoint(sockets.TILES_PORT), show_default=True,
              help="Where workers connect for tiles.")
@click.option("--sink", "sink_host", type=HOST, default=sockets.DEFAULT_HOST,
              show_default=True, help="Host of the sink (its default ports).")
@click.option("--sink-results", type=ENDPOINT, default=None,
              help="Sink's results endpoint (overrides --sink).")
@click.option("--sink-events", type=ENDPOINT, default=None,
              help="Sink's events endpoint (overrides --sink).")
@click.option("--resume", "resume_file", type=click.Path(dir_okay=False), default=None,
              help="The sink's results file: continue its job, skipping images it has.")
@click.option("--job", "job_id", default=None, help="Job id [default: new, or --resume's].")
@click.option("--progress/--no-progress", default=True, show_default=True)
@cache_options
@click.option("-v", "--verbose", count=True)
@curve_option
@insecure_option
def ventilate(inputs, bind_tiles, sink_host, sink_results, sink_events, resume_file, job_id,
              progress, cache_url, no_cache, verbose, curve, insecure, **kw):
    """Send a job's tiles to the workers; return when the sink reports it complete."""
    from zmqvision.console import JobProgressBar
    from zmqvision.ventilator import ventilate as do_ventilate

    setup_logging(verbose)
    check_binds({"--bind": bind_tiles}, curve, insecure)
    check_model(kw)
    cfg = vent_config(
        inputs, kw, tiles=bind_tiles,
        sink=sink_results or sockets.connect_endpoint(sockets.RESULTS_PORT, sink_host),
        events=sink_events or sockets.connect_endpoint(sockets.EVENTS_PORT, sink_host),
        resume=resume_file, job_id=job_id, cache=cache_choice(cache_url, no_cache),
        curve=curve, insecure=insecure,
    )
    show_tiling(cfg)
    check_inputs(cfg)
    stop = stop_flag()
    counter = input_counter(cfg)
    bar = JobProgressBar(progress, counter)
    try:
        with bar:
            done = do_ventilate(cfg, stop, on_progress=bar.update, on_wait=bar.note)
    except Exception as exc:
        if stop.is_set():
            raise interrupted_ventilate(bar) from exc
        raise
    finally:
        if counter is not None:
            counter.stop()
    finish(done, bar)
