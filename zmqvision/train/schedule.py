"""Which examples each step uses, and which shard holds each example.

Pure functions of the seed: the master, the single-process reference and a resumed run
draw the same batches. Example ``i`` (of the training set, in its fixed order) lives in
shard ``i % S`` at row ``i // S``; the number of shards ``S`` is fixed by the run, not
by the number of workers, so the gradient of a step is summed over the same shards in
the same order however many workers compute them.
"""

from __future__ import annotations

import numpy as np


def shard_count(examples: int, wanted: int) -> int:
    return max(1, min(int(wanted), int(examples)))


def shard_rows(examples: int, shards: int, shard: int) -> np.ndarray:
    """The training-set indices shard ``shard`` holds, in row order."""
    return np.arange(shard, examples, shards)


def epoch_batches(examples: int, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Epoch ``epoch``'s batches: a seeded permutation cut into ``batch``-sized runs (the
    last may be shorter)."""
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(examples)
    return [order[i:i + batch] for i in range(0, examples, batch)]


def split_batch(indices: np.ndarray, shards: int) -> dict[int, np.ndarray]:
    """``{shard: sorted row indices in that shard}`` for one batch (shards it does not
    touch are left out)."""
    idx = np.sort(np.asarray(indices, np.int64))
    owner = idx % shards
    return {int(s): (idx[owner == s] // shards).astype(np.uint32)
            for s in np.unique(owner)}
