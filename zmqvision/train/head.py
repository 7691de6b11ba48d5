"""The classifier head as numpy: its parameters, forward pass, loss and gradient.

One flat float64 vector holds every parameter, in the wire layout
(``protocol.train_param_count``): per layer the weights ``a×b`` row-major, then the bias.
``layers`` is ``(dim, classes)`` for softmax regression or ``(dim, hidden, classes)`` for
one hidden ReLU layer. Workers and the master's reference run these very functions, so a
shard's gradient is the same bytes wherever it is computed: that is what makes a run over
any number of workers equal to the single-process one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zmqvision import protocol


def param_count(layers: Sequence[int]) -> int:
    return protocol.train_param_count(layers)


def unpack(params: np.ndarray, layers: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(W, b), …]`` views into ``params`` (no copy)."""
    out, at = [], 0
    for a, b in zip(layers, layers[1:], strict=False):
        w = params[at:at + a * b].reshape(a, b)
        at += a * b
        out.append((w, params[at:at + b]))
        at += b
    if at != params.size:
        raise ValueError(f"{params.size} parameters for layers {list(layers)} (need {at})")
    return out


def weight_mask(layers: Sequence[int]) -> np.ndarray:
    """1.0 where a parameter is a weight (decayed), 0.0 where it is a bias."""
    mask = np.zeros(param_count(layers))
    at = 0
    for a, b in zip(layers, layers[1:], strict=False):
        mask[at:at + a * b] = 1.0
        at += a * b + b
    return mask


def init_params(layers: Sequence[int], seed: int) -> np.ndarray:
    """He-scaled normal weights (ReLU follows the hidden layer), zero biases: seeded."""
    rng = np.random.default_rng([seed, 0x4EAD])
    params = np.zeros(param_count(layers))
    for w, _ in unpack(params, layers):
        w[...] = rng.standard_normal(w.shape) * np.sqrt(2.0 / w.shape[0])
    return params


def logits(params: np.ndarray, layers: Sequence[int], x: np.ndarray) -> np.ndarray:
    """The head's class scores for rows ``x`` (float64)."""
    h = np.asarray(x, np.float64)
    parts = unpack(params, layers)
    for i, (w, b) in enumerate(parts):
        h = h @ w + b
        if i < len(parts) - 1:
            h = np.maximum(h, 0.0)
    return h


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(params: np.ndarray, layers: Sequence[int], x: np.ndarray) -> np.ndarray:
    """Class probabilities for rows ``x``."""
    return softmax(logits(params, layers, x))


def grad_sums(params: np.ndarray, layers: Sequence[int], x: np.ndarray, y: np.ndarray,
              class_weights: np.ndarray) -> tuple[float, float, np.ndarray]:
    """``(loss sum, weight sum, gradient sum)`` over the rows ``x`` with labels ``y``:
    each row's cross-entropy and its gradient, times its class's weight, summed in
    float64. Sums, not means, so that shards add up to the batch exactly as one would."""
    g = np.zeros(params.size)
    if len(y) == 0:
        return 0.0, 0.0, g
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.int64)
    w = np.asarray(class_weights, np.float64)[y]
    parts = unpack(params, layers)
    grads = unpack(g, layers)
    acts = [x]
    h = x
    for i, (wt, b) in enumerate(parts):
        h = h @ wt + b
        if i < len(parts) - 1:
            h = np.maximum(h, 0.0)
        acts.append(h)
    z = acts[-1]
    zs = z - z.max(axis=1, keepdims=True)
    logp = zs - np.log(np.exp(zs).sum(axis=1, keepdims=True))
    rows = np.arange(len(y))
    loss = float(-(w * logp[rows, y]).sum())
    delta = np.exp(logp)
    delta[rows, y] -= 1.0
    delta *= w[:, None]
    for i in range(len(parts) - 1, -1, -1):
        gw, gb = grads[i]
        gw[...] = acts[i].T @ delta
        gb[...] = delta.sum(axis=0)
        if i:
            delta = (delta @ parts[i][0].T) * (acts[i] > 0)
    return loss, float(w.sum()), g


def regularised(loss_sum: float, weight_sum: float, grad_sum: np.ndarray, params: np.ndarray,
                mask: np.ndarray, weight_decay: float) -> tuple[float, np.ndarray]:
    """The batch's mean loss and gradient, plus L2 weight decay on the weights."""
    scale = 1.0 / weight_sum if weight_sum > 0 else 0.0
    decayed = mask * params
    loss = loss_sum * scale + 0.5 * weight_decay * float(decayed @ decayed)
    return loss, grad_sum * scale + weight_decay * decayed


def confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    """``m[t, p]``: how many of class ``t`` were predicted ``p``."""
    m = np.zeros((classes, classes), np.int64)
    np.add.at(m, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return m
