"""``zmqvision train``, all of it: walk, split, embed on the pool, train the head over the
pool's workers, checkpoint each epoch, report and export (docs/train.md)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path

from zmqvision import protocol
from zmqvision.cache.embeddings import EmbeddingStore, backbone_name
from zmqvision.train import checkpoint, head
from zmqvision.train.data import Labelled, Standardizer, class_weights, stratified_split, walk
from zmqvision.train.embed import BACKBONE, embed_paths
from zmqvision.train.master import PoolGradients
from zmqvision.train.progress import TrainBar, TrainEvents
from zmqvision.train.trainer import Examples, HeadConfig, HeadTrainer, TrainState

log = logging.getLogger("zmqvision.train")

MODEL_XML = "model.xml"
REPORT = "report.json"


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    head: HeadConfig = field(default_factory=HeadConfig)
    val: float | str = 0.2  # a fraction (seeded stratified split) or a folder
    resume: bool = False
    events: str | None = None  # PUB endpoint for zv.train_progress
    bind: str = "tcp://127.0.0.1:0"  # the training ROUTER workers connect to
    curve: str | None = None
    step_timeout: float = 30.0
    min_workers: int = 1
    embeddings: str | None = None  # the store's path; None: the default one
    cache_embeddings: bool = True
    quiet: bool = False


def _examples(train: Labelled, val: Labelled) -> str:
    """A fingerprint of the training set (its labels and files, in order)."""
    h = blake2b(digest_size=16)
    for part in (train, val):
        h.update("\0".join(part.labels).encode())
        for p, y in zip(part.paths, part.y.tolist(), strict=True):
            h.update(f"\0{y}\0{p}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class Training:
    """One ``zmqvision train``: the pictures are walked and split here (a wrong folder
    fails before any pool starts); ``run(pool)`` returns the report."""

    def __init__(self, config: TrainConfig) -> None:
        from zmqvision.models import catalog, store

        self.config = config
        self.pool = None
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.spec = catalog.resolve(BACKBONE)
        self.backbone_path = store.model_file(self.spec)
        self.bar = TrainBar(config.head.epochs, quiet=config.quiet)
        everything = walk(config.data)
        if isinstance(config.val, str):
            self.train_set = everything
            self.val_set = walk(config.val, labels=everything.labels)
        else:
            tr, va = stratified_split(everything.y, float(config.val), config.head.seed)
            self.train_set, self.val_set = everything.take(tr), everything.take(va)
        self.labels = everything.labels
        self.seconds: dict[str, float] = {}

    def run(self, pool) -> dict:
        self.pool = pool
        t0 = time.monotonic()
        train, val, embedded = self._embed()
        self.seconds["embed"] = time.monotonic() - t0
        classes = len(self.labels)
        cw = class_weights(train.y, classes)
        hc = self.config.head
        layers = list(hc.layers(train.x.shape[1], classes))
        meta = {"labels": list(self.labels), "layers": layers, "examples":
                _examples(self.train_set, self.val_set), "backbone": backbone_name(self.spec),
                "config": {k: v for k, v in hc.to_json().items() if k != "epochs"}}
        state, standardizer = None, Standardizer.fit(train.x)
        if self.config.resume:
            state, standardizer = checkpoint.load(self.out, meta)
            self.bar.note(f"resuming after epoch {state.epoch}")
        xs, xv = standardizer(train.x), standardizer(val.x)
        train_ex, val_ex = Examples(xs, train.y), Examples(xv, val.y)
        t1 = time.monotonic()
        grads = PoolGradients(self.pool, train_ex, cw, max(1, min(hc.shards, len(train_ex))),
                              bind=self.config.bind, curve=self.config.curve,
                              step_timeout=self.config.step_timeout,
                              min_workers=self.config.min_workers)
        events = TrainEvents(self.pool.engine.ctx, self.config.events, grads.session)
        try:
            grads.wait_for_workers()
            trainer = HeadTrainer(train_ex, classes, hc, grads, val=val_ex,
                                  on_step=lambda e, s, n, loss: self._on_step(
                                      events, grads, e, s, n, loss))
            trainer.on_epoch = lambda st, rec: self._on_epoch(events, grads, trainer, st, rec,
                                                              standardizer, meta)
            state = trainer.run(state)
        finally:
            events.close()
            grads.close()
        self.seconds["train"] = time.monotonic() - t1
        return self._finish(state, tuple(layers), standardizer, val_ex, train_ex, embedded,
                            grads)

    def _embed(self) -> tuple[Examples, Examples, dict]:
        store = (EmbeddingStore(self.config.embeddings) if self.config.cache_embeddings
                 else None)
        paths = (*self.train_set.paths, *self.val_set.paths)
        try:
            got = embed_paths(self.pool, paths, store, backbone_name(self.spec))
        finally:
            if store is not None:
                store.close()
        for path, error in list(got.failed.items())[:5]:
            self.bar.note(f"warning: {path}: {error.get('type')}: {error.get('message')}")
        n = len(self.train_set.paths)
        ok_t, ok_v = got.ok[:n], got.ok[n:]
        train = Examples(got.vectors[:n][ok_t], self.train_set.y[ok_t])
        val = Examples(got.vectors[n:][ok_v], self.val_set.y[ok_v])
        if len(train) < 2:
            raise ValueError(f"{self.config.data}: fewer than two usable training images")
        self.bar.note(f"embeddings: {got.computed} computed, {got.cached} from the store, "
                      f"{len(got.failed)} failed; {len(train)} to train on, "
                      f"{len(val)} to validate")
        return train, val, {"computed": got.computed, "cached": got.cached,
                            "failed": len(got.failed)}

    def _on_step(self, events: TrainEvents, grads: PoolGradients, epoch: int, step: int,
                 steps: int, loss: float) -> None:
        self.bar.step(epoch, step, steps, loss)
        events.publish(protocol.TrainProgress(
            session=grads.session, epoch=epoch, epochs=self.config.head.epochs, step=step,
            steps=steps, loss=float(loss), workers=len(grads.members)))

    def _on_epoch(self, events: TrainEvents, grads: PoolGradients, trainer: HeadTrainer,
                  state: TrainState, record: dict, standardizer: Standardizer,
                  meta: dict) -> None:
        checkpoint.save(self.out, state, standardizer, {**meta, "epochs":
                                                        self.config.head.epochs})
        self.bar.epoch(record)
        events.publish(protocol.TrainProgress(
            session=grads.session, epoch=state.epoch, epochs=self.config.head.epochs,
            step=trainer.steps_per_epoch, steps=trainer.steps_per_epoch,
            loss=float(record["loss"]), workers=len(grads.members),
            val_accuracy=record.get("val_accuracy")))
        grads.rebalance()  # workers that joined meanwhile take shards

    def _finish(self, state: TrainState, layers: tuple[int, ...], standardizer: Standardizer,
                val: Examples, train: Examples, embedded: dict, grads: PoolGradients) -> dict:
        from zmqvision.train.export import export_ir

        classes = len(self.labels)
        evaluate = val if len(val) else train
        pred = head.predict(state.params, layers, evaluate.x).argmax(axis=1)
        matrix = head.confusion(evaluate.y, pred, classes)
        accuracy = float((pred == evaluate.y).mean()) if len(evaluate) else 0.0
        xml = export_ir(self.backbone_path, state.params, layers, standardizer, self.labels,
                        self.out / MODEL_XML)
        report = {
            "model": str(xml),
            "labels": list(self.labels),
            "layers": list(layers),
            "train_examples": len(train),
            "val_examples": len(val),
            "evaluated_on": "validation" if len(val) else "training",
            "val_accuracy": accuracy,
            "confusion": matrix.tolist(),
            "history": state.history,
            "config": self.config.head.to_json(),
            "embeddings": embedded,
            "workers": len(grads.members),
            "recomputed_shards": grads.recomputed,
            "bytes": {"steps_out": grads.bytes_out, "gradients_in": grads.bytes_in,
                      "shards_out": grads.data_bytes},
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }
        (self.out / REPORT).write_text(json.dumps(report, indent=1))
        return report


def confusion_text(report: dict) -> str:
    """The confusion matrix as a table (rows: true class, columns: predicted)."""
    labels = report["labels"]
    width = max(6, *(len(name) for name in labels))
    lines = [" " * width + " " + " ".join(f"{name[:width]:>{width}}" for name in labels)]
    for name, row in zip(labels, report["confusion"], strict=True):
        lines.append(f"{name:>{width}} " + " ".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def train(config: TrainConfig, pool) -> dict:
    """Train on ``pool`` (a ``zmqvision.Pool`` serving efficientnet-lite0)."""
    return Training(config).run(pool)
