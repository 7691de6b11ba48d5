"""Classification: the classes of an image (or of each cut of it), with their scores and,
on request, the image's embedding.

- **tiles**: by default the whole image stretched to the model input, one tile per image
  (how ImageNet classifiers are fed: a letterbox would add black bars to classify). With
  ``--tile N`` a grid of N×N cuts (``--overlap`` between them), each stretched and
  classified on its own: the record says what each region looks like, for inspection.
- **tile request**: ``{"top_k": k, "embed": bool}`` in the tile's header; the worker
  returns exactly the k best classes, so every tile has rows (a score threshold is applied
  to the record, not on the worker, see ``record_fields``).
- **worker**: the scores become probabilities (``runtime.probabilities``) and the k best
  rows of ``Detections``, each with the tile's box (the region the class is for); the
  embedding (float32, the last global pooling's output) travels as one extra frame.
- **sink**: tiles are kept apart, in tile order (no NMS: classes of different regions do
  not overlap). A one-tile record has ``labels`` (and ``embedding``); a grid record has
  ``grid`` (each tile's ``box``, ``labels``, ``embedding``) and image-level ``labels``:
  per class the best score over the tiles, the k best of those. With the sink's
  ``--embed-file`` each ``embedding`` is ``embedding_row`` instead, a row of that file.
- **cache**: an entry keeps the embeddings (one float32 row per tile) beside the rows,
  so a repeated ``--embed`` job is answered from the cache with the same records.
"""

from __future__ import annotations

import numpy as np

from zmqvision.boxes import Detections
from zmqvision.tasks.base import Decoded, Task, TaskSettings
from zmqvision.tiling import cut_stretched, plan_scales, stretch_draft_factor


class Classification(Task):
    name = "classification"

    def scales(self, spec, *, tile_size, scales, min_size, full_pass):
        if scales or min_size is not None or full_pass:
            raise ValueError("--scales, --min-size and --full-pass are for detection; a "
                             "classifier sees the whole image, or a --tile grid")
        return (tuple(tile_size),) if tile_size is not None else (None,)

    def cut(self, pixels, tile, input_size, reduced):
        return cut_stretched(pixels, tile, input_size, reduced)

    def reducer(self, scales, overlap, input_size):
        return lambda width, height: stretch_draft_factor(
            plan_scales(width, height, scales, overlap), input_size)

    def tile_request(self, settings: TaskSettings) -> dict:
        return {"top_k": settings.top_k, "embed": settings.embed}

    def decode(self, network, request, tile, score_threshold):
        want = tile.task or {}
        embed = bool(want.get("embed", False))
        out = network.outputs_of(request, embed)
        ids, probs = network.top_k(out[0], int(want.get("top_k", 5)))
        boxes = np.tile(np.asarray(tile.box, np.float64), (len(ids), 1))
        return Decoded(Detections(boxes, probs, ids), out[1] if embed else None)

    def check_part(self, settings, n_labels, detections, embedding):
        rows = min(settings.top_k, n_labels)
        if len(detections) != rows:
            return f"{len(detections)} classes for a tile, the job asked for {rows}"
        if len(detections) and not (detections.boxes == detections.boxes[0]).all():
            return "a tile's classes must all have the tile's box"
        if ((detections.labels < 0) | (detections.labels >= n_labels)).any():
            return f"class id out of 0..{n_labels - 1}"
        if ((detections.scores < 0) | (detections.scores > 1)).any():
            return "class score out of 0..1"
        if settings.embed != (embedding is not None):
            return ("no embedding, the job asked for one" if settings.embed
                    else "an embedding the job did not ask for")
        return None

    def merge(self, parts, merge_config):
        return Detections.concat([parts[i] for i in sorted(parts)])

    def record_fields(self, settings, detections, embeddings, labels, score_threshold=None,
                      rows=None):
        if detections is None:  # a failed image: the fields exist, empty
            return {"labels": [], "grid": []} if settings.grid else {"labels": []}
        thr = score_threshold or 0.0
        tiles = _by_tile(detections)
        vectors = [embeddings[i] for i in sorted(embeddings)]
        if not settings.grid:
            out = {"labels": _labels(tiles[0] if tiles else Detections.empty(), labels, thr)}
            if settings.embed:
                out.update(_embedding(vectors[0] if vectors else None, rows))
            return out
        grid = []
        for i, part in enumerate(tiles):
            entry = {"box": [int(v) for v in part.boxes[0].tolist()],
                     "labels": _labels(part, labels, thr)}
            if settings.embed and i < len(vectors):
                entry.update(_embedding(vectors[i], rows))
            grid.append(entry)
        return {"labels": _labels(_best_per_class(detections, settings.top_k), labels, thr),
                "grid": grid}

    def counted(self, detections):
        return 0  # classes are not detections: the job's detection count stays 0


def _embedding(vector: np.ndarray | None, rows) -> dict:
    """A vector's field: ``"embedding_row"``, its row in the sidecar (``rows``: the sink's
    ``--embed-file`` writer, None without one), else ``"embedding"``, its numbers."""
    if vector is None:
        return {"embedding": []}
    row = None if rows is None else rows(vector)
    return {"embedding": vector.tolist()} if row is None else {"embedding_row": row}


def _by_tile(dets: Detections) -> list[Detections]:
    """The merged rows split back into tiles: consecutive rows with the same box."""
    if not len(dets):
        return []
    change = np.any(dets.boxes[1:] != dets.boxes[:-1], axis=1)
    starts = [0, *(np.flatnonzero(change) + 1).tolist(), len(dets)]
    return [dets.take(slice(a, b)) for a, b in zip(starts, starts[1:], strict=False)]


def _best_per_class(dets: Detections, k: int) -> Detections:
    """Image-level classes of a grid: per class its best score over the tiles; the k best,
    ties to the lower class id."""
    order = np.lexsort((dets.labels, -dets.scores))
    _, first = np.unique(dets.labels[order], return_index=True)
    best = order[np.sort(first)][:k]
    return dets.take(best)


def _labels(dets: Detections, names, threshold: float) -> list[dict]:
    out = []
    for cid, score in zip(dets.labels.tolist(), dets.scores.tolist(), strict=True):
        if score < threshold:
            continue
        name = names[cid] if 0 <= cid < len(names) else f"class_{cid}"
        out.append({"label": name, "class_id": cid, "score": score})
    return out
