"""zmqvision across hosts: network namespaces on a shaped 1 GbE switch (``tests.hosts``).

Sink and ventilator on host 0, workers on hosts 1–3, a watcher on host 4, each with its own
network stack and address, so every tile and result crosses a real (virtual) network and
the ventilator's ``--wire auto`` sees non-loopback peers. Every run must give the same
records as ``zmqvision run`` of the same images with the same wire encoding, whatever
happens to the links. Skipped, with the reason, where namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.hosts import Network, unavailable
from tests.slow_worker import hold
from zmqvision.sockets import EVENTS_PORT, RESULTS_PORT, TILES_PORT

_WHY = unavailable()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(150),
    pytest.mark.skipif(_WHY is not None, reason=f"simulated hosts: {_WHY}"),
]

MODEL = "ssd-mobilenetv2-oid"  # 300 px tiles: a raw tile is 270,000 bytes
RAW_TILE = 300 * 300 * 3
# ZMQVISION_CACHE and the rest pass through as they are; no result cache (a hit would send
# no tiles: these tests are about tiles crossing the network).
ENV = {"PYTHONPATH": str(ROOT), "ZMQVISION_RESULTS_CACHE": "off"}


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def comparable(path: Path) -> list:
    """Records as sorted, comparable tuples; fails if an image has two records."""
    recs = records(path)
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)), "an image has more than one record"
    return sorted((r["image"], r["width"], r["height"], r["model"], r["error"],
                   [(d["label"], round(d["score"], 5), [round(v, 3) for v in d["box"]])
                    for d in r["detections"]]) for r in recs)


def reference(folder: Path, out: Path, wire: str = "jpeg") -> list:
    """``zmqvision run`` on this machine's loopback, by default with JPEG tiles, which is
    what ``--wire auto`` sends to workers on other hosts (JPEG encoding is deterministic);
    ``wire="auto"`` is a plain ``zmqvision run`` (raw tiles on one host)."""
    p = subprocess.run([sys.executable, "-m", "zmqvision", "run", str(folder), "--model",
                        MODEL, "--out", str(out), "--no-progress", "--wire", wire,
                        "--events", "tcp://127.0.0.1:0", "--workers", "1", "--threads", "2"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, **ENV})
    assert p.returncode == 0, p.stdout + p.stderr
    return comparable(out)


@pytest.fixture(scope="module")
def job_reference(job_dir, tmp_path_factory, models_ready):
    ref = reference(job_dir, tmp_path_factory.mktemp("ref") / "ref.jsonl")
    assert len(ref) == 12 and sum(len(r[5]) for r in ref) > 0
    return ref


@pytest.fixture(scope="module")
def plain_run_reference(job_dir, tmp_path_factory, models_ready):
    """A plain ``zmqvision run`` of the job: raw tiles, everything on one host."""
    return reference(job_dir, tmp_path_factory.mktemp("ref") / "run.jsonl", wire="auto")


@pytest.fixture
def net(tmp_path):
    with Network(0, rate="1gbit", logs=tmp_path / "logs", env=ENV) as n:
        yield n


class Cluster:
    """The roles of one job placed on hosts of ``net``: sink and ventilator on host 0."""

    def __init__(self, net: Network, out: Path) -> None:
        self.net = net
        self.out = out
        self.home = net.hosts[0]

    def sink(self, *extra: str):
        """Bound on every address of its host (the default is loopback only): in plain
        text that needs --insecure, unless ``extra`` says --curve."""
        secure = () if "--curve" in extra else ("--insecure",)
        # The documented ports, on purpose (`--connect HOST` relies on them): bound in this
        # run's own network namespaces, which no other test run shares.
        return self.net.start(self.home, "sink", "--out", str(self.out), "--bind-results",
                              f"tcp://*:{RESULTS_PORT}", "--bind-events",
                              f"tcp://*:{EVENTS_PORT}", *extra, *secure, name="sink")

    def ventilate(self, folder: Path, *extra: str):
        secure = () if "--curve" in extra else ("--insecure",)
        return self.net.start(self.home, "ventilate", str(folder), "--model", MODEL,
                              "--bind", f"tcp://*:{TILES_PORT}", "--no-progress", "-v",
                              *extra, *secure, name="ventilate")

    def worker(self, host, *extra: str, hold_ms: float = 0):
        """A worker; with ``hold_ms``, a slow one (each tile's request held that long)."""
        return self.net.start(host, "worker", "--model", MODEL, "--connect", self.home.addr,
                              "--threads", "1", "--heartbeat", "0.5",
                              "--id", f"{host.hostname}-w", *extra, name="worker",
                              **(hold(hold_ms) if hold_ms else {}))

    def watch(self, host):
        return self.net.start(host, "watch", "--connect", self.home.addr, "--json",
                              name="watch")


def beats(evs: list[dict], worker: str) -> list[dict]:
    return [e for e in evs if e["type"] == "zv.heartbeat" and e["worker"] == worker]


def wait_for(predicate, timeout: float, what: str, alive=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        if alive is not None and not alive():
            break
        time.sleep(0.2)
    raise AssertionError(f"timed out ({timeout} s) waiting for {what}")


def tiles_done(net: Network, watch, worker: str) -> int:
    b = beats(net.json_lines(watch), worker)
    return b[-1]["tiles_done"] if b else 0


def beat_after(net: Network, watch, workers, after: float) -> None:
    """Wait until the watcher has printed a heartbeat of each of ``workers`` sent after
    ``after`` (a ``time.time()``): their counters then include all they did before."""
    wait_for(lambda: all(any(b["t"] > after for b in beats(net.json_lines(watch), w))
                         for w in workers), 20, f"a heartbeat of each of {workers}")


def _netns() -> set[str]:
    p = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20)
    return {line.split()[0] for line in p.stdout.splitlines() if line.strip()}


def _connects(net: Network, src, dst, port: int = 9000) -> bool:
    """A TCP connect from host ``src`` to a listener on host ``dst``, within 2 s."""
    code = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2]))"
            ", timeout=2)\nexcept OSError: sys.exit(1)")
    return net.wait(net.exec(src, sys.executable, "-c", code, dst.addr, str(port),
                             name="connect"), 10) == 0


def test_harness_hosts_links_partitions_and_cleanup(tmp_path):
    dead = "zvh4194303xdead-br"  # a leftover of a run whose process is gone
    subprocess.run(["ip", "netns", "add", dead], check=True, timeout=20)
    with Network(2, rate="1gbit", logs=tmp_path) as net:
        assert dead not in _netns()  # removed by the next run
        made = {net.bridge_ns, *(h.ns for h in net.hosts)}
        assert made <= _netns()
        a, b = net.hosts
        listen = ("import socket,time\ns=socket.create_server(('0.0.0.0', 9000))\n"
                  "s.settimeout(30)\nwhile True: s.accept()[0].close()")
        server = net.exec(b, sys.executable, "-c", listen, name="listen")
        assert wait_for(lambda: _connects(net, a, b), 10, "a connection across the switch")
        net.set_link(b, up=False)
        assert not _connects(net, a, b)  # cut off
        net.set_link(b, up=True)
        assert wait_for(lambda: _connects(net, a, b), 10, "the link back up")
        late = net.add_host(rate="10mbit")
        assert _connects(net, late, b) and late.rate == "10mbit"
        assert server.poll() is None
    assert not (made | {late.ns}) & _netns()  # every namespace (and veth, bridge) is gone
    assert server.poll() is not None


def test_three_worker_hosts_equal_zmqvision_run(job_dir, job_reference, net, tmp_path):
    hosts = [net.add_host() for _ in range(5)]
    c = Cluster(net, tmp_path / "out.jsonl")
    c.sink()
    watch = c.watch(hosts[4])
    workers = {h.hostname: c.worker(h) for h in hosts[1:4]}
    before = {h.hostname: h.counters()["rx_bytes"] for h in hosts[1:4]}
    vent = c.ventilate(job_dir, "--wire", "jpeg")  # auto: whole images (test_scale_out)
    assert net.wait(vent, 120) == 0, net.log(vent)
    assert "12 images, 0 failed" in net.log(vent)
    assert comparable(c.out) == job_reference
    ended = time.time()
    for h in workers:  # the ventilator saw each worker's connection come from another host
        assert f"worker {h}-w (10.77.0." in net.log(vent)
        assert f"{h}-w (10.77.0.{int(h[-1]) + 1}): tiles as jpeg" in net.log(vent)
    beat_after(net, watch, [f"{h}-w" for h in workers], ended)  # the counters are final
    evs = net.json_lines(watch)
    assert any(e["type"] == "zv.job_done" for e in evs), "the watcher on host 4 saw no end"
    done = {h: tiles_done(net, watch, f"{h}-w") for h in workers}
    assert sum(done.values()) >= 420 and all(v > 0 for v in done.values()), done
    # Each worker reported its own host's name.
    assert {e["host"] for e in evs if e["type"] == "zv.heartbeat"} == set(workers)
    # --wire jpeg sent JPEG across the switch: the bytes that reached each worker host,
    # per tile it did, are a fraction of a raw 300x300 tile (270,000 bytes).
    for h in hosts[1:4]:
        per_tile = (h.counters()["rx_bytes"] - before[h.hostname]) / done[h.hostname]
        assert per_tile < RAW_TILE / 4, (h.hostname, per_tile)


def test_raw_tiles_a_slow_link_host_gets_fewer_and_results_equal_a_plain_run(
        job_dir, plain_run_reference, net, tmp_path):
    hosts = [net.add_host() for _ in range(4)]
    net.shape(hosts[3], "10mbit")  # one host behind a slow link: ~4 raw tiles/s at most
    c = Cluster(net, tmp_path / "out.jsonl")
    c.sink()
    watch = c.watch(hosts[0])  # on the sink's own host, over loopback
    for h in hosts[1:4]:
        c.worker(h)
    vent = c.ventilate(job_dir, "--wire", "raw")
    assert net.wait(vent, 120) == 0, net.log(vent)
    ended = time.time()
    assert comparable(c.out) == plain_run_reference  # raw over the network = zmqvision run
    assert net.log(vent).count("tiles as raw") == 3
    beat_after(net, watch, [f"host{i}-w" for i in (1, 2, 3)], ended)
    done = {i: tiles_done(net, watch, f"host{i}-w") for i in (1, 2, 3)}
    # Credit, not round-robin: the slow link's worker asks for what it can take.
    assert sum(done.values()) >= 420 and done[3] < 0.5 * min(done[1], done[2]), done


def test_a_host_cut_off_for_20_s_loses_nothing_and_duplicates_nothing(
        job_dir, job_reference, net, tmp_path):
    hosts = [net.add_host() for _ in range(5)]
    c = Cluster(net, tmp_path / "out.jsonl")
    c.sink()
    watch = c.watch(hosts[4])
    # Slow workers (each result held 150 ms, one request) so the job outlasts the cut.
    workers = [c.worker(h, "--requests", "1", hold_ms=150) for h in hosts[1:4]]
    vent = c.ventilate(job_dir, "--wire", "jpeg")  # auto: whole images (test_scale_out)
    cut = hosts[1]
    wait_for(lambda: tiles_done(net, watch, "host1-w") >= 5, 60, "host 1's first tiles",
             alive=lambda: vent.poll() is None)
    net.set_link(cut, up=False)
    at_cut = tiles_done(net, watch, "host1-w")
    others_at_cut = sum(tiles_done(net, watch, f"host{i}-w") for i in (2, 3))
    time.sleep(20)
    assert vent.poll() is None, "the job ended while host 1 was cut off; make it longer"
    others = sum(tiles_done(net, watch, f"host{i}-w") for i in (2, 3))
    assert others > others_at_cut + 20, "the job stalled while one host was cut off"
    assert tiles_done(net, watch, "host1-w") == at_cut  # nothing heard from it meanwhile
    net.set_link(cut, up=True)
    assert net.wait(vent, 90) == 0, net.log(vent)
    log = net.log(vent)
    assert "12 images, 0 failed" in log
    # Host 1's tiles went to others as soon as its heartbeats stopped (3 of 0.5 s), not
    # after a 120 s lease: every tile sent again was one of a worker given up for silence.
    gone = [(w, float(ago), int(n)) for w, ago, n in re.findall(
        r"worker (\S+) gone, last heard ([0-9.]+) s ago: (\d+) tiles sent again", log)]
    assert any(w == "host1-w" and n > 0 and ago < 5 for w, ago, n in gone), (gone, log)
    again = re.search(r"tiles sent \((\d+) again", log)
    assert again and int(again.group(1)) == sum(n for _, _, n in gone), (gone, log)
    assert comparable(c.out) == job_reference  # nothing lost, nothing twice
    assert all(w.poll() is None for w in workers)  # the cut-off worker survived the cut
    # Its held results reached the sink after the cut and were dropped or merged once.
    wait_for(lambda: tiles_done(net, watch, "host1-w") > at_cut, 20,
             "host 1's worker to be heard again")


def test_a_host_added_mid_job_gets_tiles_within_seconds(job_dir, job_reference, net,
                                                        tmp_path):
    hosts = [net.add_host() for _ in range(3)]
    c = Cluster(net, tmp_path / "out.jsonl")
    c.sink()
    watch = c.watch(hosts[2])
    c.worker(hosts[1], "--requests", "1", hold_ms=150)
    vent = c.ventilate(job_dir, "--wire", "jpeg")  # auto: whole images (test_scale_out)
    wait_for(lambda: tiles_done(net, watch, "host1-w") >= 5, 60, "the job to be under way",
             alive=lambda: vent.poll() is None)
    late = net.add_host()  # a machine plugged into the switch while the job runs
    c.worker(late)
    first = wait_for(lambda: beats(net.json_lines(watch), "host3-w"), 60,
                     "the new worker's first heartbeat")[0]
    working = wait_for(lambda: [b for b in beats(net.json_lines(watch), "host3-w")
                                if b["tiles_done"] > 0], 30, "the new worker's first tile")[0]
    assert working["t"] - first["t"] < 3.0, (first, working)
    assert net.wait(vent, 120) == 0, net.log(vent)
    beat_after(net, watch, ["host1-w", "host3-w"], time.time())
    assert comparable(c.out) == job_reference
    assert tiles_done(net, watch, "host3-w") > tiles_done(net, watch, "host1-w")


def keys(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "zmqvision", "keys", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_curve_only_allowed_keys_get_tiles_or_events(job_dir, job_reference, net, tmp_path):
    hosts = [net.add_host() for _ in range(5)]
    home, allowed, stranger = (tmp_path / n for n in ("home", "allowed", "stranger"))
    keys("new", str(home))  # server and client pairs; its own client key allowed
    for d in (allowed, stranger):
        keys("new", str(d), "--name", "client")
        shutil.copy(home / "server.key", d / "server.key")
    keys("allow", str(home), str(allowed / "client.key"))
    c = Cluster(net, tmp_path / "out.jsonl")
    sink = c.sink("--curve", str(home))
    watch = net.start(hosts[4], "watch", "--connect", c.home.addr, "--json", "--curve",
                      str(allowed), name="watch")
    c.worker(hosts[1], "--curve", str(allowed))
    refused = c.worker(hosts[2], "--curve", str(stranger))  # a key the cluster does not know
    c.worker(hosts[3])  # plain text
    before = {h.hostname: h.counters()["rx_bytes"] for h in hosts[1:4]}
    vent = c.ventilate(job_dir, "--curve", str(home), "--wire", "jpeg")
    assert net.wait(vent, 120) == 0, net.log(vent)
    assert comparable(c.out) == job_reference  # the whole job, on host 1 alone
    rx = {h.hostname: h.counters()["rx_bytes"] - before[h.hostname] for h in hosts[1:4]}
    assert rx["host1"] > 420 * 10_000, rx  # every tile went to host 1 (JPEG, ~33 KB each)
    # The others got handshakes only, never a tile: ZeroMQ keeps knocking every 100 ms.
    assert rx["host2"] < rx["host1"] / 20 and rx["host3"] < rx["host1"] / 20, rx
    beat_after(net, watch, ["host1-w"], time.time())  # the others had their chance too
    evs = net.json_lines(watch)
    assert {e["worker"] for e in evs if e["type"] == "zv.heartbeat"} == {"host1-w"}
    stranger_key = (stranger / "client.key").read_text().split('public-key = "')[1][:40]
    assert f"refused a peer whose CURVE key {stranger_key}" in net.log(sink)
    assert "refused this host's CURVE key" in net.log(refused)  # and the worker is told
    # Watchers without an allowed key hear nothing; without --curve, nothing either.
    for extra in (("--curve", str(stranger)), ()):
        w = net.start(hosts[4], "watch", "--connect", c.home.addr, "--once", "--timeout",
                      "2", *extra, name="watch-once")
        assert net.wait(w, 30) == 1, net.log(w)
        assert "nothing heard" in net.log(w)



def test_auto_sends_whole_images_to_other_hosts_and_records_equal_raw(job_dir, net, tmp_path):
    """--wire auto: workers on other hosts get each file's bytes once (ImageWork) and cut
    it themselves; the records equal a plain one-host run's (raw tiles) exactly."""
    ref = reference(job_dir, tmp_path / "ref.jsonl", wire="auto")
    hosts = [net.add_host() for _ in range(3)]
    c = Cluster(net, tmp_path / "out.jsonl")
    c.sink()
    for h in hosts[1:3]:
        c.worker(h)
    vent = c.ventilate(job_dir)
    assert net.wait(vent, 120) == 0, net.log(vent)
    assert "12 images, 0 failed" in net.log(vent)
    assert "tiles as image" in net.log(vent)
    assert comparable(c.out) == ref
