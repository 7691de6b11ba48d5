"""zmqvision against SAHI's ``get_sliced_prediction`` on the same images, model and merge.

SAHI (a benchmark dependency only: ``pip install -e '.[bench]'``) calls the very OpenVINO
graph zmqvision's workers run, through a small custom ``sahi.models.base.DetectionModel``
(``OpenVINODetectionModel`` below): ``zmqvision.models.Detector`` compiles the catalog model
with the u8 RGB NHWC pre-processing built in, each slice SAHI hands over is letterboxed to
the model input exactly as ``zmqvision.tiling.cut_tile`` does (the full-image pass too),
the same decoder and score threshold turn the outputs into boxes, and
``zmqvision.tiling.to_image_coords`` maps them back into the slice (clipped to it).
Both sides use the same tile size (the model's input size), overlap (``--overlap``, 0.2)
and merge (zmqvision's ``MergeConfig()`` default, greedy NMM with IOS >= 0.5 per class,
which is also SAHI's default: ``GREEDYNMM``, ``IOS``, 0.5, not class-agnostic).

Rows (images/s and tiles/s, median and min-max over ``--repeats``; every row runs once per
repeat, the order rotated each repeat so that a noisy machine slows all rows alike):

- ``SAHI as a user gets it``: ``get_sliced_prediction`` with its defaults, so
  ``perform_standard_pred=True`` (one extra full-image inference per image, downscaled to
  the model input) and ``batch_size=1``; the model compiled with the LATENCY hint, which
  is what suits SAHI's synchronous one-slice-at-a-time calls (one request gets every core).
- ``SAHI no full-image pass, batch_size 1``: the same, ``perform_standard_pred=False``.
- ``SAHI fastest``: ``perform_standard_pred=False`` and SAHI's batch option,
  ``get_sliced_prediction(batch_size=B)`` (as of SAHI 0.12.8; ``--sahi-batch``, default:
  every slice of an image in one batch). SAHI's base class runs a batch one slice at a time, so
  the custom model implements ``perform_batch_inference`` natively: the batch's slices go
  through an OpenVINO ``AsyncInferQueue`` (THROUGHPUT hint, the device's optimal number of
  requests + 1, like a zmqvision worker), because the TFLite SSD cannot take a batch
  dimension (see /work/shared/MODELS.md).
- ``zmqvision run, N worker(s)``: ``zmqvision.run.run_job`` (exactly what ``zmqvision run
  DIR`` runs: sink and worker child processes, real sockets, JSONL written). *wall*: the
  whole ``run_job`` call: process start, model compile (from OpenVINO's blob cache),
  the job and shutdown. *JobDone*: the sink's clock, from JobStart (sent once every worker
  is ready) to the last record.

Every SAHI row runs in a fresh interpreter; it builds and compiles its model and infers
once before its clock starts, so SAHI is timed in-process with its model loaded and warm,
from the image path (its own decode, OpenCV) to the merged predictions. zmqvision's
*wall* pays for everything SAHI was spared, which makes wall the fair headline.

The ratios are zmqvision ÷ SAHI in images/s, the median of the per-repeat ratios. The bars
from the issue: against SAHI as a user gets it >= 3; against SAHI at its fastest (the
faster no-full-pass row) >= 1.25 on the 2-core machine.

Boxes: for each image the merged boxes of the 1-worker zmqvision run are matched to each
SAHI row's (same class, IoU >= 0.5, one-to-one, best IoU first) and counted: matched,
matched but moved (IoU < 0.95), only in zmqvision, only in SAHI. A diagnosis (not timed,
``--no-diagnose`` skips it) separates the causes: tile plans (``plan_tiles`` against
SAHI's ``get_slice_bboxes``), decoders (Pillow against SAHI's OpenCV), the merge (SAHI's
GreedyNMMPostprocess against ``zmqvision.merge`` on the very same per-tile detections),
and LATENCY- against THROUGHPUT-compiled numerics.

``--cores N`` pins the whole benchmark (and every child) to N of this machine's CPUs
(OpenVINO sizes its streams and threads from that affinity) and gives N workers
``N // workers`` threads each, so that a bigger machine can measure 2 and 4 workers' worth
of cores: ``--cores 4 --workers 2`` and ``--cores 8 --workers 4``.

    export ZMQVISION_CACHE=...                 # where `zmqvision models pull --all` put them
    pip install -e '.[bench]'                  # sahi
    python benchmarks/sahi_compare.py          # ssd-mobilenetv2-oid, 8 x 1920x1080, 3 repeats
    python benchmarks/sahi_compare.py --model centerface --images 4
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, markdown_table  # noqa: E402  (sibling scripts)
from throughput import (  # noqa: E402
    machine_facts,
    make_inputs,
    parse_size,
    parse_workers,
)

IOU_MATCH = 0.5  # a zmqvision box and a SAHI box are the same object
IOU_MOVED = 0.95  # ... and the same box


# ---------------------------------------------------------------------------- SAHI's model


def _sahi_model_class():
    """The custom SAHI ``DetectionModel`` (sahi is imported only when a SAHI row runs)."""
    import openvino as ov
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction
    from sahi.utils.compatibility import fix_full_shape_list, fix_shift_amount_list

    from zmqvision.boxes import Detections
    from zmqvision.models import Detector, ensure
    from zmqvision.tiling import letterbox, to_image_coords

    class OpenVINODetectionModel(DetectionModel):
        """SAHI over zmqvision's compiled model and decoder.

        ``_original_predictions`` is a list (one per image of the batch) of
        ``zmqvision.boxes.Detections`` in the pixels of the image SAHI passed (a slice, or
        the whole image for the full-image pass), clipped to it.
        """

        def __init__(self, spec, *, hint: str = "LATENCY", async_requests: bool = False):
            self.spec = spec
            self.hint = hint
            self.async_requests = async_requests
            self._request = None
            self._queue = None
            super().__init__(
                model_path=str(ensure(spec)),
                confidence_threshold=spec.score_threshold,
                category_mapping={str(i): name for i, name in enumerate(spec.labels)},
                device="cpu",
                load_at_init=True,
            )

        # -- what SAHI asks of a model
        def load_model(self) -> None:
            self.set_model(Detector(self.spec, hint=self.hint, model_path=self.model_path))

        def set_model(self, model, **kwargs) -> None:
            self.model = model
            self._request = model.compiled.create_infer_request()
            if self.async_requests:
                self.requests = model.optimal_requests() + 1
                self._queue = ov.AsyncInferQueue(model.compiled, self.requests)
                self._queue.set_callback(self._done)
            else:
                self.requests = 1

        @property
        def has_mask(self) -> bool:
            return False

        @property
        def num_categories(self) -> int:
            return len(self.spec.labels)

        @property
        def category_names(self) -> list[str]:
            return list(self.spec.labels)

        def perform_inference(self, image: np.ndarray) -> None:
            self._original_predictions = [self._infer_sync(image)]

        def perform_batch_inference(self, images: list[np.ndarray]) -> None:
            if self._queue is None:
                self._original_predictions = [self._infer_sync(im) for im in images]
            else:
                self._original_predictions = self._infer_async(images)
            self._batch_images = None  # results are ready: SAHI's native-batch path
            self._original_shapes = [im.shape for im in images]

        def _create_object_prediction_list_from_original_predictions(
            self, shift_amount_list=[[0, 0]], full_shape_list=None  # noqa: B006 (SAHI's API)
        ) -> None:
            shifts = fix_shift_amount_list(shift_amount_list)
            shapes = fix_full_shape_list(full_shape_list)
            labels = self.spec.labels
            per_image = []
            for i, det in enumerate(self._original_predictions):
                shift = shifts[i]
                full = shapes[i] if shapes else None
                per_image.append([
                    ObjectPrediction(bbox=box, category_id=int(c), category_name=labels[c],
                                     score=float(s), shift_amount=shift, full_shape=full)
                    for box, s, c in zip(det.boxes.tolist(), det.scores.tolist(),
                                         det.labels.tolist(), strict=True)
                ])
            self._object_prediction_list_per_image = per_image

        # -- the OpenVINO calls
        def _to_slice(self, d: Detections, scale: float, w: int, h: int) -> Detections:
            return Detections(to_image_coords(d.boxes, (0, 0, w, h), scale), d.scores, d.labels)

        def _infer_sync(self, image: np.ndarray) -> Detections:
            pixels, scale = letterbox(image, self.spec.input_size)
            self._request.infer({0: self.model.input_tensor(pixels)})
            d = self.model.decode(self.model.outputs_of(self._request),
                                  self.confidence_threshold)
            return self._to_slice(d, scale, image.shape[1], image.shape[0])

        def _done(self, request, userdata) -> None:
            i, scale, w, h, out = userdata
            d = self.model.decode(self.model.outputs_of(request), self.confidence_threshold)
            out[i] = self._to_slice(d, scale, w, h)

        def _infer_async(self, images: list[np.ndarray]) -> list[Detections]:
            out: list = [None] * len(images)
            keep = []  # the letterboxed pixels must outlive their requests
            for i, image in enumerate(images):
                pixels, scale = letterbox(image, self.spec.input_size)
                keep.append(pixels)
                self._queue.start_async({0: self.model.input_tensor(pixels)},
                                        (i, scale, image.shape[1], image.shape[0], out))
            self._queue.wait_all()
            return out

    return OpenVINODetectionModel


SAHI_MERGE = {"nmm": "GREEDYNMM", "nms": "NMS"}  # zmqvision's nmm is greedy (merge.py)


def sahi_merge_kwargs(merge) -> dict:
    return {"postprocess_type": SAHI_MERGE[merge.method],
            "postprocess_match_metric": merge.metric.upper(),
            "postprocess_match_threshold": merge.threshold,
            "postprocess_class_agnostic": merge.class_agnostic}


def sahi_loop(paths: list[str], model: str, overlap: float, variant: dict) -> dict:
    """One SAHI row over every image (run in a fresh process)."""
    from sahi.predict import get_sliced_prediction

    from zmqvision.merge import MergeConfig
    from zmqvision.models import resolve

    spec = resolve(model)
    c0 = time.perf_counter()
    det = _sahi_model_class()(spec, hint=variant["hint"], async_requests=variant["batch"] > 1)
    load_s = time.perf_counter() - c0
    tw, th = spec.input_size
    warm = [np.zeros((th, tw, 3), np.uint8)] * det.requests
    det.perform_batch_inference(warm)  # first inferences are slow: not timed
    kwargs = dict(slice_height=th, slice_width=tw, overlap_height_ratio=overlap,
                  overlap_width_ratio=overlap, perform_standard_pred=variant["standard_pred"],
                  batch_size=variant["batch"], verbose=0, **sahi_merge_kwargs(MergeConfig()))
    boxes = []
    t0 = time.perf_counter()
    for p in paths:
        res = get_sliced_prediction(p, det, **kwargs)
        boxes.append([(o.category.id, o.bbox.to_xyxy(), o.score.value)
                      for o in res.object_prediction_list])
    dt = time.perf_counter() - t0
    return {"seconds": dt, "load_s": load_s, "boxes": boxes, "requests": det.requests,
            "detections": sum(map(len, boxes))}


def in_fresh_process(fn, *args) -> dict:
    """Run ``fn`` in a new interpreter, so no OpenVINO thread pool outlives its row."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ---------------------------------------------------------------------------- zmqvision


def zmq_run(folder: Path, model: str, workers: int, overlap: float, out: str,
            threads: int | None) -> dict:
    """One ``run_job`` (the embedded ``zmqvision run``); its rates and merged boxes."""
    from zmqvision.merge import MergeConfig
    from zmqvision.run import RunPlan, run_job
    from zmqvision.sink import SinkConfig
    from zmqvision.ventilator import VentilateConfig
    from zmqvision.worker import WorkerConfig

    plan = RunPlan(
        job=VentilateConfig(inputs=(str(folder),), model=model, overlap=overlap,
                            merge=MergeConfig()),
        sink=SinkConfig(out=out, events=f"tcp://127.0.0.1:{free_port()}",
                        events_fallback="tcp://127.0.0.1:0"),
        worker=WorkerConfig(model=model, threads=threads),
        workers=workers,
    )
    progress: list = []
    t0 = time.perf_counter()
    done = run_job(plan, on_progress=progress.append)
    wall = time.perf_counter() - t0
    if done.failed:
        raise RuntimeError(f"zmqvision run: {done.failed} image(s) failed")
    boxes = {}
    with open(out) as f:
        for line in f:
            r = json.loads(line)
            boxes[Path(r["image"]).name] = [(d["class_id"], d["box"], d["score"])
                                            for d in r["detections"]]
    return {"wall_seconds": wall, "job_seconds": done.seconds, "tiles": done.tiles,
            "images": done.images, "boxes": boxes, "detections": done.detections}


# ---------------------------------------------------------------------------- boxes


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


@dataclass
class BoxCount:
    a: int = 0
    b: int = 0
    matched: int = 0
    moved: int = 0
    only_a: int = 0
    only_b: int = 0
    examples: list = field(default_factory=list)

    def add(self, other: BoxCount) -> None:
        for k in ("a", "b", "matched", "moved", "only_a", "only_b"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.examples += other.examples

    @property
    def differ(self) -> int:
        return self.moved + self.only_a + self.only_b


def compare_boxes(a: list, b: list, image: str = "") -> BoxCount:
    """Match two box lists ``[(class_id, [x1, y1, x2, y2], score)]`` of one image."""
    out = BoxCount(a=len(a), b=len(b))
    for c in sorted({x[0] for x in a} | {x[0] for x in b}):
        ia = [x for x in a if x[0] == c]
        ib = [x for x in b if x[0] == c]
        used_a: set[int] = set()
        used_b: set[int] = set()
        if ia and ib:
            iou = _iou_matrix(np.array([x[1] for x in ia], float),
                              np.array([x[1] for x in ib], float))
            for flat in np.argsort(-iou, axis=None, kind="stable"):
                i, j = divmod(int(flat), iou.shape[1])
                if iou[i, j] < IOU_MATCH:
                    break
                if i in used_a or j in used_b:
                    continue
                used_a.add(i)
                used_b.add(j)
                out.matched += 1
                if iou[i, j] < IOU_MOVED:
                    out.moved += 1
                    out.examples.append(("moved", image, c, ia[i], ib[j], float(iou[i, j])))
        for i, x in enumerate(ia):
            if i not in used_a:
                out.only_a += 1
                out.examples.append(("only zmqvision", image, c, x, None, 0.0))
        for j, x in enumerate(ib):
            if j not in used_b:
                out.only_b += 1
                out.examples.append(("only SAHI", image, c, None, x, 0.0))
    return out


def _as_list(d) -> list:
    return [(int(c), b, float(s)) for b, s, c in
            zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist(), strict=True)]


def diagnose(paths: list[str], model: str, overlap: float) -> dict:
    """Separate the causes of box differences (not timed; run in a fresh process)."""
    from sahi.postprocess.combine import GreedyNMMPostprocess, NMSPostprocess
    from sahi.prediction import ObjectPrediction
    from sahi.slicing import get_slice_bboxes
    from sahi.utils.cv import read_image_as_pil

    from zmqvision.boxes import Detections
    from zmqvision.io import read_image
    from zmqvision.merge import MergeConfig, merge_partials
    from zmqvision.models import Detector, ensure, resolve
    from zmqvision.tiling import cut_tile, plan_tiles, to_image_coords

    spec = resolve(model)
    cfg = MergeConfig()
    lat = Detector(spec, hint="LATENCY", model_path=ensure(spec))
    thr = Detector(spec, hint="THROUGHPUT", model_path=ensure(spec))
    post = {"nmm": GreedyNMMPostprocess, "nms": NMSPostprocess}[cfg.method](
        match_threshold=cfg.threshold, match_metric=cfg.metric.upper(),
        class_agnostic=cfg.class_agnostic)
    labels = spec.labels
    tw, th = spec.input_size
    res = {"plans_same": 0, "images": len(paths), "pixels": 0, "pixels_differ": 0,
           "max_pixel_diff": 0, "merge": BoxCount(), "decode": BoxCount(), "hint": BoxCount(),
           "raw_tile_dets": 0}

    def parts_of(pixels, tiles, det) -> list:
        parts = []
        for t in tiles:
            px, scale = cut_tile(pixels, t, spec.input_size)
            d = det.infer(px)
            parts.append(Detections(to_image_coords(d.boxes, t.box, scale), d.scores, d.labels))
        return parts

    for p in paths:
        name = Path(p).name
        img = read_image(p)
        cv = read_image_as_pil(p, return_arr=True)  # what get_sliced_prediction decodes
        diff = np.abs(img.pixels.astype(np.int16) - cv.astype(np.int16))
        res["pixels"] += diff.size
        res["pixels_differ"] += int(np.count_nonzero(diff))
        res["max_pixel_diff"] = max(res["max_pixel_diff"], int(diff.max(initial=0)))
        tiles = plan_tiles(img.width, img.height, spec.input_size, overlap)
        sahi_plan = get_slice_bboxes(img.height, img.width, slice_height=th, slice_width=tw,
                                     overlap_height_ratio=overlap, overlap_width_ratio=overlap)
        res["plans_same"] += [list(t.box) for t in tiles] == [list(b) for b in sahi_plan]
        parts = parts_of(img.pixels, tiles, lat)
        raw = Detections.concat(parts)
        res["raw_tile_dets"] += len(raw)
        ours = _as_list(merge_partials(parts, cfg))
        preds = [ObjectPrediction(bbox=b, category_id=c, category_name=labels[c], score=s)
                 for c, b, s in _as_list(raw)]
        theirs = [(o.category.id, o.bbox.to_xyxy(), o.score.value) for o in post(preds)]
        res["merge"].add(compare_boxes(ours, theirs, name))
        res["decode"].add(compare_boxes(ours, _as_list(merge_partials(
            parts_of(np.ascontiguousarray(cv), tiles, lat), cfg)), name))
        res["hint"].add(compare_boxes(ours, _as_list(merge_partials(
            parts_of(img.pixels, tiles, thr), cfg)), name))
    return res


# ---------------------------------------------------------------------------- table


@dataclass
class Row:
    what: str
    images: list[float] = field(default_factory=list)  # images/s per repeat
    tiles_per_image: float = 0.0
    note: str = ""

    def cells(self) -> list[str]:
        if not self.images:
            return [self.what, "-", "-", "-", self.note]
        med = statistics.median(self.images)
        return [self.what, f"{med:.2f}", f"{min(self.images):.2f}–{max(self.images):.2f}",
                f"{med * self.tiles_per_image:.1f}", self.note]



def _ratio(num: list[float], den: list[float]) -> str:
    r = [a / b for a, b in zip(num, den, strict=True) if b > 0]
    if not r:
        return "-"
    return f"{statistics.median(r):.2f} ({min(r):.2f}–{max(r):.2f})"


def _label(workers: int) -> str:
    return f"zmqvision run, {workers} worker{'s' if workers > 1 else ''}"


def _fmt_box(x) -> str:
    if x is None:
        return "-"
    _, b, s = x
    return f"[{', '.join(f'{v:.0f}' for v in b)}] {s:.2f}"


def box_table(counts: dict[str, BoxCount], a_name: str) -> str:
    header = ["comparison", f"{a_name} boxes", "other boxes", "matched (IoU ≥ 0.5)",
              "of which moved (IoU < 0.95)", f"only {a_name}", "only other", "differ"]
    body = [[k, str(c.a), str(c.b), str(c.matched), str(c.moved), str(c.only_a),
             str(c.only_b), str(c.differ)] for k, c in counts.items()]
    return markdown_table(header, body)


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ssd-mobilenetv2-oid",
                    help="catalog model (default: %(default)s); tiles are its input size")
    ap.add_argument("--repeats", type=int, default=3, help="runs of every row (default 3)")
    ap.add_argument("--images", type=int, default=8, help="generated images (default 8)")
    ap.add_argument("--size", type=parse_size, default=(1920, 1080),
                    help="generated image size WxH (default 1920x1080)")
    ap.add_argument("--workers", type=parse_workers, default=[1, 2],
                    help="worker counts for zmqvision run, comma-separated (default 1,2)")
    ap.add_argument("--overlap", type=float, default=0.2, help="tile overlap (default 0.2)")
    ap.add_argument("--sahi-batch", type=int, default=0,
                    help="batch_size of the fastest SAHI row (default 0: every slice of an "
                         "image in one batch)")
    ap.add_argument("--cores", type=int, default=None,
                    help="pin everything to this many CPUs; N workers get cores // N threads")
    ap.add_argument("--no-diagnose", action="store_true",
                    help="skip the (untimed) diagnosis of box differences")
    ap.add_argument("--examples", type=int, default=6,
                    help="differing boxes to list (default 6)")
    ap.add_argument("--out", help="also write the tables: .md (markdown) or .json")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.images < 1 or args.sahi_batch < 0:
        ap.error("--repeats and --images must be >= 1, --sahi-batch >= 0")
    try:
        import sahi
    except ImportError:
        ap.error("SAHI is not installed: pip install -e '.[bench]'")

    if args.cores is not None:
        cpus = sorted(os.sched_getaffinity(0))
        if not 1 <= args.cores <= len(cpus):
            ap.error(f"--cores must be 1..{len(cpus)} (the CPUs this process may use)")
        os.sched_setaffinity(0, cpus[:args.cores])  # children inherit it

    from sahi.slicing import get_slice_bboxes

    from zmqvision.merge import MergeConfig
    from zmqvision.models import ensure, resolve

    spec = resolve(args.model)
    model_path = Path(ensure(spec, log=lambda m: print(m, file=sys.stderr)))
    facts = machine_facts()
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    tw, th = spec.input_size
    w, h = args.size
    slices = len(get_slice_bboxes(h, w, slice_height=th, slice_width=tw,
                                  overlap_height_ratio=args.overlap,
                                  overlap_width_ratio=args.overlap))
    batch = args.sahi_batch or slices
    variants = {
        "sahi-user": ("SAHI as a user gets it (full-image pass, batch_size 1, LATENCY)",
                      {"standard_pred": True, "batch": 1, "hint": "LATENCY"}),
        "sahi-seq": ("SAHI no full-image pass, batch_size 1 (LATENCY)",
                     {"standard_pred": False, "batch": 1, "hint": "LATENCY"}),
        "sahi-fast": (f"SAHI no full-image pass, batch_size {batch} (THROUGHPUT, async)",
                      {"standard_pred": False, "batch": batch, "hint": "THROUGHPUT"}),
    }
    merge = MergeConfig()
    kw = sahi_merge_kwargs(merge)
    usable = len(os.sched_getaffinity(0))
    head = [
        f"command: {command}",
        f"machine: {facts['cpu']}, os.cpu_count()={facts['cpu_count']} (usable "
        f"{usable}{', pinned by --cores' if args.cores else ''}), OpenVINO "
        f"{facts['openvino']}, SAHI {sahi.__version__}, Python {facts['python']}, "
        f"{facts['platform']}",
        f"model: {spec.ref} ({model_path.name}), input {tw}x{th}, score >= "
        f"{spec.score_threshold}; {args.images} images {w}x{h}, tile {tw}x{th}, overlap "
        f"{args.overlap} -> {slices} tiles per image (SAHI: {slices} slices); "
        f"{args.repeats} repeats",
        f"merge: zmqvision {merge}; SAHI postprocess_type={kw['postprocess_type']}, "
        f"match_metric={kw['postprocess_match_metric']}, "
        f"match_threshold={kw['postprocess_match_threshold']}, "
        f"class_agnostic={kw['postprocess_class_agnostic']}",
    ]
    print("\n".join(head), flush=True)

    steps: list = [*variants, *args.workers]
    sahi_rows = {k: Row(v[0], tiles_per_image=slices) for k, v in variants.items()}
    wall_rows = {n: Row(f"{_label(n)}: wall", tiles_per_image=slices) for n in args.workers}
    job_rows = {n: Row(f"{_label(n)}: JobDone", tiles_per_image=slices) for n in args.workers}
    last: dict = {}
    with tempfile.TemporaryDirectory(prefix="zv-sahi-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        paths = [str(p) for p in make_inputs(folder, args.images, args.size)]
        out = str(Path(tmp) / "results.jsonl")

        def threads_for(n: int) -> int | None:
            return max(1, args.cores // n) if args.cores and n > 1 else None

        for n in args.workers:  # warm-up, not timed: OpenVINO's blob cache for each setting
            zmq_run(folder, args.model, n, args.overlap, out, threads_for(n))
        for r in range(args.repeats):
            order = steps[r % len(steps):] + steps[:r % len(steps)]
            got: dict = {}
            for step in order:
                if isinstance(step, str):
                    got[step] = in_fresh_process(sahi_loop, paths, args.model, args.overlap,
                                                 variants[step][1])
                else:
                    got[step] = zmq_run(folder, args.model, step, args.overlap, out,
                                        threads_for(step))
            for k, row in sahi_rows.items():
                g = got[k]
                row.images.append(len(paths) / g["seconds"])
                row.note = (f"model load {g['load_s']:.1f} s not counted; "
                            f"{g['requests']} request(s); {g['detections']} boxes")
                if variants[k][1]["standard_pred"]:
                    row.note += "; +1 full-image inference per image"
            for n in args.workers:
                g = got[n]
                wall_rows[n].images.append(g["images"] / g["wall_seconds"])
                wall_rows[n].note = (f"wall {g['wall_seconds']:.1f} s (start, compile, job, "
                                     f"shutdown); {g['detections']} boxes")
                job_rows[n].images.append(g["images"] / g["job_seconds"])
                job_rows[n].note = (f"job {g['job_seconds']:.1f} s"
                                    + (f"; {threads_for(n)} threads/worker"
                                       if threads_for(n) else ""))
            last = got
            summary = ", ".join(
                f"{k if isinstance(k, str) else _label(k)}="
                f"{len(paths) / (v.get('seconds') or v.get('wall_seconds')):.2f} img/s"
                for k, v in got.items())
            print(f"repeat {r + 1}/{args.repeats}: {summary}", file=sys.stderr, flush=True)

        diag = None
        if not args.no_diagnose:
            diag = in_fresh_process(diagnose, paths, args.model, args.overlap)

    # -- throughput table and ratios
    rows = [*sahi_rows.values()]
    for n in args.workers:
        rows += [wall_rows[n], job_rows[n]]
    table = markdown_table(["what", "images/s (median)", "min–max", "tiles/s (median)", "notes"],
                           [r.cells() for r in rows])
    fast_key = max(("sahi-seq", "sahi-fast"),
                   key=lambda k: statistics.median(sahi_rows[k].images))
    ratio_head = ["zmqvision ÷ SAHI (images/s; median, min–max of per-repeat ratios)",
                  *(f"÷ {v[0].split(' (')[0]}" for v in variants.values())]
    ratio_body = []
    for n in args.workers:
        for row in (wall_rows[n], job_rows[n]):
            ratio_body.append([row.what, *(_ratio(row.images, sahi_rows[k].images)
                                           for k in variants)])
    ratios = markdown_table(ratio_head, ratio_body)
    headline = []
    for n in args.workers:
        a = _ratio(wall_rows[n].images, sahi_rows["sahi-user"].images).split()[0]
        b = _ratio(wall_rows[n].images, sahi_rows[fast_key].images).split()[0]
        headline.append(f"{_label(n)} (wall) ÷ SAHI as a user gets it: {a} (bar ≥ 3); "
                        f"÷ SAHI at its fastest ({variants[fast_key][0]}): {b} (bar ≥ 1.25)")

    # -- boxes: zmqvision (first worker count, last repeat) against every SAHI row
    zmq_boxes = last[args.workers[0]]["boxes"]
    names = [Path(p).name for p in paths]
    counts: dict[str, BoxCount] = {}
    for k, (what, _) in variants.items():
        c = BoxCount()
        for name, theirs in zip(names, last[k]["boxes"], strict=True):
            c.add(compare_boxes(zmq_boxes.get(name, []), theirs, name))
        counts[f"{_label(args.workers[0])} vs {what}"] = c
    boxes = box_table(counts, "zmqvision")
    fast_counts = counts[f"{_label(args.workers[0])} vs {variants[fast_key][0]}"]
    examples = [
        f"  {kind}: {img} class {spec.labels[c]}: zmqvision {_fmt_box(x)}, SAHI {_fmt_box(y)}"
        + (f", IoU {iou:.2f}" if kind == "moved" else "")
        for kind, img, c, x, y, iou in fast_counts.examples[:args.examples]]
    diag_lines: list[str] = []
    if diag is not None:
        n_img = diag["images"]
        diag_lines = [
            f"tile plans: plan_tiles == SAHI get_slice_bboxes in {diag['plans_same']} of "
            f"{n_img} images (both: step = tile - overlap px, last tile flush with the "
            "border at full size)",
            f"decoders: Pillow (zmqvision) and OpenCV (SAHI) differ in "
            f"{diag['pixels_differ']} of {diag['pixels']} channel values "
            f"({100 * diag['pixels_differ'] / max(1, diag['pixels']):.3f} %), "
            f"max |Δ| {diag['max_pixel_diff']}",
        ]
        dcounts = {
            "merge only: zmqvision.merge vs SAHI GreedyNMMPostprocess, same tile detections":
                diag["merge"],
            "decode only: zmqvision on Pillow pixels vs on OpenCV pixels": diag["decode"],
            "hint only: LATENCY- vs THROUGHPUT-compiled model, zmqvision merge":
                diag["hint"],
        }
        diag_lines += [f"{diag['raw_tile_dets']} tile detections before merging", "",
                       box_table(dcounts, "first")]
    reasons = [
        "Where merged boxes can differ:",
        "- full-image pass: SAHI's default adds one downscaled whole-image inference per "
        "image (zmqvision only with --full-pass), which finds large objects and grows or "
        "splits merged boxes: compare the rows with and without it.",
        "- merge details: SAHI's greedy NMM picks the same keepers (matches against the "
        "keeper's original box) but then re-checks each candidate against the keeper's "
        "growing union and silently drops one that no longer matches (neither kept nor "
        "merged); zmqvision always merges what matched the original box. Tie-breaks of "
        "equal scores differ too.",
        "- decoders: SAHI reads files with OpenCV, zmqvision with Pillow; their JPEG "
        "decoders differ by a few levels in some pixels, which moves scores near the "
        "threshold (0.3 for ssd) and boxes slightly.",
        "- slices and thresholds: tile plans and the score threshold are the same here "
        "(SAHI: overlap int(tile * ratio), last slice shifted back to end at the border; "
        "zmqvision: round(tile * overlap), last tile flush with the border), and the model "
        "filters scores itself (>= threshold) before SAHI sees them.",
        "- numerics: SAHI's batched row runs the THROUGHPUT-compiled model, the others "
        "LATENCY; the CPU plugin may pick other kernels for them.",
    ]

    print()
    print(table)
    print()
    print(ratios)
    print()
    print("\n".join(headline))
    print()
    print(boxes)
    if examples:
        print(f"\nexamples, zmqvision vs {variants[fast_key][0]}:")
        print("\n".join(examples))
    if diag_lines:
        print("\ndiagnosis (untimed, same images):")
        print("\n".join(diag_lines))
    print()
    print("\n".join(reasons))
    if args.out:
        dest = Path(args.out)
        if dest.suffix.lower() == ".json":
            dest.write_text(json.dumps({
                "head": head, "facts": facts, "headline": headline,
                "rows": [{"what": r.what, "images_per_s": r.images, "note": r.note}
                         for r in rows],
                "boxes": {k: {f: getattr(c, f) for f in
                              ("a", "b", "matched", "moved", "only_a", "only_b")}
                          for k, c in counts.items()},
            }, indent=2))
        else:
            dest.write_text("```\n" + "\n".join(head) + "\n```\n\n" + table + "\n\n" + ratios
                            + "\n\n" + "\n".join(headline) + "\n\n" + boxes + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
