"""What the stitched strips become: palette PNG files and COCO RLE, read back."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zmqvision.segment import (
    LabelSpill,
    MaskOutputs,
    PalettePNGWriter,
    Strip,
    counts_string,
    mask_counts,
    voc_palette,
)
from zmqvision.segment import png as png_module
from zmqvision.segment import rle as rle_module


def blocky_labels(h: int, w: int, classes: int, seed: int) -> np.ndarray:
    """Label maps with runs (as a segmenter's are), crossing rows and columns."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, classes, (max(1, h // 7), max(1, w // 5)), dtype=np.uint8)
    big = np.repeat(np.repeat(small, 7, 0), 5, 1)[:h, :w]
    out = np.zeros((h, w), np.uint8)
    out[:big.shape[0], :big.shape[1]] = big
    return out


def decode_counts(s: str) -> list[int]:
    """pycocotools' rleFrString, for reading our strings back without pycocotools."""
    counts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


# ---------------------------------------------------------------- PNG


@pytest.mark.timeout(30)
def test_png_written_in_strips_reads_back_with_pillow(tmp_path, monkeypatch):
    monkeypatch.setattr(png_module, "CHUNK", 97)  # many IDAT chunks
    labels = blocky_labels(301, 257, 21, seed=0)
    path = tmp_path / "mask.png"
    with PalettePNGWriter(path, 257, 301) as writer:
        for y0, y1 in [(0, 1), (1, 64), (64, 200), (200, 301)]:
            writer.write(labels[y0:y1])
    im = Image.open(path)
    assert im.mode == "P" and im.size == (257, 301)
    assert np.array_equal(np.asarray(im), labels)
    pal = np.array(im.getpalette()[:256 * 3], np.uint8).reshape(256, 3)
    assert np.array_equal(pal, voc_palette())
    assert tuple(pal[15]) == (192, 128, 128) and tuple(pal[8]) == (64, 0, 0)  # person, cat
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]  # no temporary left


@pytest.mark.timeout(30)
def test_png_short_of_rows_leaves_no_file(tmp_path):
    writer = PalettePNGWriter(tmp_path / "m.png", 10, 5)
    writer.write(np.zeros((3, 10), np.uint8))
    with pytest.raises(ValueError, match="3 of 5 rows"):
        writer.close()
    with pytest.raises(ValueError, match="u8"), PalettePNGWriter(tmp_path / "n.png", 10, 5) as w:
        w.write(np.zeros((2, 9), np.uint8))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- RLE


@pytest.mark.timeout(30)
def test_counts_string_round_trips_large_and_alternating_runs():
    runs = [0, 5, 1, 1, 300000, 2, 40, 7, 7, 6, 123456789, 1]
    assert decode_counts(counts_string(runs)) == runs


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (64, 50), (101, 257)])
def test_spill_rle_equals_the_plain_encoder_across_column_blocks(shape, monkeypatch):
    h, w = shape
    monkeypatch.setattr(rle_module, "BLOCK_BYTES", 3 * h)  # 3 columns a block
    labels = blocky_labels(h, w, 4, seed=h)
    labels[0, 0] = 3  # a mask that starts with a 1
    with LabelSpill(w, h) as spill:
        for y0 in range(0, h, 10):  # written as strips
            spill.write(y0, labels[y0:y0 + 10])
        got = spill.rle(classes=range(5))
    for k in range(5):
        mask = labels == k
        assert got[k]["size"] == [h, w]
        assert decode_counts(got[k]["counts"]) == mask_counts(mask), k
        assert sum(mask_counts(mask)) == h * w
    assert got[4]["counts"] == counts_string([h * w])  # absent class: all zeros


@pytest.mark.timeout(60)
def test_spill_rle_matches_pycocotools():
    mask_api = pytest.importorskip("pycocotools.mask")
    labels = blocky_labels(123, 77, 3, seed=5)
    with LabelSpill(77, 123) as spill:
        spill.write(0, labels)
        got = spill.rle()
    for k, r in got.items():
        ref = mask_api.encode(np.asfortranarray((labels == k).astype(np.uint8)))
        assert r["counts"] == ref["counts"].decode() and r["size"] == list(ref["size"])


@pytest.mark.timeout(30)
def test_mask_outputs_record(tmp_path):
    labels = blocky_labels(40, 30, 3, seed=9)
    counts = np.bincount(labels.ravel(), minlength=21)
    out = MaskOutputs(30, 40, [f"c{i}" for i in range(21)], png=tmp_path / "a.png", rle=True)
    for y0 in range(0, 40, 16):
        out.feed(Strip(y0, labels[y0:y0 + 16]))
    rec = out.finish(counts)
    assert rec["size"] == [30, 40] and rec["mask"] == str(tmp_path / "a.png")
    assert [c["class_id"] for c in rec["classes"]] == np.flatnonzero(counts).tolist()
    for c in rec["classes"]:
        k = c["class_id"]
        assert c["label"] == f"c{k}" and c["pixels"] == counts[k]
        assert c["coverage"] == round(counts[k] / 1200, 6)
        assert decode_counts(c["rle"]["counts"]) == mask_counts(labels == k)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), labels)
    with pytest.raises(ValueError, match="out of order"):
        MaskOutputs(30, 40, ["a"]).feed(Strip(16, labels[16:32]))
