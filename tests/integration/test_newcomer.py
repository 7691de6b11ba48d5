"""A newcomer's first hour (issue 17), with the real commands as child processes: nothing
to do is said and touches nothing, failures are named after the summary, non-images
skipped are counted, failures are never cached, a ventilator with no worker says how to
start one, a moved events port says where to watch, Ctrl-C says how to go on."""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT, ipc, wait_progress

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "zmqvision", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _records(path):
    with open(path) as fh:
        return {json.loads(line)["image"].rsplit("/", 1)[-1]: json.loads(line)
                for line in fh if line.strip()}


def test_nothing_to_do_exits_2_and_leaves_out_alone(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text('{"kept": true}\n')
    empty = tmp_path / "empty"
    empty.mkdir()
    p = _cli("run", str(empty), "--out", str(out))
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"no image to do in {empty}" in p.stderr and "nothing was written" in p.stderr
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "README.md").write_text("# notes\n")
    (texts / "notes.txt").write_text("not an image\n")
    p = _cli("run", str(texts), "--out", str(out))
    assert p.returncode == 2, p.stdout + p.stderr
    assert "2 files in the folders skipped" in p.stderr and "--ext '*'" in p.stderr
    p = _cli("ventilate", str(empty), "--bind", ipc(tmp_path, "t"),
             "--sink-results", ipc(tmp_path, "r"), "--timeout", "5")
    assert p.returncode == 2 and "no image to do" in p.stderr, p.stdout + p.stderr
    assert out.read_text() == '{"kept": true}\n'


def test_failures_are_named_non_images_counted_and_failures_never_cached(
        tmp_path, photos, models_ready):
    d = tmp_path / "mixed"
    d.mkdir()
    for photo in photos[:2]:
        (d / photo.name).write_bytes(photo.read_bytes())
    data = photos[0].read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("not an image\n")
    out = tmp_path / "r.jsonl"
    args = ("run", str(d), "--out", str(out), "--no-progress", "--cache",
            f"sqlite:///{tmp_path / 'cache.sqlite3'}")
    first = _cli(*args)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "4 images, 2 failed, 0 cached" in first.stdout, first.stdout
    assert "failures:" in first.stdout
    assert re.search(r"^  \S*truncated\.jpg: corrupt_image: \S", first.stdout, re.M), first.stdout
    assert re.search(r"^  \S*empty\.jpg: empty_file: ", first.stdout, re.M), first.stdout
    assert "1 file in the folders skipped" in first.stderr and "notes.txt" in first.stderr
    assert "--ext '*'" in first.stderr

    second = _cli(*args)  # the photos come from the cache; the failures are done again
    assert second.returncode == 1, second.stdout + second.stderr
    assert "4 images, 2 failed, 2 cached" in second.stdout, second.stdout
    recs = _records(out)
    assert not recs["truncated.jpg"]["cached"] and recs["truncated.jpg"]["error"]
    assert not recs["empty.jpg"]["cached"]
    assert all(recs[p.name]["cached"] for p in photos[:2])


def test_ventilate_without_a_worker_says_how_to_start_one(tmp_path, procs, image_dir):
    tiles = ipc(tmp_path, "tiles")
    _, results, events = procs.sink(tmp_path / "out.jsonl")
    p = _cli("ventilate", str(image_dir), "--bind", tiles, "--sink-results", results,
             "--sink-events", events, "--timeout", "8", "--no-progress", "--no-cache")
    assert p.returncode == 3, p.stdout + p.stderr
    hint = f"no worker has connected to {tiles}; start one with `zmqvision worker --tiles"
    # Said while it waits (after a few seconds), and again in the timeout's message.
    assert p.stderr.count(hint) == 2, p.stderr
    assert re.search(r"not complete after 8 s: no worker has connected", p.stderr), p.stderr


def test_run_on_a_taken_events_port_says_where_to_watch(tmp_path, image_dir, models_ready):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = _cli("run", str(image_dir), "--out", str(tmp_path / "r.jsonl"), "--events",
                 f"tcp://127.0.0.1:{port}", "--no-progress", "--workers", "2")
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"watch it with `zmqvision watch --connect tcp://127\.0\.0\.1:(\d+)`",
                  p.stderr)
    assert m and int(m.group(1)) != port, p.stderr


def test_ctrl_c_says_what_was_kept_and_the_resume_command_that_carries_it_over(
        tmp_path, procs, models_ready):
    from PIL import Image

    d = tmp_path / "photos"
    d.mkdir()
    photo = Image.open(ROOT / "examples" / "images" / "astronaut.jpg")
    for i in range(6):
        photo.resize((1800, 1800)).rotate(i * 4).save(d / f"p{i}.jpg")
    events = ipc(tmp_path, "events")
    out = tmp_path / "r.jsonl"
    run = procs.start("run", str(d), "--events", events, "--out", str(out), "--no-progress",
                      name="run")
    wait_progress(events, 1, field="images_done", alive=lambda: run.poll() is None)
    run.send_signal(signal.SIGINT)
    assert procs.wait(run, 60) == 130, procs.log(run)
    log = procs.log(run)
    m = re.search(r"interrupted: (\d+) records? kept in (\S+); to do the rest: (.+)$", log,
                  re.M)
    assert m, log
    kept = int(m.group(1))
    assert kept >= 1 and m.group(2) == str(out)
    assert kept == len(_records(out))
    argv = shlex.split(m.group(3))
    assert argv[:2] == ["zmqvision", "run"] and argv[-1] == "--resume", argv
    again = _cli(*argv[1:])
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resumed: {kept} image{'s' if kept > 1 else ''} carried over" in again.stderr
    assert "6 images, 0 failed" in again.stdout, again.stdout
    assert len(_records(out)) == 6
