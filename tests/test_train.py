"""The head's arithmetic, the schedule, the optimizers, checkpoints, the embeddings store
and the training messages: pure, no processes (zmqvision.train; docs/train.md)."""

from __future__ import annotations

import numpy as np
import pytest

from zmqvision import protocol as P
from zmqvision.cache.embeddings import EmbeddingStore
from zmqvision.train import checkpoint, head, schedule
from zmqvision.train.data import Standardizer, class_weights, stratified_split
from zmqvision.train.export import folded
from zmqvision.train.optim import make_optimizer
from zmqvision.train.trainer import Examples, HeadConfig, HeadTrainer, LocalGradients


def _data(n=120, d=10, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d)) * 2
    y = rng.integers(0, classes, n).astype(np.int32)
    x = (centres[y] + rng.standard_normal((n, d))).astype(np.float32)
    return Examples(x, y)


@pytest.mark.parametrize("layers", [(6, 3), (6, 5, 4)])
def test_gradient_matches_finite_differences(layers):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, layers[0]))
    y = rng.integers(0, layers[-1], 7)
    cw = rng.random(layers[-1]) + 0.5
    params = head.init_params(layers, 3) + rng.standard_normal(head.param_count(layers)) * .1
    _, _, grad = head.grad_sums(params, layers, x, y, cw)
    eps = 1e-6
    numeric = np.empty_like(params)
    for i in range(params.size):
        up, down = params.copy(), params.copy()
        up[i] += eps
        down[i] -= eps
        numeric[i] = (head.grad_sums(up, layers, x, y, cw)[0]
                      - head.grad_sums(down, layers, x, y, cw)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


def test_regularised_gradient_matches_finite_differences():
    layers = (4, 3)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((5, 4)), rng.integers(0, 3, 5)
    cw, mask = np.ones(3), head.weight_mask(layers)
    params = rng.standard_normal(head.param_count(layers))

    def loss(p):
        return head.regularised(*head.grad_sums(p, layers, x, y, cw), p, mask, 0.3)

    _, grad = loss(params)
    for i in range(params.size):
        up, down = params.copy(), params.copy()
        up[i] += 1e-6
        down[i] -= 1e-6
        assert abs((loss(up)[0] - loss(down)[0]) / 2e-6 - grad[i]) < 1e-6


def test_shard_sums_equal_the_whole_batch():
    data, layers = _data(), (10, 8, 3)
    params = head.init_params(layers, 0)
    batch = schedule.epoch_batches(len(data), 50, seed=4, epoch=2)[0]
    whole = head.grad_sums(params, layers, data.x[batch], data.y[batch], np.ones(3))
    shards = 7
    local = LocalGradients(data, np.ones(3), shards)
    parts = schedule.split_batch(batch, shards)
    got = local.compute(0, params, layers, parts)
    assert sum(len(v) for v in parts.values()) == len(batch)
    total = sum(got[s][2] for s in sorted(parts))
    np.testing.assert_allclose(total, whole[2], rtol=1e-12, atol=1e-12)
    assert abs(sum(got[s][0] for s in parts) - whole[0]) < 1e-9


def test_batches_are_a_seeded_permutation():
    a = schedule.epoch_batches(103, 20, seed=5, epoch=1)
    assert [len(b) for b in a] == [20] * 5 + [3]
    assert sorted(np.concatenate(a).tolist()) == list(range(103))
    again = schedule.epoch_batches(103, 20, seed=5, epoch=1)
    assert all((x == y).all() for x, y in zip(a, again, strict=True))
    other = schedule.epoch_batches(103, 20, seed=5, epoch=2)
    assert not (a[0] == other[0]).all()


def test_stratified_split_and_class_weights():
    y = np.array([0] * 50 + [1] * 10 + [2] * 2, np.int32)
    tr, va = stratified_split(y, 0.2, seed=0)
    assert np.bincount(y[va]).tolist() == [10, 2, 1]
    assert sorted([*tr, *va]) == list(range(len(y)))
    assert (stratified_split(y, 0.2, seed=0)[1] == va).all()
    w = class_weights(y[tr], 3)
    counts = np.bincount(y[tr])
    np.testing.assert_allclose(w * counts, [len(tr) / 3] * 3)


def _plain_reference(data, classes, config, cw):
    """Training written out directly: whole batches, no shards."""
    layers = config.layers(data.x.shape[1], classes)
    params = head.init_params(layers, config.seed)
    opt = make_optimizer(config.optimizer, params.size, config.lr)
    mask = head.weight_mask(layers)
    for epoch in range(config.epochs):
        for b in schedule.epoch_batches(len(data), config.batch, config.seed, epoch):
            sums = head.grad_sums(params, layers, data.x[b], data.y[b], cw)
            opt.update(params, head.regularised(*sums, params, mask, config.weight_decay)[1])
    return params


@pytest.mark.parametrize("optimizer,hidden", [("adam", None), ("sgd", 16)])
def test_sharded_trainer_equals_the_plain_reference(optimizer, hidden):
    data = _data()
    cfg = HeadConfig(hidden=hidden, epochs=3, batch=16, lr=0.01, optimizer=optimizer,
                     shards=5)
    cw = np.array([1.0, 2.0, 0.5])
    state = HeadTrainer(data, 3, cfg, LocalGradients(data, cw, 5)).run()
    np.testing.assert_allclose(state.params, _plain_reference(data, 3, cfg, cw), atol=1e-10)


def test_resume_gives_the_uninterrupted_weights(tmp_path):
    data, cw = _data(), np.ones(3)
    cfg = HeadConfig(hidden=8, epochs=4, batch=32, lr=0.01, shards=4)
    whole = HeadTrainer(data, 3, cfg, LocalGradients(data, cw, 4)).run()
    std = Standardizer(np.zeros(10), np.ones(10))
    meta = {"labels": ["a", "b", "c"], "layers": [10, 8, 3], "examples": "x"}
    half = HeadConfig(**{**cfg.to_json(), "epochs": 2})
    first = HeadTrainer(data, 3, half, LocalGradients(data, cw, 4),
                        on_epoch=lambda st, rec: checkpoint.save(tmp_path, st, std, meta)).run()
    assert first.epoch == 2
    state, std2 = checkpoint.load(tmp_path, meta)
    assert state.epoch == 2 and (std2.std == 1).all()
    done = HeadTrainer(data, 3, cfg, LocalGradients(data, cw, 4)).run(state)
    np.testing.assert_array_equal(done.params, whole.params)
    with pytest.raises(checkpoint.CheckpointError, match="examples"):
        checkpoint.load(tmp_path, {**meta, "examples": "other"})
    assert not np.load(tmp_path / checkpoint.NPZ, allow_pickle=False)["params"].dtype.hasobject


def test_folding_the_standardisation_keeps_the_outputs():
    rng = np.random.default_rng(0)
    layers = (6, 4, 3)
    params = rng.standard_normal(head.param_count(layers))
    std = Standardizer(rng.standard_normal(6), rng.random(6) + 0.5)
    x = rng.standard_normal((9, 6))
    want = head.logits(params, layers, std(x))
    flat = np.concatenate([np.concatenate([w.ravel(), b]) for w, b in
                           folded(params, layers, std)])
    np.testing.assert_allclose(head.logits(flat, layers, x), want, atol=1e-5)


def test_embedding_store_round_trip(tmp_path):
    with EmbeddingStore(tmp_path / "e.sqlite3") as store:
        v = np.arange(5, dtype=np.float32)
        store.put("bb", {"blake2b:aa": v})
        assert (store.get("bb", ["blake2b:aa", "blake2b:bb"])["blake2b:aa"] == v).all()
        assert store.get("other", ["blake2b:aa"]) == {}
        store.db.execute("INSERT INTO embeddings VALUES (?, ?)",
                         (store.key("bb", "bad"), b"\x00" * 3))
        assert store.get("bb", ["bad"]) == {}  # not a float32 vector: a miss


# ---------------------------------------------------------------------------- wire


def _step(**kw):
    layers = kw.pop("layers", (4, 3))
    args = dict(session="s", step=3, layers=layers,
                params=np.arange(head.param_count(layers), dtype=np.float64),
                shards=(0, 2), counts=(2, 1), indices=np.array([0, 1, 4], np.uint32))
    args.update(kw)
    return P.TrainStep(**args)


def _round(msg):
    return P.decode([bytes(memoryview(f)) for f in P.encode(msg)])


def test_training_messages_round_trip():
    step = _round(_step())
    assert step.layers == (4, 3) and step.counts == (2, 1)
    assert step.indices.tolist() == [0, 1, 4] and step.params[5] == 5.0
    shard = _round(P.TrainShard("s", 1, np.ones((3, 4), np.float32),
                                np.array([0, 2, 1], np.int32), (1.0, 2.0, 0.5)))
    assert shard.x.shape == (3, 4) and shard.class_weights == (1.0, 2.0, 0.5)
    grad = _round(P.TrainGrad("s", 3, 1, "w", 2, 2.0, 0.7, np.ones(15)))
    assert grad.grad.sum() == 15 and grad.loss == 0.7
    assert _round(P.TrainInvite("s", "tcp://10.0.0.1:7000")).endpoint.endswith(":7000")
    assert _round(P.TrainProgress("s", 1, 5, 3, 3, 0.5, 2, 0.9)).val_accuracy == 0.9


@pytest.mark.parametrize("bad,match", [
    (lambda: _step(params=np.full(15, np.nan)), "non-finite"),
    (lambda: _step(layers=(4, 1), params=np.zeros(5)), "classes"),
    (lambda: _step(counts=(2, 2)), "index frame"),
    (lambda: _step(shards=(1, 1)), "distinct"),
    (lambda: _step(layers=(4, 3, 2, 2), params=np.zeros(39)), "widths"),
    (lambda: P.TrainShard("s", 0, np.ones((2, 4), np.float32), np.array([0, 5], np.int32),
                          (1.0, 1.0)), "out of range"),
    (lambda: P.TrainShard("s", 0, np.full((2, 4), np.inf, np.float32),
                          np.zeros(2, np.int32), (1.0, 1.0)), "non-finite"),
    (lambda: P.TrainGrad("s", 0, 0, "w", 1, 1.0, float("nan"), np.ones(3)), "finite"),
    (lambda: P.TrainInvite("s", "http://x"), "endpoint"),
])
def test_bad_training_messages_are_refused(bad, match):
    with pytest.raises(P.ProtocolError, match=match):
        _round(bad())


def test_a_gradient_frame_of_the_wrong_size_is_refused():
    frames = [bytes(memoryview(f)) for f in P.encode(P.TrainGrad("s", 0, 0, "w", 1, 1.0,
                                                                  0.5, np.ones(4)))]
    frames[2] = frames[2][:-8]
    with pytest.raises(P.ProtocolError, match="bytes"):
        P.decode(frames)


def test_watch_shows_training_progress():
    from zmqvision.watch import WatchState, render

    state = WatchState()
    msg = P.TrainProgress("s", 3, 10, 4, 4, 0.25, 2, 0.9)
    state.ingest_frames([bytes(memoryview(f)) for f in P.encode(msg)])
    snap = state.snapshot()
    assert snap["training"]["epoch"] == 3 and snap["training"]["val_accuracy"] == 0.9
    from rich.console import Console

    console = Console(width=140, record=True)
    console.print(render(state, "tcp://x"))
    text = console.export_text()
    assert "epoch 3/10" in text and "val accuracy 0.900" in text


def test_train_refuses_a_folder_of_one_class_before_starting_a_pool(tmp_path):
    from click.testing import CliRunner

    from zmqvision.cli import cli

    (tmp_path / "data" / "only").mkdir(parents=True)
    (tmp_path / "data" / "only" / "a.jpg").write_bytes(b"not even a picture")
    result = CliRunner().invoke(cli, ["train", str(tmp_path / "data"), "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "at least two class folders" in result.output


def test_train_refuses_a_plain_text_bind_other_hosts_reach(tmp_path):
    from click.testing import CliRunner

    from zmqvision.cli import cli

    result = CliRunner().invoke(cli, ["train", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--train-bind", "tcp://0.0.0.0:0"])
    assert result.exit_code == 2 and "plain text" in result.output
