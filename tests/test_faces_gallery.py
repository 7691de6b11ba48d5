"""The gallery on real stores (SQLite file, Redis server, Redis cluster): enrol, list,
remove, identify; the result cache's clear leaves it alone; unreadable entries are
skipped; and the `zmqvision faces` commands on real photos."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from zmqvision.faces.gallery import DEFAULT_THRESHOLD, Gallery, GalleryError, Person

pytestmark = pytest.mark.timeout(120)

DIM = 192


def _unit(rng, n=1):
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _near(v, rng, sim=0.8):
    """A unit vector whose cosine with unit ``v`` is ``sim``."""
    w = rng.normal(size=DIM)
    w -= (w @ v) * v
    w /= np.linalg.norm(w)
    return (sim * v + np.sqrt(1 - sim**2) * w).astype(np.float32)


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'faces.sqlite3'}"
    if request.param == "redis":
        return request.getfixturevalue("redis_server").url
    nodes = request.getfixturevalue("redis_cluster")
    return f"redis+cluster://127.0.0.1:{nodes[0].port}"


def test_enroll_list_identify_remove(url):
    rng = np.random.default_rng(1)
    gallery = Gallery.open(url)
    try:
        ada, bob = _unit(rng, 2), _unit(rng, 1)
        gallery.enroll("ada", ada[:1], {"photos": ["a1.jpg"]})
        gallery.enroll("ada", ada[1:] * 3.0, {"source": "x"})  # normalised on the way in
        gallery.enroll("bob", bob)
        people = gallery.enrolled()
        assert [p.name for p in people] == ["ada", "bob"]
        assert len(people[0].embeddings) == 2
        assert np.allclose(np.linalg.norm(people[0].embeddings, axis=1), 1.0)
        assert people[0].metadata == {"photos": ["a1.jpg"], "source": "x"}

        queries = np.stack([_near(ada[1], rng, 0.8), _near(bob[0], rng, 0.7),
                            _near(bob[0], rng, 0.3), _unit(rng)[0]])
        got = gallery.identify(queries)
        assert got[0][0] == "ada" and got[0][1] == pytest.approx(0.8, abs=1e-4)
        assert got[1][0] == "bob" and got[1][1] == pytest.approx(0.7, abs=1e-4)
        assert got[2] is None and got[3] is None  # below the default threshold
        assert gallery.identify(queries, threshold=0.25)[2][0] == "bob"

        # another process's enrolment is seen after refresh()
        other = Gallery.open(url)
        try:
            cy = _unit(rng)
            other.enroll("cy", cy)
            assert gallery.identify(cy)[0] is None
            gallery.refresh()
            assert gallery.identify(cy)[0][0] == "cy"
        finally:
            other.close()

        assert gallery.remove("bob") and not gallery.remove("bob")
        assert gallery.identify(bob)[0] is None
        assert [p.name for p in gallery.enrolled()] == ["ada", "cy"]
    finally:
        gallery.close()


def test_the_result_cache_clear_leaves_the_gallery(url):
    from zmqvision.cache import open_store

    rng = np.random.default_rng(2)
    gallery = Gallery.open(url)
    try:
        gallery.enroll("ada", _unit(rng))
        store = open_store(url)
        try:
            store.clear()
        finally:
            store.close()
        assert [p.name for p in gallery.enrolled()] == ["ada"]
    finally:
        gallery.close()


def test_unreadable_entries_are_skipped_not_fatal(tmp_path):
    gallery = Gallery.open(f"sqlite://{tmp_path / 'g.sqlite3'}")
    try:
        rng = np.random.default_rng(3)
        gallery.enroll("ada", _unit(rng))
        gallery.people.put("junk", b"\x93not msgpack of a person")
        gallery.people.put("pickle", b"\x80\x04\x95")  # never unpickled
        assert [p.name for p in gallery.enrolled()] == ["ada"]
        with pytest.raises(GalleryError):
            gallery.get("junk")
    finally:
        gallery.close()


def test_bad_input_is_refused(tmp_path):
    gallery = Gallery.open(f"sqlite://{tmp_path / 'g.sqlite3'}")
    try:
        rng = np.random.default_rng(4)
        for name in ("", "   ", "a\nb", "x" * 201):
            with pytest.raises(GalleryError):
                gallery.enroll(name, _unit(rng))
        with pytest.raises(GalleryError):
            gallery.enroll("ada", np.zeros((1, DIM)))
        with pytest.raises(GalleryError):
            gallery.enroll("ada", np.full((1, DIM), np.nan))
        gallery.enroll("ada", _unit(rng))
        with pytest.raises(GalleryError, match="192-d"):
            gallery.enroll("ada", np.ones((1, 128)))
        with pytest.raises(GalleryError, match="128-d"):
            gallery.identify(np.ones((1, 128)))
    finally:
        gallery.close()


def test_empty_gallery_and_in_memory_matrix():
    rng = np.random.default_rng(5)
    empty = Gallery(people=_NoPeople())
    assert empty.identify(_unit(rng, 3)) == [None, None, None]
    m = _unit(rng, 1000)
    g = Gallery(people=_NoPeople())
    g.load_matrix(m, [f"p{i // 2}" for i in range(0, 1000, 2)], np.arange(1000) // 2)
    got = g.identify(m[[10, 11, 999]])
    assert [x[0] for x in got] == ["p5", "p5", "p499"]
    assert 0.5 <= DEFAULT_THRESHOLD <= 0.7  # calibrated: docs/faces.md


def test_person_round_trip():
    p = Person("é名", np.eye(3, DIM, dtype=np.float32), {"k": [1, 2]}, 12.5)
    q = Person.decode(p.encode())
    assert q.name == p.name and np.array_equal(q.embeddings, p.embeddings)
    assert q.metadata == {"k": [1, 2]} and q.created == 12.5


class _NoPeople:
    url = "memory://"

    def items(self):
        return iter(())


# ---------------------------------------------------------------- the CLI


def test_cli_enroll_list_remove(tmp_path, models_ready):
    from PIL import Image

    from tests.faces_samples import astronaut
    from zmqvision.cli import cli

    photo, cup = tmp_path / "eileen.png", tmp_path / "coffee.png"
    Image.fromarray(astronaut()).save(photo)
    import skimage.data

    Image.fromarray(skimage.data.coffee()).save(cup)
    g = ["faces", "--gallery", f"sqlite://{tmp_path / 'g.sqlite3'}"]
    runner = CliRunner()
    r = runner.invoke(cli, [*g, "enroll", "Eileen Collins", str(photo), str(cup)])
    assert r.exit_code == 2, r.output
    assert "coffee.png: no face found" in r.output and "not enrolled" in r.output
    r = runner.invoke(cli, [*g, "list"])
    assert r.exit_code == 0 and "Eileen" not in r.output
    r = runner.invoke(cli, [*g, "enroll", "Eileen Collins", str(photo), str(photo)])
    assert r.exit_code == 0, r.output
    assert "2 embeddings" in r.output
    r = runner.invoke(cli, [*g, "list", "--json"])
    assert r.exit_code == 0 and '"name": "Eileen Collins", "embeddings": 2' in r.output
    r = runner.invoke(cli, [*g, "remove", "Eileen Collins"])
    assert r.exit_code == 0
    r = runner.invoke(cli, [*g, "remove", "Eileen Collins"])
    assert r.exit_code == 2 and "not enrolled" in r.output
    r = runner.invoke(cli, ["faces", "--gallery", "ftp://x", "list"])
    assert r.exit_code == 2 and "--gallery" in r.output
