"""Compile the reading models so that they take uint8 RGB ``[N, H, W, 3]`` pixels.

As ``models.runtime`` does for detectors, the conversion (u8 → f32, RGB → BGR, NHWC →
NCHW, ``(x - mean) / scale``) is part of the compiled graph: a crop or a tile is handed
over as it is, never normalised in numpy. Unlike the detectors there, these models keep
their dynamic input sizes (a text line's width follows its aspect ratio), and their means
may differ per channel (the plate detector subtracts (104, 117, 123) from B, G, R), which
``catalog.Preprocess`` cannot say: the runners pass them here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from zmqvision.models import store
from zmqvision.models.catalog import ModelSpec
from zmqvision.models.runtime import check_device, compile_for
from zmqvision.openvino_import import import_openvino

ov = import_openvino()
from openvino.preprocess import PrePostProcessor  # noqa: E402  (after the lean import)

log = logging.getLogger(__name__)


def compile_pixels_model(
    spec: ModelSpec,
    *,
    mean: Sequence[float],
    scale: Sequence[float],
    device: str = "CPU",
    threads: int | None = None,
    hint: str = "LATENCY",
    cache_dir: str | Path | None = None,
    core: ov.Core | None = None,
) -> ov.CompiledModel:
    """``spec``'s model compiled for uint8 RGB NHWC input of any size; ``mean`` and
    ``scale`` are per channel of the model's own colour order (``spec.preprocess.color``)."""
    core = core or ov.Core()
    check_device(core, device)
    path = store.ensure(spec, log=log.info)
    model = core.read_model(str(path))
    ppp = PrePostProcessor(model)
    inp = ppp.input()
    inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    inp.model().set_layout(ov.Layout("NCHW"))
    steps = inp.preprocess()
    steps.convert_element_type(ov.Type.f32)
    if spec.preprocess.color == "BGR":
        steps.reverse_channels()
    if any(m != 0 for m in mean):
        steps.mean([float(m) for m in mean])
    if any(s != 1 for s in scale):
        steps.scale([float(s) for s in scale])
    inp.preprocess().convert_layout(ov.Layout("NCHW"))
    model = ppp.build()
    return compile_for(core, model, device, hint=hint, threads=threads, cache_dir=cache_dir)


def u8_tensor(pixels) -> ov.Tensor:
    """A zero-copy ``ov.Tensor`` over a C-contiguous uint8 ``[N, H, W, 3]`` array."""
    return ov.Tensor(pixels, list(pixels.shape), ov.Type.u8)
