"""What a person reads: the progress bar (its total from a count of the inputs, never a
fake ETA), the failures after the summary, the resume command, the worker hint, and drawn
labels that can be read on a large photo. Rendered with real rich consoles and Pillow."""

from __future__ import annotations

import io
import shlex

import numpy as np

from zmqvision import protocol as P
from zmqvision.console import (
    FailureLog,
    JobProgressBar,
    failure_report,
    resume_command,
    skipped_notice,
    summary_line,
    worker_hint,
)
from zmqvision.io import InputCounter


class Count:
    """The InputCounter's one attribute the bar reads, frozen at a value."""

    def __init__(self, total):
        self.total = total


def progress(done=3, seen=5, total=None, failures=()):
    return P.Progress(job="j", images_seen=seen, images_done=done, images_failed=0,
                      tiles_seen=seen * 2, tiles_done=done * 2, images_total=total,
                      elapsed=2.0, failures=tuple(failures))


def drawn(counter, *updates) -> str:
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=False)
    with JobProgressBar(True, counter, console=console) as bar:
        for p in updates:
            bar.update(p)
    return buf.getvalue()


def test_bar_says_counting_and_shows_no_eta_until_the_total_is_known():
    text = drawn(Count(None), progress(done=3, seen=5))
    assert "3/… images (counting)" in text and "ETA: counting" in text, text
    assert "3/5" not in text  # images found so far are not a total


def test_bar_total_comes_from_the_count_before_the_ventilator_knows_it(tmp_path):
    for i in range(7):
        (tmp_path / f"{i}.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    counter = InputCounter([str(tmp_path)])
    assert counter.wait(10) == 7
    text = drawn(counter, progress(done=3, seen=4, total=None))
    assert "3/7 images" in text and "counting" not in text, text
    assert "ETA " in text


def test_bar_falls_back_to_the_jobs_own_total_and_never_shows_less_than_seen():
    assert "2/9 images" in drawn(None, progress(done=2, seen=9, total=9))
    # A count made before files were added is raised to what the job has seen.
    assert "4/6 images" in drawn(Count(5), progress(done=4, seen=6))
    assert "1/1 image " in drawn(Count(1), progress(done=1, seen=1))


def test_disabled_bar_still_collects_what_the_summary_needs():
    bar = JobProgressBar(False)
    f1 = {"image": "a", "path": "a.jpg", "type": "corrupt_image", "message": "a.jpg: cut"}
    f2 = {"image": "b", "path": "b.jpg", "type": "empty_file", "message": "0 bytes"}
    with bar:
        bar.update(progress(failures=[f1]))
        bar.update(progress(failures=[f1, f2]))  # snapshots repeat the last few
    assert bar.failures.first == [f1, f2] and bar.last.images_done == 3


def test_failures_after_the_summary_first_few_and_where_the_rest_are():
    log = FailureLog(limit=2)
    log.add([{"image": str(i), "path": f"p{i}.jpg", "type": "corrupt_image",
              "message": f"p{i}.jpg: damaged"} for i in range(4)])
    done = P.JobDone(job="j", images=10, failed=5, tiles=40, detections=3, seconds=2.0,
                     out="/data/results.jsonl")
    lines = failure_report(done, log.first)
    assert lines == ["first failures:", "  p0.jpg: corrupt_image: damaged",
                     "  p1.jpg: corrupt_image: damaged",
                     'and 3 more: the records with an "error" in /data/results.jsonl']
    coco = P.JobDone(job="j", images=2, failed=1, tiles=1, detections=0, seconds=1.0,
                     out="/r.json")
    assert failure_report(coco, []) == ['1 failure: the "errors" list of /r.json']
    ok = P.JobDone(job="j", images=2, failed=0, tiles=1, detections=0, seconds=1.0, out="/r")
    assert failure_report(ok, []) == []


def test_summary_line_counts_in_the_singular_and_its_rate():
    one = P.JobDone(job="j", images=1, failed=0, tiles=4, detections=2, seconds=2.0,
                    out="/r.jsonl")
    assert summary_line(one).startswith("1 image, 0 failed, 0 cached, 4 tiles, 2 detections")
    assert "(2.0 tiles/s)" in summary_line(one)


def test_skipped_notice_names_examples_and_the_flag():
    text = skipped_notice(5, ["/d/a.txt", "/d/README.md"])
    assert text.startswith("5 files") and "a.txt, README.md, …" in text
    assert "--ext '*'" in text


def test_resume_command_is_the_same_command_with_resume():
    cmd = resume_command(["run", "my photos", "--out", "r.jsonl"])
    assert shlex.split(cmd) == ["zmqvision", "run", "my photos", "--out", "r.jsonl",
                                "--resume"]
    assert resume_command(["run", "d", "--resume"]).count("--resume") == 1
    vent = resume_command(["ventilate", "d"], value="RESULTS.jsonl")
    assert vent.endswith("--resume RESULTS.jsonl")


def test_worker_hint_names_the_endpoints_a_worker_needs():
    import socket

    here = socket.gethostname()
    default = worker_hint("tcp://0.0.0.0:5557", "tcp://127.0.0.1:5558")
    assert "`zmqvision worker`" in default and f"--connect {here}" in default
    other = worker_hint("tcp://0.0.0.0:6000", "tcp://sinkhost:6001")
    assert f"--tiles tcp://{here}:6000 --results tcp://sinkhost:6001" in other
    loop = worker_hint("tcp://127.0.0.1:6000", "tcp://127.0.0.1:6001")
    assert "--tiles tcp://127.0.0.1:6000 --results tcp://127.0.0.1:6001" in loop


def test_labels_are_readable_on_a_large_photo(tmp_path):
    """On a 4000x3000 photo a label is drawn at least 50 px tall on a dark band (Pillow's
    fixed 11 px font was a smudge there)."""
    from PIL import Image

    from zmqvision.results import draw_record, label_font

    assert label_font((640, 480)).size < 20 <= 50 <= label_font((4000, 3000)).size
    src = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (200, 200, 200)).save(src)
    record = {"image": str(src), "id": "0123456789abcdef", "error": None,
              "detections": [{"label": "face", "score": 0.93,
                              "box": [1000.0, 1000.0, 1600.0, 1700.0]}]}
    out = draw_record(record, str(src), tmp_path / "drawn")
    pixels = np.asarray(Image.open(out).convert("L"))
    band = pixels[800:1000, 1000:1600] < 40  # the dark band the caption sits on
    rows = np.flatnonzero(band.any(axis=1))
    assert rows.size and rows[-1] - rows[0] >= 50, rows
