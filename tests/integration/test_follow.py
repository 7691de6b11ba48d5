"""``zmqvision run DIR --follow`` through real processes (sink, worker, CenterFace): files
dropped one by one each get exactly one record as they come, a file written slowly (its
writer driven by this test, provably unfinished while the pipeline runs) is never read
half, ``watch`` hears a live job (rate and lag, no total), and Ctrl-C then ``--resume``
loses nothing and repeats nothing."""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from tests.conftest import EXAMPLES, ipc, wait_event, wait_until
from zmqvision import protocol

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def records(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def names(path) -> list[str]:
    return sorted(r["image"].rsplit("/", 1)[-1] for r in records(path))


def drop(src: str, folder, name: str) -> None:
    """Copied under a hidden name, renamed into place (what careful writers do)."""
    shutil.copy(EXAMPLES / src, folder / f".{name}.part")
    (folder / f".{name}.part").rename(folder / name)


def test_follow_drop_files_slow_writer_ctrl_c_and_resume(tmp_path, procs, models_ready):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(EXAMPLES / "astronaut.jpg", folder / "a0.jpg")
    out = tmp_path / "out.jsonl"
    events = ipc(tmp_path, "ev")
    run = procs.start("run", str(folder), "--follow", "--out", str(out), "--no-progress",
                      "--events", events, "--no-cache", name="run")
    alive = lambda: run.poll() is None  # noqa: E731
    wait_until(lambda: names(out) == ["a0.jpg"], 120, "the file already there", alive)

    # A live job's progress: no total, a lag, nothing dropped.
    p = wait_event(events, protocol.MsgType.PROGRESS, lambda p: p.live, 30, alive,
                   what="a live progress event")
    assert p.images_total is None and p.lag is not None and p.dropped == 0

    data = (EXAMPLES / "chelsea.jpg").read_bytes()
    with open(folder / "slow.jpg", "wb") as slow:
        slow.write(data[:2000])
        slow.flush()
        drop("coffee.jpg", folder, "b1.jpg")
        wait_until(lambda: "b1.jpg" in names(out), 60, "b1.jpg", alive)
        slow.write(data[2000:len(data) // 2])
        slow.flush()
        drop("rocket.jpg", folder, "b2.jpg")
        wait_until(lambda: "b2.jpg" in names(out), 60, "b2.jpg", alive)
        assert "slow.jpg" not in names(out)  # its writer has not closed it
        slow.write(data[len(data) // 2:])
    wait_until(lambda: "slow.jpg" in names(out), 60, "slow.jpg once closed", alive)

    # Files arriving just before Ctrl-C, and while nothing runs: all done on --resume.
    for i in range(3):
        drop("astronaut.jpg" if i % 2 else "coffee.jpg", folder, f"c{i}.jpg")
    run.send_signal(signal.SIGINT)
    assert procs.wait(run, 60) == 130
    assert "--resume" in procs.log(run)
    drop("chelsea.jpg", folder, "d0.jpg")
    before = {r["id"] for r in records(out)}

    again = procs.start("run", str(folder), "--follow", "--resume", "--out", str(out),
                        "--no-progress", "--no-cache", name="resume")
    want = sorted(["a0.jpg", "b1.jpg", "b2.jpg", "slow.jpg", "c0.jpg", "c1.jpg", "c2.jpg",
                   "d0.jpg"])
    wait_until(lambda: names(out) == want, 120, "every file once",
               lambda: again.poll() is None)
    again.send_signal(signal.SIGINT)
    assert procs.wait(again, 60) == 130

    recs = records(out)
    assert names(out) == want  # exactly one record each: nothing lost, nothing repeated
    assert len({r["id"] for r in recs}) == len(recs)
    assert before <= {r["id"] for r in recs}
    by_name = {r["image"].rsplit("/", 1)[-1]: r for r in recs}
    assert all(r["error"] is None for r in recs), [r["error"] for r in recs]
    assert (by_name["slow.jpg"]["width"], by_name["slow.jpg"]["height"]) == (451, 300)
    assert by_name["slow.jpg"]["detections"] == by_name["d0.jpg"]["detections"]  # same photo
