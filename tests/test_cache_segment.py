"""The result cache for segmentation jobs (issue 20): an entry keeps the mask PNG's bytes
as the sink wrote them and each class's pixels, it travels to the sink as
``cached.segment`` of a ``zv.image`` (the PNG one frame), a hit writes the same bytes
where this sink puts masks and makes the record a computed image gets; the key moves
with tiling, threshold, model and ``MASK_VERSION``; a damaged entry, or one without a
mask, is a miss; a mask over ``MAX_CACHED_MASK_BYTES`` is not saved. Real SQLite, a
real ``redis-server``, the real selfie and deeplabv3 models driving an in-process sink;
the pipeline is tests/integration/test_cache_segment.py.
"""

from __future__ import annotations

import json
import logging
import time

import msgpack
import numpy as np
import pytest
import skimage.data
from PIL import Image

from tests.test_cache import HASH
from tests.test_segment_task import worker_scores
from zmqvision import protocol
from zmqvision.boxes import Detections
from zmqvision.cache import ResultCache, job_fingerprint, open_cache
from zmqvision.cache.entry import Entry, EntryError, decode, encode
from zmqvision.cache.key import entry_key
from zmqvision.cache.sqlite_store import SqliteStore
from zmqvision.models import CATALOG
from zmqvision.plan import JobPlan, JobSettings
from zmqvision.segment.png import PalettePNGWriter, read_rows
from zmqvision.sink import Sink, SinkConfig
from zmqvision.sockets import MAX_FRAMES

pytestmark = pytest.mark.timeout(120)

W, H = 40, 30


def labels_map(w: int = W, h: int = H) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return ((x // 7 + y // 5) % 3 * 7).astype(np.uint8)  # classes 0, 7, 14


def png_of(labels: np.ndarray, path) -> bytes:
    with PalettePNGWriter(path, labels.shape[1], labels.shape[0]) as png:
        png.write(labels)
    return path.read_bytes()


def mask_of(labels: np.ndarray, tmp_path) -> protocol.SegmentCached:
    counts = np.bincount(labels.ravel())
    return protocol.SegmentCached(png=png_of(labels, tmp_path / "m.png"),
                                  counts=tuple(int(c) for c in counts))


def _entry(mask, **kw) -> Entry:
    return Entry(key="k", model="selfie-segmentation@1", width=W, height=H, tiles=1,
                 detections=Detections.empty(), segment=mask, **kw)


@pytest.fixture
def sqlite_cache(tmp_path):
    cache = ResultCache(SqliteStore(tmp_path / "c.sqlite3"))
    yield cache
    cache.close()


# ------------------------------------------------------------------------------- key


def _fp(model="selfie-segmentation", **settings) -> str:
    return job_fingerprint(JobPlan(JobSettings(model=model, **settings)).job_start(""))


def test_everything_that_changes_a_mask_changes_the_key(monkeypatch):
    base = _fp()
    assert _fp() == base
    others = {
        "tile": _fp(tile_size=(128, 128)), "overlap": _fp(overlap=0.3),
        "threshold": _fp(score_threshold=0.7), "model": _fp("deeplabv3"),
    }
    assert len(set(others.values()) | {base}) == len(others) + 1, others
    import zmqvision.tasks.segmentation as seg

    monkeypatch.setattr(seg, "MASK_VERSION", seg.MASK_VERSION + 1)
    assert _fp() != base  # another stitcher or PNG writer: entries before are not served


def test_a_detection_key_is_what_it_was():
    """The mask version is only in segmentation keys: entries saved before stay hits."""
    from zmqvision.cache.key import fingerprint

    start = JobPlan(JobSettings(model="centerface")).job_start("")
    assert job_fingerprint(start) == fingerprint(start.model, start.tiling, start.merge,
                                                 None)


# ------------------------------------------------------------------------------- entry


def test_entry_with_a_mask_round_trips_exactly(tmp_path):
    labels = labels_map()
    mask = mask_of(labels, tmp_path)
    e = decode(encode(_entry(mask)), "k")
    assert bytes(e.segment.png) == bytes(mask.png) and e.segment.counts == mask.counts
    assert sum(e.segment.counts) == W * H and e.segment.size == (W, H)
    rows = np.concatenate(list(read_rows(e.segment.png, W, H, rows=4)))
    assert np.array_equal(rows, labels)


def test_entry_without_seg_reads_as_before(tmp_path):
    m = msgpack.unpackb(encode(_entry(None)), raw=False)
    assert "seg" not in m and decode(encode(_entry(None)), "k").segment is None


def _damaged(tmp_path, damage: str) -> bytes:
    m = msgpack.unpackb(encode(_entry(mask_of(labels_map(), tmp_path))), raw=False)
    seg = m["seg"]
    if damage == "flipped byte":
        frame = bytearray(seg["frame"])
        frame[len(frame) // 2] ^= 0x40  # inside the IDAT: its CRC no longer holds
        seg["frame"] = bytes(frame)
    elif damage == "cut short":
        seg["frame"] = seg["frame"][:-5]
        seg["png"] = len(seg["frame"])
    elif damage == "byte count":
        seg["png"] += 1
    elif damage == "counts sum":
        seg["counts"][0] += 1
    elif damage == "negative count":
        seg["counts"][0], seg["counts"][7] = seg["counts"][0] + 1, -1
    elif damage == "other size":
        m["w"] = W + 1
    elif damage == "not a png":
        seg["frame"] = b"GIF89a" + seg["frame"][6:]
    elif damage == "with detections":
        m["n"], m["boxes"], m["scores"], m["labels"] = 1, b"\0" * 32, b"\0" * 4, b"\0" * 4
    elif damage == "frame not bytes":
        seg["frame"] = "text"
    return msgpack.packb(m, use_bin_type=True)


DAMAGES = ["flipped byte", "cut short", "byte count", "counts sum", "negative count",
           "other size", "not a png", "with detections", "frame not bytes"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_mask_entry_does_not_parse(tmp_path, damage):
    with pytest.raises(EntryError):
        decode(_damaged(tmp_path, damage), "k")


def _fp_and_key():
    fp = _fp()
    return fp, entry_key(fp, HASH)


def test_save_then_lookup_hits_and_a_damaged_or_maskless_entry_is_a_miss(
        tmp_path, sqlite_cache, caplog):
    fp, key = _fp_and_key()
    ref = CATALOG["selfie-segmentation"].ref
    mask = mask_of(labels_map(), tmp_path)
    sqlite_cache.save(fp, HASH, model=ref, width=W, height=H, tiles=1,
                      detections=Detections.empty(), segment=mask)
    sqlite_cache.flush()
    hit = sqlite_cache.lookup(fp, HASH, ref, segment=True)
    assert hit is not None and bytes(hit.segment.png) == bytes(mask.png)
    # damaged: a logged miss, deleted so the result computed now replaces it
    data = bytearray(sqlite_cache.guard.store.get(key))
    data[-40] ^= 0x01
    sqlite_cache.guard.store.put_many([(key, bytes(data), time.time())])
    assert sqlite_cache.lookup(fp, HASH, ref, segment=True) is None
    assert sqlite_cache.guard.store.get(key) is None and sqlite_cache.corrupt == 1
    # an entry without a mask under a segmentation key (by hand: none is ever saved)
    sqlite_cache.save(fp, HASH, model=ref, width=W, height=H, tiles=1,
                      detections=Detections.empty())
    sqlite_cache.flush()
    assert sqlite_cache.lookup(fp, HASH, ref, segment=True) is None
    assert sqlite_cache.corrupt == 2 and "without the mask" in caplog.text


def test_redis_mask_round_trip(redis_server, tmp_path):
    cache = open_cache(redis_server.url)
    try:
        fp, _ = _fp_and_key()
        mask = mask_of(labels_map(), tmp_path)
        cache.save(fp, HASH, model="m@1", width=W, height=H, tiles=2,
                   detections=Detections.empty(), segment=mask)
        cache.flush()
        hit = cache.lookup(fp, HASH, "m@1", segment=True)
        assert hit is not None and hit.tiles == 2
        assert bytes(hit.segment.png) == bytes(mask.png) and hit.segment.counts == mask.counts
        cache.guard.store.clear()
    finally:
        cache.close()


# ------------------------------------------------------------------------------- wire


def _info(mask, w=W, h=H) -> protocol.ImageInfo:
    return protocol.ImageInfo(job="j", image="i" * 16, path="p.png", seq=0, width=w,
                              height=h, hash=HASH, secret="s", cached=protocol.Cached(
                                  tiles=3, detections=Detections.empty(),
                                  created=time.time(), segment=mask))


def test_image_announcement_carries_the_mask_as_one_frame(tmp_path):
    mask = mask_of(labels_map(), tmp_path)
    frames = protocol.encode(_info(mask))
    assert len(frames) == 6 <= MAX_FRAMES and bytes(frames[-1]) == bytes(mask.png)
    got = protocol.decode([bytes(f) for f in frames]).cached.segment
    assert bytes(got.png) == bytes(mask.png) and got.counts == mask.counts


@pytest.mark.parametrize("damage", ["no frame", "extra frame", "other size", "count",
                                    "too big", "detections"])
def test_a_damaged_mask_announcement_is_refused(tmp_path, damage):
    mask = mask_of(labels_map(), tmp_path)
    info = _info(mask, w=W + 1) if damage == "other size" else _info(mask)
    frames = [bytes(f) for f in protocol.encode(info)]
    h = msgpack.unpackb(frames[1], raw=False)
    if damage == "no frame":
        frames = frames[:-1]
    elif damage == "extra frame":
        frames.append(b"")
    elif damage == "count":
        h["cached"]["segment"]["counts"] = [1]
    elif damage == "too big":
        h["cached"]["segment"]["png"] = protocol.MAX_CACHED_MASK_BYTES + 1
    elif damage == "detections":
        h["cached"]["n"] = 1
        frames[2:5] = [b"\0" * 32, b"\0" * 4, b"\0" * 4]
    frames[1] = msgpack.packb(h, use_bin_type=True)
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(frames)


# ------------------------------------------------------------------------------- the sink


@pytest.fixture(scope="module")
def segmenters(models_ready):
    from zmqvision.segment import Segmenter

    return {n: Segmenter(CATALOG[n], threads=2) for n in ("deeplabv3", "selfie-segmentation")}


class SinkRun:
    """An in-process sink with a result cache, one segmentation job, records by id."""

    def __init__(self, tmp_path, name: str, cache: ResultCache, model: str,
                 fmt: str = "jsonl", masks: str | None = "masks", **settings) -> None:
        self.out = tmp_path / (f"{name}.json" if fmt == "coco" else f"{name}.jsonl")
        self.journal = self.out.with_name(self.out.name + ".journal.jsonl") \
            if fmt == "coco" else self.out
        self.masks = None if masks is None else tmp_path / name / masks
        self.sink = Sink(SinkConfig(out=str(self.out), format=fmt,
                                    masks=None if masks is None else str(self.masks)),
                         lambda frames: None, cache=cache)
        self.plan = JobPlan(JobSettings(model=model, **settings))
        self.secret = protocol.new_job_secret()
        self.job = "j" + name
        self.send(self.plan.job_start(self.job, secret=self.secret))
        self.lookup = self.plan.lookup_in(cache)

    def send(self, msg) -> None:
        self.sink.handle([bytes(memoryview(f)) for f in protocol.encode(msg)])

    def computed(self, seg, name: str, px: np.ndarray) -> None:
        h, w = px.shape[:2]
        tiles = self.plan.tiles(w, h)
        self.send(protocol.ImageInfo(job=self.job, image=name, path=f"{name}.png",
                                     seq=0, width=w, height=h, tiles=len(tiles), hash=HASH,
                                     secret=self.secret))
        for tile in tiles:
            self.send(protocol.Result(job=self.job, image=name, index=tile.index,
                                      worker="w", model=seg.spec.ref,
                                      detections=Detections.empty(),
                                      scores=worker_scores(seg, self.plan, px, tile)))

    def hit(self, name: str, entry: Entry) -> None:
        self.send(protocol.ImageInfo(
            job=self.job, image=name, path=f"{name}.png", seq=0,
            width=entry.width, height=entry.height, hash=HASH, secret=self.secret,
            cached=protocol.Cached(tiles=entry.tiles, detections=entry.detections,
                                   created=entry.created, segment=entry.segment)))

    def end(self, images: int = 1) -> dict:
        self.send(protocol.JobEnd(job=self.job, images=images, tiles=0,
                                  secret=self.secret))
        self.sink.close()
        return {r["id"]: r for r in map(json.loads, self.journal.read_text().splitlines())}


def same_record(a: dict, b: dict) -> None:
    """Equal but for job and cached, and the mask's folder (each run's own)."""
    a, b = dict(a), dict(b)
    for r in (a, b):
        r.pop("job"), r.pop("cached")
        r["segmentation"] = dict(r["segmentation"], mask=r["segmentation"]["mask"]
                                 .rsplit("/", 1)[-1])
    assert a == b


@pytest.mark.parametrize("model, photo, fmt, settings", [
    ("selfie-segmentation", "astronaut", "jsonl", {}),
    ("deeplabv3", "chelsea", "coco", {"tile_size": (200, 200)}),  # a grid, with RLE
], ids=["selfie-whole", "deeplabv3-grid-coco"])
def test_a_hit_writes_the_same_png_and_makes_the_same_record(tmp_path, segmenters, model,
                                                             photo, fmt, settings):
    seg = segmenters[model]
    px = np.ascontiguousarray(getattr(skimage.data, photo)()[..., :3])
    cache = ResultCache(SqliteStore(tmp_path / "c.sqlite3"))
    try:
        first = SinkRun(tmp_path, "a", cache, model, fmt, **settings)
        first.computed(seg, "img", px)
        (computed,) = first.end().values()
        assert not computed["cached"] and (computed["tiles"] > 1) == bool(settings)
        assert fmt != "coco" or all("rle" in c for c in computed["segmentation"]["classes"])
        hit = first.lookup(HASH)  # the entry the sink saved, as the ventilator finds it
        assert hit is not None and hit.segment is not None
        second = SinkRun(tmp_path, "b", cache, model, fmt, masks="elsewhere", **settings)
        second.hit("img", hit)
        (cached,) = second.end().values()
    finally:
        cache.close()
    assert cached["cached"] and cached["error"] is None
    same_record(cached, computed)
    a, b = computed["segmentation"]["mask"], cached["segmentation"]["mask"]
    assert b.startswith(str(second.masks)) and a.startswith(str(first.masks))
    assert open(a, "rb").read() == open(b, "rb").read()  # noqa: SIM115
    assert [p.name for p in second.masks.iterdir()] == [b.rsplit("/", 1)[-1]]  # no temp file
    with Image.open(b) as im:
        assert im.mode == "P" and im.size == (px.shape[1], px.shape[0])


def test_a_hit_without_masks_or_coco_to_a_jsonl_sink(tmp_path, segmenters):
    """A sink without --masks records no mask from a hit (and saves no entry from a
    computed image); a coco sink given an entry a jsonl run saved gets its RLE."""
    seg = segmenters["selfie-segmentation"]
    px = np.ascontiguousarray(skimage.data.astronaut())
    cache = ResultCache(SqliteStore(tmp_path / "c.sqlite3"))
    try:
        bare = SinkRun(tmp_path, "a", cache, "selfie-segmentation", masks=None)
        bare.computed(seg, "img", px)
        (rec,) = bare.end().values()
        cache.flush()
        assert rec["segmentation"]["mask"] is None and bare.lookup(HASH) is None
        jsonl = SinkRun(tmp_path, "b", cache, "selfie-segmentation")
        jsonl.computed(seg, "img", px)
        (computed,) = jsonl.end().values()
        hit = jsonl.lookup(HASH)
        coco = SinkRun(tmp_path, "c", cache, "selfie-segmentation", fmt="coco")
        coco.hit("img", hit)
        (cached,) = coco.end().values()
        bare2 = SinkRun(tmp_path, "d", cache, "selfie-segmentation", masks=None)
        bare2.hit("img", hit)
        (no_mask,) = bare2.end().values()
    finally:
        cache.close()
    assert no_mask["cached"] and no_mask["segmentation"]["mask"] is None
    assert no_mask["segmentation"]["classes"] == computed["segmentation"]["classes"]
    mask = np.asarray(Image.open(cached["segmentation"]["mask"]))
    mask_api = pytest.importorskip("pycocotools.mask")
    for c in cached["segmentation"]["classes"]:
        rle = dict(c["rle"], counts=c["rle"]["counts"].encode())
        assert np.array_equal(mask_api.decode(rle).astype(bool), mask == c["class_id"])
    assert [{k: v for k, v in c.items() if k != "rle"} for c in
            cached["segmentation"]["classes"]] == computed["segmentation"]["classes"]


def test_a_hit_that_cannot_be_written_or_has_no_mask_is_the_images_error(tmp_path):
    cache = ResultCache(SqliteStore(tmp_path / "c.sqlite3"))
    mask = mask_of(labels_map(), tmp_path)
    entry = _entry(mask)
    try:
        run = SinkRun(tmp_path, "a", cache, "selfie-segmentation")
        run.masks.parent.mkdir(parents=True)
        run.masks.write_text("a file where the masks folder should be")
        run.hit("x", entry)
        maskless = SinkRun(tmp_path, "b", cache, "selfie-segmentation")
        maskless.hit("x", _entry(None))
        coco = SinkRun(tmp_path, "c", cache, "selfie-segmentation", fmt="coco")
        lying = protocol.SegmentCached(png=mask.png, counts=(W * H,))  # rows say otherwise
        coco.hit("x", _entry(lying))
        recs = [r.end() for r in (run, maskless, coco)]
    finally:
        cache.close()
    types = [next(iter(r.values()))["error"]["type"] for r in recs]
    assert types == ["output_failed", "bad_result", "bad_result"]
    assert not (tmp_path / "c" / "masks").exists() or not any(
        (tmp_path / "c" / "masks").iterdir())  # a refused mask leaves no file


def test_a_mask_over_the_cap_is_not_saved_and_said_once(tmp_path, caplog):
    """A real PNG over MAX_CACHED_MASK_BYTES (noise does not compress): no entry, one
    info line; the next such mask is told at debug only."""
    from zmqvision.sink.saves import ResultSaver
    from zmqvision.tasks.segmentation import cache_data

    side = 2900  # 8.4 MB of random labels: over 8 MiB as a PNG
    labels = np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)
    path = tmp_path / "big.png"
    png_of(labels, path)
    assert path.stat().st_size > protocol.MAX_CACHED_MASK_BYTES
    counts = np.bincount(labels.ravel(), minlength=256)
    value = {"size": [side, side], "mask": str(path),
             "classes": [{"class_id": k, "pixels": int(c)} for k, c in enumerate(counts) if c]}
    with pytest.raises(ValueError, match="over"):
        cache_data(value, side, side)
    small = tmp_path / "small.png"
    png_of(labels_map(), small)
    value_small = {"mask": str(small), "classes": [
        {"class_id": k, "pixels": int(c)} for k, c in enumerate(np.bincount(
            labels_map().ravel())) if c]}
    assert bytes(cache_data(value_small, W, H).png) == small.read_bytes()

    cache = ResultCache(SqliteStore(tmp_path / "c.sqlite3"))
    try:
        run = SinkRun(tmp_path, "a", cache, "selfie-segmentation")
        job = run.sink.jobs["ja"]
        saver = ResultSaver(cache)
        info = protocol.ImageInfo(job="ja", image="i", path="p.png", seq=0, width=side,
                                  height=side, tiles=1, hash=HASH, secret=run.secret)
        img = job.announce(info)
        img.fields = {"segmentation": value}
        with caplog.at_level(logging.DEBUG, logger="zmqvision.sink"):
            saver.save(job, img, Detections.empty())
            saver.save(job, img, Detections.empty())
        assert cache.pending == 0 and saver.masks_not_kept == 2
        said = [r for r in caplog.records if "not kept" in r.getMessage()]
        assert [r.levelno for r in said] == [logging.INFO, logging.DEBUG]
        run.sink.close()
    finally:
        cache.close()
