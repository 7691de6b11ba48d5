"""File names that are not valid UTF-8: every path the OS gives must travel and come back.

Python holds such a name as a str with lone surrogates (PEP 383); msgpack cannot pack
those, and ``protocol.encode`` crashed the ventilator with UnicodeEncodeError. The name
now travels as a msgpack bin of its bytes and decodes to the same str, which opens the
same file; records hold it with ``\\udcXX`` JSON escapes (docs/protocol.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from tests.conftest import EXAMPLES, ROOT
from zmqvision import protocol as P

NAME = b"caf\xe9-\xff.jpg"  # Latin-1 bytes: not UTF-8


def _make(directory: Path, data: bytes = b"not an image") -> str:
    """A file named ``NAME`` in ``directory``, as the OS lists it (str with surrogates);
    skipped on a file system that refuses such names (APFS, some network mounts)."""
    try:
        fd = os.open(os.path.join(os.fsencode(directory), NAME), os.O_WRONLY | os.O_CREAT)
    except OSError as exc:
        pytest.skip(f"this file system refuses non-UTF-8 names: {exc}")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    (name,) = os.listdir(directory)
    return os.path.join(str(directory), name)


def _wire(msg) -> list[bytes]:
    return [bytes(memoryview(f)) for f in P.encode(msg)]


def test_a_non_utf8_file_name_round_trips_through_image_info(tmp_path):
    path = _make(tmp_path)
    assert os.fsencode(path).endswith(NAME)
    error = {"type": "unsupported_format", "message": f"{path}: content is text"}
    info = P.ImageInfo(job="j", image=P.failed_image_id(path), path=path, seq=0,
                       abspath=os.path.abspath(path), error=error)
    frames = _wire(info)
    header = msgpack.unpackb(frames[1], raw=False)
    assert header["path"] == os.fsencode(path)  # bin: the OS's bytes, exactly
    back = P.decode(frames)
    assert back == info
    with open(back.path, "rb") as fh:  # the decoded name opens the same file
        assert fh.read() == b"not an image"


def test_paths_in_every_message_that_carries_one_round_trip(tmp_path):
    path = _make(tmp_path)
    error = {"type": "corrupt_image", "message": f"{path}: damaged"}
    for msg in (
        P.Failure(job="j", image="i", path=path, error=error),
        P.Progress(job="j", images_seen=1, images_done=1, images_failed=1, tiles_seen=0,
                   tiles_done=0, failures=({"image": "i", "path": path, **error},)),
        P.JobDone(job="j", images=1, failed=1, tiles=0, detections=0, seconds=0.5,
                  out=os.path.join(path, "results.jsonl")),
        P.Result(job="j", image="i", index=0, worker="w", model="m@1",
                 detections=P.Detections.empty(), error=error),
    ):
        assert _wire(P.decode(_wire(msg))) == _wire(msg)


def test_a_user_model_in_a_non_utf8_folder_travels_in_the_job(tmp_path):
    path = _make(tmp_path)
    model = {"ref": "m@1", "labels": ["a"], "path": path, "source": f"user file {path}"}
    start = P.JobStart(job="j", model=model, tiling={}, merge={})
    assert P.decode(_wire(start)).model == model


def test_image_ids_hash_the_os_bytes_of_the_path(tmp_path):
    """The id is blake2b over the path's bytes, so it is the same whatever language
    computes it from the bytes the OS gave."""
    from hashlib import blake2b

    path = _make(tmp_path)
    h = blake2b(digest_size=12)
    h.update(b"unreadable\0" + os.fsencode(os.path.abspath(path)))
    assert P.failed_image_id(path) == h.hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_writes_a_record_for_an_image_with_a_non_utf8_name(tmp_path, models_ready):
    """The ventilator crashed on such a name (exit 1, the job aborted); now its record
    is written like any other, its ``image`` the name with ``\\udcXX`` escapes."""
    images = tmp_path / "in"
    images.mkdir()
    path = _make(images, (EXAMPLES / "chelsea.jpg").read_bytes())
    (images / "plain.jpg").write_bytes((EXAMPLES / "coffee.jpg").read_bytes())
    out = tmp_path / "results.jsonl"
    p = subprocess.run(
        [sys.executable, "-m", "zmqvision", "run", "in", "--model", "blazeface-short",
         "--out", str(out), "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stdout + p.stderr
    lines = out.read_bytes().splitlines()
    assert all(line.isascii() for line in lines)  # non-ASCII travels as \u escapes
    records = {r["image"]: r for r in map(json.loads, lines)}
    rel = os.path.relpath(path, tmp_path)
    assert set(records) == {rel, os.path.join("in", "plain.jpg")}
    rec = records[rel]
    assert os.fsencode(rec["image"]) == b"in/" + NAME
    assert "\\udcff" in next(line.decode() for line in lines if b"plain" not in line)
    assert rec["error"] is None and rec["width"] == 451 and rec["tiles"] > 0
