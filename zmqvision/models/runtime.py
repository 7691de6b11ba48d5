"""Compile a catalog model for a device and turn its raw outputs into results: boxes for
a detector (``Detector``), top-k classes and an embedding for a classifier (``Classifier``);
``load_network`` picks the one the model's task needs.

Pre-processing (u8 to f32, normalisation, channel order, NHWC to NCHW) is built into the
graph with OpenVINO's PrePostProcessor, so the compiled model takes exactly the tile that
arrives on the wire: uint8 ``[1, H, W, 3]`` RGB. (A network whose own input is uint8, as
the int8 efficientnet-lite0, gets the tile as it is: no conversion to f32 at all.) The
worker can then wrap a received ZeroMQ frame in an ``ov.Tensor`` without a single numpy
copy, and the device (a GPU, say) does the arithmetic. The worker and the single-process
reference both go through ``Detector`` (``Classifier``), which is what makes their results
identical.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from zmqvision.boxes import Detections
from zmqvision.models import blazeface, centerface, detection_output, ssd, store
from zmqvision.models.catalog import ModelSpec
from zmqvision.openvino_import import import_openvino

ov = import_openvino()
from openvino.preprocess import PrePostProcessor  # noqa: E402  (after the lean import)

log = logging.getLogger(__name__)

# family -> (pick output indices in decoder order from (names, shape) pairs, decode)
OutputOrder = Callable[[list[tuple[set[str], tuple[int, ...]]]], list[int]]
Decoder = Callable[[list[np.ndarray], ModelSpec, float], Detections]
FAMILIES: dict[str, tuple[OutputOrder, Decoder]] = {
    "ssd": (ssd.output_order, ssd.decode),
    "blazeface": (blazeface.output_order, blazeface.decode),
    "centerface": (centerface.output_order, centerface.decode),
    "detection_output": (detection_output.output_order, detection_output.decode),
}



def _plates_order(outputs):
    from zmqvision.recognition import plates  # lazy: recognition imports this module

    return plates.output_order(outputs)


def _plates_decode(outputs, spec, threshold):
    from zmqvision.recognition import plates

    return plates.decode_outputs(outputs, spec, threshold)


def _db_order(outputs):
    from zmqvision.recognition import text

    return text.output_order(outputs)


def _db_decode(outputs, spec, threshold):
    from zmqvision.recognition import text

    return text.decode_outputs(outputs, spec, threshold)


# The reading detectors (zmqvision.recognition): stage 1 of run --model plates / ocr. Both
# decode each box with 4 points (a plate's corners, a line's rotated rectangle) in
# ``Detections.landmarks``.
FAMILIES["retinaface-plates"] = (_plates_order, _plates_decode)
FAMILIES["db"] = (_db_order, _db_decode)

# Families whose decoders never hand back a view of the outputs they are given (every
# array they return is computed, converted or fancy-indexed from them), so they may decode
# the request's output tensors in place (``Detector.outputs_of(copy=False)``).
VIEW_SAFE = frozenset({"ssd", "blazeface", "centerface", "detection_output"})

# Per-channel means (in the model's colour order) that ``Preprocess``'s one number cannot
# say: the plate detector subtracts (104, 117, 123) from B, G, R (recognition.plates.BGR_MEAN).
FAMILY_MEANS: dict[str, tuple[float, float, float]] = {
    "retinaface-plates": (104.0, 117.0, 123.0),
}

VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")


class DeviceError(ValueError):
    """The requested OpenVINO device is not present on this machine."""


class BatchError(ValueError):
    """The model cannot take a batch dimension (``--batch``): it names the model and why."""


class Network:
    """A compiled model that takes the wire's tiles: what a detector and a classifier share
    (device checks, the compile cache, thread settings, zero-copy input). Subclasses say
    which outputs they read (``_outputs``) and may add outputs before compiling
    (``_extend``)."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        device: str = "CPU",
        threads: int | None = None,
        hint: str = "THROUGHPUT",
        cache_dir: str | Path | None = None,
        model_path: str | Path | None = None,
        core: ov.Core | None = None,
        batch: int = 1,
    ) -> None:
        self.spec = spec
        self.device = device
        self.batch = int(batch)
        core = core or ov.Core()
        check_device(core, device)
        path = Path(model_path) if model_path is not None else store.ensure(spec, log=log.info)
        model = build_model(core.read_model(str(path)), spec)
        self._extend(model)
        # Outputs are told apart by their shapes for one tile: with a batch, known before
        # its dimension makes the first of them (with some graphs others too) dynamic.
        one = None
        if self.batch > 1:
            one = [(set(o.get_names()), tuple(o.get_partial_shape().to_shape()))
                   for o in model.outputs]
            reshape_batch(model, spec, self.batch)
        self.compiled = compile_for(core, model, device, hint=hint, threads=threads,
                                    cache_dir=cache_dir)
        self.input_size = spec.input_size
        if one is None:
            one = [(set(o.get_names()), tuple(o.get_shape())) for o in self.compiled.outputs]
        self._outputs = self._order(one)
        self._one_shapes = [shape for _, shape in one]
        if self.batch > 1:
            check_batch_independent(self.compiled, spec, self.batch)

    def _extend(self, model: ov.Model) -> None:
        """Add outputs to the graph before it is compiled (nothing by default)."""

    def optimal_requests(self) -> int:
        try:
            n = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        except Exception:  # some virtual devices do not report it
            n = 1
        return max(1, n)

    def input_tensor(self, pixels: np.ndarray) -> ov.Tensor:
        """Wrap a uint8 ``[H, W, 3]`` RGB tile without copying it.

        The shape-taking constructor is used because it also wraps read-only memory (a
        received ZeroMQ frame); ``ov.Tensor(array, shared_memory=True)`` refuses that. The
        tensor keeps a reference to the array, and the graph never writes to its input.
        """
        w, h = self.input_size
        if pixels.dtype != np.uint8 or pixels.shape != (h, w, 3):
            raise ValueError(
                f"tile must be uint8 [{h}, {w}, 3] for {self.spec.ref}, "
                f"got {pixels.dtype} {list(pixels.shape)}"
            )
        if not pixels.flags.c_contiguous:
            raise ValueError("tile pixels must be C-contiguous (zero-copy input)")
        return ov.Tensor(pixels[None], [1, h, w, 3], ov.Type.u8)

    def batch_tensor(self, tiles: list[np.ndarray]) -> ov.Tensor:
        """The tiles of one batch as one u8 ``[k, H, W, 3]`` tensor, 1 <= k <= ``batch``:
        the batch's one copy of its pixels (a batch dimension is one block of memory;
        OpenVINO's CPU plugin would gather separate tensors into one too). The compiled
        batch is dynamic (``reshape_batch``), so a partial batch costs its own tiles."""
        w, h = self.input_size
        if not 1 <= len(tiles) <= self.batch:
            raise ValueError(f"{len(tiles)} tiles for a batch of at most {self.batch}")
        block = np.empty((len(tiles), h, w, 3), np.uint8)
        for k, pixels in enumerate(tiles):
            if pixels.dtype != np.uint8 or pixels.shape != (h, w, 3):
                raise ValueError(
                    f"tile must be uint8 [{h}, {w}, 3] for {self.spec.ref}, "
                    f"got {pixels.dtype} {list(pixels.shape)}"
                )
            block[k] = pixels
        return ov.Tensor(block, shared_memory=True)

    def _order(self, outputs: list[tuple[set[str], tuple[int, ...]]]) -> list[int]:
        raise NotImplementedError


class Detector(Network):
    """A compiled detection model plus its decoder; the worker and the single-process
    reference both use it, so their results are identical."""

    def __init__(self, spec: ModelSpec, **kwargs) -> None:
        if spec.family not in FAMILIES:
            raise ValueError(f"model {spec.ref}: no decoder for family {spec.family!r}")
        self._decode = FAMILIES[spec.family][1]
        super().__init__(spec, **kwargs)

    def _order(self, outputs: list[tuple[set[str], tuple[int, ...]]]) -> list[int]:
        return FAMILIES[self.spec.family][0](outputs)

    def outputs_of(self, request: ov.InferRequest, copy: bool = True) -> list[np.ndarray]:
        """Copies of the outputs in decoder order, so the request can be reused at once.

        ``copy=False``: views of the request's own output tensors where the family's
        decoder returns only arrays of its own (``VIEW_SAFE``), for a caller that decodes
        before the request runs again (a completion callback: the queue reuses a request
        only once its callback has returned). It spares the worker a copy of every output
        per tile (SSD's 1917 × 24 logits: ~0.2 MB)."""
        if copy or self.spec.family not in VIEW_SAFE:
            return [np.array(request.get_output_tensor(i).data, copy=True)
                    for i in self._outputs]
        return [request.get_output_tensor(i).data for i in self._outputs]

    def decode(self, outputs: list[np.ndarray], score_threshold: float | None = None) -> Detections:
        thr = self.spec.score_threshold if score_threshold is None else float(score_threshold)
        return self._decode(outputs, self.spec, thr)

    def infer(self, pixels: np.ndarray, score_threshold: float | None = None) -> Detections:
        request = self.compiled.create_infer_request()
        request.infer({0: self.input_tensor(pixels)})
        return self.decode(self.outputs_of(request), score_threshold)


class Classifier(Network):
    """A compiled classification model: class scores ``[1, C]`` → the top-k classes, and
    the image embedding (the output of the network's last global pooling, the vector its
    classifier head reads: 1,280 numbers for efficientnet-lite0).

    Scores are probabilities: a uint8 output is a quantised softmax, ``value / 256``
    (TF-Lite's fixed output scale for softmax); a float output that already sums to 1 is
    used as it is, any other (logits) goes through a softmax. The embedding output is
    added to the graph always (``model.add_outputs``: the numbers are computed anyway);
    it is copied out only when a tile asks for it.
    """

    def _extend(self, model: ov.Model) -> None:
        pool = embedding_op(model)
        self._embedding_name = None
        if pool is not None:
            model.add_outputs([pool.output(0)])
            self._embedding_name = pool.output(0).get_any_name()

    def _order(self, outputs: list[tuple[set[str], tuple[int, ...]]]) -> list[int]:
        scores = next((i for i, (_, shape) in enumerate(outputs)
                       if len(shape) == 2 and shape[0] == 1 and shape[1] > 1), None)
        if scores is None:
            raise ValueError(f"model {self.spec.ref} has no [1, C] class-score output")
        emb = next((i for i, (names, _) in enumerate(outputs)
                    if self._embedding_name is not None and self._embedding_name in names),
                   None)
        return [scores] if emb is None else [scores, emb]

    @property
    def embedding_size(self) -> int:
        """Numbers in the embedding; 0 when the network has no global pooling to read."""
        if len(self._outputs) < 2:
            return 0
        return int(np.prod(self._one_shapes[self._outputs[1]]))

    def outputs_of(self, request: ov.InferRequest, embed: bool = False) -> list[np.ndarray]:
        """Copies of the scores (and with ``embed`` the embedding), so the request can be
        reused at once. ValueError when an embedding is asked of a network without one."""
        out = [np.array(request.get_output_tensor(self._outputs[0]).data, copy=True)]
        if embed:
            if len(self._outputs) < 2:
                raise ValueError(f"model {self.spec.ref} has no global pooling to embed from")
            out.append(np.array(request.get_output_tensor(self._outputs[1]).data,
                                np.float32).reshape(-1))
        return out

    def top_k(self, scores: np.ndarray, k: int,
              min_score: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best class ids (int32) and their probabilities (float32), best first,
        ties to the lower class id; those under ``min_score`` left out."""
        p = probabilities(scores)
        order = np.argsort(-p, kind="stable")[: max(0, int(k))]
        ids, probs = order.astype(np.int32), p[order].astype(np.float32)
        if min_score:
            keep = probs >= min_score
            ids, probs = ids[keep], probs[keep]
        return ids, probs

    def infer(self, pixels: np.ndarray, k: int = 5, embed: bool = False,
              min_score: float | None = None):
        """One tile, single-process: ``(class ids, scores, embedding or None)``."""
        request = self.compiled.create_infer_request()
        request.infer({0: self.input_tensor(pixels)})
        out = self.outputs_of(request, embed)
        ids, probs = self.top_k(out[0], k, min_score)
        return ids, probs, (out[1] if embed else None)


def probabilities(scores: np.ndarray) -> np.ndarray:
    """One score vector as float32 probabilities (see ``Classifier``)."""
    s = np.asarray(scores).reshape(-1)
    if s.dtype == np.uint8:
        return s.astype(np.float32) / np.float32(256.0)
    s = s.astype(np.float32)
    if s.min() >= 0.0 and abs(float(s.sum()) - 1.0) < 1e-2:
        return s
    e = np.exp(s - s.max())
    return (e / e.sum()).astype(np.float32)


def embedding_op(model: ov.Model):
    """The last global pooling op (AvgPool or ReduceMean to one value per channel), whose
    output a classifier head reads: the image's embedding; None when there is none."""
    found = None
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("AvgPool", "ReduceMean"):
            continue
        shape = op.output(0).get_partial_shape()
        if not shape.is_static:
            continue
        dims = [d.get_length() for d in shape]
        if len(dims) == 2 or (len(dims) == 4 and (dims[2:] == [1, 1] or dims[1:3] == [1, 1])):
            found = op
    return found


def load_network(spec: ModelSpec, **kwargs) -> Detector | Classifier:
    """The compiled network the model's task needs (keyword arguments: ``Network``'s)."""
    if spec.task == "classification":
        return Classifier(spec, **kwargs)
    return Detector(spec, **kwargs)


def build_model(model: ov.Model, spec: ModelSpec) -> ov.Model:
    """Reshape to the spec's input size and prepend the u8 RGB NHWC pre-processing."""
    w, h = spec.input_size
    pre = spec.preprocess
    if spec.input_multiple is not None:
        model.reshape({model.inputs[0]: [1, 3, h, w] if pre.layout == "NCHW" else [1, h, w, 3]})
    shape = list(model.inputs[0].get_partial_shape().to_shape())
    want = [1, 3, h, w] if pre.layout == "NCHW" else [1, h, w, 3]
    if shape != want:
        raise ValueError(f"model {spec.ref} takes input {shape}, expected {want}")
    ppp = PrePostProcessor(model)
    inp = ppp.input()
    inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    inp.model().set_layout(ov.Layout(pre.layout))
    steps = inp.preprocess()
    if model.inputs[0].get_element_type() == ov.Type.u8 and not pre.mean and pre.scale == 1:
        # The network takes u8 itself (an int8 model normalises inside): the tile goes in
        # as it arrives, no conversion (and a BGR flip, if any, stays in u8).
        if pre.color == "BGR":
            steps.reverse_channels()
        return ppp.build()
    steps.convert_element_type(ov.Type.f32)
    if pre.color == "BGR":
        steps.reverse_channels()
    if spec.family in FAMILY_MEANS:
        steps.mean(list(FAMILY_MEANS[spec.family]))
    elif pre.mean:
        steps.mean(float(pre.mean))
    if pre.scale != 1.0:
        steps.scale(float(pre.scale))
    return ppp.build()


def reshape_batch(model: ov.Model, spec: ModelSpec, batch: int) -> None:
    """Give a built batch-1 model (``build_model``: u8 NHWC input) a dynamic batch of 1 to
    ``batch`` tiles, or raise BatchError naming it.

    Dynamic, not a static ``batch`` padded with blank tiles: measured on the 2-core CPU
    (centerface 640x640, docs/performance.md), a lone tile took 33 ms in a ``[1..4]``
    model, as in a batch-1 one, and 156 ms padded to a static 4; a full batch of 4 costs
    the same either way (177-180 ms).

    Some models bake batch 1 into Reshape constants (the TF-Lite ones, ../MODELS.md): the
    reshape then fails (SSD, efficientnet-lite0) or succeeds while folding the batch into
    another axis (BlazeFace: ``[1, 3584, 16]`` for 4 tiles). So the model is first
    reshaped to a static ``batch``, where every output must become ``[batch, *its shape
    for one tile]``; ``check_batch_independent`` then proves on the compiled model that
    no tile's outputs depend on another's."""
    one = [tuple(o.get_partial_shape().to_shape()) if o.get_partial_shape().is_static
           else None for o in model.outputs]
    shape = list(model.inputs[0].get_partial_shape().to_shape())
    try:
        model.reshape({model.inputs[0]: [batch, *shape[1:]]})
    except Exception as exc:
        raise BatchError(f"model {spec.ref} cannot take a batch of {batch} (--batch): its "
                         f"graph refuses a batch dimension ({_first_line(exc)}); run it "
                         "without --batch") from exc
    for o, before in zip(model.outputs, one, strict=True):
        ps = o.get_partial_shape()
        got = tuple(ps.to_shape()) if ps.is_static else None
        if before is None or got is None or before[:1] != (1,) or \
                got != (batch, *before[1:]):
            raise BatchError(
                f"model {spec.ref} cannot take a batch of {batch} (--batch): output "
                f"{o.get_any_name() if o.get_names() else o.get_index()} is {ps} for "
                f"{batch} tiles, {list(before) if before else '?'} for one (its graph "
                "does not keep the batch apart); run it without --batch")
    model.reshape({model.inputs[0]: ov.PartialShape([ov.Dimension(1, batch), *shape[1:]])})


def check_batch_independent(compiled: ov.CompiledModel, spec: ModelSpec, batch: int) -> None:
    """Prove once at start that a tile's outputs are its own: the first tile of a full
    batch, of another full batch sharing only that tile, and alone must give the same
    outputs (to float rounding), else BatchError. A model whose shapes look batched but
    whose numbers mix tiles is refused rather than answering wrongly."""
    w, h = spec.input_size
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    b = a.copy()
    b[1:] = rng.integers(0, 256, (batch - 1, h, w, 3), dtype=np.uint8)
    request = compiled.create_infer_request()
    request.infer({0: a})
    first = [np.array(request.get_output_tensor(i).data[:1], copy=True)
             for i in range(len(compiled.outputs))]
    for run in (b, a[:1]):
        request.infer({0: run})
        for i, want in enumerate(first):
            got = request.get_output_tensor(i).data[:1]
            if got.shape != want.shape or \
                    not np.allclose(got, want, rtol=1e-4, atol=1e-5, equal_nan=True):
                raise BatchError(
                    f"model {spec.ref} cannot take a batch of {batch} (--batch): output "
                    f"{i} of a tile changes with the other tiles of its batch (its graph "
                    "mixes them); run it without --batch")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:160] if lines else type(exc).__name__


def check_device(core: ov.Core, device: str) -> None:
    """Fail early, naming what exists, rather than with a plugin's stack trace."""
    available = list(core.available_devices)
    name, _, rest = device.partition(":")
    if name in VIRTUAL_DEVICES:
        wanted = [re.sub(r"\(.*\)$", "", d).lstrip("-") for d in rest.split(",") if d]
    else:
        wanted = [device]
    bases = {a.split(".")[0] for a in available}
    missing = [d for d in wanted if d not in available and d.split(".")[0] not in bases]
    if not device or missing:
        raise DeviceError(
            f"OpenVINO device {device!r} is not available on this machine "
            f"(missing: {', '.join(missing) or device!r}); available devices: "
            f"{', '.join(available) or 'none'}; virtual devices AUTO, MULTI:<a>,<b> and "
            "HETERO:<a>,<b> combine them"
        )


def _supports(core: ov.Core, device: str, prop: str) -> bool:
    try:
        return prop in core.get_property(device, "SUPPORTED_PROPERTIES")
    except Exception:
        return False


def compile_for(core: ov.Core, model: ov.Model, device: str, *, hint: str,
                threads: int | None = None,
                cache_dir: str | Path | None = None) -> ov.CompiledModel:
    """Compile a built model as every zmqvision network is: the performance ``hint``, a
    thread count where the device has one, and the blob cache (``store.ov_cache_dir()``
    unless ``cache_dir``)."""
    config: dict[str, object] = {"PERFORMANCE_HINT": hint}
    if threads:
        if _supports(core, device, "INFERENCE_NUM_THREADS"):
            config["INFERENCE_NUM_THREADS"] = int(threads)
            # A thread count means several processes share this host's cores. Each
            # would pin its threads without knowing of the others, and they all land
            # on the same core (measured: 2 workers × 1 thread on 2 cores ran at half
            # the speed of 1 worker). Let the OS spread them instead.
            if _supports(core, device, "ENABLE_CPU_PINNING"):
                config["ENABLE_CPU_PINNING"] = False
        else:
            log.warning("device %s has no thread setting; threads=%s ignored", device, threads)
    cache = Path(cache_dir) if cache_dir is not None else store.ov_cache_dir()
    return _compile(core, model, device, config, cache)


def _compile(
    core: ov.Core, model: ov.Model, device: str, config: dict, cache: Path
) -> ov.CompiledModel:
    """Compile with a blob cache; a device that cannot cache still compiles."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        return core.compile_model(model, device, {**config, "CACHE_DIR": str(cache)})
    except OSError as exc:
        log.warning("model cache %s unusable (%s); compiling without it", cache, exc)
    except RuntimeError as exc:
        log.warning("compiling with cache failed on %s (%s); retrying without it", device, exc)
    try:
        return core.compile_model(model, device, config)
    except RuntimeError as exc:
        raise DeviceError(
            f"OpenVINO could not compile {model.friendly_name} for {device!r}: {exc}"
        ) from exc
