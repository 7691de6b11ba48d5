"""The workers the sink has heard from lately (their heartbeats), published as one
snapshot so that a watcher that joins late learns of silent workers too."""

from __future__ import annotations

import time
from collections import OrderedDict

from zmqvision import protocol

FORGET_WORKER_S = 300.0  # a worker silent this long leaves the roster
MAX_WORKERS = 1024


class Roster:
    def __init__(self, limit: int = MAX_WORKERS) -> None:
        self.limit = limit
        self.beats: OrderedDict[str, tuple[float, protocol.Heartbeat]] = OrderedDict()

    def heard(self, beat: protocol.Heartbeat) -> None:
        self.beats[beat.worker] = (time.monotonic(), beat)
        self.beats.move_to_end(beat.worker)
        while len(self.beats) > self.limit:
            self.beats.popitem(last=False)

    def snapshot(self, sink_id: str) -> protocol.Workers:
        now = time.monotonic()
        for wid in [w for w, (seen, _) in self.beats.items() if now - seen > FORGET_WORKER_S]:
            del self.beats[wid]
        entries = tuple({**beat.header(), "age": now - seen}
                        for seen, beat in self.beats.values())
        return protocol.Workers(sink=sink_id, workers=entries)
