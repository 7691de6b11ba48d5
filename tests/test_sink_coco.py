"""``--format coco`` with several jobs and across a restart: the COCO file is rewritten
from a JSONL journal beside it at each job end, holding every image."""

from __future__ import annotations

import json
import os

from tests.test_sink import MERGE, MODEL, Harness, result
from zmqvision import protocol as P

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
