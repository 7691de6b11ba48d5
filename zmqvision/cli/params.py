"""Click parameter types: sizes, byte sizes, scales, endpoints, hosts, inputs, durations."""

from __future__ import annotations

import click

from zmqvision import sockets


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
