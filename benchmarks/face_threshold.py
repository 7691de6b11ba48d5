"""Calibrate the face gallery's match threshold (cosine similarity) on real faces.

Real faces here are scikit-image's: the astronaut photo and the 100 LFW faces of
``lfw_subset`` (25 × 25 grey, enlarged; tests/faces_samples.py). LFW's file does not say
which faces show the same person, so:

* positives (same face): each face against itself under every augmentation a second
  photo may bring (mirror, shift, brightness, contrast, half resolution, ±8° rotation),
  each detected, aligned and embedded anew;
* negatives (different faces): every pair of different LFW faces, and the astronaut
  against every LFW face. A few LFW pairs may in fact be one person photographed twice
  (the subset repeats some people): they sit in the negatives' top tail, which the script
  lists so that they can be looked at. Looked at: LFW faces 0, 36, 73 and 90 are one man
  (George W. Bush); ``--same 0,36,73,90`` (the default) moves their pairs out of the
  negatives into a row of their own: real same-person pairs from different photos.

Prints the two distributions (percentiles), the false-accept / false-reject rates at
candidate thresholds, and the top negative pairs.

    python benchmarks/face_threshold.py            # ~30 s on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import markdown_table  # noqa: E402

from tests.faces_samples import AUGMENTATIONS, astronaut, lfw_canvas, lfw_faces  # noqa: E402
from zmqvision.faces.embed import FaceEmbedder  # noqa: E402
from zmqvision.faces.identify import NoFace, largest_face_embedding  # noqa: E402
from zmqvision.models import resolve  # noqa: E402
from zmqvision.models.runtime import Detector  # noqa: E402

PERCENTILES = (0, 1, 5, 50, 95, 99, 99.9, 100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--thresholds", default="0.4,0.45,0.5,0.55,0.6,0.65,0.7")
    ap.add_argument("--same", default="0,36,73,90",
                    help="LFW indices (comma-separated) known to show one person")
    args = ap.parse_args()
    t0 = time.perf_counter()
    detector = Detector(resolve("centerface"), threads=2)
    embedder = FaceEmbedder(threads=2)

    def embed(image):
        try:
            return largest_face_embedding(image, detector, embedder)[0]
        except NoFace:
            return None

    originals = [("astronaut", astronaut())] + [
        (f"lfw{i}", lfw_canvas(f)) for i, f in enumerate(lfw_faces())]
    base, names, pos, pos_kind, missed = [], [], [], [], 0
    for name, image in originals:
        e = embed(image)
        if e is None:
            missed += 1
            continue
        base.append(e)
        names.append(name)
        for kind, aug in AUGMENTATIONS.items():
            a = embed(aug(image))
            if a is None:
                missed += 1
                continue
            pos.append(float(a @ e))
            pos_kind.append(kind)
    base_m = np.stack(base)
    sims = base_m @ base_m.T
    same = {f"lfw{i}" for i in args.same.split(",") if i}
    iu = np.triu_indices(len(base), 1)
    both = np.array([names[i] in same and names[j] in same for i, j in zip(*iu, strict=True)])
    real = sims[iu][both]
    iu = (iu[0][~both], iu[1][~both])
    neg = sims[iu]
    pos_a = np.array(pos)
    print(f"{len(base)} faces found of {len(originals)} ({missed} images with no face "
          f"found, augmentations included); {len(pos_a)} positive pairs, {len(neg)} "
          f"negative pairs; {time.perf_counter() - t0:.0f} s\n")
    print(markdown_table(["pairs", *[f"p{p:g}" for p in PERCENTILES]],
                         [[name, *[f"{np.percentile(v, p):.3f}" for p in PERCENTILES]]
                          for name, v in (("same face (augmented)", pos_a),
                                          ("different faces", neg),
                                          ("same person, other photo", real),
                                          ("astronaut vs LFW", sims[0, 1:]))]))
    print()
    kinds = sorted(set(pos_kind))
    print(markdown_table(["augmentation", "n", "min", "median"], [
        [k, str(sum(1 for x in pos_kind if x == k)),
         f"{min(p for p, x in zip(pos, pos_kind, strict=True) if x == k):.3f}",
         f"{np.median([p for p, x in zip(pos, pos_kind, strict=True) if x == k]):.3f}"]
        for k in kinds]))
    print()
    rows = []
    for t in (float(x) for x in args.thresholds.split(",")):
        rows.append([f"{t:.2f}", f"{(pos_a < t).mean() * 100:.2f} %",
                     f"{(neg >= t).mean() * 100:.3f} % ({int((neg >= t).sum())})",
                     f"{int((real >= t).sum())} of {len(real)}"])
    print(markdown_table(["threshold", "false reject (same face)",
                          "false accept (different faces)",
                          "same person, other photo, accepted"], rows))
    print()
    top = np.argsort(-neg)[:8]
    print("top negative pairs (look at them: the same person twice?):",
          ", ".join(f"{names[iu[0][k]]}-{names[iu[1][k]]} {neg[k]:.3f}" for k in top))


if __name__ == "__main__":
    main()
