"""A Pool that starts its own workers knows the models they serve: a call needing another
is refused at once, and a Pool opened with a second stage starts workers that run it.

Tiles go only to workers that serve their model (docs/protocol.md, "Which worker gets a
tile"), so without these a call naming a model no worker serves would wait for ever."""

from __future__ import annotations

import pytest

from tests.faces_samples import astronaut
from zmqvision import Pool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_a_call_for_a_model_its_workers_do_not_serve_is_refused(models_ready, tmp_path):
    with Pool(model="centerface", cache=None) as pool:
        with pytest.raises(ValueError, match="serve centerface@.*not the model "
                                             "blazeface-short@"):
            pool.submit(astronaut(), model="blazeface-short")
        with pytest.raises(ValueError, match="not the second stage \\(identify\\) "
                                             "mobilefacenet@"):
            pool.submit(astronaut(), stage2="identify", gallery=str(tmp_path / "g.sqlite3"))
        record = pool.submit(astronaut()).result(timeout=60)  # its own model still works
        assert record["error"] is None and record["detections"]


def test_a_pool_with_a_second_stage_starts_workers_that_run_it(models_ready, tmp_path):
    gallery = str(tmp_path / "faces.sqlite3")
    with Pool(model="centerface", stage2="identify", gallery=gallery, cache=None) as pool:
        record = pool.submit(astronaut()).result(timeout=120)
    assert record["error"] is None, record["error"]
    faces = record["detections"]
    assert faces and all("identity" in f and f["identity"] is None for f in faces)
    assert all(len(f["landmarks"]) == 5 for f in faces)
