"""Two-stage recognition: a detector finds the objects, a second model recognises each.

Stage 1 runs tiled exactly as detection does, with each box's points on the wire (a
face's five landmarks: ``protocol.Result`` ``points``). When the sink has merged an
image's stage 1 (each object once, after the border merge) it does not write the record
yet: it publishes the merged objects (``protocol.Objects``). The ventilator that owns the
image crops each object FROM THE ORIGINAL IMAGE'S PIXELS (never a tile: a tile is shrunk
and may cut the object) and sends the crops as stage-2 tiles, with indices following the
image's stage-1 tiles, through the same leases as every tile (a worker that dies holding
one: the crop goes again; a copy is merged once). Workers run the second model on them
(``Stage2Runner``); the sink completes the record when every object has its answer
(``record_extras``). One record per image, written when both stages are done.

This module holds what is particular to each kind of second stage (``KINDS``):

- ``identify`` (``run --identify``): CenterFace (stage 1, with landmarks) → align to the
  112 × 112 template (``faces.align``) → MobileFaceNet (stage 2, 192-d) → the sink
  matches the embeddings against the gallery (``faces.gallery``): ``"identity"``.
- ``plates`` (``run --model plates``): plates-det (stage 1, 4 corners per plate) → each
  plate rectified by its corners (``recognition.plates.plate_crops``) → plates-rec
  (stage 2, CTC): ``"corners"``, ``"text"``, ``"text_score"``.
- ``ocr`` (``run --model ocr``): ppocr-v4-det (stage 1, each line's rotated rectangle)
  → pieces of a line cut by a tile border joined (``recognition.text.join_lines``) →
  each line rectified (``line_crops(line_quads(...))``) → ppocr-v4-rec (stage 2):
  ``"quad"``, ``"text"``, ``"text_score"``; lines read as nothing or below
  ``READ_MIN_CONFIDENCE`` left out, the rest in reading order, as ``read_text``.

The single-process references (``faces.identify.identify_faces``,
``recognition.plates.read_plates``, ``recognition.text.read_text``) are what the
pipeline must equal; tests/test_two_stage*.py hold it to that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zmqvision import protocol
from zmqvision.boxes import Detections

# kind → (the stage-1 model it needs, its second model, points per box)
KINDS: dict[str, tuple[str, str, int]] = {
    "identify": ("centerface", "mobilefacenet", 5),
    "plates": ("plates-det", "plates-rec", 4),
    "ocr": ("ppocr-v4-det", "ppocr-v4-rec", 4),
}
# ``run --model NAME``: the names that mean a reading pair (stage-1 model, kind).
PAIRS: dict[str, tuple[str, str]] = {"plates": ("plates-det", "plates"),
                                     "ocr": ("ppocr-v4-det", "ocr")}
READERS = ("plates", "ocr")


def worker_model(kind: str | None) -> str | None:
    """The second model a job of this kind needs its workers to compile beside the first
    (``worker --stage2``); None for a one-stage job."""
    return None if kind is None else KINDS[kind][1]

READ_MIN_CONFIDENCE = 0.5  # ocr: rapidocr's text_score, as recognition.text.read_text
MAX_GALLERY_CHARS = 4096


@dataclass(frozen=True)
class Stage2Settings:
    """A job's second stage, as it travels in ``JobStart.options["stage2"]`` (and so is
    part of every record's ``settings`` and of the job's fingerprint): ``kind`` (one of
    ``KINDS``), ``model`` (the second model's ref: a worker running another refuses its
    tiles, the sink refuses results of another), and for ``identify`` the gallery URL
    (None: the sink's default, ``faces.gallery.resolve_url``) and the similarity below
    which a face is nobody (None: ``gallery.DEFAULT_THRESHOLD``)."""

    kind: str
    model: str
    gallery: str | None = None
    threshold: float | None = None

    def to_json(self) -> dict:
        return {"kind": self.kind, "model": self.model, "gallery": self.gallery,
                "threshold": self.threshold}

    @classmethod
    def from_json(cls, raw: object) -> Stage2Settings:
        """ValueError unless ``raw`` is a map of a known kind with sane values."""
        if not isinstance(raw, dict) or raw.get("kind") not in KINDS:
            raise ValueError(f"stage2 must be a map with a kind of {', '.join(KINDS)}")
        model, gallery, threshold = raw.get("model"), raw.get("gallery"), raw.get("threshold")
        if not isinstance(model, str) or not 0 < len(model) <= 256:
            raise ValueError("stage2 model must be a model ref")
        if gallery is not None and (not isinstance(gallery, str)
                                    or len(gallery) > MAX_GALLERY_CHARS):
            raise ValueError("stage2 gallery must be a URL")
        if threshold is not None and (isinstance(threshold, bool)
                                      or not isinstance(threshold, (int, float))
                                      or not -1.0 <= threshold <= 1.0):
            raise ValueError("stage2 threshold must be a cosine similarity in -1..1")
        return cls(kind=raw["kind"], model=model, gallery=gallery,
                   threshold=None if threshold is None else float(threshold))

    @property
    def points(self) -> int:
        return KINDS[self.kind][2]


def of_options(options: dict) -> Stage2Settings | None:
    """A job's second stage (None: a one-stage job); ValueError for bad settings."""
    raw = options.get("stage2")
    return None if raw is None else Stage2Settings.from_json(raw)


def plan(kind: str, model: str, *, gallery: str | None = None,
         threshold: float | None = None) -> Stage2Settings:
    """The second stage of a job whose stage-1 model is ``model`` (a catalog name, or a
    path: refused); ValueError when that model cannot feed this kind."""
    from zmqvision.models import resolve

    if kind not in KINDS:
        raise ValueError(f"unknown second stage {kind!r} (known: {', '.join(KINDS)})")
    first, second, _ = KINDS[kind]
    if model.split("@")[0] != first:
        raise ValueError(f"{kind} needs {first} as its first stage, not {model}")
    return Stage2Settings(kind=kind, model=resolve(second).ref, gallery=gallery,
                          threshold=threshold)


# ---------------------------------------------------------------------- sink, stage 1


def objects_of(settings: Stage2Settings, merged: Detections) -> Detections:
    """The objects stage 2 gets from an image's merged stage 1, as the reference makes
    them: for ``ocr`` the pieces of a line cut by tile borders joined into one
    (``recognition.text.join_lines``, which the standard merge misses for lines longer
    than the overlap band); for ``plates`` each plate's corners ordered."""
    if settings.kind == "ocr":
        from zmqvision.recognition.text import join_lines

        return join_lines(merged)
    if settings.kind == "plates" and len(merged) and merged.landmarks is not None:
        from zmqvision.recognition.geometry import order_quad

        return Detections(merged.boxes, merged.scores, merged.labels,
                          np.stack([order_quad(c) for c in merged.landmarks]))
    return merged


# ---------------------------------------------------------------------- ventilator


def crops(settings: Stage2Settings, image: np.ndarray, objects: Detections) -> list[np.ndarray]:
    """One stage-2 input per object, from the ORIGINAL image (uint8 ``[H, W, 3]``), the
    very call of the reference: for ``identify`` each face aligned to 112 × 112 by its
    landmarks (``faces.align``); for ``plates`` each plate rectified by its corners; for
    ``ocr`` each line by its rectangle (or its box, for a line fused from pieces)."""
    if not len(objects):
        return []
    if objects.landmarks is None or objects.landmarks.shape[1] != settings.points:
        raise ValueError(f"{settings.kind} needs {settings.points} points per object")
    if settings.kind == "plates":
        from zmqvision.recognition.plates import plate_crops

        return plate_crops(image, objects.landmarks)
    if settings.kind == "ocr":
        from zmqvision.recognition.text import line_crops, line_quads

        return line_crops(image, line_quads(objects))
    from zmqvision.faces.align import align_many

    return list(align_many(image, objects.landmarks))


# ---------------------------------------------------------------------- worker


Answer = tuple[np.ndarray | None, str | None, float | None]  # embedding, text, text score
MAX_CROP_SIDE = 8192  # a reader's crop: a line longer than this is not a line


class Stage2Runner:
    """A worker's second model: one crop in, its answer out (for ``identify`` the unit
    embedding, for a reader the text and its confidence).

    ``answer`` runs a crop at once, through the references' own runners
    (``FaceEmbedder.embed``, ``CtcReader.read``). The worker does not block its loop on
    it: it starts each crop on an infer request of ``compiled`` with ``inputs_of`` and
    decodes the request's output with ``decode_of`` (``worker.stage2.SecondStage``), the
    same input and the same decoding as ``answer``'s, so either way a crop's answer is
    the same, byte for byte (tests/test_worker_stage2_async.py).

    A reader reads each crop alone (``CtcReader.read([crop])``, batch of one), padded
    only to its own width: the single-process references read the same way
    (``CtcReader``'s default batch is 1), so a crop reads the same in both. MobileFaceNet
    has its batch fixed at 2 (``faces.embed.BATCH``): two crops share one inference
    (``per_request`` is 2: ``inputs_of`` / ``decode_of``), as ``FaceEmbedder.embed``
    pairs a list, and a lone crop goes paired with a copy of itself whose row is dropped.
    A face's row of a pair is bit-identical to its row when paired with itself (the rows
    of a batch do not mix; tests/test_faces_pairs.py pins it on real faces), so the
    pairing never changes an answer."""

    def __init__(self, model: str, *, device: str = "CPU", threads: int | None = None) -> None:
        from zmqvision.models import resolve

        self.spec = resolve(model)
        self._embedder = self._reader = None
        if self.spec.task == "embedding":
            from zmqvision.faces.embed import FaceEmbedder

            self._embedder = FaceEmbedder(self.spec, device=device, threads=threads)
        elif self.spec.family == "ctc":
            from zmqvision.recognition.ctc import CtcReader

            self._reader = CtcReader(self.spec, batch=1, device=device, threads=threads)
        else:
            raise ValueError(f"{self.spec.ref} ({self.spec.task}) is not a second-stage model "
                             "a worker runs (mobilefacenet, plates-rec, ppocr-v4-rec)")

    @property
    def ref(self) -> str:
        return self.spec.ref

    @property
    def per_request(self) -> int:
        """How many crops one inference can answer: MobileFaceNet's fixed batch (2), a
        reader's 1 (each line read alone, padded to its own width)."""
        if self._embedder is None:
            return 1
        from zmqvision.faces.embed import BATCH

        return BATCH

    @property
    def compiled(self):
        """The compiled second model (``ov.CompiledModel``): asynchronous requests are
        made on it (``inputs_of`` in, ``decode_of`` of output 0 out)."""
        runner = self._reader if self._reader is not None else self._embedder
        return runner.compiled

    def refusal(self, pixels: np.ndarray) -> str | None:
        if self._reader is not None:
            if (pixels.ndim != 3 or pixels.shape[2] != 3
                    or max(pixels.shape[:2]) > MAX_CROP_SIDE):
                return f"a reader's crop is [h, w, 3] up to {MAX_CROP_SIDE}, got " \
                       f"{list(pixels.shape)}"
            return None
        from zmqvision.faces.align import CROP_SIZE

        if pixels.shape != (CROP_SIZE, CROP_SIZE, 3):
            return f"a face crop is {CROP_SIZE}x{CROP_SIZE}, got {list(pixels.shape)}"
        return None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """The crop's unit embedding (float32 ``[D]``): ``identify`` only."""
        assert self._embedder is not None
        return self._embedder.embed(pixels[None])[0]

    def answer(self, pixels: np.ndarray) -> Answer:
        """What the worker sends for one crop: (embedding, text, text score)."""
        if self._reader is None:
            return self.run(pixels), None, None
        return self._read_answer(self._reader.read([pixels])[0])

    def inputs_of(self, crops: list[np.ndarray]) -> np.ndarray:
        """The model's input for up to ``per_request`` crops that share one inference, uint8
        ``[N, H, W, 3]`` C-contiguous, as ``answer`` would make it: a reader's one crop
        resized and padded (``CtcReader.batch_pixels``); one or two faces stacked (a lone
        face with a copy of itself). ValueError for a crop the runners refuse."""
        if not 0 < len(crops) <= self.per_request:
            raise ValueError(f"{len(crops)} crops for one request of {self.ref} "
                             f"(1 to {self.per_request})")
        if self._reader is not None:
            return self._reader.batch_pixels(crops)
        for pixels in crops:
            if pixels.dtype != np.uint8:
                raise ValueError(f"crops must be uint8, got {pixels.dtype}")
        if len(crops) < self.per_request:
            crops = [*crops, *[crops[0]] * (self.per_request - len(crops))]
        return np.ascontiguousarray(np.stack(crops))

    def decode_of(self, output: np.ndarray, n: int) -> list[Answer]:
        """The answers of the first ``n`` crops of a request made with ``inputs_of``
        (output 0), each row decoded alone exactly as ``answer`` decodes its crop. Called
        on OpenVINO's threads (it only reads ``output`` and the reader's characters)."""
        if self._reader is None:
            from zmqvision.faces.embed import normalise

            return [(normalise(output[k:k + 1])[0], None, None) for k in range(n)]
        from zmqvision.recognition.ctc import ctc_greedy

        return [self._read_answer(ctc_greedy(output[k:k + 1], self._reader.characters)[0])
                for k in range(n)]

    @staticmethod
    def _read_answer(read) -> Answer:
        return None, read.text, min(1.0, max(0.0, read.confidence))


# ---------------------------------------------------------------------- sink


def check_answer(settings: Stage2Settings, embedding: np.ndarray | None,
                 text: str | None) -> str | None:
    """Why a stage-2 result cannot be this job's (then that object's error), or None."""
    if settings.kind in READERS:
        if text is None or embedding is not None:
            return "a reader's stage-2 answer is its text"
        return None
    if settings.kind == "identify":
        if embedding is None or text is not None:
            return "a face's stage-2 answer is its embedding"
        norm = float(np.linalg.norm(embedding))
        if not 0.5 <= norm <= 1.5:  # the worker sends unit vectors
            return f"a face embedding of length {norm:.3f}, not a unit vector"
    return None


class Matcher:
    """The sink's end of ``identify``: the job's gallery, opened once per job (its
    matrix loaded on first use), and the per-face ``"identity"``."""

    def __init__(self, settings: Stage2Settings) -> None:
        from zmqvision.faces.gallery import DEFAULT_THRESHOLD, Gallery

        threshold = DEFAULT_THRESHOLD if settings.threshold is None else settings.threshold
        self.gallery = Gallery.open(settings.gallery, threshold=threshold)
        self.threshold = threshold

    def identities(self, embeddings: np.ndarray) -> list[dict | None]:
        """Per face ``{"name", "similarity"}``, or None below the threshold (or nobody
        enrolled), exactly as ``identify_faces`` decides."""
        if not len(embeddings):
            return []
        out: list[dict | None] = []
        for name, sim in self.gallery.best(embeddings):
            ok = name is not None and sim >= self.threshold
            out.append({"name": name, "similarity": round(float(sim), 4)} if ok else None)
        return out

    def close(self) -> None:
        self.gallery.close()


def record_extras(settings: Stage2Settings, objects: Detections,
                  answers: dict[int, Answer],
                  matcher: Matcher | None) -> tuple[np.ndarray, list[dict]]:
    """Which objects the record holds, in its order (indices into ``objects``), and per
    object kept, the fields its record entry gets beside box, score and label:
    ``landmarks`` (2 decimals, as the reference's ``Face.record``) and ``identity``;
    a plate's ``corners``, a line's ``quad``, and both their ``text`` and ``text_score``.
    ``answers[i]`` is object ``i``'s (embedding, text, text score). Every face and plate
    is kept, best first; text lines read as nothing or below ``READ_MIN_CONFIDENCE`` are
    left out and the rest put in reading order, as ``read_text``."""
    n = len(objects)
    order = np.arange(n)
    extras: list[dict] = [{} for _ in range(n)]
    if settings.kind in READERS:
        key = "corners" if settings.kind == "plates" else "quad"
        quads = objects.landmarks
        if settings.kind == "ocr" and n:
            from zmqvision.recognition.text import line_quads

            quads = line_quads(objects)
        for i in range(n):
            text, score = answers[i][1] or "", float(answers[i][2] or 0.0)
            if settings.kind == "ocr":
                text = text.strip()  # the reader may put a space at a line's ends
            extras[i] = {key: np.round(quads[i], 2).tolist(), "text": text,
                         "text_score": round(score, 4)}
        if settings.kind == "ocr":
            from zmqvision.recognition.text import reading_order

            kept = [i for i in range(n) if extras[i]["text"]
                    and float(answers[i][2] or 0.0) >= READ_MIN_CONFIDENCE]
            order = np.asarray(reading_order(objects.boxes, kept), np.int64)
        return order, [extras[i] for i in order]
    if objects.landmarks is not None:
        for i in range(n):
            extras[i]["landmarks"] = np.round(objects.landmarks[i], 2).tolist()
    if settings.kind == "identify" and n:
        embeddings = np.stack([answers[i][0] for i in range(n)]).astype(np.float32)
        assert matcher is not None
        for i, identity in enumerate(matcher.identities(embeddings)):
            extras[i]["identity"] = identity
    return order, extras


# ---------------------------------------------------------------------- result cache


def cache_needs(settings: Stage2Settings) -> tuple[str, int]:
    """What a cache entry of this kind must hold (``ResultCache.lookup``'s ``stage2``):
    the answer (``"text"`` for a reader, ``"embedding"`` for ``identify``) and the
    points per object."""
    return ("text" if settings.kind in READERS else "embedding"), settings.points


def cache_data(settings: Stage2Settings, objects: Detections,
               answers: dict[int, Answer]) -> protocol.Stage2Cached:
    """An image's stage 2 as the result cache keeps it: every object's points and answer
    (an embedding, or a text and its score), never its identity — the record is made
    again from these by ``record_extras`` with the gallery as it is then."""
    n = len(objects)
    points = objects.landmarks
    if points is None:  # no object (or none with points: a stage 1 that failed, not saved)
        points = np.zeros((n, settings.points, 2), np.float64)
    if settings.kind in READERS:
        return protocol.Stage2Cached(
            points=points, texts=tuple(answers[i][1] or "" for i in range(n)),
            text_scores=tuple(float(answers[i][2] or 0.0) for i in range(n)))
    embeddings = (np.stack([answers[i][0] for i in range(n)]).astype(np.float32)
                  if n else None)
    return protocol.Stage2Cached(points=points, embeddings=embeddings)


def from_cache(settings: Stage2Settings, cached: protocol.Cached) -> tuple[Detections, dict]:
    """A cached image's objects (with their points) and answers, as the sink holds a
    computed image's when its last answer comes; ValueError for a cached entry that is
    not this kind's (no stage 2, other answers, other point count)."""
    s2 = cached.stage2
    if s2 is None:
        raise ValueError("a cached two-stage image without its stage 2")
    if (s2.answer, s2.points.shape[1]) != cache_needs(settings):
        raise ValueError(f"a cached stage 2 of {s2.answer}s with {s2.points.shape[1]} points "
                         f"for a {settings.kind} job")
    d = cached.detections
    objects = Detections(d.boxes, d.scores, d.labels, s2.points if len(d) else None)
    return objects, s2.answers()
