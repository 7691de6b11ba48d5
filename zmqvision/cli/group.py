"""The ``zmqvision`` command group every command registers on."""

from __future__ import annotations

import click

from zmqvision import __version__
from zmqvision.errors import exit_codes


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
