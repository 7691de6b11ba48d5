"""``zmqvision train`` for real: efficientnet-lite0 embeddings of real pictures (the
textures and faces shipped in scikit-image's wheel), the head trained over 1, 2 and 3
worker processes (and with one SIGKILLed mid-epoch) equal to the single-process
reference, learning well above chance, and the exported IR giving the head's labels
through ``zmqvision run``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zmqvision import Pool
from zmqvision.cache.embeddings import EmbeddingStore, backbone_name
from zmqvision.models import catalog
from zmqvision.train import head
from zmqvision.train.data import Standardizer, class_weights, walk
from zmqvision.train.embed import BACKBONE, embed_paths
from zmqvision.train.master import PoolGradients
from zmqvision.train.trainer import Examples, HeadConfig, HeadTrainer, LocalGradients

ROOT = Path(__file__).resolve().parents[2]
TEXTURES = ("brick", "grass", "gravel")
SHARDS = 7
CONFIG = HeadConfig(hidden=16, epochs=2, batch=16, lr=0.01, shards=SHARDS, seed=3)


def write_textures(out: Path, per_class: int = 40, side: int = 96, seed: int = 0) -> Path:
    """Random crops of scikit-image's brick, grass and gravel (512² grey pictures)."""
    from skimage import data

    rng = np.random.default_rng(seed)
    for name in TEXTURES:
        img = getattr(data, name)()
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            y, x = rng.integers(0, img.shape[0] - side, 2)
            Image.fromarray(img[y:y + side, x:x + side]).convert("RGB").save(
                out / name / f"{i:03d}.jpg", quality=90)
    return out


def write_faces(out: Path) -> Path:
    """lfw_subset.npy: 100 face and 100 non-face 25² crops."""
    import skimage

    crops = np.load(Path(skimage.__file__).parent / "data" / "lfw_subset.npy")
    for i, crop in enumerate(crops):
        label = "face" if i < 100 else "other"
        (out / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray((crop * 255).astype(np.uint8)).convert("RGB").save(
            out / label / f"{i:03d}.png")
    return out


@pytest.fixture(scope="module")
def textures(tmp_path_factory) -> Path:
    return write_textures(tmp_path_factory.mktemp("textures"))


@pytest.fixture(scope="module")
def examples(textures, tmp_path_factory, models_ready):
    """The textures' standardised embeddings (computed on a one-worker pool)."""
    found = walk(str(textures))
    with Pool(model=BACKBONE, workers=1, cache=None) as pool:
        got = embed_paths(pool, found.paths, None, "test")
    assert got.ok.all() and got.computed == len(found.paths)
    x = Standardizer.fit(got.vectors)(got.vectors)
    return Examples(x, found.y), class_weights(found.y, len(TEXTURES))


@pytest.fixture(scope="module")
def reference(examples):
    data, cw = examples
    return HeadTrainer(data, len(TEXTURES), CONFIG, LocalGradients(data, cw, SHARDS)).run()


def _plain(data: Examples, cw: np.ndarray) -> np.ndarray:
    """The reference written out: whole batches, no shards, no wire."""
    from zmqvision.train import schedule
    from zmqvision.train.optim import make_optimizer

    layers = CONFIG.layers(data.x.shape[1], len(TEXTURES))
    params = head.init_params(layers, CONFIG.seed)
    opt = make_optimizer(CONFIG.optimizer, params.size, CONFIG.lr)
    mask = head.weight_mask(layers)
    for epoch in range(CONFIG.epochs):
        for b in schedule.epoch_batches(len(data), CONFIG.batch, CONFIG.seed, epoch):
            sums = head.grad_sums(params, layers, data.x[b], data.y[b], cw)
            opt.update(params, head.regularised(*sums, params, mask, CONFIG.weight_decay)[1])
    return params


def _train_on_pool(examples, workers: int, on_step=None, step_timeout: float = 60.0,
                   after=None):
    data, cw = examples
    with Pool(model=BACKBONE, workers=workers, cache=None) as pool:
        grads = PoolGradients(pool, data, cw, SHARDS, min_workers=workers,
                              step_timeout=step_timeout, join_timeout=60)
        try:
            grads.wait_for_workers()
            assert len(grads.members) == workers
            assert all(m.shards for m in grads.members.values())
            hook = (lambda *a: on_step(pool, grads, *a)) if on_step else None
            state = HeadTrainer(data, len(TEXTURES), CONFIG, grads, on_step=hook).run()
        finally:
            grads.close()
            if after is not None:
                after(pool)
    return state, grads


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_training_over_workers_gives_the_reference_weights(examples, reference, workers):
    state, grads = _train_on_pool(examples, workers)
    np.testing.assert_allclose(state.params, reference.params, rtol=0, atol=1e-5)
    np.testing.assert_allclose(state.params, _plain(*examples), rtol=0, atol=1e-5)
    assert grads.recomputed == 0
    assert grads.bytes_in > 0 and grads.bytes_out > 0


def test_a_worker_sigkilled_mid_epoch_changes_nothing(examples, reference):
    killed = []

    def kill(pool, grads, epoch, step, steps, loss):
        if epoch == 0 and step == 2 and not killed:
            victim = pool.cluster.workers[1]
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(10)
            killed.append(victim)

    state, grads = _train_on_pool(examples, 3, on_step=kill)
    assert killed
    assert grads.recomputed > 0 and len(grads.members) == 2
    np.testing.assert_allclose(state.params, reference.params, rtol=0, atol=1e-5)


def test_a_worker_that_stops_answering_loses_its_shards_by_heartbeat(examples, reference):
    """SIGSTOP: the connection stays up (sends to it succeed), only its heartbeats stop;
    the engine's dispatcher declares it dead and its shards' step is computed again."""
    stopped = []

    def freeze(pool, grads, epoch, step, steps, loss):
        if epoch == 0 and step == 1 and not stopped:
            stopped.append(pool.cluster.workers[0].proc)
            stopped[0].send_signal(signal.SIGSTOP)

    def thaw(pool):
        for proc in stopped:
            proc.send_signal(signal.SIGKILL)
            proc.send_signal(signal.SIGCONT)
            proc.wait(10)

    state, grads = _train_on_pool(examples, 2, on_step=freeze, after=thaw)
    assert stopped and grads.recomputed > 0 and len(grads.members) == 1
    np.testing.assert_allclose(state.params, reference.params, rtol=0, atol=1e-5)


def _zv(*args, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "zmqvision", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_train_learns_textures_resumes_and_exports_what_the_head_says(textures, tmp_path,
                                                                       models_ready):
    out, store = tmp_path / "model", tmp_path / "emb.sqlite3"
    args = ["train", str(textures), "--out", str(out), "--val", "0.25", "--lr", "0.01",
            "--workers", "2", "--embedding-store", str(store)]
    first = _zv(*args, "--epochs", "15", "--events", "tcp://127.0.0.1:0")
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    # 120 crops, 30 held out (10 per class): chance is 1/3 (0.93 measured: docs/train.md).
    assert report["val_examples"] == 30 and report["train_examples"] == 90
    assert report["val_accuracy"] >= 0.8, report
    assert np.array(report["confusion"]).sum() == 30
    assert "validation accuracy" in first.stdout and "gravel" in first.stdout
    assert "120 computed, 0 from the store" in first.stderr
    assert json.loads((out / "checkpoint.json").read_text())["epoch"] == 15
    assert (out / "model.txt").read_text().split() == list(TEXTURES)

    # Two more epochs from the checkpoint; the backbone is skipped (the store has them).
    again = _zv(*args, "--epochs", "17", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 computed, 120 from the store" in again.stderr
    assert "resuming after epoch 15" in again.stderr
    report = json.loads((out / "report.json").read_text())
    assert len(report["history"]) == 17

    # The IR through `zmqvision run` gives the labels of the head evaluated in numpy: on
    # the IR's own pooled feature (--embed), exactly the head appended; on the backbone's
    # stored embeddings (which differ from the IR's by one int8 step, docs/train.md).
    results = tmp_path / "results.jsonl"
    ran = _zv("run", str(textures), "--model", str(out / "model.xml"), "--task", "classify",
              "--out", str(results), "--top-k", "3", "--embed")
    assert ran.returncode == 0, ran.stderr[-3000:]
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 120
    with np.load(out / "checkpoint.npz", allow_pickle=False) as z:
        params, std = z["params"], Standardizer(z["mean"], z["std"])
    layers = tuple(report["layers"])
    own = head.predict(params, layers, std(np.array([r["embedding"] for r in records])))
    with EmbeddingStore(store) as s:
        vectors = s.get(backbone_name(catalog.resolve(BACKBONE)), [r["hash"] for r in records])
    stored = head.predict(params, layers, std(np.stack([vectors[r["hash"]] for r in records])))
    agree = 0
    for r, p, q in zip(records, own, stored, strict=True):
        best = r["labels"][0]
        assert best["label"] == TEXTURES[int(p.argmax())], r["image"]
        scores = {row["label"]: row["score"] for row in r["labels"]}
        np.testing.assert_allclose([scores[t] for t in TEXTURES], p, atol=1e-4)
        agree += best["label"] == TEXTURES[int(q.argmax())]
    assert agree >= 0.95 * len(records), agree


def test_train_tells_faces_from_other_crops(tmp_path, models_ready):
    out = tmp_path / "faces-model"
    done = _zv("train", str(write_faces(tmp_path / "faces")), "--out", str(out), "--val",
               "0.2", "--epochs", "10", "--workers", "2", "--no-embedding-cache", "-q")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["val_examples"] == 40
    assert report["val_accuracy"] >= 0.8, report  # chance: 0.5
