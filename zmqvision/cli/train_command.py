"""`zmqvision train`: a new classifier trained over the pool."""

from __future__ import annotations

import os

import click

from zmqvision import sockets
from zmqvision.cli.group import cli
from zmqvision.cli.options import check_binds, curve_option, insecure_option, setup_logging
from zmqvision.cli.params import ENDPOINT, HOST
from zmqvision.errors import CommandError, ExitCode

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
@curve_option
@insecure_option
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

    setup_logging(verbose, None)
    if connect_host is None and bind_tiles:
        raise click.BadParameter("--tiles goes with --connect", param_hint="--connect")
    check_binds({"--train-bind": train_bind, "--events": events or "",
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
