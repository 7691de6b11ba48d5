"""Inputs that never stop: a followed folder (``--follow``) and live video streams.

A live job's inputs arrive by themselves, at their own pace. They meet in one bounded
queue (``Arrivals``) that the job's reader takes from without ever blocking the engine's
loop (``LiveInputs.take``: a path, an already decoded frame, ``WAIT`` or the end), and
which knows what a person watching wants to know: how many wait, how old the oldest is,
and how many were dropped for being behind (``--when-behind drop-oldest``).

Folders are followed by ``FolderWatch``: the files already there first, then every new
file once it is complete. Complete means, with inotify (Linux, through ctypes: no
dependency), that its writer closed it (``IN_CLOSE_WRITE``) or renamed it into place
(``IN_MOVED_TO``); elsewhere, and on network filesystems where inotify hears nothing of
other hosts' writes (``poll=True``), that its size and mtime stayed the same over two
polls ``settle`` seconds apart (``Settling``). A file that was already there, still being
written, when the follow started is taken once it is stable, in either mode.

Ctrl-C, then the same command with ``--resume``: the files whose records were written are
skipped by their ids, every other one is done; nothing is lost and nothing repeated.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as _dt
import logging
import os
import select
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from zmqvision import io

log = logging.getLogger("zmqvision.follow")

WAIT = ""  # take()'s answer while nothing is ready and more may come
BEHIND_POLICIES = ("queue", "drop-oldest")
DEFAULT_QUEUE_FILES = 100_000  # paths waiting: a few MB
DEFAULT_QUEUE_FRAMES = 8  # decoded frames waiting: 50 MB at 1920x1080
INITIAL_SETTLE_S = 1.0  # a file found at start, written this recently, must prove stable


def parse_until(text: str, now: float | None = None) -> float:
    """``--until``: a duration (``90m``, ``8h``, ``30s``) from now, or a time of day
    (``18:00``, ``18:00:30``: the next one) or an ISO date-time; the deadline as
    ``time.time()`` seconds. ValueError for anything else."""
    from zmqvision.cache.prune import parse_duration

    now = time.time() if now is None else now
    text = str(text).strip()
    try:
        return now + parse_duration(text)
    except ValueError:
        pass
    local = _dt.datetime.fromtimestamp(now).astimezone()
    for fmt in ("%H:%M", "%H:%M:%S"):
        try:
            t = _dt.datetime.strptime(text, fmt).time()
        except ValueError:
            continue
        at = local.replace(hour=t.hour, minute=t.minute, second=t.second, microsecond=0)
        if at.timestamp() <= now:
            at += _dt.timedelta(days=1)
        return at.timestamp()
    try:
        at = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (90m, 8h, 30s), a time of day "
                         "(18:00) nor a date-time (2030-01-31T18:00)") from None
    if at.tzinfo is None:
        at = at.astimezone()
    return at.timestamp()


# ----------------------------------------------------------------------------- the queue


class Arrivals:
    """A bounded, thread-safe queue of what arrived (paths or decoded frames), with the
    time each came. Producers (a folder watch, a stream reader) ``put``; the job's reader
    ``take``s. When it is full, ``drop-oldest`` drops the oldest item (counted), ``queue``
    makes the producer wait (a folder watch then stops looking; a stream's decoder stops
    reading, and its source buffers or drops as it does)."""

    def __init__(self, limit: int, policy: str = "queue",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if policy not in BEHIND_POLICIES:
            raise ValueError(f"--when-behind is one of {', '.join(BEHIND_POLICIES)}")
        self.limit, self.policy, self.clock = max(1, limit), policy, clock
        self._items: deque[tuple[object, float]] = deque()
        self._cond = threading.Condition()
        self.dropped = 0
        self.most = 0  # the longest the queue has been (a bound the tests check)
        self._producers = 0
        self._closed = False
        self.wake: Callable[[], None] | None = None  # the engine's, called on every put

    def producing(self) -> None:
        with self._cond:
            self._producers += 1

    def produced(self) -> None:
        """One producer has no more to give (a stream ended, the deadline passed)."""
        with self._cond:
            self._producers -= 1
            self._cond.notify_all()
        self._wake()

    def _wake(self) -> None:
        if self.wake is not None:
            self.wake()

    def put(self, item: object, arrived: float | None = None) -> bool:
        """False when the queue was closed meanwhile (the producer should stop)."""
        with self._cond:
            while (len(self._items) >= self.limit and self.policy == "queue"
                   and not self._closed):
                self._cond.wait(0.5)
            if self._closed:
                return False
            if len(self._items) >= self.limit:
                self._items.popleft()
                self.dropped += 1
            self._items.append((item, self.clock() if arrived is None else arrived))
            self.most = max(self.most, len(self._items))
            self._cond.notify_all()
        self._wake()
        return True

    def take(self) -> tuple[object, float] | str | None:
        """The oldest item and its arrival; ``WAIT`` when none is here yet, None at the end
        (every producer done and nothing left)."""
        with self._cond:
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()
                return item
            return None if self._producers <= 0 or self._closed else WAIT

    def wait(self, timeout: float) -> None:
        """Until something is there, the end, or ``timeout``."""
        with self._cond:
            if not self._items and self._producers > 0 and not self._closed:
                self._cond.wait(timeout)

    def oldest(self) -> float | None:
        with self._cond:
            return self._items[0][1] if self._items else None

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


# ----------------------------------------------------------------------------- completeness


class Settling:
    """Which files have stopped changing: pure bookkeeping over (size, mtime) signatures
    and an injected clock. A file is ready once it was seen at least twice with the same
    signature, ``settle`` seconds or more apart."""

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self._seen: dict[str, tuple[tuple[int, int], float, bool]] = {}

    def observe(self, path: str, signature: tuple[int, int], now: float) -> None:
        old = self._seen.get(path)
        if old is None or old[0] != signature:
            self._seen[path] = (signature, now, False)
        elif now > old[1]:
            self._seen[path] = (signature, old[1], True)  # seen again, unchanged

    def ready(self, now: float) -> list[str]:
        done = [p for p, (_, since, again) in self._seen.items()
                if again and now - since >= self.settle]
        for p in done:
            del self._seen[p]
        return done

    def forget(self, path: str) -> None:
        self._seen.pop(path, None)

    def paths(self) -> list[str]:
        return list(self._seen)

    def __contains__(self, path: str) -> bool:
        return path in self._seen

    def __len__(self) -> int:
        return len(self._seen)


def signature(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


# ----------------------------------------------------------------------------- inotify

IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x8, 0x80, 0x100
IN_Q_OVERFLOW, IN_ISDIR = 0x4000, 0x40000000
_EVENT = struct.Struct("iIII")


class Inotify:
    """The few inotify calls a folder watch needs, through ctypes (Linux only):
    ``available()`` says whether they work here."""

    MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd = fd
        self.dirs: dict[int, str] = {}

    @staticmethod
    def available() -> bool:
        try:
            Inotify().close()
            return True
        except (OSError, AttributeError):
            return False

    def add(self, path: str) -> bool:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), self.MASK)
        if wd < 0:
            log.warning("cannot watch %s: %s", path, os.strerror(ctypes.get_errno()))
            return False
        self.dirs[wd] = path
        return True

    def read(self, timeout: float) -> list[tuple[str, int, str]] | None:
        """Events as (directory, mask, name); None when the kernel's queue overflowed
        (events were lost: the caller looks again)."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        if not poller.poll(int(timeout * 1000)):
            return []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        events, offset, lost = [], 0, False
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, size = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size
            name = os.fsdecode(data[offset:offset + size].rstrip(b"\0"))
            offset += size
            if mask & IN_Q_OVERFLOW:
                lost = True
            elif wd in self.dirs:
                events.append((self.dirs[wd], mask, name))
        return None if lost else events

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ----------------------------------------------------------------------------- folders


@dataclass(frozen=True)
class FollowOptions:
    """How a folder is followed: ``settle`` seconds a file must stay unchanged (polling
    mode; None: 1 s when polling, 0 with inotify), ``poll`` to poll even where inotify
    works (network filesystems), and the extension filter of ``io.ImageWalk``."""

    settle: float | None = None
    poll: bool = False
    extensions: frozenset[str] | None = None
    recursive: bool = True


class FolderWatch:
    """A thread that puts a folder's complete files into ``Arrivals``: those there at the
    start, then new ones (see the module doc). Ends at ``deadline`` (``time.time()``) or
    ``stop``."""

    def __init__(self, top: str, arrivals: Arrivals, options: FollowOptions,
                 stop: threading.Event, deadline: float | None = None) -> None:
        self.top, self.arrivals, self.options = top, arrivals, options
        self._stop, self.deadline = stop, deadline
        self._inotify: Inotify | None = None
        if not options.poll:
            try:
                self._inotify = Inotify()
            except (OSError, AttributeError) as exc:
                log.info("inotify is not available (%s): polling %s", exc, top)
        self.mode = "inotify" if self._inotify is not None else "poll"
        settle = options.settle
        if settle is None:
            settle = 0.0 if self._inotify is not None else 1.0
        self.settle = settle
        # Files to prove stable (all of them when polling; with inotify, only those that
        # were being written when the follow started or that a lost event hides).
        self.settling = Settling(max(settle, INITIAL_SETTLE_S) if self._inotify else settle)
        self.closed_at: dict[str, float] = {}  # inotify: closed, waiting out ``settle``
        self.emitted: dict[str, tuple[int, int] | None] = {}  # path → signature at emission
        self.skipped = 0
        self.skipped_examples: list[str] = []
        self.polls = 0
        self.watching = threading.Event()  # set once watched and the first look is done
        self._exts = io._extension_filter(options.extensions)
        self.thread = threading.Thread(target=self._run, name="zv-follow", daemon=True)

    def start(self) -> None:
        self.arrivals.producing()
        self.thread.start()

    def _wanted(self, name: str) -> bool:
        if name.startswith("."):
            return False
        if self._exts is None:
            return True
        return name.rpartition(".")[2].lower() in self._exts if "." in name else False

    def _emit(self, path: str) -> bool:
        sig = signature(path)
        if sig is None or self.emitted.get(path, ()) == sig:
            return True  # gone, or the same file again (a second close of it)
        self.emitted[path] = sig
        self.settling.forget(path)
        return self.arrivals.put(path)

    def _scan(self, now: float, settle_all: bool) -> None:
        """Look at every file: with ``settle_all`` (polling) each must prove stable; with
        inotify (start, lost events) the old ones are taken at once."""
        walk = io.ImageWalk([self.top], recursive=self.options.recursive,
                            extensions=self.options.extensions, stop=self._stop)
        try:
            for path in walk:
                sig = signature(path)
                if sig is None or self.emitted.get(path) == sig:
                    continue
                if not settle_all and time.time() - sig[1] / 1e9 > INITIAL_SETTLE_S:
                    if not self._emit(path):
                        return
                else:
                    self.settling.observe(path, sig, now)
        finally:
            walk.close()
            self.skipped = max(self.skipped, walk.skipped)
            self.skipped_examples = walk.skipped_examples

    def _over(self) -> bool:
        return (self._stop.is_set() or self.arrivals.closed
                or (self.deadline is not None and time.time() >= self.deadline))

    def _run(self) -> None:
        try:
            if self._inotify is not None:
                self._watch_tree(self.top)
            self._scan(time.monotonic(), settle_all=self._inotify is None)
            self.watching.set()
            interval = max(0.05, min(1.0, self.settling.settle / 4 or 0.5))  # 4+ looks
            next_poll = time.monotonic() + interval
            while not self._over():
                now = time.monotonic()
                if self._inotify is not None:
                    self._events(min(0.2, max(0.0, next_poll - now)))
                else:
                    self._stop.wait(min(0.2, max(0.0, next_poll - now)))
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + interval
                    self.polls += 1
                    if self._inotify is None:
                        self._scan(now, settle_all=True)
                    else:
                        for path in self.settling.paths():
                            sig = signature(path)
                            if sig is None:
                                self.settling.forget(path)
                            else:
                                self.settling.observe(path, sig, now)
                for path in self.settling.ready(now):
                    if not self._emit(path):
                        return
                for path, at in list(self.closed_at.items()):
                    if now - at >= self.settle:
                        del self.closed_at[path]
                        if not self._emit(path):
                            return
        except Exception:  # noqa: BLE001 - a watch must end the job, not hang it
            log.exception("following %s failed", self.top)
        finally:
            self.watching.set()
            if self._inotify is not None:
                self._inotify.close()
            self.arrivals.produced()

    def _watch_tree(self, top: str) -> None:
        if not self._inotify.add(top) or not self.options.recursive:
            return
        for dirpath, dirnames, _ in os.walk(top):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for d in dirnames:
                self._inotify.add(os.path.join(dirpath, d))

    def _events(self, timeout: float) -> None:
        events = self._inotify.read(timeout)
        now = time.monotonic()
        if events is None:  # lost events: look at everything again
            log.warning("inotify lost events under %s: looking at every file again", self.top)
            self._scan(now, settle_all=False)
            return
        for directory, mask, name in events:
            path = os.path.join(directory, name)
            if mask & IN_ISDIR:
                if (mask & (IN_CREATE | IN_MOVED_TO) and self.options.recursive
                        and not name.startswith(".")):
                    self._watch_tree(path)  # files made before the watch: proven stable
                    for sub in io.ImageWalk([path], extensions=self.options.extensions):
                        sig = signature(sub)
                        if sig is not None:
                            self.settling.observe(sub, sig, now)
                continue
            if not self._wanted(name):
                if mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
                    self.skipped += 1
                continue
            if mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
                self.settling.forget(path)
                self.closed_at[path] = now  # a later close starts the wait again


# ----------------------------------------------------------------------------- the source


class LiveInputs:
    """The inputs of a live job: files named (taken at once), folders followed, live
    streams read as they come; see the module doc.

    Two ways to consume it: ``take()`` never blocks (the ventilator's reader), and
    iterating blocks until the next input (``pool.map(follow(DIR))``). It ends once
    ``until`` (``time.time()`` seconds) passes, or ``close()``; what arrived before is
    still handed out."""

    def __init__(self, inputs: Iterable[str], *, follow: bool = True,
                 options: FollowOptions | None = None, until: float | None = None,
                 when_behind: str | None = None, limit: int | None = None,
                 streams: Iterable[object] = ()) -> None:
        from zmqvision import video

        self.options = options or FollowOptions()
        self.until = until
        self._stop = threading.Event()
        inputs = [os.fspath(i) for i in inputs]
        live = [i for i in inputs if video.is_stream(i)] + list(streams)
        self.has_streams = bool(live)
        policy = when_behind or ("drop-oldest" if live else "queue")
        if limit is None:
            limit = DEFAULT_QUEUE_FRAMES if live else DEFAULT_QUEUE_FILES
        self.arrivals = Arrivals(limit, policy)
        self._named = deque(i for i in inputs if not video.is_stream(i)
                            and not (follow and os.path.isdir(i)))
        self.watches = [FolderWatch(i, self.arrivals, self.options, self._stop, until)
                        for i in inputs if follow and os.path.isdir(i)]
        self._named_walk = io.ImageWalk(list(self._named), recursive=self.options.recursive,
                                        extensions=self.options.extensions)
        self.readers = [video.LiveReader(s, self.arrivals, self._stop, until)
                        for s in live] if live else []
        self._started = False
        self.handed = 0

    # ImageWalk's counters, for the job's summary
    @property
    def skipped(self) -> int:
        return self._named_walk.skipped + sum(w.skipped for w in self.watches)

    @property
    def skipped_examples(self) -> list[str]:
        return self._named_walk.skipped_examples + [e for w in self.watches
                                                    for e in w.skipped_examples]

    @property
    def dropped(self) -> int:
        return self.arrivals.dropped

    def configure(self, **video_options) -> None:
        """Decode options of the streams (``fps``, ``max_pixels``, ``realtime``), set
        before the first ``take``."""
        for reader in self.readers:
            reader.configure(**video_options)

    def set_wake(self, wake: Callable[[], None]) -> None:
        self.arrivals.wake = wake

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.arrivals.producing()  # the named files, handed out first
        for path in self._named_walk:
            self.arrivals.put(path)
        self.arrivals.produced()
        for w in self.watches:
            w.start()
        for r in self.readers:
            r.start()

    def wait_watching(self, timeout: float = 10.0) -> bool:
        """Start, and wait until every folder is watched and was looked at once: a file
        written from then on is taken only once complete."""
        self.start()
        deadline = time.monotonic() + timeout
        return all(w.watching.wait(max(0.0, deadline - time.monotonic()))
                   for w in self.watches)

    def take(self):
        """A path or a decoded input (``inputs.Loaded``) with its arrival time set,
        ``WAIT``, or None at the end."""
        self.start()
        got = self.arrivals.take()
        if not isinstance(got, tuple):
            return got  # WAIT or None
        item, arrived = got
        self.handed += 1
        if isinstance(item, str):
            return _Arrived(item, arrived)
        item.arrived = arrived
        return item

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        """The next input, waiting for it (as a path string, or a frame's pixels for a
        stream); StopIteration at the end."""
        while True:
            got = self.take()
            if got is None:
                raise StopIteration
            if isinstance(got, _Arrived):
                return str(got)
            if got is not WAIT and got.image is not None:
                return got.image.pixels
            self.arrivals.wait(0.5)

    def waiting(self, timeout: float) -> Iterator:
        """Like iterating, but yields ``WAIT`` when nothing came for ``timeout`` seconds
        (``Pool.map`` hands out the records done meanwhile)."""
        while True:
            got = self.take()
            if got is None:
                return
            if isinstance(got, _Arrived):
                yield str(got)
            elif got is not WAIT:
                if got.image is not None:
                    yield got.image.pixels
            else:
                self.arrivals.wait(timeout)
                if not len(self.arrivals):
                    yield WAIT

    def oldest(self) -> float | None:
        return self.arrivals.oldest()

    def close(self) -> None:
        self._stop.set()
        self.arrivals.close()
        for r in self.readers:
            r.join(5)
        for w in self.watches:
            if w.thread.is_alive():
                w.thread.join(5)


class _Arrived(str):
    """A path with the time it arrived (a ``str``: everything that takes paths takes it)."""

    arrived: float

    def __new__(cls, path: str, arrived: float) -> _Arrived:
        self = super().__new__(cls, path)
        self.arrived = arrived
        return self


def follow(inputs: str | os.PathLike | Iterable[str | os.PathLike], *,
           until: float | str | None = None, settle: float | None = None,
           poll: bool = False, extensions: Iterable[str] | None = None,
           when_behind: str | None = None, limit: int | None = None) -> LiveInputs:
    """Follow folders (and files, streams): the files there, then each new one once it is
    complete, until ``until`` (``time.time()`` seconds, or a ``--until`` text) or
    ``close()``. Iterate it for paths (``pool.map(follow("incoming"))``) or hand it to
    ``Pool.run_files(config, paths=...)``."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    if isinstance(until, str):
        until = parse_until(until)
    exts = None if extensions is None else frozenset(e.lower().lstrip(".") for e in extensions)
    return LiveInputs([os.fspath(i) for i in inputs], until=until, when_behind=when_behind,
                      limit=limit,
                      options=FollowOptions(settle=settle, poll=poll, extensions=exts))


def is_live(paths: object) -> bool:
    return isinstance(paths, LiveInputs)


__all__ = ["BEHIND_POLICIES", "WAIT", "Arrivals", "FolderWatch", "FollowOptions", "Inotify",
           "LiveInputs", "Settling", "follow", "is_live", "parse_until"]


# ----------------------------------------------------------------------------- the job


def _live_job_class():
    """``LiveJob``, made on first use (jobs.py imports the engine's inputs)."""
    global LiveJob
    if LiveJob is None:
        import itertools
        import uuid

        from zmqvision import protocol
        from zmqvision.jobs import SKIP, FileJob

        class _LiveJob(FileJob):
            """A file job whose inputs never end by themselves (``LiveInputs``): it knows
            when each of its images arrived, and so how far behind it is
            (``status``, sent to the sink every ``STATUS_S``)."""

            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **kwargs)
                self.arrived: dict[str, float] = {}  # admitted, not yet written
                self._salt = uuid.uuid4().hex
                self._seq = itertools.count()

            def image_id(self, loaded, ok: bool, request: None) -> str | None:
                if ok and loaded.hash is None:  # a stream's frame: no hash, never resumed;
                    # unique even for two readers of one source (same path, same frame)
                    iid = protocol.image_id(f"live:{self._salt}:{next(self._seq)}",
                                            loaded.path, loaded.frame)
                else:
                    iid = super().image_id(loaded, ok, request)
                if iid and iid is not SKIP and loaded.arrived is not None:
                    self.arrived[iid] = loaded.arrived
                return iid

            def status(self, window: dict, now: float | None = None) -> protocol.LiveStatus:
                """In the engine's thread: the oldest input not yet written (in its window,
                or still waiting in the queue), how many wait, how many were dropped."""
                now = time.monotonic() if now is None else now
                mine = {e.info.image for e in window.values() if e.job is self}
                for iid in [i for i in self.arrived if i not in mine]:
                    del self.arrived[iid]  # written
                source = self.reader.paths
                times = list(self.arrived.values())
                waiting = source.oldest() if isinstance(source, LiveInputs) else None
                if waiting is not None:
                    times.append(waiting)
                lag = max(0.0, now - min(times)) if times else 0.0
                queued = len(source.arrivals) if isinstance(source, LiveInputs) else 0
                return protocol.LiveStatus(
                    job=self.id, lag=round(lag, 3), backlog=len(mine) + queued,
                    dropped=getattr(source, "dropped", 0), secret=self.secret)

        LiveJob = _LiveJob
    return LiveJob


LiveJob = None
STATUS_S = 0.5  # how often a live job tells the sink its lag
