"""How small a face each face model finds reliably, in pixels of its own input.

This is the figure behind ``--min-size``: zmqvision enlarges tiles until the smallest face
the user names reaches it (``ModelSpec.reliable_size``). Each canvas is exactly the model's
input, so no tiling or resizing of ours is involved: real faces (the astronaut's, from
scikit-image, pasted by ``examples/make_mosaic.py`` over real face-free photos) of one
width ``w`` are fed straight to the compiled model, and recall is counted at IoU ≥ 0.3.
The reliable size is the smallest ``w`` from which recall stays ≥ 0.9 for every larger
``w`` measured.

    python benchmarks/reliable_size.py [--seeds 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
from _common import markdown_table

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (8, 10, 12, 14, 16, 18, 20, 24, 28, 32, 40, 48)
# Faces per canvas: as many as fit without overlapping at the largest width.
FACES_PER_CANVAS = {"centerface": 16, "blazeface-short": 1}


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def recall_by_width(model: str, seeds: int) -> dict[int, tuple[float, float]]:
    """{face width in input px: (recall, precision)} over ``seeds`` canvases per width."""
    from zmqvision.models import Detector, ensure, resolve

    mosaic, evaluate = _example("make_mosaic"), _example("evaluate")
    spec = resolve(model)
    det = Detector(spec, model_path=ensure(spec))
    w_in, h_in = spec.input_size
    out = {}
    for w in WIDTHS:
        found = faces = boxes = true_boxes = 0
        for seed in range(seeds):
            image, truth = mosaic.make_mosaic(w_in, h_in, FACES_PER_CANVAS[model], (w, w),
                                              seed=seed)
            d = det.infer(np.asarray(image))
            s = evaluate.score(d.boxes.tolist(), truth)
            found += s["found"]
            faces += s["faces"]
            boxes += len(d.boxes)
            true_boxes += len(d.boxes) - s["false_positives"]
        out[w] = (found / faces, true_boxes / boxes if boxes else 1.0)
    return out


def reliable(table: dict[int, tuple[float, float]], bar: float = 0.9) -> int | None:
    ok = None
    for w in sorted(table, reverse=True):
        if table[w][0] < bar:
            break
        ok = w
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=8, help="canvases per width")
    parser.add_argument("--models", default="centerface,blazeface-short")
    args = parser.parse_args()
    models = args.models.split(",")
    tables = {m: recall_by_width(m, args.seeds) for m in models}
    header = ["face width (input px)"] + [f"{m} recall (precision)" for m in models]
    body = [[str(w)] + [f"{tables[m][w][0]:.2f} ({tables[m][w][1]:.2f})" for m in models]
            for w in WIDTHS]
    body.append(["**reliable size** (recall ≥ 0.9 from here up)"]
                + [f"**{reliable(tables[m])}**" for m in models])
    print(markdown_table(header, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
