"""Transport cost per tile against inference per tile, and where the pixels are copied.

Issue goal: "Transport: per-tile cost of serialise + send + receive as a share of per-tile
inference time (target <= 10 %); zero-copy for pixel frames (copy=False, buffers straight
into numpy/OpenVINO tensors without extra copies -- count them)."

For each model (ssd-mobilenetv2-oid: 300x300x3 tiles; centerface: 640x640x3) and each
transport (inproc, ipc, tcp://127.0.0.1), over real ZeroMQ sockets with the options the
roles use (``zmqvision.sockets.make_socket``; ventilator ROUTER with ROUTER_MANDATORY ->
worker DEALER with its routing id; worker PUSH -> sink PULL; for ipc and tcp the two ends
have their own Context, as two processes would):

- ``tile``: ``protocol.Tile(...)`` + ``protocol.encode`` + ``send_multipart(copy=False)``
  (ROUTER) + ``recv_multipart(copy=False)`` (DEALER) + ``protocol.decode``, the pixels a
  real cut (``tiling.cut_tile``) of a photo canvas; ``tile, copy=True`` the same with a
  copying send, for comparison;
- ``result``: ``protocol.Result`` with ``--boxes`` detections, encode + ``send_multipart
  (copy=True)`` (PUSH, as the worker sends it) + ``recv_multipart(copy=False)`` (PULL) +
  decode;
- ``ready``: the credit the worker sends back per tile (``Ready(credit=1)``, DEALER ->
  ROUTER);
- ``per tile``: tile + result + ready.

Two numbers per message: *latency*, one message at a time in one thread (median and
p10-p90 of ``--messages``; the wait for arrival includes libzmq's I/O threads), and *CPU
per message*, streaming ``--messages`` with a sender thread under a credit window of 3
(the worker's infer requests), process CPU time (all threads: both Python ends and the
I/O threads) divided by the messages. On a CPU-bound host CPU is what transport takes
from inference.

Inference per tile, in the same run and on the same tile: ``Detector(hint="LATENCY")
.infer`` (synchronous, one request, decode included: what the naive loop does) and the
asynchronous throughput of ``Detector(hint="THROUGHPUT")`` with the worker's requests
(optimal + 1) for ``--infer-seconds``, as ms per tile.

Copies of the pixels between the ventilator's image and the OpenVINO input tensor are
checked with ``np.shares_memory`` and buffer addresses; ``--strace`` also traces one ipc
and one tcp tile (strace must be installed) to show which bytes the kernel receives from
and writes to which buffer.

Bytes on the wire per message are the ZMTP 3 frames (1 flag byte and a 1- or 8-byte size
per frame, routing id not sent); link rates are *computed*, not measured.

    python benchmarks/transport.py                          # both models; ~20 s on 2 cores
    python benchmarks/transport.py --models centerface --messages 2000 --strace
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq
from _common import markdown_table

from zmqvision import protocol, sockets
from zmqvision.boxes import Detections
from zmqvision.tiling import Tile as PlannedTile
from zmqvision.tiling import cut_tile, plan_tiles

TIMEOUT_MS = 5000  # every receive waits at most this long
TRANSPORTS = ("inproc", "ipc", "tcp")
WINDOW = 3  # tiles in flight while streaming: the worker's infer requests on 2 cores
WORKER_ID = "bench-worker"
# Compiled models and infer queues live to the end of the process: OpenVINO aborted
# ("Resource deadlock avoided") when a released AsyncInferQueue was garbage-collected.
_KEEP: list = []
LINKS = {"1 GbE": 1e9 / 8, "10 GbE": 10e9 / 8}
# A full-size TCP segment carries 1460 payload bytes in 1538 bytes of link time
# (Ethernet preamble, header, FCS and gap 38, IPv4 20, TCP 20).
TCP_EFFICIENCY = 1460 / 1538


# ---------------------------------------------------------------------------- inputs


def photo_canvas(width: int = 1920, height: int = 1080, seed: int = 0) -> np.ndarray:
    """An RGB canvas covered with scikit-image's bundled photos (no download)."""
    from PIL import Image
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(getattr(skdata, n)()).convert("RGB")
              for n in ("astronaut", "chelsea", "coffee", "rocket")]
    canvas = Image.new("RGB", (width, height))
    y = 0
    while y < height:
        row_h = int(rng.integers(height // 4, height // 2))
        x = 0
        while x < width:
            photo = photos[int(rng.integers(len(photos)))]
            w = max(1, round(photo.width * row_h / photo.height))
            canvas.paste(photo.resize((w, row_h), Image.BILINEAR), (x, y))
            x += w
        y += row_h
    return np.asarray(canvas).copy()


def random_result(n: int, seed: int = 0) -> Detections:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1800, (n, 2))
    wh = rng.uniform(10, 200, (n, 2))
    return Detections.of(np.c_[xy, xy + wh], rng.uniform(0.3, 1.0, n), rng.integers(0, 600, n))


def zmtp_bytes(frames: list) -> int:
    """Bytes of one message on a ZMTP 3 connection: per frame 1 flag byte, a 1-byte size
    up to 255 bytes else 8 bytes, then the body."""
    total = 0
    for f in frames:
        n = memoryview(f).nbytes
        total += n + (2 if n <= 255 else 9)
    return total


# ---------------------------------------------------------------------------- sockets


class Link:
    """A sender and a receiver socket of one role pair on one transport."""

    def __init__(self, kind: str, transport: str, tmp: str) -> None:
        self.kind = kind  # "tile" (ROUTER -> DEALER), "result" (PUSH -> PULL), "ready"
        self.ctx_a = zmq.Context()
        self.ctx_b = self.ctx_a if transport == "inproc" else zmq.Context()
        self.socks: list[zmq.Socket] = []
        if transport == "inproc":
            endpoint = f"inproc://zv-bench-{uuid.uuid4().hex}"
        elif transport == "ipc":
            endpoint = f"ipc://{tmp}/{kind}-{uuid.uuid4().hex[:8]}.ipc"
        else:
            endpoint = "tcp://127.0.0.1:0"
        try:
            if kind in ("tile", "ready"):
                # The ventilator's ROUTER binds, the worker's DEALER connects.
                router = self._sock(self.ctx_a, zmq.ROUTER, sndhwm=1000, linger=0,
                                    maxmsgsize=1 << 20)
                router.setsockopt(zmq.ROUTER_MANDATORY, 1)
                bound = sockets.bind(router, endpoint)
                dealer = self._sock(self.ctx_b, zmq.DEALER, rcvhwm=100, sndhwm=1000,
                                    maxmsgsize=64 << 20)
                dealer.setsockopt(zmq.ROUTING_ID, WORKER_ID.encode())
                dealer.connect(bound)
                # The worker's first Ready: the ROUTER learns its routing id from it.
                dealer.send_multipart(protocol.encode(protocol.Ready(WORKER_ID, WINDOW)))
                self.wid = recv(router)[0].bytes
                self.sender, self.receiver = (router, dealer) if kind == "tile" else (
                    dealer, router)
            else:
                pull = self._sock(self.ctx_b, zmq.PULL, rcvhwm=10_000, maxmsgsize=16 << 20)
                bound = sockets.bind(pull, endpoint)
                push = self._sock(self.ctx_a, zmq.PUSH, sndhwm=10_000, linger=0)
                push.connect(bound)
                self.sender, self.receiver = push, pull
                self.wid = b""
                # Wait for the connection: one message through.
                push.send_multipart(protocol.encode(protocol.Ready(WORKER_ID, 1)))
                recv(pull)
        except BaseException:
            self.close()
            raise

    def _sock(self, ctx, kind, **kw) -> zmq.Socket:
        s = sockets.make_socket(ctx, kind, **kw)
        self.socks.append(s)
        return s

    def send(self, frames: list, copy: bool) -> None:
        if self.kind == "tile":
            self.sender.send_multipart([self.wid, *frames], copy=copy)
        else:
            self.sender.send_multipart(frames, copy=copy)

    def receive(self) -> list:
        frames = recv(self.receiver)
        return frames[1:] if self.kind == "ready" else frames  # ROUTER: routing id first

    def close(self) -> None:
        for s in self.socks:
            s.close(linger=0)
        self.ctx_a.term()
        if self.ctx_b is not self.ctx_a:
            self.ctx_b.term()


def recv(sock: zmq.Socket) -> list:
    if not sock.poll(TIMEOUT_MS, zmq.POLLIN):
        raise TimeoutError(f"nothing received within {TIMEOUT_MS} ms")
    return sock.recv_multipart(copy=False)


# ---------------------------------------------------------------------------- measuring


@dataclass
class Timing:
    """Latency samples (s) per step, and streaming wall and CPU per message (s)."""

    steps: dict[str, list[float]] = field(default_factory=dict)
    stream_wall: float = 0.0
    stream_cpu: float = 0.0
    wire_bytes: int = 0

    @property
    def total(self) -> list[float]:
        return [sum(x) for x in zip(*self.steps.values(), strict=True)]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return r.ru_utime + r.ru_stime


def measure_messages(link: Link, make, expect: protocol.MsgType, copy: bool, n: int,
                     warmup: int = 20) -> Timing:
    """``make()`` builds the message object (as the sending role does per message)."""
    t = Timing(steps={k: [] for k in ("encode", "send", "in flight", "recv", "decode")})
    t.wire_bytes = zmtp_bytes(protocol.encode(make()))
    perf = time.perf_counter
    for i in range(warmup + n):
        t0 = perf()
        frames = protocol.encode(make())
        t1 = perf()
        link.send(frames, copy)
        t2 = perf()
        if not link.receiver.poll(TIMEOUT_MS, zmq.POLLIN):
            raise TimeoutError(f"nothing received within {TIMEOUT_MS} ms")
        t3 = perf()
        got = link.receiver.recv_multipart(copy=False)
        if link.kind == "ready":
            got = got[1:]
        t4 = perf()
        msg = protocol.decode(got, (expect,))
        t5 = perf()
        del frames, got, msg
        if i >= warmup:
            for k, v in zip(t.steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4),
                            strict=True):
                t.steps[k].append(v)
    t.stream_wall, t.stream_cpu = stream(link, make, expect, copy, n)
    return t


def stream(link: Link, make, expect: protocol.MsgType, copy: bool, n: int) -> tuple:
    """A sender thread under a credit window, the receiver here; per message wall and CPU
    time of the whole process."""
    credit = threading.Semaphore(WINDOW)
    failed: list[str] = []

    def producer() -> None:
        for _ in range(n):
            if not credit.acquire(timeout=TIMEOUT_MS / 1000):
                failed.append("no credit back in time")
                return
            link.send(protocol.encode(make()), copy)

    c0, w0 = _cpu(), time.perf_counter()
    th = threading.Thread(target=producer, daemon=True)
    th.start()
    try:
        for _ in range(n):
            protocol.decode(link.receive(), (expect,))
            credit.release()
    finally:
        th.join(TIMEOUT_MS / 1000)
    w1, c1 = time.perf_counter(), _cpu()
    if failed:
        raise TimeoutError(failed[0])
    return (w1 - w0) / n, (c1 - c0) / n


def measure_inference(model: str, pixels: np.ndarray, seconds: float) -> dict:
    """Sync LATENCY-hint inference (decode included) and async THROUGHPUT per tile."""
    import openvino as ov

    from zmqvision.models import Detector, resolve

    spec = resolve(model)
    det = Detector(spec, hint="LATENCY")
    det.infer(pixels)  # warm-up
    times, found = [], 0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 10:
        t = time.perf_counter()
        found = len(det.infer(pixels))
        times.append(time.perf_counter() - t)
    del det
    det = Detector(spec)  # THROUGHPUT, as the worker compiles it
    requests = det.optimal_requests() + 1
    queue = ov.AsyncInferQueue(det.compiled, requests)
    done = [0]

    def completed(request, userdata) -> None:
        det.decode(det.outputs_of(request))
        done[0] += 1

    queue.set_callback(completed)
    tensor = det.input_tensor(pixels)
    for _ in range(requests):  # warm-up
        queue.start_async({0: tensor})
    queue.wait_all()
    done[0] = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        queue.start_async({0: tensor})  # blocks while every request is busy
    queue.wait_all()
    wall = time.perf_counter() - t0
    _KEEP.append((queue, det))  # see _KEEP
    return {"sync_s": times, "detections": found, "async_per_tile_s": wall / done[0],
            "async_tiles": done[0], "requests": requests}


# ---------------------------------------------------------------------------- copies


def copy_checks(model: str, canvas: np.ndarray, tmp: str) -> list[list[str]]:
    """Follow one tile's pixels from the image to the OpenVINO input tensor."""
    from zmqvision.models import Detector, resolve

    spec = resolve(model)
    plan = plan_tiles(canvas.shape[1], canvas.shape[0], spec.input_size)
    cut, scale = cut_tile(canvas, plan[0], spec.input_size)
    x0, y0, x1, y1 = plan[0].box
    region = canvas[y0:y1, x0:x1]
    rows = [["cut (ventilator: image region -> C-contiguous tile, scale 1)", "1", "1",
             f"region view shares the image: {np.shares_memory(region, canvas)}, is "
             f"C-contiguous: {region.flags.c_contiguous}; cut shares the image: "
             f"{np.shares_memory(cut, canvas)}, owns its data: {cut.flags.owndata}"]]
    msg = protocol.Tile(job="j", image="i", index=0, box=plan[0].box, scale=scale,
                        model=spec.ref, pixels=cut)
    frames = protocol.encode(msg)
    rows.append(["protocol.encode(Tile)", "0", "0",
                 f"pixel frame is the cut array: {frames[2] is cut}, same address: "
                 f"{frames[2].ctypes.data == cut.ctypes.data}"])
    det = Detector(spec, hint="LATENCY")
    r = {}
    for transport in TRANSPORTS:
        link = Link("tile", transport, tmp)
        try:
            link.send(frames, copy=False)
            got = link.receive()
            tile = protocol.decode(got, (protocol.MsgType.TILE,))
            view = np.frombuffer(got[2].buffer, np.uint8)
            tensor = det.input_tensor(tile.pixels)
            request = det.compiled.create_infer_request()
            request.infer({0: tensor})
            given = request.get_input_tensor(0).data
            r[transport] = {
                "frame_is_cut": np.shares_memory(view, cut)
                and view.ctypes.data == cut.ctypes.data,
                "decode_view": np.shares_memory(tile.pixels, view)
                and tile.pixels.ctypes.data == view.ctypes.data,
                "equal": bool(np.array_equal(tile.pixels, cut)),
                "tensor": tensor.data.ctypes.data == tile.pixels.ctypes.data
                and np.shares_memory(tensor.data, tile.pixels),
                "request": given.ctypes.data == tile.pixels.ctypes.data,
            }
            del tensor, request, given, tile, view, got
        finally:
            link.close()

    def each(key: str) -> str:
        return ", ".join(f"{t} {r[t][key]}" for t in TRANSPORTS)

    rows.append(["send_multipart(copy=False) + recv_multipart(copy=False)", "0",
                 "2 by the kernel (+ <= 8 KiB by libzmq, see --strace)",
                 f"received frame's buffer is the cut's memory: {each('frame_is_cut')}; "
                 f"bytes equal: {all(r[t]['equal'] for t in TRANSPORTS)}; pyzmq sends "
                 f"zero-copy above {zmq.COPY_THRESHOLD:,} B (tile {cut.nbytes:,} B); a "
                 "socket copies into and out of the kernel"])
    rows.append(["protocol.decode: np.frombuffer(frame.buffer)", "0", "0",
                 f"Tile.pixels is a view of the received zmq.Frame, same address: "
                 f"{each('decode_view')}"])
    rows.append(["Detector.input_tensor + infer({0: tensor})", "0", "0",
                 f"ov.Tensor data at the pixels' address: {each('tensor')}; the request's "
                 f"input tensor after infer too: {each('request')} (what the plugin does "
                 "inside is not visible from here)"])
    rows.append(["total, image -> OpenVINO input", "1", "1 + 2 by the kernel", ""])
    return rows


def result_copy_checks(n: int, tmp: str) -> list[list[str]]:
    """The Result's boxes, scores and labels from the worker's Detections to the sink's."""
    dets = random_result(n)
    msg = protocol.Result(job="j", image="i", index=0, worker=WORKER_ID, model="m@1",
                          detections=dets)
    frames = protocol.encode(msg)
    same = [f is a for f, a in zip(frames[2:], (dets.boxes, dets.scores, dets.labels),
                                   strict=True)]
    rows = [["protocol.encode(Result)", "0", f"frames are the Detections' arrays: {same}"]]
    link = Link("result", "tcp", tmp)
    try:
        link.send(frames, copy=True)  # as the worker sends it
        got = link.receive()
        res = protocol.decode(got, (protocol.MsgType.RESULT,))
        views = [np.frombuffer(f.buffer, np.uint8) for f in got[2:]]
        arrays = (res.detections.boxes, res.detections.scores, res.detections.labels)
        shared = [np.shares_memory(a, v) for a, v in zip(arrays, views, strict=True)]
        no_copy = [np.shares_memory(np.frombuffer(f.buffer, dt).astype(dt, copy=False), v)
                   for f, dt, v in zip(got[2:], (protocol.BOX_DTYPE, protocol.SCORE_DTYPE,
                                                 protocol.LABEL_DTYPE), views, strict=True)]
    finally:
        link.close()
    rows.append(["send_multipart(copy=True) (worker) + recv_multipart(copy=False) (sink)",
                 "1 into zmq messages (+ 2 by the kernel on ipc, tcp)",
                 f"frames of {', '.join(str(f.nbytes) for f in views)} B are below pyzmq's "
                 f"{zmq.COPY_THRESHOLD:,} B copy threshold: copy=False would copy them too"])
    rows.append(["protocol.decode: np.frombuffer(...).astype(...)", "1 per array (avoidable)",
                 f"decoded arrays share the received frames: {shared}; "
                 f"astype(dtype, copy=False) would share them: {no_copy} (little-endian host)"])
    return rows


def strace_check(tmp: str) -> list[str]:
    """Trace one 300x300 tile over ipc and tcp: which bytes the kernel reads from the
    cut's own memory and writes straight into the received frame."""
    if shutil.which("strace") is None:
        return ["--strace: strace is not installed"]
    lines = []
    for transport in ("ipc", "tcp"):
        log = os.path.join(tmp, f"strace-{transport}.txt")
        cmd = ["strace", "-f", "-qq", "-o", log, "-e", "trace=sendto,recvfrom,write",
               "-e", "raw=sendto,recvfrom", sys.executable,
               os.path.abspath(__file__), "--strace-child", transport]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            return [f"--strace: failed ({out.stderr.strip()[-300:]})"]
        marks = dict(re.findall(r"^(SEND|RECV) ([0-9a-f]+) \d+$", out.stdout, re.M))
        size = int(re.search(r"^SEND [0-9a-f]+ (\d+)$", out.stdout, re.M).group(1))
        send_at, recv_at = int(marks["SEND"], 16), int(marks["RECV"], 16)
        direct = {"sendto": 0, "recvfrom": 0}
        other = {"sendto": 0, "recvfrom": 0}
        for call, addr, n in _syscalls(Path(log).read_text()):
            base = send_at if call == "sendto" else recv_at
            if base <= addr < base + size:
                direct[call] += n
            else:
                other[call] += n
        lines.append(
            f"strace, {transport}, one {size:,} B tile: the kernel read "
            f"{direct['sendto']:,} B straight from the cut's memory and "
            f"{other['sendto']:,} B from libzmq's 8 KiB batch buffer (the ZMTP frames before "
            f"the pixels and the first {size - direct['sendto']:,} pixel bytes, copied there); "
            f"it wrote {direct['recvfrom']:,} B straight into the received frame and "
            f"{other['recvfrom']:,} B into libzmq's buffer (copied on from there)")
    return lines


def _syscalls(text: str):
    """(call, buffer address, bytes returned) of sendto/recvfrom in an ``strace -f -e
    raw=...`` log, joining ``<unfinished ...>`` and ``resumed`` halves."""
    pending: dict[str, tuple[str, int]] = {}
    lines = text.splitlines()
    # Only what happens between the child's two marker lines (its writes to stdout).
    first = next(i for i, x in enumerate(lines) if 'write(1, "SEND' in x)
    last = next(i for i, x in enumerate(lines) if 'write(1, "RECV' in x)
    for line in lines[first:last]:
        m = re.match(r"(\d+)\s+(sendto|recvfrom)\((0x[0-9a-f]+|\d+), (0x[0-9a-f]+)", line)
        if m:
            pid, call, addr = m.group(1), m.group(2), int(m.group(4), 16)
            if "<unfinished" in line:
                pending[pid] = (call, addr)
                continue
        else:
            m = re.match(r"(\d+)\s+<\.\.\. (sendto|recvfrom) resumed>", line)
            if not m or m.group(1) not in pending:
                continue
            call, addr = pending.pop(m.group(1))
        ret = re.search(r"= (0x[0-9a-f]+|\d+)\s*$", line)
        if ret:
            yield call, addr, int(ret.group(1), 0)


def strace_child(transport: str) -> int:
    """Runs under strace: one tile from a ROUTER to a DEALER, addresses printed."""
    canvas = np.random.default_rng(0).integers(0, 256, (600, 600, 3), np.uint8)
    cut, scale = cut_tile(canvas, PlannedTile(0, (0, 0, 300, 300)), (300, 300))
    with tempfile.TemporaryDirectory(prefix="zv-strace-") as tmp:
        link = Link("tile", transport, tmp)
        try:
            msg = protocol.Tile(job="j", image="i", index=0, box=(0, 0, 300, 300),
                                scale=scale, model="m@1", pixels=cut)
            print(f"SEND {cut.ctypes.data:x} {cut.nbytes}", flush=True)
            link.send(protocol.encode(msg), copy=False)
            tile = protocol.decode(link.receive(), (protocol.MsgType.TILE,))
            print(f"RECV {tile.pixels.ctypes.data:x} {tile.pixels.nbytes}", flush=True)
        finally:
            link.close()
    return 0


# ---------------------------------------------------------------------------- output



def pct(x: float) -> str:
    return f"{100 * x:.1f} %" if x >= 0.001 else f"{100 * x:.2f} %"


def us(x: float) -> str:
    return f"{x * 1e6:.1f}"


def parse_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=parse_list, default=["ssd-mobilenetv2-oid", "centerface"],
                    help="catalog models, comma-separated (default ssd-mobilenetv2-oid,"
                         "centerface: 300x300 and 640x640 tiles)")
    ap.add_argument("--transports", type=parse_list, default=list(TRANSPORTS),
                    help="inproc, ipc, tcp (default all)")
    ap.add_argument("--messages", type=int, default=500,
                    help="messages per measurement, after 20 of warm-up (default 500)")
    ap.add_argument("--boxes", type=int, default=20,
                    help="detections in the Result message (default 20)")
    ap.add_argument("--infer-seconds", type=float, default=2.0,
                    help="seconds of sync and of async inference per model (default 2)")
    ap.add_argument("--strace", action="store_true",
                    help="also trace one ipc and one tcp tile's syscalls (needs strace)")
    ap.add_argument("--strace-child", choices=("ipc", "tcp"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help="also write the tables: .md (markdown) or .json")
    args = ap.parse_args(argv)
    if args.strace_child:
        return strace_child(args.strace_child)
    bad = [t for t in args.transports if t not in TRANSPORTS]
    if bad or args.messages < 1 or args.boxes < 0:
        ap.error(f"unknown transport {bad}" if bad else "--messages >= 1, --boxes >= 0")

    import openvino as ov

    from zmqvision.models import ensure, resolve

    for m in args.models:
        ensure(resolve(m), log=lambda s: print(s, file=sys.stderr))
    command = shlex.join(["benchmarks/transport.py", *(sys.argv[1:] if argv is None
                                                        else argv)])
    head = [
        f"command: {command}",
        f"machine: os.cpu_count()={os.cpu_count()}, load average at start "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}, Python {platform.python_version()}, "
        f"pyzmq {zmq.pyzmq_version()}, libzmq {zmq.zmq_version()}, OpenVINO "
        f"{ov.__version__}, {platform.platform()}",
        f"latency: one message at a time, median (p10-p90) of {args.messages}; CPU: "
        f"{args.messages} messages streamed with {WINDOW} in flight, process CPU "
        "(all threads, both ends) per message; inference: same tile, "
        f"{args.infer_seconds:g} s each of sync (LATENCY hint) and async (THROUGHPUT)",
    ]
    print("\n".join(head), flush=True)

    canvas = photo_canvas()
    perf_rows, step_rows, wire_rows, copy_text, raw = [], [], [], [], {}
    summary = []
    with tempfile.TemporaryDirectory(prefix="zv-bench-transport-") as tmp:
        for model in args.models:
            spec = resolve(model)
            plan = plan_tiles(canvas.shape[1], canvas.shape[0], spec.input_size)
            tiles = [cut_tile(canvas, t, spec.input_size) for t in plan]
            t0 = time.perf_counter()
            for t in plan:
                cut_tile(canvas, t, spec.input_size)
            cut_s = (time.perf_counter() - t0) / len(plan)
            pixels, scale = tiles[len(tiles) // 2]
            inf = measure_inference(model, pixels, args.infer_seconds)
            sync = statistics.median(inf["sync_s"])
            asyn = inf["async_per_tile_s"]
            w, h = spec.input_size
            label = f"{spec.name} {w}x{h}x3"
            print(f"{label}: sync infer {sync * 1e3:.2f} ms (median of {len(inf['sync_s'])}, "
                  f"{inf['detections']} detections), async {asyn * 1e3:.2f} ms per tile "
                  f"({1 / asyn:.1f} tiles/s, {inf['requests']} requests); cut "
                  f"{cut_s * 1e6:.0f} µs per tile", flush=True)
            box = plan[len(tiles) // 2].box
            dets = random_result(args.boxes)

            def make_tile(pixels=pixels, scale=scale, box=box, spec=spec):
                return protocol.Tile(job="0123456789abcdef", image="0" * 24, index=7,
                                     box=box, scale=scale, model=spec.ref, pixels=pixels,
                                     min_score=0.3)

            def make_result(dets=dets, spec=spec):
                return protocol.Result(job="0123456789abcdef", image="0" * 24, index=7,
                                       worker=WORKER_ID, model=spec.ref, detections=dets,
                                       infer_ms=12.5)

            def make_ready():
                return protocol.Ready(WORKER_ID, 1)

            kinds = [
                ("tile", "tile", make_tile, protocol.MsgType.TILE, False),
                ("tile, copy=True (comparison)", "tile", make_tile, protocol.MsgType.TILE,
                 True),
                (f"result ({args.boxes} boxes)", "result", make_result,
                 protocol.MsgType.RESULT, True),
                ("ready (credit 1)", "ready", make_ready, protocol.MsgType.READY, True),
            ]
            for transport in args.transports:
                got: dict[str, Timing] = {}
                for name, kind, make, expect, copy in kinds:
                    link = Link(kind, transport, tmp)
                    try:
                        got[name] = measure_messages(link, make, expect, copy, args.messages)
                    finally:
                        link.close()
                    t = got[name]
                    lat = t.total
                    q = np.percentile(lat, [10, 90])
                    perf_rows.append([label, name, transport, us(statistics.median(lat)),
                                      f"{us(q[0])}–{us(q[1])}", us(t.stream_cpu),
                                      us(t.stream_wall), pct(t.stream_cpu / sync),
                                      pct(t.stream_cpu / asyn)])
                    if kind == "tile" and not copy or kind == "result":
                        step_rows.append([label, name, transport] + [
                            us(statistics.median(v)) for v in t.steps.values()]
                            + [us(statistics.median(lat))])
                    raw[f"{model}/{transport}/{name}"] = {
                        "latency_s": lat, "steps": t.steps, "stream_cpu_s": t.stream_cpu,
                        "stream_wall_s": t.stream_wall, "wire_bytes": t.wire_bytes}
                parts = [got["tile"], got[kinds[2][0]], got[kinds[3][0]]]
                lat = sum(statistics.median(p.total) for p in parts)
                cpu = sum(p.stream_cpu for p in parts)
                wall = sum(p.stream_wall for p in parts)
                perf_rows.append([label, "per tile: tile + result + ready", transport,
                                  us(lat), "(sum of medians)", us(cpu), us(wall),
                                  pct(cpu / sync), pct(cpu / asyn)])
                summary.append(f"{label}, {transport}: transport CPU per tile {us(cpu)} µs = "
                               f"{pct(cpu / sync)} of sync inference ({sync * 1e3:.2f} ms), "
                               f"{pct(cpu / asyn)} of async inference per tile "
                               f"({asyn * 1e3:.2f} ms); latency {pct(lat / sync)} of sync "
                               f"(target <= 10 %)")
            # Wire bytes (computed).
            for name, make in (("tile", make_tile), (f"result ({args.boxes} boxes)",
                                                     make_result), ("ready", make_ready)):
                frames = protocol.encode(make())
                sizes = [memoryview(f).nbytes for f in frames]
                b = zmtp_bytes(frames)
                rates = []
                for bps in LINKS.values():
                    rates.append(f"{bps / b:,.0f}" if name == "tile" else "–")
                    rates.append(f"{bps * TCP_EFFICIENCY / b:,.0f}" if name == "tile"
                                 else "–")
                wire_rows.append([label, name, " + ".join(f"{s:,}" for s in sizes),
                                  f"{b:,}", *rates,
                                  f"{LINKS['1 GbE'] * TCP_EFFICIENCY / b * asyn:,.1f}"
                                  if name == "tile" else "–"])
            copy_text.append((label, copy_checks(model, canvas, tmp)))
            raw[f"{model}/inference"] = inf
        result_rows = result_copy_checks(args.boxes, tmp)
        strace_lines = strace_check(tmp) if args.strace else []

    out = ["", "Transport per message against inference per tile (µs; share = CPU per "
           "message ÷ inference per tile):", "",
           markdown_table(["tile", "message", "transport", "latency µs (median)", "p10–p90 µs",
                           "CPU µs / msg (streaming)", "wall µs / msg (streaming)",
                           "CPU ÷ sync infer", "CPU ÷ async infer per tile"], perf_rows),
           "", "Latency by step, one message at a time (median µs; 'in flight' = send "
           "returned -> poll saw it: the I/O threads and the kernel):", "",
           markdown_table(["tile", "message", "transport", "encode (incl. Tile())", "send call",
                           "in flight", "recv call", "decode", "total"], step_rows),
           "", "Bytes on the wire per message (ZMTP 3 frames; link rates COMPUTED = link "
           "bytes/s ÷ bytes per tile, not measured; 'TCP' also charges Ethernet+IP+TCP "
           "framing, 1460 payload bytes per 1538):", "",
           markdown_table(["tile", "message", "frames (bytes)", "bytes on the wire",
                           "1 GbE tiles/s", "1 GbE tiles/s (TCP)", "10 GbE tiles/s",
                           "10 GbE tiles/s (TCP)",
                           "machines like this one fed by 1 GbE (TCP, async rate)"],
                          wire_rows)]
    out += ["", f"Copies of a Result's arrays ({args.boxes} boxes), worker -> sink (tcp):", "",
            markdown_table(["step", "copies", "how verified"], result_rows)]
    for label, rows in copy_text:
        out += ["", f"Copies of the pixels, image -> OpenVINO input tensor ({label}):", "",
                markdown_table(["step", "copies (inproc)", "copies (ipc, tcp)",
                                "how verified"], rows)]
    out += [""] + strace_lines + ([""] if strace_lines else []) + summary
    text = "\n".join(out)
    print(text)
    if args.out:
        path = Path(args.out)
        if path.suffix.lower() == ".json":
            path.write_text(json.dumps({"head": head, "raw": raw}, indent=1, default=str))
        else:
            path.write_text("```\n" + "\n".join(head) + "\n```\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
