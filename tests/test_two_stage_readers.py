"""`zmqvision run --model plates` and `--model ocr`: plates and text read through the pool
(stage 1 detector tiled on the workers, stage 2 reader on crops cut from the ORIGINAL
pixels), equal to the single-process references ``read_plates`` and ``read_text``.

The scenes are 4000 × 3000 real photos (skimage's) with plates drawn in FangSong and Latin
lines drawn with Pillow's font (tests/test_plates_samples.py). One line runs across a
vertical tile border and is longer than the tiles' overlap band: it must come out once,
whole."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import ROOT
from tests.test_plates_samples import PLATE_TEXTS, char_accuracy, latin_font, photo, plate_scene

pytestmark = pytest.mark.timeout(600)

SIZE = (4000, 3000)
PLATE_WIDTHS = [120, 160, 200, 240, 140, 180, 220, 260]
PLATE_ANGLES = [0, 5, -7, 3, -3, 2, 4, -5]
# (text, top-left): the first crosses the 960-px tiles' border band x 768..960 (tiles
# [0, 960) and [768, 1728)) and is ~980 px long: whole in no tile.
LINES = (("ZeroMQ moves tiles from the ventilator to every worker", (420, 300)),
         ("The sink merges boxes per image", (2500, 1200)),
         ("OpenVINO runs the reader on each crop", (1200, 2200)))


def text_scene_large() -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]:
    canvas = photo("coffee", SIZE).convert("RGBA")
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    font = latin_font(40)
    truth = []
    for text, (x, y) in LINES:
        box = d.textbbox((0, 0), text, font=font)
        tw, th = box[2] - box[0], box[3] - box[1]
        d.rectangle((x - 12, y - 12, x + tw + 12, y + th + 12), fill=(245, 245, 240, 225))
        d.text((x - box[0], y - box[1]), text, font=font, fill=(20, 20, 20, 255))
        truth.append((text, (x, y, x + tw, y + th)))
    return np.asarray(Image.alpha_composite(canvas, layer).convert("RGB")), truth


def run_reading(inputs, model, out, *extra):
    p = subprocess.run(
        [sys.executable, "-m", "zmqvision", "run", str(inputs), "--model", model, "--out",
         str(out), "--no-progress", "--no-cache", "--workers", "1", *extra],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    with open(out) as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def plates(models_ready, tmp_path_factory):
    """The plate scene as a PNG (lossless: the run reads the reference's pixels), its
    truth and the reference's plates (the pipeline's default plan: 640-px tiles)."""
    from zmqvision.recognition.ctc import CtcReader
    from zmqvision.recognition.plates import PlateDetector, read_plates

    image, truth = plate_scene("coffee", list(PLATE_TEXTS[:8]), PLATE_WIDTHS, PLATE_ANGLES,
                               size=SIZE, seed=1)
    d = tmp_path_factory.mktemp("plates") / "in"
    d.mkdir()
    Image.fromarray(image).save(d / "plates.png")
    detector = PlateDetector(threads=2)
    ref = read_plates(image, detector, CtcReader("plates-rec", threads=2),
                      scales=[detector.input_size])
    return d, truth, ref


@pytest.fixture(scope="module")
def lines(models_ready, tmp_path_factory):
    from zmqvision.recognition.ctc import CtcReader
    from zmqvision.recognition.text import TextDetector, read_text

    image, truth = text_scene_large()
    d = tmp_path_factory.mktemp("ocr") / "in"
    d.mkdir()
    Image.fromarray(image).save(d / "lines.png")
    detector = TextDetector(threads=2)
    ref = read_text(image, detector, CtcReader("ppocr-v4-rec", threads=2),
                    scales=[detector.input_size])
    return d, truth, ref


def test_run_plates_reads_them_as_the_reference(plates, tmp_path):
    inputs, truth, ref = plates
    (rec,) = run_reading(inputs, "plates", tmp_path / "out.jsonl")
    assert rec["error"] is None, rec["error"]
    assert rec["settings"]["stage2"]["kind"] == "plates"
    assert rec["settings"]["stage2"]["model"].startswith("plates-rec@")
    got = rec["detections"]
    assert len(got) == len(ref) == len(truth)
    for d, p in zip(got, ref, strict=True):  # the reference's order: best plate first
        assert d["text"] == p.text
        assert d["text_score"] == pytest.approx(p.confidence, abs=1e-3)
        assert np.allclose(d["box"], p.box, atol=0.5)
        assert np.allclose(d["corners"], p.corners, atol=0.5)
    chars = right = 0
    for text, corners in truth:
        near = [d for d in got if np.linalg.norm(np.mean(d["corners"], 0) - corners.mean(0)) < 15]
        assert len(near) == 1, text
        chars += len(text)
        right += char_accuracy(text, near[0]["text"]) * len(text)
    assert right / chars >= 0.95, right / chars


def test_run_ocr_reads_lines_once_whole_as_the_reference(lines, tmp_path):
    inputs, truth, ref = lines
    (rec,) = run_reading(inputs, "ocr", tmp_path / "out.jsonl")
    assert rec["error"] is None, rec["error"]
    got = rec["detections"]
    assert [d["text"] for d in got] == [t.text for t in ref]  # reading order, as read_text
    for d, t in zip(got, ref, strict=True):
        assert np.allclose(d["box"], t.box, atol=0.5)
        assert len(d["quad"]) == 4 and 0.5 <= d["text_score"] <= 1.0
    assert len(got) == len(truth)
    for text, (x0, y0, x1, y1) in truth:  # each line once, whole, where it was drawn
        near = [d for d in got if d["box"][0] < x1 and d["box"][2] > x0
                and d["box"][1] < y1 and d["box"][3] > y0]
        assert len(near) == 1, (text, near)
        assert char_accuracy(text, near[0]["text"]) >= 0.95, (text, near[0]["text"])
        assert near[0]["box"][0] <= x0 + 2 and near[0]["box"][2] >= x1 - 2


# ---------------------------------------------------------------- no models needed


def _line(x0, x1, y0=100.0, h=40.0, score=0.9):
    return [x0, y0, x1, y0 + h], score


def _dets(rows):
    from zmqvision.boxes import Detections

    boxes = [b for b, _ in rows]
    quads = [[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]] for b in boxes]
    return Detections.of(boxes, [s for _, s in rows], [0] * len(rows), quads)


def test_pieces_of_a_line_across_a_tile_border_are_joined():
    """Regression: the overlap merge (IOS 0.5) kept both pieces of a line longer than
    the overlap band (IOS = band / shorter piece = 192 / 540 here): two lines."""
    from zmqvision.merge import merge
    from zmqvision.recognition.text import join_lines

    pieces = _dets([_line(420, 960, score=0.8), _line(768, 1400, y0=99, h=42, score=0.9)])
    merged = merge(pieces)
    assert len(merged) == 2  # what the merge alone gives
    joined = join_lines(merged)
    assert len(joined) == 1
    assert joined.boxes[0].tolist() == [420, 99, 1400, 141]
    assert joined.scores[0] == pytest.approx(0.9)
    assert joined.landmarks[0].tolist() == [[420, 99], [1400, 99], [1400, 141], [420, 141]]


def test_lines_of_other_rows_and_words_apart_stay_apart():
    from zmqvision.recognition.text import join_lines

    dets = _dets([_line(100, 500), _line(100, 500, y0=160),  # two rows, one above the other
                  _line(600, 900),  # a word further along the first row, not touching
                  _line(450, 480, y0=60, h=120)])  # a tall mark: not of like height
    out = join_lines(dets)
    assert len(out) == 4 and np.array_equal(out.boxes, dets.boxes)


def test_reading_order_is_rows_then_left_to_right():
    from zmqvision.recognition.text import reading_order

    boxes = np.array([[500, 102, 600, 140], [10, 300, 90, 330], [20, 98, 300, 140.0]])
    assert reading_order(boxes, [0, 1, 2]) == [2, 0, 1]
    assert reading_order(boxes, [1, 0]) == [0, 1]


def test_progress_carries_the_second_stage_and_shows_it():
    from zmqvision import protocol as P
    from zmqvision.console import stage2_text

    p = P.Progress(job="j", images_seen=2, images_done=1, images_failed=0, tiles_seen=10,
                   tiles_done=10, stage2="ocr", objects_seen=15, objects_done=12)
    back = P.decode([bytes(memoryview(f)) for f in P.encode(p)])
    assert (back.stage2, back.objects_seen, back.objects_done) == ("ocr", 15, 12)
    one = P.Progress(job="j", images_seen=1, images_done=1, images_failed=0, tiles_seen=1,
                     tiles_done=1)
    assert "objects_seen" not in one.header()  # a one-stage job's snapshot is unchanged
    assert stage2_text("ocr", 15, 12) == "lines 12/15"
    assert stage2_text("identify", 3, 3) == "faces 3/3"
    assert stage2_text(None, 0, 0) is None


def test_reader_answers_are_checked_at_the_sink():
    from zmqvision.tasks import stage2

    s = stage2.Stage2Settings(kind="plates", model="plates-rec@1.1.0")
    assert stage2.check_answer(s, None, "京A12345") is None
    assert "text" in stage2.check_answer(s, np.ones(4, np.float32), None)
    assert stage2.Stage2Settings.from_json(s.to_json()) == s and s.points == 4


def test_a_reading_job_plans_its_pair_and_its_progress_names_the_stage(models_ready):
    from zmqvision.plan import JobPlan, JobSettings
    from zmqvision.sink.jobs import JobState

    plan = JobPlan(JobSettings(model="ppocr-v4-det", stage2="ocr"))
    assert plan.tile_request == {"points": True} and plan.reducer() is None
    state = JobState(plan.job_start("j"))
    p = state.progress()
    assert (p.stage2, p.objects_seen, p.objects_done) == ("ocr", 0, 0)
    with pytest.raises(ValueError, match="needs plates-det"):
        JobPlan(JobSettings(model="centerface", stage2="plates"))
