"""Compile a segmentation model and run it on one tile: u8 pixels in, score map out.

The graph is built as ``models.runtime.build_model`` builds detectors' (u8 RGB NHWC
input, normalisation inside the graph), so a worker can wrap a received frame without a
copy. The output is a score map at the input size, returned as ``[in_h, in_w, C]``
float32 whatever the model's own layout: C class logits, or one probability.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from zmqvision.models import store
from zmqvision.models.catalog import ModelSpec
from zmqvision.models.runtime import build_model, check_device, compile_for
from zmqvision.openvino_import import import_openvino

ov = import_openvino()
log = logging.getLogger(__name__)


class Segmenter:
    """A compiled segmentation model; the worker and ``segment_image`` both use it."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        device: str = "CPU",
        threads: int | None = None,
        hint: str = "LATENCY",
        cache_dir: str | Path | None = None,
        model_path: str | Path | None = None,
        core: ov.Core | None = None,
    ) -> None:
        if spec.task != "segmentation":
            raise ValueError(f"model {spec.ref} is a {spec.task} model, not segmentation")
        self.spec = spec
        core = core or ov.Core()
        check_device(core, device)
        path = Path(model_path) if model_path is not None else store.ensure(spec, log=log.info)
        model = build_model(core.read_model(str(path)), spec)
        self.compiled = compile_for(core, model, device, hint=hint, threads=threads,
                                    cache_dir=cache_dir)
        self.input_size = spec.input_size
        self.channels, self._nchw = self._output_layout()

    def _output_layout(self) -> tuple[int, bool]:
        if len(self.compiled.outputs) != 1:
            raise ValueError(f"model {self.spec.ref} has {len(self.compiled.outputs)} outputs; "
                             "a segmentation model needs one score map")
        shape = tuple(self.compiled.outputs[0].get_shape())
        w, h = self.input_size
        if len(shape) == 4 and shape[1:3] == (h, w):
            return shape[3], False
        if len(shape) == 4 and shape[2:] == (h, w):
            return shape[1], True
        raise ValueError(f"model {self.spec.ref} output {list(shape)} is not a [1, {h}, {w}, C] "
                         "or [1, C, {h}, {w}] score map")

    def input_tensor(self, pixels: np.ndarray) -> ov.Tensor:
        """Wrap a C-contiguous u8 ``[H, W, 3]`` RGB tile without copying it."""
        w, h = self.input_size
        if pixels.dtype != np.uint8 or pixels.shape != (h, w, 3):
            raise ValueError(f"tile must be uint8 [{h}, {w}, 3] for {self.spec.ref}, "
                             f"got {pixels.dtype} {list(pixels.shape)}")
        if not pixels.flags.c_contiguous:
            raise ValueError("tile pixels must be C-contiguous (zero-copy input)")
        return ov.Tensor(pixels[None], [1, h, w, 3], ov.Type.u8)

    def scores_of(self, request: ov.InferRequest) -> np.ndarray:
        """A float32 ``[in_h, in_w, C]`` copy of the score map (the request can be reused)."""
        out = request.get_output_tensor(0).data[0]
        if self._nchw:
            out = out.transpose(1, 2, 0)
        return np.array(out, np.float32, order="C", copy=True)

    def optimal_requests(self) -> int:
        """Requests the device runs best with (a worker's queue depth, as ``Network``'s)."""
        try:
            return max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        except Exception:  # some virtual devices do not report it
            return 1

    def valid_scores(self, request: ov.InferRequest, box: tuple[int, int, int, int]
                     ) -> np.ndarray:
        """A float32 C-order copy of the part of the score map that the letterboxed tile
        of ``box`` filled (``valid_size``), ``[nh, nw, C]``: what a worker sends (the
        rest is letterbox padding, which the stitcher never reads). One copy, straight
        from the request's output (which is then free for the next tile)."""
        from zmqvision.segment.stitch import valid_size

        nw, nh = valid_size(box, self.input_size)
        out = request.get_output_tensor(0).data[0]
        part = out[:, :nh, :nw].transpose(1, 2, 0) if self._nchw else out[:nh, :nw]
        return np.array(part, np.float32, order="C", copy=True)

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        request = self.compiled.create_infer_request()
        request.infer({0: self.input_tensor(pixels)})
        return self.scores_of(request)
