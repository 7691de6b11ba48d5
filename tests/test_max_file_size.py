"""``--max-file-size`` / ``JobSettings.max_file_bytes``: a file over the cap is not read;
its record is a ``too_large`` error and the job goes on (issue 16, item 8)."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from tests.conftest import ROOT
from zmqvision.cli import ByteSizeType
from zmqvision.errors import ExitCode
from zmqvision.inputs import load_path
from zmqvision.plan import JobSettings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _big_png(path, size: int) -> None:
    """A file that sniffs as PNG (so only its size can refuse it) of ``size`` bytes."""
    with open(path, "wb") as f:
        f.write(PNG_SIGNATURE + b"\0" * (size - len(PNG_SIGNATURE)))


@pytest.mark.parametrize(("text", "size"), [("256M", 256 << 20), ("1G", 1 << 30),
                                            ("512k", 512 << 10), ("1000", 1000),
                                            ("1.5MiB", 3 << 19)])
def test_sizes_parse(text, size):
    assert ByteSizeType().convert(text, None, None) == size


@pytest.mark.parametrize("text", ["", "big", "-1M", "0"])
def test_bad_sizes_are_usage_errors(text):
    with pytest.raises(click.BadParameter):
        ByteSizeType().convert(text, None, None)


def test_settings_carry_the_cap_to_load_path(tmp_path, photos):
    big = tmp_path / "big.png"
    _big_png(big, 300_000)
    settings = JobSettings(max_file_bytes=200_000)
    loaded = load_path(str(big), settings.max_pixels, max_bytes=settings.max_file_bytes)
    assert loaded.error["type"] == "too_large"
    assert loaded.image is None
    ok = load_path(str(photos[0]), settings.max_pixels, max_bytes=settings.max_file_bytes)
    assert ok.error is None and ok.image is not None


def test_a_file_over_the_cap_gets_too_large_and_the_job_goes_on(models_ready, image_dir,
                                                                tmp_path):
    """Before: no flag, and ``load_path`` read any file up to the library default."""
    _big_png(image_dir / "huge.png", 300_000)  # the photos are all under 120 kB
    out = tmp_path / "r.jsonl"
    p = subprocess.run(
        [sys.executable, "-m", "zmqvision", "run", str(image_dir), "--no-progress",
         "--max-file-size", "200k", "--out", str(out),
         "--events", f"ipc://{tmp_path}/events"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == ExitCode.IMAGES_FAILED, p.stderr
    records = {r["image"].rsplit("/", 1)[-1]: r for r in map(json.loads, out.open())}
    assert len(records) == 5
    assert records["huge.png"]["error"]["type"] == "too_large"
    assert "over the limit" in records["huge.png"]["error"]["message"]
    assert all(r["error"] is None for name, r in records.items() if name != "huge.png")


def test_the_flag_is_documented_on_run_and_ventilate():
    for command in ("run", "ventilate"):
        p = subprocess.run([sys.executable, "-m", "zmqvision", command, "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert "--max-file-size" in p.stdout and "too_large" in p.stdout
