"""A user's own segmenter file with ``--task segment``: resolved from the file itself
(score-map layout, class count, labels from ``<stem>.txt``, the normalisation a float
TF-Lite file declares), run by the real pipeline with masks identical to the catalog
model it was copied from; an NCHW score map read as an NHWC one; a classifier file, a
wrong labels file and a malformed TF-Lite metadata refused or ignored with a reason."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

from tests.conftest import ROOT
from zmqvision.models import CATALOG, model_file, resolve
from zmqvision.models.catalog import VOC_LABELS

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def files(models_ready, tmp_path_factory):
    """mine.tflite: the catalog's deeplabv3 under another name, labels beside it;
    cls.tflite: the catalog's classifier."""
    d = tmp_path_factory.mktemp("user-models")
    shutil.copy(model_file(CATALOG["deeplabv3"]), d / "mine.tflite")
    (d / "mine.txt").write_text("\n".join(VOC_LABELS) + "\n")
    shutil.copy(model_file(CATALOG["efficientnet-lite0"]), d / "cls.tflite")
    return d


def test_a_user_segmenter_file_is_described_from_itself(files, tmp_path):
    spec = resolve(str(files / "mine.tflite"), task="segment")
    deeplab = CATALOG["deeplabv3"]
    assert (spec.task, spec.family, spec.input_size) == ("segmentation", "score_map",
                                                         deeplab.input_size)
    assert spec.labels == VOC_LABELS
    # The float TF-Lite file's metadata says (x - 127.5) / 127.5, as the catalog knows.
    assert spec.preprocess == deeplab.preprocess
    assert spec.ref != deeplab.ref and spec.path == str(files / "mine.tflite")

    bare = tmp_path / "bare.tflite"  # no .txt: the labelmap packed inside the file
    shutil.copy(files / "mine.tflite", bare)
    assert resolve(str(bare), task="segmentation").labels == VOC_LABELS

    (tmp_path / "bare.txt").write_text("background\nperson\n")
    with pytest.raises(ValueError, match=r"bare.txt names 2 classes.*21 names"):
        resolve(str(bare), task="segment")


def test_a_classifier_file_is_not_a_segmenter(files):
    with pytest.raises(ValueError, match=r"\[1,1000\], not a score map.*\[1, 224, 224, C\]"):
        resolve(str(files / "cls.tflite"), task="segment")
    image = ROOT / "examples" / "images"
    p = subprocess.run([sys.executable, "-m", "zmqvision", "run", str(image), "--model",
                        str(files / "cls.tflite"), "--task", "segment", "--no-progress"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 2, p.stdout + p.stderr  # a usage error, before anything starts
    assert "not a score map" in p.stderr and "--model" in p.stderr


def test_an_nchw_score_map_gives_the_scores_of_the_nhwc_one(files, tmp_path):
    """An IR whose output is [1, C, H, W] (deeplabv3 with a transpose after it, and its
    normalisation and RGB order inside, as a user's IR fed BGR 0..255 must have)."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    from zmqvision.segment.runtime import Segmenter

    model = ov.Core().read_model(str(files / "mine.tflite"))
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_layout(ov.Layout("NHWC"))
    ppp.input().preprocess().reverse_channels().mean(127.5).scale(127.5)
    ppp.input().model().set_layout(ov.Layout("NHWC"))
    ppp.output().model().set_layout(ov.Layout("NHWC"))
    ppp.output().tensor().set_layout(ov.Layout("NCHW"))
    ov.save_model(ppp.build(), str(tmp_path / "nchw.xml"))

    spec = resolve(str(tmp_path / "nchw.xml"), task="segment")
    assert spec.labels == tuple(f"class_{i}" for i in range(21))
    assert (spec.preprocess.color, spec.preprocess.mean) == ("BGR", 0.0)
    user = Segmenter(spec, threads=1)
    ref = Segmenter(CATALOG["deeplabv3"], threads=1)
    assert user._nchw and not ref._nchw and user.channels == ref.channels == 21
    tile = np.ascontiguousarray(skimage.data.chelsea()[:257, :257])
    a, b = user.infer(tile), ref.infer(tile)
    assert a.shape == b.shape == (257, 257, 21) and a.flags.c_contiguous
    # Two graphs: a CPU that infers in bf16 rounds them apart (~1% of a logit), but the
    # layout is right only if every pixel's scores are its own (a wrong transpose
    # would scramble them far beyond that).
    assert np.abs(a - b).mean() < 0.05 * np.abs(b).mean()
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.99
    requests = [s.compiled.create_infer_request() for s in (user, ref)]
    for s, r in zip((user, ref), requests, strict=True):
        r.infer({0: s.input_tensor(tile)})
    box = (0, 0, 300, 200)  # a cut letterboxed into part of the input
    va, vb = (s.valid_scores(r, box) for s, r in zip((user, ref), requests, strict=True))
    assert va.shape == vb.shape == (171, 257, 21) and va.flags.c_contiguous
    assert np.array_equal(va, user.scores_of(requests[0])[:171])
    assert (va.argmax(-1) == vb.argmax(-1)).mean() > 0.99


def _masks(model: str, images, tmp_path, name: str, *extra: str) -> dict:
    out, masks = tmp_path / f"{name}.jsonl", tmp_path / f"masks-{name}"
    p = subprocess.run([sys.executable, "-m", "zmqvision", "run", str(images), "--model", model,
                        *extra, "--out", str(out), "--masks", str(masks), "--no-progress",
                        "--workers", "1", "--threads", "1"],
                       capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    got = {}
    for line in out.read_text().splitlines():
        rec = json.loads(line)
        assert rec["error"] is None, rec
        with Image.open(rec["segmentation"]["mask"]) as im:
            got[rec["image"].rsplit("/", 1)[-1]] = (np.asarray(im), rec["segmentation"])
    return got


@pytest.mark.timeout(400)
def test_run_with_a_user_segmenter_file_gives_the_catalog_models_masks(files, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(skimage.data.chelsea()).save(images / "chelsea.png")  # one tile
    wide = np.concatenate([skimage.data.chelsea()] * 2, axis=1)[:, :700]  # a grid
    Image.fromarray(np.ascontiguousarray(wide)).save(images / "wide.png")
    ref = _masks("deeplabv3", images, tmp_path, "catalog")
    mine = _masks(str(files / "mine.tflite"), images, tmp_path, "user", "--task", "segment")
    assert sorted(ref) == sorted(mine) == ["chelsea.png", "wide.png"]
    for name, (mask, seg) in ref.items():
        assert np.array_equal(mine[name][0], mask), name
        assert mine[name][1]["classes"] == seg["classes"], name
    cat = VOC_LABELS.index("cat")
    assert (ref["chelsea.png"][0] == cat).mean() > 0.3  # a real mask, not all background


def test_malformed_tflite_metadata_declares_nothing(files, tmp_path):
    """The metadata reader walks a user's bytes: broken offsets mean "none declared",
    never an exception or a read past the end."""
    from zmqvision.models.tflite_meta import input_normalization

    data = bytearray((files / "mine.tflite").read_bytes())
    assert input_normalization(files / "mine.tflite") == (127.5, 127.5)
    assert input_normalization(files / "cls.tflite") == (127.0, 128.0)
    rng = np.random.default_rng(0)
    bad = tmp_path / "bad.tflite"
    for trial in range(40):
        broken = bytearray(data)
        at = rng.integers(0, 64, 8) if trial % 2 else rng.integers(0, len(data), 64)
        for i in at:
            broken[int(i)] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(broken))
        got = input_normalization(bad)
        assert got is None or (len(got) == 2 and all(np.isfinite(got)))
    bad.write_bytes(bytes(data[:4096]))
    assert input_normalization(bad) is None
    assert input_normalization(tmp_path / "missing.tflite") is None
