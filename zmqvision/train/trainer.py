"""The training loop: epochs of seeded batches, each step's gradient summed over shards
in a fixed order, an optimizer update, then per epoch the validation accuracy.

Where the shard gradients come from is a ``GradientSource``: ``LocalGradients`` computes
them in this process (the single-process reference), ``master.PoolGradients`` has the
pool's workers compute them. The loop is the same, which is what the equality tests
check: the same seed gives the same weights over 0, 1, 2 or 3 workers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from zmqvision.train import head, schedule
from zmqvision.train.optim import make_optimizer

ShardGrad = tuple[float, float, np.ndarray]  # (loss sum, weight sum, gradient sum)


@dataclass(frozen=True)
class HeadConfig:
    """What the head is and how it is trained (``zmqvision train`` flags)."""

    hidden: int | None = None  # one hidden ReLU layer of this width; None: softmax regression
    epochs: int = 30
    batch: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"  # or "sgd" (momentum 0.9)
    weight_decay: float = 1e-4
    seed: int = 0
    shards: int = 16  # fixed for the run: the gradient's summation order

    def layers(self, dim: int, classes: int) -> tuple[int, ...]:
        return (dim, self.hidden, classes) if self.hidden else (dim, classes)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Examples:
    """Training or validation examples: standardised float32 embeddings and class ids."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


class GradientSource(Protocol):
    def compute(self, step: int, params: np.ndarray, layers: tuple[int, ...],
                parts: dict[int, np.ndarray]) -> dict[int, ShardGrad]:
        """Each listed shard's gradient sums over its rows ``parts[shard]``."""


class LocalGradients:
    """The shards' gradients computed here, one after another."""

    def __init__(self, data: Examples, class_weights: np.ndarray, shards: int) -> None:
        self.shards = [(data.x[rows], data.y[rows]) for rows in
                       (schedule.shard_rows(len(data), shards, s) for s in range(shards))]
        self.class_weights = np.asarray(class_weights, np.float64)

    def compute(self, step, params, layers, parts):
        out = {}
        for s, idx in parts.items():
            x, y = self.shards[s]
            out[s] = head.grad_sums(params, layers, x[idx], y[idx], self.class_weights)
        return out


@dataclass
class TrainState:
    """Where training is: epochs done, the parameters, the optimizer's state, history."""

    epoch: int
    params: np.ndarray
    optimizer: dict[str, np.ndarray]
    history: list[dict] = field(default_factory=list)


class HeadTrainer:
    """Runs epochs; ``on_step(epoch, step, steps, loss)`` and ``on_epoch(state, record)``
    are the progress bar's, the events' and the checkpoint's hooks."""

    def __init__(self, train: Examples, classes: int, config: HeadConfig,
                 gradients: GradientSource, *, val: Examples | None = None,
                 on_step: Callable[[int, int, int, float], None] | None = None,
                 on_epoch: Callable[[TrainState, dict], None] | None = None) -> None:
        self.train = train
        self.val = val
        self.config = config
        self.layers = config.layers(train.x.shape[1], classes)
        self.shards = schedule.shard_count(len(train), config.shards)
        self.gradients = gradients
        self.mask = head.weight_mask(self.layers)
        self.on_step = on_step
        self.on_epoch = on_epoch
        self.steps_per_epoch = -(-len(train) // config.batch)

    def initial_state(self) -> TrainState:
        params = head.init_params(self.layers, self.config.seed)
        opt = make_optimizer(self.config.optimizer, params.size, self.config.lr)
        return TrainState(0, params, opt.state())

    def run(self, state: TrainState | None = None) -> TrainState:
        state = state or self.initial_state()
        params = np.array(state.params, np.float64)
        opt = make_optimizer(self.config.optimizer, params.size, self.config.lr)
        opt.load(state.optimizer)
        for epoch in range(state.epoch, self.config.epochs):
            losses = []
            batches = schedule.epoch_batches(len(self.train), self.config.batch,
                                             self.config.seed, epoch)
            for k, batch in enumerate(batches):
                step = epoch * self.steps_per_epoch + k
                loss, grad = self.step_gradient(step, params, batch)
                opt.update(params, grad)
                losses.append(loss)
                if self.on_step is not None:
                    self.on_step(epoch, k + 1, len(batches), loss)
            record = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
            if self.val is not None and len(self.val):
                record["val_accuracy"] = self.accuracy(params, self.val)
            state = TrainState(epoch + 1, params.copy(),
                               {k: np.array(v) for k, v in opt.state().items()},
                               [*state.history, record])
            if self.on_epoch is not None:
                self.on_epoch(state, record)
        return state

    def step_gradient(self, step: int, params: np.ndarray,
                      batch: np.ndarray) -> tuple[float, np.ndarray]:
        """The batch's mean loss and gradient: shard sums added in shard order."""
        parts = schedule.split_batch(batch, self.shards)
        got = self.gradients.compute(step, params, self.layers, parts)
        loss_sum, weight_sum = 0.0, 0.0
        grad = np.zeros(params.size)
        for s in sorted(parts):
            loss, weight, g = got[s]
            loss_sum += loss
            weight_sum += weight
            grad += g
        return head.regularised(loss_sum, weight_sum, grad, params, self.mask,
                                self.config.weight_decay)

    def accuracy(self, params: np.ndarray, data: Examples) -> float:
        pred = head.predict(params, self.layers, data.x).argmax(axis=1)
        return float((pred == data.y).mean())
