"""The cache key: the image's bytes and everything else that changes its result.

A key is ``zv1:<settings fingerprint>:<content hash>``. The content hash is the one the
ventilator computes anyway for the image id (BLAKE2b-256 of the file's bytes), so the same
bytes under another path share the entry. The fingerprint is BLAKE2b-128 of a canonical
JSON of the settings: the model's identity (name, version, sha256 of its file) and what
feeds and decodes it (input size, labels, pre-processing, its own thresholds), the tiling,
the merge and the job's score threshold. Both ends compute it from the job's ``zv.job``
message, so the ventilator's lookups and the sink's saves agree without sending keys.

A two-stage job's key also holds its second stage (``stage2_part``): its kind and its
second model's identity (as the first model's), so a plate job, an ocr job and a job with
another reader or embedder never share entries. Not its gallery nor its threshold: an
entry keeps embeddings, never identities, and the sink matches them against the gallery
as it is when the record is made.

A segmentation job's key also holds ``MASK_VERSION`` (``tasks.segmentation``), raised
whenever the stitcher or the PNG writer would make another mask of the same tiles, so an
entry holding a mask made before is never served for one made now. Its tiling (cut size,
overlap), its model and the score threshold a one-channel model is cut at are in the key
as for every job.

Not in the key, on purpose: the path (same bytes, same result), the worker's device and the
tile wire encoding (the pipeline already treats CPU/GPU and raw/JPEG tiles as giving the
same answer; see docs/cache.md), ``max_pixels`` (a too-large image is never cached).
"""

from __future__ import annotations

import json
from hashlib import blake2b
from typing import Any

from zmqvision import protocol

KEY_VERSION = 1
# The parts of a model description (ModelSpec.describe()) that can change a result; the
# rest (source, licence, local path) describes where the file came from.
MODEL_FIELDS = ("name", "version", "sha256", "task", "family", "input_size", "labels",
                "score_threshold", "nms_threshold", "preprocess")
MAX_KEY_CHARS = 200


def _canonical(value: Any) -> Any:
    """Numbers as floats (``1`` and ``1.0`` give the same result, so the same key); maps
    sorted by ``json.dumps``."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    return repr(value)


def fingerprint(model: dict, tiling: dict, merge: dict, score_threshold: float | None,
                task: dict | None = None, stage2: dict | None = None,
                segment: dict | None = None) -> str:
    """32 hex digits naming the settings; any change in them is another fingerprint.
    ``task``: the job's task settings (``JobStart.options["task"]``: classification's
    top-k, embedding, grid); None for detection, whose keys stay what they were.
    ``stage2``: a two-stage job's (``stage2_part``); None for a one-stage job.
    ``segment``: a segmentation job's (``segment_part``); None for any other."""
    doc = {
        "key_version": KEY_VERSION,
        "model": {k: model.get(k) for k in MODEL_FIELDS},
        "tiling": tiling,
        "merge": merge,
        "score_threshold": score_threshold,
    }
    if task is not None:
        doc["task"] = task
    if stage2 is not None:
        doc["stage2"] = stage2
    if segment is not None:
        doc["segment"] = segment
    text = json.dumps(_canonical(doc), sort_keys=True, separators=(",", ":"))
    return blake2b(text.encode(), digest_size=16).hexdigest()


def stage2_part(options: dict) -> dict | None:
    """What of a job's second stage (``options["stage2"]``) changes its entries: the kind
    and the second model — its ref and, from the catalog, the fields of MODEL_FIELDS
    (file hash, input size, charset, pre-processing). Not the gallery nor the threshold
    (identities are never cached). None for a one-stage job."""
    raw = options.get("stage2")
    if not isinstance(raw, dict):
        return None
    ref = raw.get("model")
    part: dict = {"kind": raw.get("kind"), "model": ref}
    if isinstance(ref, str):
        from zmqvision.models import CATALOG

        spec = CATALOG.get(ref.split("@")[0])
        if spec is not None and spec.ref == ref:  # another version: its ref alone
            described = spec.describe()
            part["model"] = {k: described.get(k) for k in MODEL_FIELDS}
    return part


def segment_part(options: dict) -> dict | None:
    """A segmentation job's (``options["task"]["name"]``): the version of what a mask is
    (``tasks.segmentation.MASK_VERSION``). None for any other task."""
    task = options.get("task")
    if not isinstance(task, dict) or task.get("name") != "segmentation":
        return None
    from zmqvision.tasks.segmentation import MASK_VERSION

    return {"mask_version": MASK_VERSION}


def job_fingerprint(start: protocol.JobStart) -> str:
    """The fingerprint of a job, from its JobStart (the same on the ventilator and sink)."""
    return fingerprint(start.model, start.tiling, start.merge,
                       start.options.get("score_threshold"), start.options.get("task"),
                       stage2_part(start.options), segment_part(start.options))


def entry_key(settings: str, content_hash: str) -> str | None:
    """The key of one image's entry; None when the hash is not one we would store."""
    key = f"zv{KEY_VERSION}:{settings}:{content_hash}"
    if not content_hash or len(key) > MAX_KEY_CHARS or not key.isprintable():
        return None
    return key
