"""Options shared by several commands, and the small checks they make on what they parse."""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from zmqvision.cli.params import SIZE, ByteSizeType, ScalesType, UntilType
from zmqvision.errors import CommandError, ExitCode


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


def setup_logging(verbose: int, level: int | None = None) -> int:
    if level is None:
        level = (logging.WARNING if verbose == 0 else logging.INFO if verbose == 1
                 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return level


def child_options(f):
    """Options `zmqvision run` uses to start its children; hidden from users."""
    f = click.option("--log-level", type=int, default=None, hidden=True)(f)
    f = click.option("--parent-pid", type=int, default=None, hidden=True,
                     help="Stop when this process is gone.")(f)
    f = click.option("--announce", is_flag=True, hidden=True,
                     help="Print one JSON line on stdout when ready.")(f)
    return f


def announcer(announce: bool):
    if not announce:
        return None

    def ready(info) -> None:
        sys.stdout.write(json.dumps({"ready": info}) + "\n")
        sys.stdout.flush()

    return ready


def curve_option(f):
    return click.option(
        "--curve", type=click.Path(file_okay=False), default=None,
        help="Key directory (`zmqvision keys`): encrypt and authenticate every socket with "
             "CURVE [default: plain text, for one host or a trusted network].")(f)


def batch_options(f):
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


def insecure_option(f):
    return click.option(
        "--insecure", is_flag=True,
        help="Allow binding an address other hosts can reach without --curve (plain "
             "text: anyone who reaches it can join, inject results and read events).")(f)


def check_binds(endpoints: dict[str, str], curve: str | None, insecure: bool) -> None:
    """Refuse, as a usage error, a plain-text bind other hosts can reach unless
    ``--insecure`` (security.exposure)."""
    from zmqvision import security

    try:
        security.exposure(endpoints, curve, insecure)
    except security.ExposedError as exc:
        raise click.UsageError(str(exc)) from None


def model_options(f):
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


def task_option(f):
    return click.option(
        "--task", type=click.Choice(["detect", "classify", "segment"]), default=None,
        help="What the model does [default: the catalog's; detect for a model file]. "
             "classify: a user's model whose output is [1, C] class scores. segment: a "
             "user's model whose one output is a score map at its input size, [1,H,W,C] "
             "or [1,C,H,W] (C class logits, or C=1 a foreground probability); labels "
             "from <stem>.txt beside it (docs/segmentation.md).")(f)


def job_options(f):
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


def live_options(f):
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


def live_config(kw) -> dict:
    """The VentilateConfig fields of the live options."""
    return dict(follow=kw.get("follow", False), until=kw.get("until"),
                settle=kw.get("settle"), poll=kw.get("poll", False),
                when_behind=kw.get("when_behind"), queue=kw.get("queue_size"),
                fps=kw.get("fps"), live=kw.get("live", False))


def check_video(cfg) -> None:
    """A video input without PyAV is a usage error that says how to install it."""
    from zmqvision.video import INSTALL_HINT, available, is_video

    if not available() and any(is_video(i) for i in cfg.inputs):
        raise CommandError(f"video inputs need PyAV, which is not installed: {INSTALL_HINT}",
                           ExitCode.USAGE)


def output_options(f):
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


def cache_options(f):
    f = click.option("--no-cache", is_flag=True,
                     help="Do not use the result cache (no lookups, no saves).")(f)
    f = click.option("--cache", "cache_url", default=None, metavar="URL",
                     help="Result cache: sqlite:///PATH, redis://HOST:PORT/DB or "
                          "redis+cluster://HOST:PORT [default: $ZMQVISION_RESULTS_CACHE, "
                          "else a SQLite file in the user cache directory].")(f)
    return f


def cache_choice(cache_url: str | None, no_cache: bool) -> str | None:
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
