"""``--embed-file``: embeddings in a float32 ``.npy`` sidecar beside the records (written,
locked, synced and continued with the journal), and the embeddings of result-cache
entries and cached ``zv.image`` messages. No processes: the pipeline is
tests/integration/test_embed_cache.py."""

from __future__ import annotations

import json
import os

import msgpack
import numpy as np
import pytest

from zmqvision import protocol as P
from zmqvision import results
from zmqvision.boxes import Detections
from zmqvision.cache import open_cache
from zmqvision.cache.entry import Entry, EntryError, decode, encode
from zmqvision.plan import JobPlan, JobSettings
from zmqvision.sink import Sink, SinkConfig
from zmqvision.sink.embeddings_file import HEADER_BYTES, EmbeddingsFile, header, read_header
from zmqvision.sink.journal import Journal

MODEL = "efficientnet-lite0"
pytestmark = pytest.mark.timeout(30)


def vec(i: float, d: int = 8) -> np.ndarray:
    return np.linspace(i, i + 1, d, dtype=np.float32)


# ---------------------------------------------------------------- the sidecar


def test_rows_read_back_with_numpy_mmap(tmp_path):
    path = tmp_path / "e.npy"
    f = EmbeddingsFile(path)
    f.open(keep=False)
    assert np.load(path, mmap_mode="r").shape == (0, 0)  # a valid empty array at once
    assert [f.append(vec(i)) for i in range(3)] == [0, 1, 2]
    assert np.load(path, mmap_mode="r").shape == (0, 8)  # rows count once synced
    f.sync()
    arr = np.load(path, mmap_mode="r")
    assert arr.dtype == np.float32 and arr.shape == (3, 8)
    assert np.array_equal(arr[1], vec(1))
    assert f.append(np.ones(5, np.float32)) is None  # another length: not in this file
    f.close()
    assert os.path.getsize(path) == HEADER_BYTES + 3 * 8 * 4
    assert np.array_equal(np.load(path)[2], vec(2))  # no pickle: allow_pickle stays off


def test_continued_file_counts_rows_from_its_size_and_cuts_a_partial_row(tmp_path):
    path = tmp_path / "e.npy"
    f = EmbeddingsFile(path)
    f.open(keep=False)
    for i in range(2):
        f.append(vec(i))
    f.sync()
    f.append(vec(2))  # written, never synced: the header still says 2
    os.pwrite(f.fd, b"\0" * 5, os.fstat(f.fd).st_size)  # half a row: a crash mid-write
    os.close(f.fd)  # the process dies: no close(), no sync
    f.fd = -1
    again = EmbeddingsFile(path)
    assert again.present() == (3, 8)
    again.open(keep=True)
    assert again.append(vec(3)) == 3
    again.close()
    arr = np.load(path, mmap_mode="r")
    assert arr.shape == (4, 8) and all(np.array_equal(arr[i], vec(i)) for i in range(4))
    fresh = EmbeddingsFile(path)
    fresh.open(keep=False)  # --overwrite: afresh
    fresh.close()
    assert np.load(path).shape == (0, 0)


def test_a_second_writer_is_refused_and_a_failed_start_leaves_nothing(tmp_path):
    path = tmp_path / "e.npy"
    first = Journal(str(tmp_path / "a.jsonl"), keep=False, embed_file=str(path))
    with pytest.raises(results.FileLocked, match=f"process {os.getpid()}.*--embed-file"):
        Journal(str(tmp_path / "b.jsonl"), keep=False, embed_file=str(path))
    assert not (tmp_path / "b.jsonl").exists()  # the refused journal left nothing
    first.close()  # never opened: the files it created go
    assert not path.exists() and not (tmp_path / "a.jsonl").exists()


def test_a_file_that_is_not_our_array_is_refused_on_continuing(tmp_path):
    path = tmp_path / "e.npy"
    np.save(path, np.zeros((2, 3), np.float64))
    f = EmbeddingsFile(path)
    with pytest.raises(ValueError, match="zmqvision|float32"):
        f.open(keep=True)
    f.close()


def test_a_header_is_matched_never_evaluated(tmp_path):
    """Our own header reads back; a header of our length holding anything else (another
    shape form, an expression) is refused as it stands, nothing in it evaluated."""
    assert read_header(header(7, 1280)) == (7, 1280)
    ours = header(7, 1280)
    for body in (b"{'descr': '<f4', 'fortran_order': False, 'shape': (7, 1280, 1), }",
                 b"{'descr': '<f4', 'fortran_order': False, 'shape': (7, 2**99), }",
                 b"__import__('os').system('false')"):
        hostile = ours[:10] + body.ljust(HEADER_BYTES - 11) + b"\n"
        assert len(hostile) == HEADER_BYTES
        with pytest.raises(ValueError, match="zmqvision writes it"):
            read_header(hostile)


def _journal_lines(path, rows):
    with open(path, "w") as fh:
        for k in rows:
            rec = {"job": "j", "id": f"i{k}", "error": None, "detections": []}
            if k is not None:
                rec["embedding_row"] = k
            fh.write(json.dumps(rec) + "\n")


def test_records_whose_rows_were_lost_are_cut_from_the_journal(tmp_path):
    out, npy = tmp_path / "r.jsonl", tmp_path / "e.npy"
    f = EmbeddingsFile(npy)
    f.open(keep=False)
    for i in range(3):
        f.append(vec(i))
    f.close()
    _journal_lines(out, [None, 0, 1, 2, 3, 4])  # rows 3 and 4 did not survive
    j = Journal(str(out), keep=True, embed_file=str(npy))
    j.open()
    assert j.counts["j"].done == 4 and not j.has("j", "i3") and j.has("j", "i2")
    j.close()
    assert [json.loads(x).get("embedding_row") for x in out.read_text().splitlines()] == \
        [None, 0, 1, 2]


def test_records_naming_rows_of_an_empty_sidecar_are_refused_not_cut(tmp_path):
    out, npy = tmp_path / "r.jsonl", tmp_path / "new.npy"
    _journal_lines(out, [0, 1])
    before = out.read_bytes()
    j = Journal(str(out), keep=True, embed_file=str(npy))
    with pytest.raises(ValueError, match="--embed-file they were written to"):
        j.open()
    j.close()
    assert out.read_bytes() == before and not npy.exists()


def _rows_then_die(npy, n, synced):
    """A sink killed after writing ``n`` rows (``synced`` of them synced): no close()."""
    f = EmbeddingsFile(npy)
    f.open(keep=False)
    for i in range(n):
        f.append(vec(i))
        if i + 1 == synced:
            f.sync()
    os.close(f.fd)
    f.fd = -1


@pytest.mark.parametrize("synced", [5, 3])
def test_orphan_rows_past_the_records_are_reclaimed_on_continuing(tmp_path, caplog, synced):
    """Rows 3 and 4 were written, their records never reached the journal (the sink died
    in between, before or after the rows' sync): continuing cuts them, the next row is 3,
    and no record's row changes."""
    out, npy = tmp_path / "r.jsonl", tmp_path / "e.npy"
    _rows_then_die(npy, 5, synced)
    _journal_lines(out, [None, 0, 1, 2])
    before = out.read_bytes()
    j = Journal(str(out), keep=True, embed_file=str(npy))
    j.open()
    assert "2 embedding rows past the last one its records name" in caplog.text
    assert out.read_bytes() == before  # every record kept, as it was
    arr = np.load(npy, mmap_mode="r")
    assert arr.shape == (3, 8) and all(np.array_equal(arr[i], vec(i)) for i in range(3))
    assert os.path.getsize(npy) == HEADER_BYTES + 3 * 8 * 4
    assert j.embeddings.append(vec(9)) == 3  # the first free row: the one after the records'
    j.close()
    arr = np.load(npy)
    assert arr.shape == (4, 8) and np.array_equal(arr[3], vec(9))
    assert all(np.array_equal(arr[i], vec(i)) for i in range(3))


def test_a_records_file_that_names_no_row_reclaims_them_all(tmp_path):
    """The sink died after the first row, before any record naming one (an error record
    only): every row is an orphan; the file is an empty array again."""
    out, npy = tmp_path / "r.jsonl", tmp_path / "e.npy"
    _rows_then_die(npy, 2, 2)
    _journal_lines(out, [None])
    j = Journal(str(out), keep=True, embed_file=str(npy))
    j.open()
    assert np.load(npy).shape == (0, 0)
    assert j.embeddings.append(vec(0, d=4)) == 0  # any length again: no row fixes it
    j.close()
    assert np.load(npy).shape == (1, 4)
    out.write_bytes(b"")  # an empty records file too (it existed: the sink made it)
    j = Journal(str(out), keep=True, embed_file=str(npy))
    j.open()
    j.close()
    assert np.load(npy).shape == (0, 0)


def test_lost_records_then_orphan_rows_in_one_continuation(tmp_path):
    """A power loss kept the record of row 3 and lost the row: that record (and the tail
    after it) is cut; then, with row 2's record gone too, row 2 is an orphan."""
    out, npy = tmp_path / "r.jsonl", tmp_path / "e.npy"
    _rows_then_die(npy, 3, 3)
    _journal_lines(out, [0, 1, None, 2, 3, None])
    j = Journal(str(out), keep=True, embed_file=str(npy))
    j.open()
    j.close()
    assert [json.loads(x).get("embedding_row") for x in out.read_text().splitlines()] == \
        [0, 1, None, 2]
    assert np.load(npy).shape == (3, 8)
    _journal_lines(out, [0, 1])
    j = Journal(str(out), keep=True, embed_file=str(npy))
    j.open()
    assert np.load(npy).shape == (2, 8) and j.embeddings.append(vec(5)) == 2
    j.close()


def test_rows_without_their_records_file_are_refused_not_cut(tmp_path):
    """A records file that did not exist: the rows are another results file's (or its
    records were lost), not orphans; nothing is cut and the new file goes again."""
    npy = tmp_path / "e.npy"
    _rows_then_die(npy, 2, 2)
    before = npy.read_bytes()
    j = Journal(str(tmp_path / "new.jsonl"), keep=True, embed_file=str(npy))
    with pytest.raises(ValueError, match="2 embedding rows and .*new.jsonl did not exist"):
        j.open()
    j.close()
    assert npy.read_bytes() == before and not (tmp_path / "new.jsonl").exists()


# ---------------------------------------------------------------- the sink


def embed_job(**settings) -> P.JobStart:
    return JobPlan(JobSettings(model=MODEL, embed=True, **settings)).job_start("j")


def result(index: int, emb: np.ndarray, box=(0.0, 0.0, 10.0, 10.0)) -> P.Result:
    dets = Detections.of([box] * 5, np.linspace(0.5, 0.1, 5), np.arange(5))
    return P.Result(job="j", image="i", index=index, worker="w", model=f"{MODEL}@1.0.0",
                    detections=dets, embedding=emb)


class Published(list):
    def __call__(self, frames):
        self.append(P.decode(frames))


def sink(tmp_path, **config) -> tuple[Sink, Published]:
    pub = Published()
    cfg = SinkConfig(out=str(tmp_path / "r.jsonl"), cache=None, **config)
    return Sink(cfg, pub, cache=config.pop("cache", None)), pub


def test_sink_writes_rows_synced_before_the_records_and_keeps_lists_without_a_file(tmp_path):
    npy = tmp_path / "e.npy"
    s, pub = sink(tmp_path, embed_file=str(npy))
    start = embed_job()
    s.handle(P.encode(start))
    for k in range(2):
        s.handle(P.encode(P.ImageInfo(job="j", image=f"i{k}", path=f"p{k}.jpg", seq=k,
                                      width=10, height=10, tiles=1, secret=start.secret)))
        r = result(0, vec(k))
        s.handle(P.encode(P.Result(**{**r.__dict__, "image": f"i{k}"})))
    recs = list(results.read_jsonl(tmp_path / "r.jsonl"))
    assert [r["embedding_row"] for r in recs] == [0, 1] and "embedding" not in recs[0]
    s.flush_acks(force=True)  # the acks' sync: the sidecar first, then the records
    assert any(isinstance(m, P.Ack) and m.images for m in pub)
    arr = np.load(npy, mmap_mode="r")
    assert arr.shape == (2, 8)
    for rec in recs:
        assert np.array_equal(arr[rec["embedding_row"]], vec(int(rec["id"][1:])))
    s.close()


def test_a_grid_record_names_one_row_per_tile(tmp_path):
    npy = tmp_path / "e.npy"
    s, _ = sink(tmp_path, embed_file=str(npy))
    start = embed_job(tile_size=(5, 5))
    s.handle(P.encode(start))
    s.handle(P.encode(P.ImageInfo(job="j", image="i", path="p.jpg", seq=0, width=10,
                                  height=5, tiles=2, secret=start.secret)))
    s.handle(P.encode(result(1, vec(1), box=(5.0, 0.0, 10.0, 5.0))))
    s.handle(P.encode(result(0, vec(0), box=(0.0, 0.0, 5.0, 5.0))))
    s.close()
    (rec,) = results.read_jsonl(tmp_path / "r.jsonl")
    arr = np.load(npy)
    assert [arr[g["embedding_row"]][0] for g in rec["grid"]] == [0.0, 1.0]  # tile order


# ---------------------------------------------------------------- the cache


def test_entry_keeps_embeddings_and_old_entries_still_read(tmp_path):
    dets = Detections.of([[0, 0, 1, 1]], [0.5], [3])
    embs = np.stack([vec(0), vec(1)])
    e = Entry(key="k", model="m@1", width=2, height=2, tiles=2, detections=dets,
              embeddings=embs)
    back = decode(encode(e), "k")
    assert back.embeddings.dtype == np.float32 and np.array_equal(back.embeddings, embs)
    old = msgpack.unpackb(encode(e))
    del old["emb"], old["embs"]  # what a version before embeddings wrote
    assert decode(msgpack.packb(old, use_bin_type=True), "k").embeddings is None
    for shape, data in [([3, 8], old_embs := embs.tobytes()), ([2, 9], old_embs),
                        ([2, 8], np.full((2, 8), np.nan, np.float32).tobytes())]:
        bad = {**old, "emb": shape, "embs": data}
        with pytest.raises(EntryError):
            decode(msgpack.packb(bad, use_bin_type=True), "k")


def test_an_embed_lookup_misses_an_entry_without_embeddings(tmp_path):
    cache = open_cache(f"sqlite://{tmp_path / 'c.db'}")
    dets = Detections.of([[0, 0, 1, 1]], [0.5], [3])
    cache.save("s", "blake2b:aa", model="m@1", width=1, height=1, tiles=1, detections=dets)
    cache.save("s", "blake2b:bb", model="m@1", width=1, height=1, tiles=1, detections=dets,
               embeddings=vec(0)[None])
    cache.flush()
    assert cache.lookup("s", "blake2b:aa", "m@1", embeddings=True) is None
    hit = cache.lookup("s", "blake2b:bb", "m@1", embeddings=True)
    assert np.array_equal(hit.embeddings, vec(0)[None])
    cache.close()


def test_cached_image_carries_its_embeddings_on_the_wire_and_into_the_record(tmp_path):
    dets = Detections.of([[0, 0, 10, 10]] * 5, np.linspace(0.5, 0.1, 5), np.arange(5))
    info = P.ImageInfo(job="j", image="i", path="p.jpg", seq=0, width=10, height=10,
                       cached=P.Cached(tiles=1, detections=dets, embeddings=vec(7)[None]))
    frames = P.encode(info)
    back = P.decode(frames)
    assert np.array_equal(back.cached.embeddings, vec(7)[None])
    h = msgpack.unpackb(frames[1])
    for shape in ([2, 8], [1, 9], [1], [1, 0], "x"):
        h["cached"]["embed"] = shape
        with pytest.raises(P.ProtocolError):
            P.decode([frames[0], msgpack.packb(h), *frames[2:]])
    with pytest.raises(P.ProtocolError, match="non-finite"):
        P.decode([*frames[:-1], np.full(8, np.inf, np.float32).tobytes()])
    # The sink writes the cached record with the entry's vector, in the list or a row.
    for embed_file in (None, str(tmp_path / "e.npy")):
        s, _ = sink(tmp_path / str(embed_file is None), embed_file=embed_file)
        start = embed_job()
        s.handle(P.encode(start))
        s.handle(P.encode(P.ImageInfo(**{**info.__dict__, "secret": start.secret})))
        s.close()
        (rec,) = results.read_jsonl(tmp_path / str(embed_file is None) / "r.jsonl")
        assert rec["cached"] is True and len(rec["labels"]) == 5
        got = rec["embedding"] if embed_file is None else np.load(embed_file)[
            rec["embedding_row"]]
        assert np.array_equal(np.asarray(got, np.float32), vec(7))
