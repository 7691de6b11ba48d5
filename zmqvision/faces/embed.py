"""Face embeddings: aligned 112 × 112 crops → unit vectors whose dot product is the
cosine similarity of two faces.

The model (MobileFaceNet, catalog ``mobilefacenet``) has its batch baked in at 2; a
TFLite reshape to another batch size folds or fails (MODELS.md, "Batching caveat"), so
faces go through in pairs and an odd one out is paired with a copy of itself (its
result is dropped). A face's row does not depend on the face it is paired with: it is
bit-identical to the face paired with itself (OpenVINO CPU, tests/test_faces_pairs.py),
so ``embed`` of a list equals each face embedded alone, and a worker may pair whichever
two crops it has queued (``worker.stage2.SecondStage``). As in
``models.runtime.Detector``, the normalisation
``(x - 127.5) / 128`` is part of the compiled graph, so callers hand over uint8 RGB.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from zmqvision.faces.align import CROP_SIZE
from zmqvision.models import store
from zmqvision.models.catalog import CATALOG, ModelSpec
from zmqvision.models.runtime import check_device, compile_for
from zmqvision.openvino_import import import_openvino

ov = import_openvino()
from openvino.preprocess import PrePostProcessor  # noqa: E402  (after the lean import)

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "mobilefacenet"
BATCH = 2  # fixed by the model file


class FaceEmbedder:
    """A compiled face-embedding model: ``embed(crops)`` → ``[N, D]`` float32, unit rows."""

    def __init__(
        self,
        spec: ModelSpec | None = None,
        *,
        device: str = "CPU",
        threads: int | None = None,
        hint: str = "LATENCY",
        cache_dir: str | Path | None = None,
        core: ov.Core | None = None,
    ) -> None:
        spec = spec or CATALOG[DEFAULT_EMBEDDER]
        if spec.task != "embedding":
            raise ValueError(f"model {spec.ref} is a {spec.task} model, not a face embedder")
        self.spec = spec
        core = core or ov.Core()
        check_device(core, device)
        path = store.ensure(spec, log=log.info)
        model = self._build(core.read_model(str(path)))
        self.compiled = compile_for(core, model, device, hint=hint, threads=threads,
                                    cache_dir=cache_dir)
        self.dim = int(self.compiled.outputs[0].get_partial_shape()[1].get_length())
        self._request = self.compiled.create_infer_request()

    def _build(self, model: ov.Model) -> ov.Model:
        """u8 NHWC RGB in, the spec's ``(x - mean) / scale`` inside the graph."""
        want = [BATCH, CROP_SIZE, CROP_SIZE, 3]
        shape = list(model.inputs[0].get_partial_shape().to_shape())
        if shape != want:
            raise ValueError(f"model {self.spec.ref} takes input {shape}, expected {want}")
        pre = self.spec.preprocess
        ppp = PrePostProcessor(model)
        inp = ppp.input()
        inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
        inp.model().set_layout(ov.Layout("NHWC"))
        steps = inp.preprocess()
        steps.convert_element_type(ov.Type.f32)
        if pre.color == "BGR":
            steps.reverse_channels()
        if pre.mean:
            steps.mean(float(pre.mean))
        if pre.scale != 1.0:
            steps.scale(float(pre.scale))
        return ppp.build()

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """``[N, D]`` L2-normalised embeddings of aligned crops ``[N, 112, 112, 3]`` uint8
        RGB (``zmqvision.faces.align``)."""
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[None]
        if crops.dtype != np.uint8 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
            raise ValueError(f"crops must be uint8 [N, {CROP_SIZE}, {CROP_SIZE}, 3], "
                             f"got {crops.dtype} {list(crops.shape)}")
        n = len(crops)
        out = np.empty((n, self.dim), np.float32)
        for start in range(0, n, BATCH):
            pair = crops[start:start + BATCH]
            if len(pair) < BATCH:  # the odd one out, paired with itself
                pair = np.concatenate([pair, pair[:1].repeat(BATCH - len(pair), axis=0)])
            pair = np.ascontiguousarray(pair)
            self._request.infer({0: ov.Tensor(pair, list(pair.shape), ov.Type.u8)})
            got = self._request.get_output_tensor(0).data
            take = min(BATCH, n - start)
            out[start:start + take] = got[:take]
        return normalise(out)


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    v = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)
