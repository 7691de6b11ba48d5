"""Tests for zmqvision.io's input hardening: inputs that are huge, not images, or not files
must cost almost nothing and never block; walks say what they left out and can be counted
ahead for a progress total.

No RSS is measured: a refused file is shown unread by the bytes this process read
(``/proc/self/io``'s ``rchar``, Linux) and by time.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from zmqvision.io import (
    DEFAULT_MAX_FILE_BYTES,
    ImageError,
    ImageWalk,
    InputCounter,
    count_image_paths,
    iter_image_paths,
    peek_size,
    read_file,
    read_image,
)

GB = 1 << 30
JPEG_HEAD = b"\xff\xd8\xff\xe0" + b"\x00" * 60


def _bytes_read() -> int | None:
    """Bytes this process has read with read-like calls so far (Linux), else None."""
    try:
        with open("/proc/self/io", "rb") as f:
            for line in f:
                if line.startswith(b"rchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _refusal(path: Path, **kw) -> tuple[ImageError, float, int | None]:
    """read_file's error for ``path``, how long it took and how many bytes it read.

    Run once first: the first refusal imports Pillow's plugins (to name a format), and
    reading their modules counts in ``rchar`` too."""
    with pytest.raises(ImageError):
        read_file(str(path), **kw)
    before, t0 = _bytes_read(), time.perf_counter()
    with pytest.raises(ImageError) as info:
        read_file(str(path), **kw)
    took, after = time.perf_counter() - t0, _bytes_read()
    return info.value, took, (after - before) if before is not None else None


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)  # a hole: no disk used, but reading it would take seconds and GBs
    return path


# --------------------------------------------------------------------------- size and sniff


def test_a_3_gb_file_that_is_no_image_is_refused_unread(tmp_path):
    path = _sparse(tmp_path / "huge.jpg", 3 * GB)
    err, took, read = _refusal(path)
    assert err.type == "unsupported_format" and "huge.jpg" in err.message
    assert took < 0.5
    if read is not None:
        assert read < 64 * 1024, read


def test_a_3_gb_jpeg_is_too_large_from_its_size(tmp_path):
    path = _sparse(tmp_path / "huge.jpg", 3 * GB, JPEG_HEAD)
    err, took, read = _refusal(path)
    assert err.type == "too_large"
    assert "huge.jpg" in err.message and "max_bytes" in err.message
    assert took < 0.5
    if read is not None:
        assert read < 64 * 1024, read


def test_max_bytes_is_a_parameter_with_a_256_mib_default(tmp_path):
    assert DEFAULT_MAX_FILE_BYTES == 256 * 1024 * 1024
    path = tmp_path / "a.jpg"
    path.write_bytes(JPEG_HEAD + b"\x00" * 936)  # 1000 bytes
    assert len(read_file(str(path), max_bytes=1000)) == 1000
    assert _refusal(path, max_bytes=999)[0].type == "too_large"
    assert _error_type(read_image, str(path), max_bytes=999) == "too_large"


def test_a_large_text_file_is_told_from_its_first_bytes(tmp_path):
    path = tmp_path / "big.log"
    path.write_bytes(b"log line that goes on and on\n" * 200_000)  # 5.8 MB
    err, _, read = _refusal(path)
    assert err.type == "unsupported_format" and "text" in err.message
    assert "despite" not in err.message  # a .log is not expected to be an image
    if read is not None:
        assert read < 64 * 1024, read


def test_an_image_is_read_whole_and_exactly(tmp_path):
    data = JPEG_HEAD + os.urandom(300_000)
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    assert read_file(str(path)) == data


def test_an_empty_file_reads_as_nothing(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert read_file(str(path)) == b""
    assert _error_type(read_image, str(path)) == "empty_file"


def _error_type(fn, *args, **kw) -> str:
    with pytest.raises(ImageError) as info:
        fn(*args, **kw)
    return info.value.type


# --------------------------------------------------------------------------- not files


def _in_thread(fn, *args):
    """Run fn in a daemon thread; (finished within 5 s, its result or exception)."""
    box: list = []

    def run():
        try:
            box.append(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(5)
    return not t.is_alive(), (box[0] if box else None)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_unreadable_at_once_not_a_hang(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    try:
        for fn in (read_file, read_image):
            finished, result = _in_thread(fn, str(fifo))
            assert finished, f"{fn.__name__} blocked on a FIFO"
            assert isinstance(result, ImageError), result
            assert result.type == "unreadable"
            assert "not a regular file" in result.message and "FIFO" in result.message
        finished, size = _in_thread(peek_size, str(fifo))
        assert finished and size is None
    finally:
        # Had an open blocked, a writer releases it, so no thread outlives the test.
        with contextlib.suppress(OSError):  # ENXIO: no reader waiting, as it should be
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_a_device_is_unreadable():
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    finished, result = _in_thread(read_file, "/dev/null")
    assert finished and isinstance(result, ImageError)
    assert result.type == "unreadable" and "character device" in result.message


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs unix sockets")
def test_a_socket_file_is_unreadable(tmp_path):
    path = tmp_path / "s.jpg"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        finished, result = _in_thread(read_file, str(path))
    finally:
        sock.close()
    assert finished and isinstance(result, ImageError), result
    assert result.type == "unreadable" and "not a regular file" in result.message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_walks_leave_fifos_out(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "a.jpg").write_bytes(b"")
    assert list(iter_image_paths([str(tmp_path)])) == [str(tmp_path / "a.jpg")]


# --------------------------------------------------------------------------- counting


def _make_tree(root: Path, n: int) -> None:
    """n image names over a few folders, plus non-image and hidden files."""
    for i in range(n):
        d = root / f"d{i % 7}"
        if i < 7:
            d.mkdir(parents=True)
        (d / f"{i:06d}.jpg").touch()
    (root / "README.md").touch()
    (root / "d3" / "notes.txt").touch()
    (root / ".cache").mkdir()
    (root / ".cache" / "x.jpg").touch()


def test_count_ahead_matches_the_walk_and_is_quick(tmp_path):
    _make_tree(tmp_path, 20_000)
    top = str(tmp_path)
    t0 = time.perf_counter()
    n = count_image_paths([top])
    took = time.perf_counter() - t0
    print(f"\ncounted {n} of 20,002 files in {took * 1000:.0f} ms")
    assert n == 20_000 == sum(1 for _ in iter_image_paths([top]))
    assert count_image_paths([top], extensions="*") == 20_002
    assert count_image_paths([top, top + "/d3/notes.txt", "missing.jpg"]) == 20_002
    assert count_image_paths([top], recursive=False) == 0


def test_count_stops_early_when_asked(tmp_path):
    _make_tree(tmp_path, 2_000)
    stop = threading.Event()
    stop.set()
    assert count_image_paths([str(tmp_path)], stop=stop) is None
    # stopping also works between entries the walk does not yield
    for i in range(1_000):
        (tmp_path / f"skip{i}.txt").touch()
    walk = ImageWalk([str(tmp_path)], extensions={"png"}, stop=stop)
    assert list(walk) == [] and walk.skipped < 1_000


def test_input_counter_counts_in_the_background(tmp_path):
    _make_tree(tmp_path, 3_000)
    counter = InputCounter([str(tmp_path)])
    assert counter.wait(30) == 3_000 and counter.done
    counter.stop()


def test_input_counter_stopped_early_has_no_total(tmp_path):
    _make_tree(tmp_path, 3_000)
    counter = InputCounter(str(tmp_path))
    counter.stop(timeout=10)
    assert counter.done
    assert counter.total in (None, 3_000)  # None unless it had already finished
