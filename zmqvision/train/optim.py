"""SGD with momentum and Adam over the flat parameter vector, with their state as named
arrays (what a checkpoint stores)."""

from __future__ import annotations

import numpy as np


class SGD:
    """Heavy-ball momentum: ``v = μ v + g``, ``p -= lr v``."""

    name = "sgd"

    def __init__(self, size: int, lr: float, momentum: float = 0.9) -> None:
        self.lr = lr
        self.momentum = momentum
        self.velocity = np.zeros(size)

    def update(self, params: np.ndarray, grad: np.ndarray) -> None:
        self.velocity *= self.momentum
        self.velocity += grad
        params -= self.lr * self.velocity

    def state(self) -> dict[str, np.ndarray]:
        return {"velocity": self.velocity}

    def load(self, state: dict[str, np.ndarray]) -> None:
        self.velocity = np.array(state["velocity"], np.float64)


class Adam:
    """Kingma & Ba, with bias correction."""

    name = "adam"

    def __init__(self, size: int, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = np.zeros(size)
        self.v = np.zeros(size)
        self.t = 0

    def update(self, params: np.ndarray, grad: np.ndarray) -> None:
        self.t += 1
        self.m *= self.beta1
        self.m += (1 - self.beta1) * grad
        self.v *= self.beta2
        self.v += (1 - self.beta2) * grad * grad
        mhat = self.m / (1 - self.beta1 ** self.t)
        vhat = self.v / (1 - self.beta2 ** self.t)
        params -= self.lr * mhat / (np.sqrt(vhat) + self.eps)

    def state(self) -> dict[str, np.ndarray]:
        return {"m": self.m, "v": self.v, "t": np.array(self.t, np.int64)}

    def load(self, state: dict[str, np.ndarray]) -> None:
        self.m = np.array(state["m"], np.float64)
        self.v = np.array(state["v"], np.float64)
        self.t = int(state["t"])


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def make_optimizer(name: str, size: int, lr: float) -> SGD | Adam:
    try:
        return OPTIMIZERS[name](size, lr)
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}: use {' or '.join(OPTIMIZERS)}") from None
