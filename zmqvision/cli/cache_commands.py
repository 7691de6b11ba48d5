"""`zmqvision cache stats|clear|prune`: the result cache."""

from __future__ import annotations

import json
import sys

import click

from zmqvision.cli.group import cli
from zmqvision.cli.params import DurationType
from zmqvision.errors import CommandError


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
