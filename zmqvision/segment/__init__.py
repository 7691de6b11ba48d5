"""Semantic segmentation of images of any size: tiles in, one label map out.

The parts, in the order data flows through them:

- ``reference.plan_segmentation`` — which tiles an image gets (whole, or a grid at the
  model's input scale); ``tiling.cut_tile`` cuts them as for detection.
- ``runtime.Segmenter`` — the compiled model: u8 tile → float score map ``[h, w, C]``
  (C logits, or one foreground probability). Workers run it.
- ``stitch.Stitcher`` — the sink's merge: tiles in any order → finished ``Strip``s of u8
  labels, top to bottom, blending overlaps with a feathered weight, in bounded memory.
- ``outputs.MaskOutputs`` — a strip consumer: the palette PNG (``png``), per-class pixel
  counts and coverage, and COCO RLE per class (``rle``, from a spill file).
- ``reference.segment_image`` — all of the above in one process: the reference the
  distributed pipeline is tested against.

Only ``Segmenter`` needs OpenVINO; it is imported on first use, so a sink that only
stitches does not pay for it.
"""

from zmqvision.segment.outputs import MaskOutputs
from zmqvision.segment.png import PalettePNGWriter, voc_palette
from zmqvision.segment.rle import LabelSpill, counts_string, mask_counts
from zmqvision.segment.stitch import Stitcher, Strip, feather, valid_size

__all__ = [
    "LabelSpill",
    "MaskOutputs",
    "PalettePNGWriter",
    "Segmenter",
    "Stitcher",
    "Strip",
    "counts_string",
    "feather",
    "mask_counts",
    "plan_segmentation",
    "segment_image",
    "valid_size",
    "voc_palette",
]


def __getattr__(name: str):
    if name == "Segmenter":
        from zmqvision.segment.runtime import Segmenter

        return Segmenter
    if name in ("plan_segmentation", "segment_image"):
        from zmqvision.segment import reference

        return getattr(reference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
