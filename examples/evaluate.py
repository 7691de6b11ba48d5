"""Score a zmqvision results file against the mosaic's ground truth: recall, precision and
faces reported more than once (duplicates across tile borders).

    python examples/evaluate.py results.jsonl examples/truth/mosaic.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score(boxes: list[list[float]], truth: list[list[float]], thr: float = 0.3) -> dict:
    hits = [0] * len(truth)
    false_pos = 0
    for b in boxes:
        matched = [i for i, t in enumerate(truth) if iou(t, b) >= thr]
        for i in matched:
            hits[i] += 1
        false_pos += not matched
    found = sum(h > 0 for h in hits)
    return {
        "faces": len(truth),
        "found": found,
        "recall": found / len(truth) if truth else 1.0,
        "precision": (len(boxes) - false_pos) / len(boxes) if boxes else 1.0,
        "duplicates": sum(h - 1 for h in hits if h > 1),
        "false_positives": false_pos,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="JSONL written by zmqvision")
    parser.add_argument("truth", help="ground truth JSON written by make_mosaic.py")
    parser.add_argument("--iou", type=float, default=0.3, help="match threshold (0.3)")
    args = parser.parse_args()
    with open(args.truth) as fh:
        truth = json.load(fh)
    with open(args.results) as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    mine = [r for r in records if os.path.basename(r["image"]) == truth["image"]]
    if not mine:
        print(f"no record for {truth['image']} in {args.results}", file=sys.stderr)
        return 1
    rec = mine[0]
    if rec["error"]:
        print(f"{rec['image']} failed: {rec['error']}", file=sys.stderr)
        return 1
    s = score([d["box"] for d in rec["detections"]], truth["faces"], args.iou)
    print(f"{rec['image']}: {s['found']}/{s['faces']} faces found (recall {s['recall']:.2f}), "
          f"precision {s['precision']:.2f}, {s['duplicates']} duplicates, "
          f"{s['false_positives']} false positives, {rec['tiles']} tiles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
