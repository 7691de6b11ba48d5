"""Simulated hosts: Linux network namespaces on one switch, for running zmqvision across
machines on one machine.

Each host is a network namespace with its own stack, loopback and one interface ``eth0``
with an address on a private subnet (10.77.0.0/24 by default). Its ``eth0`` is one end of a
veth pair whose other end is a port of a bridge (the switch), and the bridge lives in a
namespace of its own, so nothing is ever added to the machine's own network namespace:
the subnet cannot collide with a real one and nothing outside can be reached. A link is
shaped with ``tc tbf`` on both ends of its veth pair (egress only is what tbf shapes, so
both directions need one), which makes it behave like a port of a 1 GbE or 10 GbE switch;
setting ``eth0`` down cuts a host off (a partition) while its processes keep running.

Commands run inside a host with ``ip netns exec``, wrapped in ``unshare --uts`` so each host
also has its own host name (workers report it in their heartbeats). Everything a
``Network`` made (processes, namespaces and with them every interface) is removed by
``close()``, also after a failure; names carry the creating process's pid, so leftovers of
a crashed run are recognised and removed by the next one, and parallel runs never collide.

Usable from tests (``tests/integration/test_hosts.py``) and from benchmarks
(``benchmarks/hosts.py``, with the repository root on ``sys.path``). Needs root and
iproute2; ``unavailable()`` says why not, for a clear skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import ProcessGroup

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "zvh"  # every namespace this module makes is named zvh<pid>x<random>-…

RATES = {"1gbe": "1gbit", "10gbe": "10gbit"}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip() or p.returncode}")
    return p


def _tc(ns: str, *args: str) -> None:
    p = subprocess.run(["ip", "netns", "exec", ns, "tc", *args], capture_output=True,
                       text=True, timeout=20)
    if p.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)} in {ns}: {p.stderr.strip()}")


def unavailable() -> str | None:
    """Why namespaces cannot be made here (a skip reason), or None when they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2 / util-linux) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs these tests as root)"
    probe = f"{PREFIX}{os.getpid()}xprobe"
    p = _ip("netns", "add", probe, check=False)
    if p.returncode != 0:
        return f"cannot create a network namespace: {p.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_ns_processes(ns: str) -> None:
    """SIGKILL whatever still runs inside one of our namespaces (our own children)."""
    p = _ip("netns", "pids", ns, check=False)
    for word in p.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(word), signal.SIGKILL)


def clean_leftovers() -> list[str]:
    """Remove the namespaces of runs whose creating process is gone (a crashed or killed
    test run); returns their names. Namespaces of live runs are left alone."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(PREFIX):
            continue
        digits = name[len(PREFIX):].split("x", 1)[0]
        if not digits.isdigit() or _pid_alive(int(digits)):
            continue
        _kill_ns_processes(name)
        _ip("netns", "del", name, check=False)
        removed.append(name)
    return removed


@dataclass
class Host:
    """One simulated machine: a namespace with ``eth0`` at ``addr``."""

    index: int
    ns: str
    addr: str
    port: str  # its veth end on the bridge (in the bridge's namespace)
    rate: str | None = None

    @property
    def hostname(self) -> str:
        return f"host{self.index}"

    def counters(self) -> dict[str, int]:
        """Bytes and packets through ``eth0`` since it was made (rx = towards this host)."""
        p = _ip("-n", self.ns, "-s", "-j", "link", "show", "eth0")
        stats = json.loads(p.stdout)[0]["stats64"]
        return {"rx_bytes": stats["rx"]["bytes"], "tx_bytes": stats["tx"]["bytes"],
                "rx_packets": stats["rx"]["packets"], "tx_packets": stats["tx"]["packets"]}


@dataclass
class Network(ProcessGroup):
    """N hosts on one bridge. Use as a context manager, or call ``close()`` in a finally.

    >>> with Network(3, rate="1gbit", logs=Path("/tmp/x")) as net:
    ...     sink = net.start(net.hosts[0], "sink", "--out", "/tmp/x/r.jsonl")
    """

    n: int = 0
    rate: str | None = "1gbit"  # every new host's link; None: unshaped (veth speed)
    logs: Path = field(default_factory=lambda: Path("/tmp"))
    subnet: str = "10.77.0"
    env: dict[str, str] = field(default_factory=dict)  # extra environment for commands
    hosts: list[Host] = field(default_factory=list, init=False)
    # ProcessGroup's list (a dataclass field: the generated __init__ does not call super's)
    procs: list[tuple[subprocess.Popen, Path]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        clean_leftovers()
        self.tag = f"{PREFIX}{os.getpid()}x{secrets.token_hex(3)}"
        self.bridge_ns = f"{self.tag}-br"
        self._made: list[str] = []
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self._add_ns(self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            for _ in range(self.n):
                self.add_host()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ topology

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, rate: str | None = ...) -> Host:  # type: ignore[assignment]
        """A new host on the switch (also while a job runs: a machine joining)."""
        i = len(self.hosts)
        if i >= 250:
            raise ValueError("at most 250 hosts on one /24")
        host = Host(index=i, ns=f"{self.tag}-h{i}", addr=f"{self.subnet}.{i + 1}",
                    port=f"p{i}")
        self._add_ns(host.ns)
        # Made inside the bridge's namespace with its peer moved straight into the host's:
        # no interface ever appears in the machine's own namespace.
        _ip("-n", self.bridge_ns, "link", "add", host.port, "type", "veth", "peer", "name",
            "eth0", "netns", host.ns)
        _ip("-n", self.bridge_ns, "link", "set", host.port, "master", "br0")
        _ip("-n", self.bridge_ns, "link", "set", host.port, "up")
        _ip("-n", host.ns, "addr", "add", f"{host.addr}/24", "dev", "eth0")
        _ip("-n", host.ns, "link", "set", "eth0", "up")
        self.hosts.append(host)
        self.shape(host, self.rate if rate is ... else rate)
        return host

    def shape(self, host: Host, rate: str | None) -> None:
        """Limit the host's link to ``rate`` (tc syntax: 1gbit, 10gbit, 100mbit) in both
        directions; None removes the limit. The bucket holds 2 ms at the rate (at least
        64 KiB), enough for the kernel's timer and for veth's large GSO packets."""
        for ns, dev in ((host.ns, "eth0"), (self.bridge_ns, host.port)):
            subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev,
                            "root"], capture_output=True, timeout=20)
            if rate is not None:
                burst = max(64 * 1024, int(_bits_per_s(rate) / 8 * 0.002))
                _tc(ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                    "burst", str(burst), "latency", "50ms")
        host.rate = rate

    def set_link(self, host: Host, up: bool) -> None:
        """Cut the host off the switch (down) or plug it back (up). Its processes keep
        running and its TCP connections stay open, as behind a pulled cable."""
        _ip("-n", host.ns, "link", "set", "eth0", "up" if up else "down")

    # ------------------------------------------------------------------ processes

    def start(self, host: Host, *args: str, name: str = "proc",
              env: dict[str, str] | None = None, module: str = "zmqvision",
              prefix: tuple[str, ...] = ()) -> subprocess.Popen:
        """``python -m zmqvision ARGS`` inside ``host`` (same interpreter, PYTHONPATH and
        ZMQVISION_CACHE as this process); output goes to a log file (``log()``). Another
        ``module`` runs as ``python -m MODULE *PREFIX *ARGS`` (tests.slow_worker)."""
        return self.exec(host, sys.executable, "-m", module, *prefix, *args, name=name,
                         env=env)

    def exec(self, host: Host, *argv: str, name: str = "proc",
             env: dict[str, str] | None = None) -> subprocess.Popen:
        """Any command inside ``host``, with the host's own host name."""
        log = self.logs / f"{host.hostname}-{name}-{len(self.procs)}.log"
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env, **(env or {}))
        cmd = ["ip", "netns", "exec", host.ns, "unshare", "--uts", "sh", "-c",
               'hostname "$0" && exec "$@"', host.hostname, *argv]
        with open(log, "wb") as fh:
            p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env,
                                 cwd=ROOT, start_new_session=True)
        return self.track(p, log)

    def close(self) -> None:
        """Stop every process, then delete every namespace (and with them every veth, the
        bridge and the qdiscs). Safe to call twice."""
        self.stop_all(grace=10)
        for ns in reversed(self._made):
            _kill_ns_processes(ns)
            _ip("netns", "del", ns, check=False)
        self._made.clear()


def _bits_per_s(rate: str) -> float:
    """tc's rate syntax (bit, kbit, mbit, gbit; decimal) as bits per second."""
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3, "bit": 1.0}
    for unit, mult in units.items():
        if rate.endswith(unit):
            return float(rate[: -len(unit)]) * mult
    raise ValueError(f"rate {rate!r}: expected e.g. 100mbit, 1gbit, 10gbit")
