"""`zmqvision keys new|allow`: CURVE keys."""

from __future__ import annotations

import click

from zmqvision.cli.group import cli


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
