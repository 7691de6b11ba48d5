"""docs/protocol.md says how a tile becomes detections for each catalog model, precisely
enough that a worker in another language gives the same records. This file is such a
worker's decoding, written from that page alone (plain loops, no zmqvision decoder), and
checks it against the reference decoders on the real network outputs of real photos:
the same detections, scores and classes exactly, boxes to the last bits of ``exp`` (math
libraries differ by an ulp)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.conftest import EXAMPLES, PHOTOS


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = [max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1]) for r in (a, b)]
    denom = area[0] + area[1] - inter
    return inter / denom if denom > 0 else 0.0


def _nms(cands: list[tuple[float, list[float], int]], threshold: float):
    """The page's per-tile NMS: score descending, ties by x1, y1, x2, y2."""
    order = sorted(cands, key=lambda c: (-c[0], *c[1]))
    kept, dropped = [], [False] * len(order)
    for i, c in enumerate(order):
        if dropped[i]:
            continue
        kept.append(c)
        for j in range(i + 1, len(order)):
            if not dropped[j] and _iou(c[1], order[j][1]) >= threshold:
                dropped[j] = True
    return kept


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def centerface(outputs, w, h, t):
    heat, scale, offset = outputs[0][0, 0], outputs[1][0], outputs[2][0]
    cands = []
    for y, x in zip(*np.nonzero(heat > t), strict=True):
        bh = math.exp(float(scale[0, y, x])) * 4
        bw = math.exp(float(scale[1, y, x])) * 4
        x1 = min(max(0.0, (x + float(offset[1, y, x]) + 0.5) * 4 - bw / 2), w)
        y1 = min(max(0.0, (y + float(offset[0, y, x]) + 0.5) * 4 - bh / 2), h)
        cands.append((float(heat[y, x]), [x1, y1, min(x1 + bw, w), min(y1 + bh, h)], 0))
    return _nms(cands, 0.3)


def _ssd_anchors():
    grids = (19, 10, 5, 3, 2, 1)
    s = [0.2 + (0.95 - 0.2) * layer / 5 for layer in range(6)] + [1.0]
    out = []
    for layer, n in enumerate(grids):
        if layer == 0:
            kinds = [(0.1, 1.0), (s[0], 2.0), (s[0], 0.5)]
        else:
            kinds = [(s[layer], a) for a in (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)]
            kinds.append((math.sqrt(s[layer] * s[layer + 1]), 1.0))
        for i in range(n):
            for j in range(n):
                for sc, ar in kinds:
                    out.append(((i + 0.5) / n, (j + 0.5) / n, sc / math.sqrt(ar),
                                sc * math.sqrt(ar)))
    return out


def ssd(outputs, w, h, t):
    enc, logits = outputs[0].reshape(-1, 4), outputs[1].reshape(-1, 24)
    anchors = _ssd_anchors()
    assert len(anchors) == 1917
    by_class: dict[int, list] = {}
    for a, c in zip(*np.nonzero(logits[:, 1:] > -30), strict=True):  # prefilter only
        score = _sigmoid(float(logits[a, c + 1]))
        if score < t:
            continue
        ya, xa, ha, wa = anchors[a]
        ty, tx, th, tw = (float(v) / d for v, d in zip(enc[a], (10, 10, 5, 5), strict=True))
        yc, xc = ty * ha + ya, tx * wa + xa
        bh, bw = math.exp(th) * ha, math.exp(tw) * wa
        box = [min(max(v, 0.0), 1.0) * 300 for v in (xc - bw / 2, yc - bh / 2,
                                                      xc + bw / 2, yc + bh / 2)]
        by_class.setdefault(int(c), []).append((score, box, int(c)))
    kept = [k for cands in by_class.values() for k in _nms(cands, 0.5)]
    return sorted(kept, key=lambda k: (-k[0], k[2], k[1][0], k[1][1]))[:100]


def blazeface(outputs, w, h, t):
    reg, logits = outputs[0].reshape(-1, 16), outputs[1].reshape(-1)
    centres = []
    for stride, per_cell in ((8, 2), (16, 6)):
        g = 128 // stride
        for i in range(g):
            for j in range(g):
                centres += [((j + 0.5) / g * 128, (i + 0.5) / g * 128)] * per_cell
    cands = []
    for a in range(896):
        score = _sigmoid(min(max(float(logits[a]), -100.0), 100.0))
        if score < t:
            continue
        cx, cy = centres[a][0] + float(reg[a, 0]), centres[a][1] + float(reg[a, 1])
        bw, bh = float(reg[a, 2]), float(reg[a, 3])
        box = [min(max(v, 0.0), 128.0) for v in (cx - bw / 2, cy - bh / 2,
                                                  cx + bw / 2, cy + bh / 2)]
        cands.append((score, box, 0))
    return _nms(cands, 0.3)


FROM_THE_PAGE = {"centerface": centerface, "ssd-mobilenetv2-oid": ssd,
                 "blazeface-short": blazeface}


def _tiles(spec, n=6):
    """Letterboxed tiles of the example photos at this model's input size, some at a
    scale < 1 (padding) and at low thresholds, so there is plenty to decode."""
    from zmqvision.io import read_image
    from zmqvision.tiling import Tile, cut_tile

    w, h = spec.input_size
    for name in PHOTOS[:n]:
        pixels = read_image(EXAMPLES / name).pixels
        ih, iw = pixels.shape[:2]
        for box in ((0, 0, min(iw, w), min(ih, h)), (0, 0, iw, ih)):
            pixels_in, scale = cut_tile(pixels, Tile(0, box), (w, h))
            yield box, pixels_in, scale


@pytest.mark.parametrize("name", sorted(FROM_THE_PAGE))
def test_a_decoder_written_from_the_page_gives_the_reference_detections(name, models_ready):
    from zmqvision.models import Detector, resolve
    from zmqvision.tiling import to_image_coords

    spec = resolve(name)
    detector = Detector(spec, model_path=models_ready[name])
    decode = FROM_THE_PAGE[name]
    compared = 0
    for t in (0.02, spec.score_threshold):
        for box, pixels, scale in _tiles(spec):
            request = detector.compiled.create_infer_request()
            request.infer({0: detector.input_tensor(pixels)})
            outputs = detector.outputs_of(request)
            ref = detector.decode(outputs, t)
            ref_boxes = to_image_coords(ref.boxes, box, scale)
            mine = decode(outputs, *spec.input_size, t)
            x0, y0, x1, y1 = box
            mine_boxes = [[min(max(x0 + b[i] / scale, x0), x1) if i % 2 == 0
                           else min(max(y0 + b[i] / scale, y0), y1) for i in range(4)]
                          for _, b, _ in mine]
            assert len(mine) == len(ref)
            if name != "ssd-mobilenetv2-oid":  # one class: NMS order is the output order
                mine.sort(key=lambda c: (-c[0], *c[1]))
            assert np.array_equal(np.float32([c[0] for c in mine]), ref.scores)
            assert [c[2] for c in mine] == ref.labels.tolist()
            # exp() of two math libraries may differ in the last bit: 1e-13 px here.
            assert np.allclose(np.array(mine_boxes).reshape(-1, 4), ref_boxes, rtol=1e-12,
                               atol=1e-9)
            compared += len(ref)
    assert compared > 5  # the photos gave something to compare
