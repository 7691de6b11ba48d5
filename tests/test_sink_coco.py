"""``--format coco`` with several jobs and across a restart: the COCO file is rewritten
from a JSONL journal beside it at each job end, holding every image."""

from __future__ import annotations

import json
import os

import numpy as np

from tests.test_embed_file import MODEL as EMBED_MODEL
from tests.test_embed_file import result as embed_result
from tests.test_embed_file import vec
from tests.test_sink import MERGE, MODEL, Harness, result
from zmqvision import protocol as P
from zmqvision.plan import JobPlan, JobSettings
from zmqvision.sink import Sink, SinkConfig
from zmqvision.sink.embeddings_file import EmbeddingsFile

OTHER = {"ref": "other@1", "labels": ["plate", "dog"], "name": "other"}


def job(h, job_id, name, label, model=MODEL, seq=0):
    h.send(P.JobStart(job=job_id, model=model, tiling={}, merge=MERGE))
    h.send(P.ImageInfo(job=job_id, image=name, path=f"{name}.jpg", seq=seq, width=10,
                       height=10, tiles=1))
    h.send(result(name, 0, [[1, 2, 5, 8]], [0.75], [label], model=model["ref"], job=job_id))
    h.send(P.JobEnd(job=job_id, images=1, tiles=1))


def coco(h):
    return json.loads(h.out.read_text())


def test_several_jobs_add_up_in_one_coco_file(tmp_path):
    h = Harness(tmp_path, fmt="coco")
    job(h, "j1", "a", 0)
    assert [i["file_name"] for i in coco(h)["images"]] == ["a.jpg"]
    job(h, "j2", "b", 1)
    c = coco(h)
    assert [i["file_name"] for i in c["images"]] == ["a.jpg", "b.jpg"]
    assert [a["category_id"] for a in c["annotations"]] == [1, 2]
    assert [d.out for d in h.done()] == [os.path.abspath(h.out)] * 2


def test_another_models_labels_get_their_own_categories(tmp_path):
    h = Harness(tmp_path, fmt="coco")
    job(h, "j1", "a", 0)  # cat
    job(h, "j2", "b", 0, model=OTHER)  # plate: categories of the last job first
    c = coco(h)
    names = {cat["id"]: cat["name"] for cat in c["categories"]}
    assert names == {1: "plate", 2: "dog", 3: "cat"}
    assert [names[a["category_id"]] for a in c["annotations"]] == ["cat", "plate"]


def test_a_restarted_sink_continues_the_coco_file_from_its_journal(tmp_path):
    h = Harness(tmp_path, fmt="coco")
    job(h, "j1", "a", 0)
    h.sink.close()
    h2 = Harness(tmp_path, fmt="coco", append=True)
    job(h2, "j2", "b", 1)
    assert [i["file_name"] for i in coco(h2)["images"]] == ["a.jpg", "b.jpg"]
    # j1 again (its ventilator did not hear JobDone): its image is acked, not added again.
    job(h2, "j1", "a", 0)
    h2.sink.flush_acks(force=True)
    assert [i["file_name"] for i in coco(h2)["images"]] == ["a.jpg", "b.jpg"]
    journal = tmp_path / "out.json.journal.jsonl"
    assert [json.loads(x)["id"] for x in journal.read_text().splitlines()] == ["a", "b"]
    h2.sink.close()


def test_forged_jobs_open_no_files(tmp_path):
    h = Harness(tmp_path, fmt="coco")
    before = len(os.listdir("/proc/self/fd"))
    for i in range(200):
        h.send(P.JobStart(job=f"forged{i}", model=MODEL, tiling={}, merge=MERGE))
    assert len(os.listdir("/proc/self/fd")) <= before
    h.sink.close()


# ------------------------------------------------ classification embeddings (--embed)


def embed_coco_sink(tmp_path, embed_file, append=False) -> Sink:
    cfg = SinkConfig(out=str(tmp_path / "out.json"), format="coco", cache=None,
                     append=append, embed_file=embed_file and str(embed_file))
    return Sink(cfg, lambda frames: None)


def embed_images(s: Sink, job: str, vectors: list, **settings) -> None:
    """One ``--embed`` job of an image per vector (a list of vectors: one image of that
    many tiles, 5 px wide each), its records written as the sink builds them."""
    start = JobPlan(JobSettings(model=EMBED_MODEL, embed=True, **settings)).job_start(job)
    s.handle(P.encode(start))
    tiles = 0
    for k, v in enumerate(vectors):
        cuts = v if isinstance(v, list) else [v]
        s.handle(P.encode(P.ImageInfo(job=job, image=f"{job}-{k}", path=f"{job}-{k}.jpg",
                                      seq=k, width=5 * len(cuts), height=5, tiles=len(cuts),
                                      secret=start.secret)))
        for i, cut in enumerate(cuts):
            r = embed_result(i, cut, box=(5.0 * i, 0.0, 5.0 * i + 5, 5.0))
            s.handle(P.encode(P.Result(**{**r.__dict__, "job": job, "image": f"{job}-{k}"})))
        tiles += len(cuts)
    s.handle(P.encode(P.JobEnd(job=job, images=len(vectors), tiles=tiles,
                               secret=start.secret)))


def test_coco_images_name_their_embedding_rows_across_a_restart(tmp_path):
    """Each COCO image entry says its ``embedding_row``; a restarted sink reclaims the row
    a dead sink wrote without its record (the journal beside the COCO file is what it
    continues), so the next image's row follows the records' and the COCO file's."""
    npy = tmp_path / "e.npy"
    s = embed_coco_sink(tmp_path, npy)
    embed_images(s, "j1", [vec(0), vec(1)])
    s.close()
    c = json.loads((tmp_path / "out.json").read_text())
    assert [i["embedding_row"] for i in c["images"]] == [0, 1]
    assert all(a["image_label"] for a in c["annotations"]) and len(c["annotations"]) == 10
    orphan = EmbeddingsFile(npy)  # a sink that died after the row, before the record
    orphan.open(keep=True)
    assert orphan.append(vec(7)) == 2
    orphan.close()
    s = embed_coco_sink(tmp_path, npy, append=True)
    embed_images(s, "j2", [vec(2)])
    s.close()
    c = json.loads((tmp_path / "out.json").read_text())
    assert [i["embedding_row"] for i in c["images"]] == [0, 1, 2]
    arr = np.load(npy)
    assert arr.shape == (3, 8) and all(np.array_equal(arr[i], vec(i)) for i in range(3))


def test_coco_tiled_images_name_each_cuts_row_and_inline_vectors_stay_out(tmp_path):
    s = embed_coco_sink(tmp_path / "rows", tmp_path / "e.npy")
    embed_images(s, "j", [[vec(0), vec(1)]], tile_size=(5, 5))
    s.close()
    (img,) = json.loads((tmp_path / "rows" / "out.json").read_text())["images"]
    assert img["grid"] == [{"box": [0, 0, 5, 5], "embedding_row": 0},
                           {"box": [5, 0, 10, 5], "embedding_row": 1}]
    assert "embedding_row" not in img
    s = embed_coco_sink(tmp_path / "inline", None)  # --embed without --embed-file
    embed_images(s, "j", [vec(0)])
    embed_images(s, "t", [[vec(1), vec(2)]], tile_size=(5, 5))
    s.close()
    c = json.loads((tmp_path / "inline" / "out.json").read_text())
    assert [set(i) for i in c["images"]] == [{"id", "file_name", "width", "height"}] * 2
    assert "embedding" not in json.dumps(c)
    journal = (tmp_path / "inline" / "out.json.journal.jsonl").read_text().splitlines()
    one, tiled = map(json.loads, journal)  # the records keep them
    assert one["error"] is None and len(one["embedding"]) == 8
    assert tiled["error"] is None and [len(g["embedding"]) for g in tiled["grid"]] == [8, 8]
