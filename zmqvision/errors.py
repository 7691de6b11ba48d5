"""Exit codes, and the one place that turns an error a user can meet into one of them.

Every command runs under :func:`exit_codes`: an error that is the user's to fix or the
job's fate (a bad endpoint, a model that cannot be fetched, keys missing, every worker
gone) becomes one line on stderr and its :class:`ExitCode`, never a traceback; anything
else is a bug and keeps its traceback. Commands therefore raise and never catch to exit.
"""

from __future__ import annotations

import enum
import errno
import functools
import logging
import re
import sys
from collections.abc import Callable
from typing import TypeVar

import click
import zmq

T = TypeVar("T")

log = logging.getLogger("zmqvision")


class ExitCode(enum.IntEnum):
    """The documented exit codes (README, "Commands")."""

    OK = 0  # every image succeeded
    IMAGES_FAILED = 1  # some image failed; its record says why
    USAGE = 2  # the command line is wrong (click's own code for usage errors)
    JOB_FAILED = 3  # the job could not run: no model, no sink, every worker died, timeout
    INTERRUPTED = 130  # SIGINT or SIGTERM stopped a job (128 + SIGINT, as shells count)


class CommandError(Exception):
    """A failure the command explains itself: ``message`` is printed as is."""

    def __init__(self, message: str, code: ExitCode = ExitCode.JOB_FAILED) -> None:
        super().__init__(message)
        self.code = code


# ZeroMQ's answers to an endpoint it cannot parse or use (bind and connect alike).
ENDPOINT_ERRNOS = frozenset({errno.EINVAL, errno.EPROTONOSUPPORT, errno.ENODEV,
                             errno.EADDRNOTAVAIL, errno.ENOENT})
_ADDR = re.compile(r"\s*\(addr='(?P<addr>[^']*)'\)\s*$")  # pyzmq appends it to strerror

# Errors of modules a command may not load: matched by (module, class) once that module is
# in sys.modules (an instance cannot exist before), so mapping them imports nothing.
# Each: (module, class name, code, prefix of the message).
JOB_ERRORS: tuple[tuple[str, str, ExitCode, str], ...] = (
    ("zmqvision.ventilator", "JobFailed", ExitCode.JOB_FAILED, "job failed: "),
    ("zmqvision.models.store", "ModelStoreError", ExitCode.JOB_FAILED, ""),
    ("zmqvision.models.runtime", "DeviceError", ExitCode.JOB_FAILED, ""),
    ("zmqvision.models.runtime", "BatchError", ExitCode.USAGE, ""),  # --batch, this model
)

# Stop flags of the running command (see :func:`register_stop`): a job that fails while
# one is set was interrupted, which is not the job's failure.
_STOP_KEY = "zmqvision.stop"


def register_stop(ctx: click.Context, stop) -> None:
    """Remember the command's StopFlag, so a job ended by a signal exits INTERRUPTED."""
    ctx.meta[_STOP_KEY] = stop


def zmq_message(exc: zmq.ZMQError) -> str:
    """``bad endpoint 'foo://bar': Protocol not supported`` from pyzmq's error text."""
    text = str(exc)
    m = _ADDR.search(text)
    if m is None:
        return f"bad endpoint: {text}"
    return f"bad endpoint {m.group('addr')!r}: {text[:m.start()]}"


def classify(exc: BaseException, interrupted: bool = False) -> tuple[ExitCode, str] | None:
    """The exit code and one-line message for ``exc``; None for a bug (keep the traceback)."""
    if isinstance(exc, CommandError):
        return exc.code, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted"
    if isinstance(exc, zmq.ZMQError):
        if exc.errno in ENDPOINT_ERRNOS:
            return ExitCode.USAGE, zmq_message(exc)
        return ExitCode.JOB_FAILED, f"ZeroMQ: {exc}"
    for module, name, code, prefix in JOB_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            if interrupted and name == "JobFailed":
                return ExitCode.INTERRUPTED, "interrupted"
            return code, f"{prefix}{exc}"
    if isinstance(exc, OSError | RuntimeError):  # keys, files, OpenVINO: said plainly
        return ExitCode.JOB_FAILED, str(exc)
    return None


def exit_codes(invoke: Callable[..., T]) -> Callable[..., T]:
    """Decorate a click ``invoke(self, ctx)``: map what a command raises to one line on
    stderr and an :class:`ExitCode` (see :func:`classify`). Click's own exceptions (usage
    errors: 2) and ``sys.exit`` pass through untouched."""

    @functools.wraps(invoke)
    def wrapper(self, ctx: click.Context, *args, **kwargs):
        try:
            return invoke(self, ctx, *args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            stop = ctx.meta.get(_STOP_KEY)
            found = classify(exc, interrupted=stop is not None and stop.is_set())
            if found is None:
                raise
            code, message = found
            log.debug("exit %d", code, exc_info=True)  # -vv: where it came from
            click.echo(f"zmqvision: {message}", err=True)
            sys.exit(int(code))

    return wrapper
