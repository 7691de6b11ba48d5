"""The worker's second stage runs asynchronously (``worker.stage2.SecondStage``: its own
infer requests, completions answered from the loop) and answers every crop exactly as
``Stage2Runner.answer`` does, byte for byte: the readers (plates-rec, ppocr-v4-rec) on
real plate and text-line crops, MobileFaceNet (batch fixed at 2: two queued faces share
one inference, a lone one goes with a copy of itself) on real faces. And in a worker:
crops and a stage-1 tile answered, a crop for another model refused as before, every
tile's credit back; face crops answered with the bytes each gives alone."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import zmq
from PIL import Image

from zmqvision import protocol
from zmqvision.models import resolve

pytestmark = pytest.mark.timeout(300)


@contextlib.contextmanager
def worker_rig(name: str, **config):
    """A real worker in this process (``config``: its ``WorkerConfig`` beyond endpoints,
    one thread, a fast heartbeat, id ``w1``) between a test ventilator and a test sink on
    inproc; ``(ventilator, sink)``, everything closed after."""
    from tests.test_worker import InProcessWorker, Sink, Ventilator
    from zmqvision.worker import WorkerConfig

    ctx = zmq.Context()
    vent = Ventilator(ctx, f"inproc://{name}-tiles")
    sink = Sink(ctx, f"inproc://{name}-results")
    worker = None
    try:
        worker = InProcessWorker(ctx, WorkerConfig(
            tiles=vent.endpoint, results=sink.endpoint, threads=1, heartbeat_s=0.1,
            worker_id="w1", **config))
        yield vent, sink
    finally:
        try:
            if worker is not None:
                worker.close()
        finally:
            vent.close()
            sink.close()
            ctx.term()


@pytest.fixture(scope="module")
def plate_crops_(models_ready):
    from tests.test_plates_samples import PLATE_TEXTS, plate_scene
    from zmqvision.recognition.geometry import order_quad
    from zmqvision.recognition.plates import plate_crops

    image, truth = plate_scene("coffee", list(PLATE_TEXTS[:6]), [100, 140, 180, 220, 260, 300],
                               [0, 5, -7, 3, -3, 2], seed=3)
    return plate_crops(image, np.stack([order_quad(c) for _, c in truth]))


@pytest.fixture(scope="module")
def line_crops_(models_ready):
    from tests.test_plates_samples import text_scene

    image, truth = text_scene("chelsea", ["ZeroMQ moves tiles", "The sink merges boxes",
                                          "OpenVINO reads each crop", "a"], seed=2)
    # Each line's box, a little loose, and one crop turned (taller than wide).
    crops = [np.ascontiguousarray(image[y1 - 6:y2 + 6, x1 - 6:x2 + 6])
             for _, (x1, y1, x2, y2) in truth]
    return [*crops, np.ascontiguousarray(np.rot90(crops[0]))]


@pytest.fixture(scope="module")
def face_crops(models_ready):
    from tests.faces_samples import astronaut_face, lfw_canvas, lfw_faces

    faces = [np.asarray(Image.fromarray(lfw_canvas(f)).resize((112, 112)))
             for f in lfw_faces()[:5]]
    faces.append(np.asarray(Image.fromarray(astronaut_face()).resize((112, 112))))
    return [np.ascontiguousarray(f) for f in faces]


def tile_of(index: int, pixels: np.ndarray, model: str) -> protocol.Tile:
    h, w = pixels.shape[:2]
    return protocol.Tile(job="j", image="img", index=index, box=(0.0, 0.0, float(w), float(h)),
                         scale=1.0, model=model, pixels=pixels, encoding="raw",
                         task={"stage": 2})


def answers_async(runner, crops, requests: int = 3):
    from zmqvision.worker.stage2 import SecondStage

    stage = SecondStage(runner, requests)
    try:
        got, started = {}, 0
        while len(got) < len(crops):
            while started < len(crops) and stage.has_room():
                stage.start(0, tile_of(started, crops[started], runner.ref))
                started += 1
            done = stage.wait_completion(30)
            assert done is not None, "a crop never completed"
            assert done.error is None, done.error
            got[done.tile.index] = done.answer
        assert stage.in_flight == 0
        return [got[i] for i in range(len(crops))]
    finally:
        stage.close()


def same(a, b) -> bool:
    """Two answers equal byte for byte (an embedding's bytes, the text, the score)."""
    (ea, ta, sa), (eb, tb, sb) = a, b
    if (ea is None) != (eb is None):
        return False
    if ea is not None and (ea.dtype != eb.dtype or ea.tobytes() != eb.tobytes()):
        return False
    return ta == tb and sa == sb


@pytest.mark.parametrize("model", ["plates-rec", "ppocr-v4-rec", "mobilefacenet"])
def test_async_answers_equal_the_synchronous_ones(model, plate_crops_, line_crops_,
                                                  face_crops):
    from zmqvision.tasks.stage2 import Stage2Runner

    crops = {"plates-rec": plate_crops_, "ppocr-v4-rec": line_crops_,
             "mobilefacenet": face_crops}[model]
    runner = Stage2Runner(model, threads=1)
    sync = [runner.answer(c) for c in crops]
    if model != "mobilefacenet":
        assert sum(bool(t) for _, t, _ in sync) >= len(crops) - 2  # crops that read
    got = answers_async(runner, crops)
    assert all(same(a, b) for a, b in zip(got, sync, strict=True)), (got, sync)
    assert all(same(a, b) for a, b in zip(answers_async(runner, crops[::-1], requests=1),
                                           sync[::-1], strict=True))


def test_a_crop_it_cannot_take_raises_at_start_and_counts_nothing(face_crops):
    from zmqvision.tasks.stage2 import Stage2Runner
    from zmqvision.worker.stage2 import SecondStage

    runner = Stage2Runner("mobilefacenet", threads=1)
    stage = SecondStage(runner, 2)
    try:
        bad = tile_of(0, face_crops[0], runner.ref)
        object.__setattr__(bad, "pixels", face_crops[0].astype(np.float32))
        with pytest.raises(ValueError, match="uint8"):
            stage.start(0, bad)
        assert stage.in_flight == 0 and stage.has_room()
    finally:
        stage.close()


class FailingDecode:
    """A runner whose decoding fails (the model's output is not what it expects)."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.ref, self.compiled = runner.ref, runner.compiled
        self.per_request = runner.per_request

    def inputs_of(self, crops):
        return self.runner.inputs_of(crops)

    def decode_of(self, output, n):
        raise RuntimeError("output of an unexpected shape")


def test_a_crop_that_fails_on_the_device_comes_back_as_its_error(face_crops):
    from zmqvision.tasks.stage2 import Stage2Runner
    from zmqvision.worker.stage2 import SecondStage

    stage = SecondStage(FailingDecode(Stage2Runner("mobilefacenet", threads=1)), 2)
    try:
        stage.start(0, tile_of(7, face_crops[0], "x"))
        stage.flush()
        done = stage.wait_completion(30)
        assert done is not None and done.tile.index == 7 and done.answer is None
        assert "unexpected shape" in str(done.error)
        assert stage.in_flight == 0
        stage.start(0, tile_of(8, face_crops[0], "x"))  # a pair: both come back as errors
        stage.start(0, tile_of(9, face_crops[1], "x"))
        got = [stage.wait_completion(30) for _ in range(2)]
        assert sorted(d.tile.index for d in got) == [8, 9]
        assert all("unexpected shape" in str(d.error) for d in got)
        assert stage.in_flight == 0
    finally:
        stage.close()


def test_two_queued_faces_share_one_inference_and_answer_as_alone(face_crops):
    """As the worker's loop starts what it received, then flushes: every two face crops
    one request, an odd one out alone (at once, paired with itself); each answer equal to
    ``Stage2Runner.answer``'s byte for byte, whichever crop it was paired with."""
    from zmqvision.tasks.stage2 import Stage2Runner
    from zmqvision.worker.stage2 import SecondStage

    runner = Stage2Runner("mobilefacenet", threads=1)
    assert runner.per_request == 2
    sync = [runner.answer(c) for c in face_crops]
    for order in (list(range(len(face_crops))), [5, 0, 4, 1, 3, 2], [2, 4, 1, 3, 0]):
        stage = SecondStage(runner, len(order))
        try:
            for k in order:
                stage.start(0, tile_of(k, face_crops[k], runner.ref))
            assert stage.in_flight == len(order) and stage.inferences == len(order) // 2
            stage.flush()
            assert stage.inferences == (len(order) + 1) // 2
            got = {}
            while len(got) < len(order):
                done = stage.wait_completion(30)
                assert done is not None and done.error is None, done
                got[done.tile.index] = done.answer
            assert stage.in_flight == 0
            assert all(same(got[k], sync[k]) for k in order), order
        finally:
            stage.close()


def test_a_lone_face_starts_at_once_and_unpaired_is_one_per_request(face_crops):
    from zmqvision.tasks.stage2 import Stage2Runner
    from zmqvision.worker.stage2 import SecondStage

    runner = Stage2Runner("mobilefacenet", threads=1)
    stage = SecondStage(runner, 2)
    try:
        stage.start(0, tile_of(0, face_crops[0], runner.ref))
        assert stage.inferences == 0  # held: the loop may have its partner queued
        done = stage.wait_completion(30)  # nothing else comes: it starts alone
        assert done is not None and same(done.answer, runner.answer(face_crops[0]))
        assert stage.inferences == 1 and stage.in_flight == 0
    finally:
        stage.close()
    unpaired = SecondStage(runner, 4, pairs=False)  # the behaviour before pairing
    try:
        for k in range(4):
            unpaired.start(0, tile_of(k, face_crops[k], runner.ref))
        assert unpaired.inferences == 4
        got = [unpaired.wait_completion(30) for _ in range(4)]
        assert all(same(d.answer, runner.answer(face_crops[d.tile.index])) for d in got)
    finally:
        unpaired.close()


def test_a_worker_pairs_face_crops_and_sends_the_embeddings_alone_would_give(face_crops,
                                                                              models_ready):
    """Face crops sent at once to a worker of centerface + mobilefacenet: every result's
    embedding is, byte for byte, ``Stage2Runner.answer``'s for its crop."""
    from zmqvision.tasks.stage2 import Stage2Runner

    ref = resolve("mobilefacenet").ref
    sync = [Stage2Runner("mobilefacenet", threads=1).answer(c) for c in face_crops]
    n = len(face_crops)
    with worker_rig("s2f", model="centerface", stage2="mobilefacenet", requests=n) as (
            vent, sink):
        vent.wait(lambda: vent.credit() == n, 30, "initial credit")
        for i, c in enumerate(face_crops):
            assert vent.send("w1", tile_of(i, c, ref))
        results = {r.index: r for r in sink.wait_results(n)}
        for i, (embedding, _, _) in enumerate(sync):
            r = results[i]
            assert r.error is None and r.model == ref
            assert r.embedding.dtype == embedding.dtype
            assert r.embedding.tobytes() == embedding.tobytes(), i
        vent.wait(lambda: vent.credit() == 2 * n, 30, "credit back for every crop")


def test_a_worker_answers_crops_from_its_loop_and_gives_every_credit_back(plate_crops_,
                                                                          models_ready):
    from zmqvision.tasks.stage2 import Stage2Runner

    rec = resolve("plates-rec").ref
    det = resolve("plates-det")
    sync = [Stage2Runner("plates-rec", threads=1).answer(c) for c in plate_crops_]
    with worker_rig("s2", model="plates-det", stage2="plates-rec", requests=2) as (
            vent, sink):
        vent.wait(lambda: vent.credit() == 2, 30, "initial credit")
        side = det.input_size[0]
        tiles = [tile_of(i, c, rec) for i, c in enumerate(plate_crops_)]
        tiles.insert(2, protocol.Tile(job="j", image="img", index=100,
                                      box=(0.0, 0.0, float(side), float(side)), scale=1.0,
                                      model=det.ref, pixels=np.zeros((side, side, 3), np.uint8)))
        tiles.append(tile_of(101, plate_crops_[0], "plates-rec@0"))  # another second model
        for sent, t in enumerate(tiles):  # each on credit, as a ventilator sends
            vent.wait(lambda sent=sent: vent.credit() > sent, 30, "credit")
            assert vent.send("w1", t)
        results = {r.index: r for r in sink.wait_results(len(tiles))}
        assert len(results) == len(tiles)
        for i, answer in enumerate(sync):
            r = results[i]
            assert r.error is None and r.model == rec and r.worker == "w1"
            assert (r.text, r.text_score) == answer[1:], (i, r.text, answer)
        assert results[100].error is None and results[100].model == det.ref
        assert results[101].error["type"] == "model_mismatch", results[101].error
        vent.wait(lambda: vent.credit() == 2 + len(tiles), 30, "credit back for every tile")
