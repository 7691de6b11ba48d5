"""CTC line readers: crops of any width → text and a confidence.

Both readers (``plates-rec``, ``ppocr-v4-rec``) are PaddleOCR CRNN-style networks: a
crop resized to a fixed height (32 or 48 px) and a width that follows its aspect ratio,
out comes one score vector per column step ``[T, C]``; class 0 is the CTC blank and
class ``k`` the ``k``-th character. Decoding is greedy, as PaddleOCR's
``CTCLabelDecode``: the best class per step, repeats collapsed, blanks dropped; the
confidence is the mean probability of the characters kept (0 for an empty read).

Crops are padded on the right with mid-grey (to a multiple of 8 columns, and to the
widest of their batch), which the normalisation maps to ~0, PaddleOCR's padding value.
A padded column is not quite neutral: PP-OCRv4's reader mixes columns (attention), so a
crop padded to a wider neighbour's width can read differently from the crop alone. The
default is therefore a batch of one (each crop read alone), which is also how the
pipeline's second-stage workers read (one crop per tile): the references and the
pipeline read each crop identically. ``batch > 1`` batches by similar width (sorted by
aspect ratio, as PaddleOCR does), faster for many small crops in one process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from zmqvision.models import store
from zmqvision.models.catalog import CATALOG, ModelSpec
from zmqvision.openvino_import import import_openvino
from zmqvision.recognition.runtime import compile_pixels_model, u8_tensor

ov = import_openvino()

PAD_VALUE = 128  # (128 / 255 - 0.5) / 0.5 ≈ 0: PaddleOCR pads the normalised crop with 0
MAX_ASPECT = 25.0  # longer lines are squeezed (PaddleOCR's readers are trained below ~10)


@dataclass(frozen=True)
class Read:
    """One crop's text and confidence (mean probability of its characters)."""

    text: str
    confidence: float


def model_characters(spec: ModelSpec, core: ov.Core | None = None) -> tuple[str, ...]:
    """The characters of classes 1..C-1: the spec's labels, else the model's own list
    (ONNX metadata ``character``, one per line, which OpenVINO exposes as rt_info), plus
    the space PaddleOCR appends (``use_space_char``) when the model has a class for it."""
    if spec.labels:
        return tuple(spec.labels)
    core = core or ov.Core()
    model = core.read_model(str(store.ensure(spec)))
    try:
        raw = model.get_rt_info(["framework", "character"]).astype(str)
    except Exception as exc:  # RuntimeError when absent
        raise ValueError(f"model {spec.ref} names no characters (no labels in the catalog "
                         "and no 'character' metadata in the file)") from exc
    chars = raw.split("\n")
    classes = model.outputs[0].get_partial_shape()[-1].get_length()
    if classes == len(chars) + 2:
        chars.append(" ")
    if classes != len(chars) + 1:
        raise ValueError(f"model {spec.ref} has {classes} classes for {len(chars)} characters")
    return tuple(chars)


def ctc_greedy(scores: np.ndarray, characters: Sequence[str]) -> list[Read]:
    """Decode ``[N, T, C]`` per-step probabilities: best class per step, repeats
    collapsed, blanks (class 0) dropped; confidence = mean probability of the kept."""
    best = scores.argmax(axis=2)
    prob = np.take_along_axis(scores, best[..., None], axis=2)[..., 0]
    out = []
    for b, p in zip(best, prob, strict=True):
        keep = b != 0
        keep[1:] &= b[1:] != b[:-1]
        ids = b[keep]
        text = "".join(characters[i - 1] for i in ids)
        out.append(Read(text, float(p[keep].mean()) if keep.any() else 0.0))
    return out


class CtcReader:
    """A compiled CTC reader: ``read(crops)`` → one ``Read`` per crop."""

    def __init__(
        self,
        spec: ModelSpec | str = "ppocr-v4-rec",
        *,
        batch: int = 1,
        device: str = "CPU",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        core: ov.Core | None = None,
    ) -> None:
        spec = CATALOG[spec] if isinstance(spec, str) else spec
        if spec.family != "ctc":
            raise ValueError(f"model {spec.ref} is a {spec.task} model, not a CTC reader")
        self.spec = spec
        self.height = spec.input_size[1]
        self.batch = max(1, int(batch))
        core = core or ov.Core()
        self.characters = model_characters(spec, core)
        pre = spec.preprocess
        self.compiled = compile_pixels_model(spec, mean=[pre.mean] * 3, scale=[pre.scale] * 3,
                                             device=device, threads=threads,
                                             cache_dir=cache_dir, core=core)
        self._request = self.compiled.create_infer_request()

    def width_for(self, crop: np.ndarray) -> int:
        """The width a crop is resized to at the reader's height (aspect kept, capped)."""
        h, w = crop.shape[:2]
        return max(1, min(math.ceil(self.height * w / max(h, 1)),
                          round(self.height * MAX_ASPECT)))

    def batch_pixels(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """The model's input for ``crops`` read together: each resized to the reader's
        height, padded with mid-grey to the widest (a multiple of 8 columns). A worker's
        second stage starts its requests with it (``tasks.stage2.Stage2Runner``)."""
        widths = [self.width_for(c) for c in crops]
        width = -(-max(widths) // 8) * 8  # fewer distinct shapes for the compiled graph
        batch = np.full((len(crops), self.height, width, 3), PAD_VALUE, np.uint8)
        for j, c in enumerate(crops):
            if c.dtype != np.uint8 or c.ndim != 3 or c.shape[2] != 3:
                raise ValueError(f"crops must be uint8 [h, w, 3], got {c.dtype} {c.shape}")
            batch[j, :, :widths[j]] = np.asarray(Image.fromarray(c).resize(
                (widths[j], self.height), Image.Resampling.BILINEAR))
        return batch

    def read(self, crops: Sequence[np.ndarray]) -> list[Read]:
        """Text of each uint8 RGB crop ``[h, w, 3]`` (upright, any size)."""
        widths = [self.width_for(c) for c in crops]
        order = np.argsort(widths, kind="stable")
        out: list[Read | None] = [None] * len(crops)
        for start in range(0, len(order), self.batch):
            idx = order[start:start + self.batch]
            batch = self.batch_pixels([crops[i] for i in idx])
            self._request.infer({0: u8_tensor(batch)})
            scores = self._request.get_output_tensor(0).data
            for j, r in enumerate(ctc_greedy(scores, self.characters)):
                out[idx[j]] = r
        return [r for r in out if r is not None]
