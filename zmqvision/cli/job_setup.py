"""Turning `run` and `ventilate`'s options into a job: configs, checks, the tiling summary,
and how a job's end becomes an exit code."""

from __future__ import annotations

import os
import sys

import click

from zmqvision import sockets
from zmqvision.cli.options import check_video, live_config
from zmqvision.errors import CommandError, ExitCode, register_stop


def vent_config(inputs, kw, **extra):
    from zmqvision.io import DEFAULT_MAX_PIXELS
    from zmqvision.merge import MergeConfig
    from zmqvision.ventilator import VentilateConfig

    try:
        merge = MergeConfig(method=kw["merge_method"], metric=kw["match_metric"],
                            threshold=kw["match_threshold"],
                            class_agnostic=kw["class_agnostic"])
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    exts = None
    if kw["ext"]:
        exts = frozenset(e.strip().lower().lstrip(".") for e in kw["ext"].split(",") if e.strip())
    return VentilateConfig(
        inputs=tuple(inputs), model=kw["model"], input_size=kw["input_size"],
        tile_size=kw["tile_size"], overlap=kw["overlap"], full_pass=kw["full_pass"],
        scales=kw["scales"], min_size=kw["min_size"],
        merge=merge, score_threshold=kw["score_threshold"],
        max_pixels=kw["max_pixels"] or DEFAULT_MAX_PIXELS, extensions=exts,
        max_file_bytes=kw["max_file_size"],
        timeout=kw["timeout"], window=kw["window"], wire=kw["wire"],
        jpeg_draft=not kw["full_decode"], frames=kw["frames"], task=kw["task"],
        top_k=kw["top_k"], embed=kw["embed"], **stage2_config(kw), **live_config(kw),
        **extra,
    )


def stage2_worker_model(job) -> str | None:
    """The second model `run`'s workers compile beside the first (--identify)."""
    from zmqvision.tasks.stage2 import worker_model

    return worker_model(job.stage2)


def stage2_config(kw) -> dict:
    """The job's second stage (--identify, or the reader of --model plates/ocr); usage
    errors for what cannot work."""
    if kw.get("reader"):
        return {"stage2": kw["reader"]}
    if not kw.get("identify"):
        if kw.get("identity_threshold") is not None:
            raise click.BadParameter("needs --identify", param_hint="--identity-threshold")
        return {}
    from zmqvision.tasks import stage2

    try:
        stage2.plan("identify", kw["model"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--identify") from None
    return {"stage2": "identify", "gallery": kw.get("gallery"),
            "identity_threshold": kw.get("identity_threshold")}


def reading_pair(kw) -> None:
    """``--model plates`` / ``--model ocr`` name a reading pair (tasks.stage2.PAIRS): the
    job runs the pair's detector with its reader as the second stage (``kw["reader"]``);
    a worker given the pair also runs its reader (``--stage2`` unless given)."""
    from zmqvision.tasks.stage2 import KINDS, PAIRS

    pair = PAIRS.get(kw.get("model") or "")
    if pair is None:
        return
    if kw.get("identify"):
        raise click.BadParameter(f"--model {kw['model']} reads; --identify is for faces",
                                 param_hint="--identify")
    kw["model"], kw["reader"] = pair
    if "stage2" in kw and kw["stage2"] is None:
        kw["stage2"] = KINDS[pair[1]][1]


def check_model(kw) -> None:
    """Resolve the model early so a typo is a usage error, not a traceback in a child."""
    from zmqvision.models import resolve
    from zmqvision.tasks import TASKS

    reading_pair(kw)
    try:
        spec = resolve(kw["model"], task=kw.get("task"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from None
    if spec.task not in TASKS:  # an embedder or a reader: a second stage, not a job
        raise click.BadParameter(
            f"{spec.name} ({spec.task}) is a second-stage model, which no job runs on its own; "
            f"jobs run models of these tasks: {', '.join(TASKS)} (zmqvision models list)",
            param_hint="--model")
    if kw.get("input_size"):
        try:
            spec.with_input_size(*kw["input_size"])
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--input-size") from None


def check_inputs(cfg) -> None:
    """A job with nothing to do is a usage error, said before anything starts (the sink
    would otherwise empty --out for a job of no image)."""
    from zmqvision.console import skipped_notice

    check_video(cfg)
    if cfg.is_live:
        return  # an empty folder followed waits for its files
    walk = cfg.input_paths()
    try:
        first = next(walk, None)
    finally:
        walk.close()
    if first is not None:
        return
    where = ", ".join(cfg.inputs)
    why = f"; {skipped_notice(walk.skipped, walk.skipped_examples)}" if walk.skipped else ""
    raise CommandError(f"no image to do in {where}{why} (nothing was written)",
                       ExitCode.USAGE)


def input_counter(cfg):
    """The job's inputs counted on a thread, for the bar's total (io.InputCounter); None
    with ``--frames all``, where a file may be many images: the total is then the
    ventilator's, once every file is read."""
    from zmqvision.io import InputCounter

    if cfg.frames == "all" or cfg.is_live:
        return None  # a live job has no total: the bar shows a rate and a lag
    return InputCounter(list(cfg.inputs), recursive=cfg.recursive, extensions=cfg.extensions)


def _count_records(path: str) -> int:
    """Complete records in a JSONL file (its newlines); 0 when it is not there."""
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return 0


def interrupted_run(out: str, fmt: str) -> CommandError:
    """`run` stopped by Ctrl-C: what it kept, and the command that continues it."""
    from zmqvision.console import plural, resume_command

    if fmt != "jsonl":
        kept = _count_records(out + ".journal.jsonl")
        return CommandError(f"interrupted: {plural(kept, 'record')} kept; a COCO job cannot "
                            f"be resumed, run it again", ExitCode.INTERRUPTED)
    kept = _count_records(out)
    if not kept:
        return CommandError("interrupted before any record was written",
                            ExitCode.INTERRUPTED)
    return CommandError(f"interrupted: {plural(kept, 'record')} kept in {out}; to do the "
                        f"rest: {resume_command(sys.argv[1:])}", ExitCode.INTERRUPTED)


def interrupted_ventilate(bar) -> CommandError:
    """`ventilate` stopped by Ctrl-C: the sink keeps what it wrote; the same command with
    --resume and the sink's results file does the rest."""
    from zmqvision.console import plural, resume_command

    if bar.last is None or not bar.last.images_done:  # the sink had nothing of it yet
        return CommandError("interrupted", ExitCode.INTERRUPTED)
    kept, job = bar.last.images_done, bar.last.job
    return CommandError(
        f"interrupted: the sink kept {plural(kept, 'record')} of job {job}; to do the rest: "
        f"{resume_command(sys.argv[1:], value='RESULTS.jsonl')} (RESULTS.jsonl: the "
        f"sink's --out file)", ExitCode.INTERRUPTED)


def show_tiling(cfg) -> None:
    """Check the tiling now (a usage error, not a failed job) and, when the user shaped it
    with --min-size or --scales, say what it will cost on the first input image."""
    from zmqvision import io, tasks
    from zmqvision.models import resolve
    from zmqvision.scales import describe, summarize

    default = resolve(cfg.model, task=cfg.task)
    spec = default.with_input_size(*cfg.input_size) if cfg.input_size else default
    task = tasks.get(spec.task)
    try:  # the task plans the cuts (classification: the whole image, or a --tile grid)
        task.settings(cfg.top_k, cfg.embed, cfg.tile_size is not None)
        scales = task.scales(spec, tile_size=cfg.tile_size, scales=cfg.scales,
                             min_size=cfg.min_size, full_pass=cfg.full_pass)
    except ValueError as exc:  # scales.PlanError among them
        raise click.UsageError(str(exc)) from None
    if cfg.min_size is None and cfg.scales is None:
        return
    summary = None
    first = next(cfg.input_paths(), None)
    if first is not None:
        size = io.peek_size(first)
        if size is not None:
            summary = summarize(spec, default, scales, cfg.overlap, *size)
    name = os.path.basename(first) if first is not None else None
    click.echo(describe(spec, scales, cfg.min_size, summary, name), err=True)
    if summary is not None and summary.costly:
        click.echo(f"zmqvision: warning: this tiling costs {summary.cost:.0f}x the default's "
                   f"inference; a larger --min-size or fewer --scales is cheaper", err=True)


def finish(done, bar) -> None:
    from zmqvision.console import failure_report, summary_line

    click.echo(summary_line(done))
    for line in failure_report(done, bar.failures.first):
        click.echo(line)
    sys.exit(int(ExitCode.IMAGES_FAILED if done.failed else ExitCode.OK))


def stop_flag(parent_pid: int | None = None) -> sockets.StopFlag:
    """The command's stop flag, set by SIGINT/SIGTERM; a job that ends because it was set
    exits ExitCode.INTERRUPTED (errors.exit_codes asks it)."""
    stop = sockets.StopFlag(parent_pid)
    stop.install_signal_handlers()
    register_stop(click.get_current_context(), stop)
    return stop
