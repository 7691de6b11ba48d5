"""Across hosts: throughput with 1, 2, 3 worker hosts on 1 GbE, 10 GbE and a slow link,
raw versus JPEG tiles, the bytes each tile really takes on the wire, and where the
bottleneck sits.

The hosts are network namespaces on a bridge (``tests/hosts.py``): sink and ventilator
on host 0, one worker (``--threads 1``) on each of hosts 1…N, every link shaped with
``tc tbf`` to the rate of the row. Workers join one host at a time and stay up; for each
worker count every link rate and wire encoding runs ``zmqvision ventilate DIR --wire W``
against them as a user would (the rate is what it prints: tiles from the sink's JobStart
to its JobDone). Bytes are the counters of the hosts' ``eth0`` around each job; CPU is
each process's utime + stime and the machine's /proc/stat.

All the "hosts" share this machine's cores: on a 2-core machine the ventilator's JPEG
encoding, the workers' decoding and inference all compete for the same 2 cores, which a
real cluster would not. The bottleneck column says which limit the row is at: a link
(its use > 85 %), the workers (each one's inference thread busy), or the machine's cores
(all busy; on a shared machine that includes other people's load).

    sudo python benchmarks/hosts.py                 # ~3 min on 2 cores
    sudo python benchmarks/hosts.py --hosts 1,2,3 --links 1gbit,10gbit,100mbit --repeats 2
    sudo python benchmarks/hosts.py --hosts 3 --links 1gbit --curve   # what CURVE costs
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import SUMMARY, cpu_seconds, markdown_table
from throughput import make_inputs, parse_size

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.hosts import Host, Network, unavailable  # noqa: E402

LINK_NAMES = {"1gbit": "1 GbE", "10gbit": "10 GbE"}


@dataclass
class Row:
    workers: int
    link: str
    wire: str
    rate: float  # tiles/s
    tiles: int
    seconds: float
    bytes_per_tile: float
    link_use: float  # host 0's port, fraction of the link rate
    cpu_busy: float  # the machine, fraction of all cores
    vent_cpu: float  # ventilator, cores
    worker_cpu: float  # all workers, cores
    security: str  # "plain" or "curve"
    sink_cpu: float  # cores


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _bits(rate: str) -> float:
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3}
    return next(float(rate[: -len(u)]) * m for u, m in units.items() if rate.endswith(u))


def start_worker(net: Network, host: Host, home: Host, model: str, *extra: str):
    """A worker on ``host``; returns once it has compiled its model and connected."""
    p = net.start(host, "worker", "--model", model, "--connect", home.addr, "--threads", "1",
                  "--announce", "--id", f"{host.hostname}-w", *extra, name="worker")
    deadline = time.monotonic() + 120
    while '"ready"' not in net.log(p):
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker on {host.hostname} did not start:\n{net.log(p)}")
        time.sleep(0.2)
    return p


def one_job(net: Network, folder: Path, model: str, wire: str, workers: list, sink,
            extra: tuple[str, ...] = ()) -> dict:
    """Run ``zmqvision ventilate`` on host 0 once; measure rate, bytes and CPU."""
    home = net.hosts[0]
    tx0 = home.counters()["tx_bytes"]
    busy0, total0 = _machine_busy()
    wcpu0 = sum(cpu_seconds(w.pid) or 0.0 for w in workers)
    scpu0 = cpu_seconds(sink.pid) or 0.0
    exposed = ("--bind", "tcp://*:5557", *(() if "--curve" in extra else ("--insecure",)))
    p = net.start(home, "ventilate", str(folder), "--model", model, "--wire", wire,
                  "--no-progress", *exposed, *extra, name=f"ventilate-{wire}")
    vcpu = 0.0
    while p.poll() is None:  # sample: /proc/PID/stat is gone once it has exited
        vcpu = cpu_seconds(p.pid) or vcpu
        time.sleep(0.05)
    log = net.log(p)
    if p.returncode != 0:
        raise RuntimeError(f"ventilate exited {p.returncode}:\n{log}")
    m = SUMMARY.search(log)
    if m is None:
        raise RuntimeError(f"no summary line in:\n{log}")
    busy1, total1 = _machine_busy()
    tiles, seconds = int(m.group(1)), float(m.group(2))
    return {
        "tiles": tiles, "seconds": seconds, "rate": float(m.group(3)),
        "bytes": home.counters()["tx_bytes"] - tx0,
        "busy": (busy1 - busy0) / max(1, total1 - total0),
        "vent_cpu": vcpu, "worker_cpu": sum(cpu_seconds(w.pid) or 0.0 for w in workers) - wcpu0,
        "sink_cpu": (cpu_seconds(sink.pid) or 0.0) - scpu0,
    }


def bottleneck(r: Row) -> str:
    """The first limit the row is at: host 0's link (it carries every tile), the workers'
    inference threads (one each, all busy), or this machine's cores (which every simulated
    host, and whatever else runs here, shares)."""
    if r.link_use > 0.85:
        return f"link: host 0's port ({r.link_use:.0%} used)"
    if r.worker_cpu > 0.8 * r.workers:
        return f"workers: each at its 1 thread ({r.worker_cpu / r.workers:.2f} core each)"
    if r.cpu_busy > 0.85:
        ours = r.vent_cpu + r.worker_cpu + r.sink_cpu
        return (f"workers, starved: all {os.cpu_count()} cores busy (zmqvision {ours:.1f}, "
                f"ventilator {r.vent_cpu:.2f})")
    return f"not found (cores {r.cpu_busy:.0%} busy, link {r.link_use:.0%})"


def make_keys(root: Path, workers: int) -> dict[int, Path]:
    """A key directory per host (0: the sink's and ventilator's, with every worker's
    public key allowed), as docs/hosts.md has a user make them."""
    from zmqvision import security

    dirs = {i: root / f"host{i}" for i in range(workers + 1)}
    security.new_keys(dirs[0], "server")
    for i, d in dirs.items():
        security.new_keys(d, "client")
        if i:
            (d / "server.key").write_bytes((dirs[0] / "server.key").read_bytes())
        security.allow(dirs[0], d / "client.key")
    return dirs


def measure(net: Network, folder: Path, tmp: Path, model: str, counts: list[int],
            links: list[str], wires: list[str], repeats: int,
            curve: dict[int, Path] | None) -> list[Row]:
    """Every row for one security setting: a sink, workers joining one host at a time,
    one ``ventilate`` per (worker count, link, wire) and repeat; all stopped at the end."""
    home = net.hosts[0]

    def secured(i: int) -> tuple[str, ...]:
        return ("--curve", str(curve[i])) if curve else ()

    label = "curve" if curve else "plain"
    # Bound where the other (simulated) hosts reach them: CURVE, or plain text asked for.
    exposed = ("--bind-results", "tcp://*:5558", "--bind-events", "tcp://*:5559",
               *(() if curve else ("--insecure",)))
    sink = net.start(home, "sink", "--out", str(tmp / f"out-{label}.jsonl"), "--overwrite",
                     *exposed, *secured(0), name="sink")
    workers: list = []
    rows = []
    try:
        for n in counts:
            while len(workers) < n:
                i = len(workers) + 1
                workers.append(start_worker(net, net.hosts[i], home, model, *secured(i)))
            one_job(net, folder, model, "jpeg", workers, sink, secured(0))  # warm-up
            for link in links:
                for h in net.hosts[: n + 1]:
                    net.shape(h, link)
                for wire in wires:
                    runs = [one_job(net, folder, model, wire, workers, sink, secured(0))
                            for _ in range(repeats)]
                    mid = sorted(runs, key=lambda x: x["rate"])[len(runs) // 2]
                    row = Row(
                        workers=n, link=link, wire=wire, security=label,
                        rate=statistics.median(x["rate"] for x in runs),
                        tiles=mid["tiles"], seconds=mid["seconds"],
                        bytes_per_tile=mid["bytes"] / mid["tiles"],
                        link_use=mid["bytes"] * 8 / mid["seconds"] / _bits(link),
                        cpu_busy=mid["busy"], vent_cpu=mid["vent_cpu"] / mid["seconds"],
                        worker_cpu=mid["worker_cpu"] / mid["seconds"],
                        sink_cpu=mid["sink_cpu"] / mid["seconds"],
                    )
                    rows.append(row)
                    print(f"{n} worker host(s), {link}, {wire}, {label}: {row.rate:.1f} "
                          f"tiles/s, {row.bytes_per_tile:,.0f} B/tile", file=sys.stderr,
                          flush=True)
    finally:
        for p in [*workers, sink]:
            net.stop(p)
        for h in net.hosts:
            net.shape(h, None)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ssd-mobilenetv2-oid")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=parse_size, default=(1920, 1080))
    ap.add_argument("--hosts", default="1,2,3", help="worker host counts (default 1,2,3)")
    ap.add_argument("--links", default="1gbit,10gbit,100mbit",
                    help="tc rates of every link (default 1gbit,10gbit,100mbit)")
    ap.add_argument("--wires", default="raw,jpeg")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--curve", action="store_true",
                    help="also measure with CURVE on every socket (--curve-links only)")
    ap.add_argument("--curve-links", default="1gbit")
    args = ap.parse_args(argv)
    why = unavailable()
    if why:
        print(f"benchmarks/hosts.py: {why}", file=sys.stderr)
        return 2
    counts = sorted(int(x) for x in args.hosts.split(","))
    links = args.links.split(",")
    wires = args.wires.split(",")

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="zv-hosts-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "in"
        folder.mkdir()
        make_inputs(folder, args.images, args.size)
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                           os.environ.get("PYTHONPATH")]))}
        with Network(1 + counts[-1], rate=None, logs=tmp / "logs", env=env) as net:
            rows += measure(net, folder, tmp, args.model, counts, links, wires, args.repeats,
                            curve=None)
            if args.curve:
                keys = make_keys(tmp / "keys", counts[-1])
                rows += measure(net, folder, tmp, args.model, counts,
                                args.curve_links.split(","), wires, args.repeats, curve=keys)

    print(f"command: {shlex.join(['python', 'benchmarks/hosts.py', *sys.argv[1:]])}")
    print(f"{args.images} images {args.size[0]}x{args.size[1]}, {args.model}, "
          f"{rows[0].tiles if rows else 0} tiles per job, one worker (--threads 1) per worker "
          f"host, median of {args.repeats}; os.cpu_count()={os.cpu_count()} shared by every "
          f"simulated host")
    print()
    header = ["worker hosts", "link", "wire", "security", "tiles/s", "bytes/tile on the wire",
              "host 0 link use", "cores: ventilator / workers / sink",
              "ventilator CPU per tile", "machine busy", "bottleneck"]
    body = [[str(r.workers), LINK_NAMES.get(r.link, r.link), r.wire, r.security,
             f"{r.rate:.1f}",
             f"{r.bytes_per_tile:,.0f}", f"{r.link_use:.1%}",
             f"{r.vent_cpu:.2f} / {r.worker_cpu:.2f} / {r.sink_cpu:.2f}",
             f"{r.vent_cpu / r.rate * 1000:.1f} ms",
             f"{r.cpu_busy:.0%}", bottleneck(r)] for r in rows]
    print(markdown_table(header, body))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
