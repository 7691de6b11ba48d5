"""Result records and the files they go to: JSONL as images complete, COCO at job end
(rewritten from a JSONL journal, see zmqvision.sink.output), annotated copies on request.

One record per input image, always: detections, or an error that says what went wrong.
Records are written the moment an image completes, so memory does not grow with the job
and a crash loses nothing already written. ``record_json`` is the one serialiser: a
record published to a caller is the same bytes as its line in the file. A results file
has one writer at a time (``JsonlWriter`` holds a ``flock`` on it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from zmqvision.boxes import Detections


def make_record(
    *,
    path: str,
    image_id: str,
    job: str,
    width: int,
    height: int,
    model: str,
    labels: list[str],
    detections: Detections | None,
    error: dict | None,
    content_hash: str | None = None,
    tiles: int = 0,
    settings: dict | None = None,
    cached: bool = False,
    frame: int | None = None,
    frames: int | None = None,
    task: str = "detection",
    extra: dict | None = None,
    time: float | None = None,
    per_detection: list[dict] | None = None,
) -> dict:
    """The JSONL record; field names are a public contract (README, docs/protocol.md).

    ``frame``/``frames``: which frame of a multi-frame file it is; a still image's record
    has neither field. ``task``: the job's (``zmqvision.tasks``); a classification record's
    ``detections`` is empty and ``extra`` (the task's ``record_fields``: ``labels``,
    ``grid``, ``embedding``) follows the common fields. A detection record is what it
    always was. ``per_detection``: a two-stage job's fields of each detection beside its
    label, score and box (``landmarks``, ``identity``: zmqvision.tasks.stage2)."""
    dets = []
    if error is None and detections is not None and task == "detection":
        for box, score, label in zip(
            detections.boxes.tolist(),
            detections.scores.tolist(),
            detections.labels.tolist(),
            strict=True,
        ):
            name = labels[label] if 0 <= label < len(labels) else f"class_{label}"
            dets.append({"label": name, "class_id": label, "score": score, "box": box})
        if per_detection is not None:
            for entry, fields in zip(dets, per_detection, strict=True):
                entry.update(fields)
    record = {
        "image": path,
        "width": width,
        "height": height,
        "model": model,
        "detections": dets,
        "error": error,
        "id": image_id,
        "hash": content_hash,
        "tiles": tiles,
        "job": job,
        "settings": settings,
        "cached": cached,
    }
    if extra:
        record.update(extra)
    if frame is not None:  # a frame of a multi-frame file, or of a video
        record["frame"] = frame
        if frames is not None:  # a live stream has no frame count
            record["frames"] = frames
        if time is not None:  # a video frame's presentation time, in seconds
            record["time"] = time
    return record


def read_jsonl(path: str | Path, *, skip_bad: bool = False) -> Iterator[dict]:
    """Records of a JSONL file. With ``skip_bad``, a line that is not a JSON object (the
    last line of a file whose writer was killed mid-write) is skipped instead of raising."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if skip_bad:
                    continue
                raise
            if isinstance(rec, dict):
                yield rec
            elif not skip_bad:
                raise ValueError(f"{path}: a line is not a JSON object")


def record_json(record: dict) -> bytes:
    """A record as one line of JSON, without the newline: the one serialiser for the
    results file and for records published to callers (``zv.record``), so both hold the
    same bytes. ASCII (non-ASCII and surrogate-escaped path characters are escaped)."""
    return _RECORD_ENCODER.encode(record).encode("ascii")


# What ``json.dumps(record, separators=(",", ":"))`` builds on every call, built once (it
# keeps no state between calls).
_RECORD_ENCODER = json.JSONEncoder(separators=(",", ":"))


class FileLocked(OSError):
    """The results file has a writer already (another sink or `zmqvision run`)."""


def lock_holder(fd: int) -> int | None:
    """The pid holding a ``flock`` on the open file ``fd``, read from ``/proc/locks``
    (Linux; the pid as this process's PID namespace sees it); None when it cannot be told.
    Matched by device and inode, or by inode alone where an overlay filesystem reports
    another device than ``stat`` does."""
    st = os.fstat(fd)
    exact = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    by_inode = None
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue  # a waiter, or a POSIX lock: not the holder of a flock
        try:
            pid = int(fields[4])
        except ValueError:
            continue
        if fields[5] == exact:
            return pid
        if fields[5].rsplit(":", 1)[-1] == str(st.st_ino):
            by_inode = pid
    return by_inode


def open_locked(path: Path, flags: int, option: str) -> tuple[int, bool]:
    """``(fd, created)``: ``path`` opened with ``flags`` (created if missing, never
    truncated) under an exclusive ``flock`` held for the fd's life (the kernel releases it
    when the process dies, even by SIGKILL). Another holder: ``FileLocked`` naming its pid,
    before anything is changed; ``option`` is the flag the user may change instead."""
    flags |= getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
        created = True
    except FileExistsError:
        fd = os.open(path, flags)
        created = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = lock_holder(fd)
        os.close(fd)
        who = f"process {pid}" if pid is not None else "another process"
        raise FileLocked(f"{path} is being written by {who} (a sink or `zmqvision run`); "
                         f"stop it or choose another {option}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd, created


class JsonlWriter:
    """Appends one line per record and flushes it: a reader (or a crash) sees whole lines.

    The file has one writer: an exclusive ``flock`` is held on it for the writer's life
    (released by the kernel when the process dies, even by SIGKILL). A second writer is
    refused with ``FileLocked`` naming the holder's pid (``lock_holder``) before anything
    is changed; opening never truncates by itself: with ``append`` false the file is
    emptied only after the lock is held, and a caller with more checks to pass (a sink
    that must bind first) opens with ``append=True`` and calls ``truncate`` afterwards.
    Writes go to the end (``O_APPEND``), also after a ``truncate`` or ``repair``."""

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # created: by this writer, so a caller that gives up may remove it
        fd, self.created = open_locked(self.path, os.O_WRONLY | os.O_APPEND, "--out")
        self._fh = os.fdopen(fd, "ab")
        if not append:
            self.truncate()

    def truncate(self) -> None:
        """Start the file afresh (the lock is held: nobody else is writing it)."""
        self._fh.flush()
        os.ftruncate(self._fh.fileno(), 0)

    def repair(self) -> None:
        """Cut a last line that a killed writer left half-written."""
        self._fh.flush()
        truncate_partial_line(self.path)

    def write(self, record: dict) -> None:
        self.write_line(record_json(record))

    def write_line(self, line: bytes) -> None:
        """One record already serialised by ``record_json``."""
        self._fh.write(line)
        self._fh.write(b"\n")  # two writes to the buffer, not a copy of the line
        self._fh.flush()

    def sync(self) -> None:
        """Make written records durable (before the sink tells anyone they are written)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()  # and with the descriptor, the lock


def truncate_partial_line(path: str | Path) -> None:
    """Cut a last line that has no newline: a record whose writing was interrupted."""
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        pos = size
        chunk = 1 << 16
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            data = fh.read(pos - start)
            nl = data.rfind(b"\n")
            if nl >= 0:
                fh.truncate(start + nl + 1)
                return
            pos = start
        fh.truncate(0)


def write_coco(records: Iterable[dict], labels: list[str], out: str | Path) -> None:
    """COCO detection results plus ``images`` and ``categories``, streamed to a temp file
    and renamed, so the output is whole or absent. Boxes become [x, y, w, h]; category ids
    start at 1 as COCO expects (``labels[i]`` is id ``i + 1``); failed images are listed
    under ``errors``. A record whose label is not ``labels[class_id]`` (another model's,
    from an earlier job of the same journal) gets the category of that name, appended
    after ``labels`` when there is none.

    A classification record's ``labels`` (image-level classes) become annotations too:
    ``bbox`` the whole image ``[0, 0, width, height]``, its ``score``, and
    ``"image_label": true`` to tell them from boxes (COCO has no image-level results
    format; this is the one tools that read ``bbox``/``score`` understand).

    A segmentation record's classes (those the sink encoded as RLE, ``--format coco``)
    become one annotation per class present: ``"segmentation": {"size": [h, w],
    "counts": ...}`` (pycocotools' compressed RLE), ``area`` its pixels and ``score``
    1.0 (a semantic mask has no score; COCO's evaluation wants one). No ``bbox``:
    pycocotools' ``loadRes`` computes it from the RLE.

    With ``--embed-file`` a classification record's embedding is a row of the ``.npy``
    sidecar: its COCO image entry carries ``"embedding_row"`` (the embedding is the
    image's, not one label's), and for a ``--tile`` grid ``"grid"``, each cut's ``box``
    and ``embedding_row`` in tile order. Embeddings inline in the records (``--embed``
    without ``--embed-file``) stay out of the COCO file: 1,280 numbers per image."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(labels)]
    by_name: dict[str, int] = {}
    for c in categories:
        by_name.setdefault(c["name"], c["id"])

    def category(d: dict) -> int:
        cid = d["class_id"]
        if 0 <= cid < len(labels) and labels[cid] == d["label"]:
            return cid + 1
        found = by_name.get(d["label"])
        if found is None:
            found = by_name[d["label"]] = len(categories) + 1
            categories.append({"id": found, "name": d["label"]})
        return found

    images, annotations, errors = [], [], []
    ann_id = 0
    for img_id, rec in enumerate(records, start=1):
        images.append(
            {"id": img_id, "file_name": rec["image"], "width": rec["width"],
             "height": rec["height"]}
        )
        if rec.get("frames") is not None:  # one COCO image per frame of the file
            images[-1].update(frame=rec.get("frame"), frames=rec["frames"])
        images[-1].update(_embedding_rows(rec))
        if rec["error"] is not None:
            errors.append({"image_id": img_id, "file_name": rec["image"], **rec["error"]})
        for d in rec["detections"]:
            ann_id += 1
            x1, y1, x2, y2 = d["box"]
            annotations.append(
                {"id": ann_id, "image_id": img_id, "category_id": category(d),
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                 "score": d["score"], "iscrowd": 0}
            )
        for d in rec.get("labels") or ():  # a classification: image-level classes
            ann_id += 1
            w, h = rec["width"], rec["height"]
            annotations.append(
                {"id": ann_id, "image_id": img_id, "category_id": category(d),
                 "bbox": [0, 0, w, h], "area": w * h, "score": d["score"], "iscrowd": 0,
                 "image_label": True}
            )
        seg = rec.get("segmentation") or {}
        for c in seg.get("classes") or ():
            if "rle" not in c:
                continue
            ann_id += 1
            annotations.append(
                {"id": ann_id, "image_id": img_id, "category_id": category(c),
                 "segmentation": c["rle"], "area": c["pixels"], "score": 1.0, "iscrowd": 0}
            )
    fd, tmp = tempfile.mkstemp(prefix=out.name, dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write('{"info":{"description":"zmqvision results"},"categories":')
            fh.write(json.dumps(categories))
            fh.write(',"images":' + json.dumps(images))
            fh.write(',"annotations":' + json.dumps(annotations))
            fh.write(',"errors":' + json.dumps(errors) + "}")
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _embedding_rows(rec: dict) -> dict:
    """A classification record's ``--embed-file`` rows, as its COCO image entry says
    them: ``embedding_row``, and ``grid`` (each cut's ``box`` and row) for a tiled one;
    {} without rows (no --embed-file, or vectors kept inline)."""
    out = {}
    if "embedding_row" in rec:
        out["embedding_row"] = rec["embedding_row"]
    grid = [{"box": g.get("box"), "embedding_row": g["embedding_row"]}
            for g in rec.get("grid") or () if isinstance(g, dict) and "embedding_row" in g]
    if grid:
        out["grid"] = grid
    return out


def label_font(image_size: tuple[int, int]):
    """A font for detection labels that grows with the image: about 1/60 of its larger
    side (a 4000x3000 photo gets 66 px, a 640x480 one 12 px), never under 11 px. Pillow's
    own scalable font; its fixed bitmap font where FreeType is missing."""
    from PIL import ImageFont

    size = max(11, round(max(image_size) / 60))
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # an old Pillow, or one without FreeType
        return ImageFont.load_default()


def draw_record(record: dict, source: str, out_dir: str | Path) -> Path | None:
    """An annotated copy of one image (Pillow); None when the source cannot be read here
    (a sink on another host than the files) or the image failed."""
    from PIL import Image, ImageDraw, ImageOps

    if record["error"] is not None:
        return None
    try:
        with Image.open(source) as im:
            if record.get("frame"):
                im.seek(record["frame"])
            im = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, EOFError):
        return None
    im = _blend_mask(im, (record.get("segmentation") or {}).get("mask"))
    draw = ImageDraw.Draw(im)
    width = max(2, round(max(im.size) / 500))
    font = label_font(im.size)
    size = font.size if hasattr(font, "size") else 11
    for d in record["detections"]:
        x1, y1, x2, y2 = d["box"]
        draw.rectangle([x1, y1, x2, y2], outline=(255, 40, 40), width=width)
        caption = f"{d['label']} {d['score']:.2f}"
        # Above the box (inside it at the top edge), on a dark band so it reads on any photo.
        top = y1 - size - 2 * width if y1 >= size + 2 * width else y1 + width
        left, t, right, bottom = draw.textbbox((x1 + width, top), caption, font=font)
        draw.rectangle([left - width, t - width, right + width, bottom + width],
                       fill=(0, 0, 0))
        draw.text((x1 + width, top), caption, fill=(255, 80, 80), font=font)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = f"-frame{record['frame']}" if record.get("frames") is not None else ""
    dest = out_dir / f"{Path(record['image']).stem}{frame}-{record['id'][:8]}.jpg"
    im.save(dest, quality=90)
    return dest


def _blend_mask(im, mask_path: str | None, alpha: float = 0.5):
    """``im`` with a segmentation's palette mask blended over it (class colours at
    ``alpha``, background left as it was); ``im`` itself without a readable mask."""
    import numpy as np
    from PIL import Image

    if not mask_path:
        return im
    try:
        with Image.open(mask_path) as m:
            if m.size != im.size or m.mode != "P":
                return im
            m.load()
            colours = m.convert("RGB")
            # Background (label 0) keeps the photo as it is.
            keep = Image.fromarray(np.where(np.asarray(m) == 0, 255, 0).astype(np.uint8), "L")
    except (OSError, EOFError):
        return im
    blended = Image.blend(im, colours, alpha)
    blended.paste(im, mask=keep)
    return blended
