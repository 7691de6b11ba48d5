"""The console script's entry point."""

from __future__ import annotations

import logging
import os
import sys

from zmqvision.cli.group import cli

# Set once `run` has finished its job. Interpreter teardown then only unloads modules, and
# with OpenVINO loaded in this process (a one-image run's worker thread) that took 0.13-0.17
# s of a 1 s run. Only main() acts on it: click's test runner calls `cli` in-process.
_skip_teardown = False


def skip_teardown() -> None:
    """Called by `run` once its job is over (records closed, children reaped, threads
    joined): main() then leaves without the interpreter's teardown."""
    global _skip_teardown
    _skip_teardown = True


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

