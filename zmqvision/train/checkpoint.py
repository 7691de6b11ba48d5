"""The checkpoint written after each epoch: ``checkpoint.npz`` (numpy's npz, read back
with ``allow_pickle=False``: arrays only) and ``checkpoint.json`` (the state and what it
was trained on), each replaced atomically. ``--resume`` continues from the epoch after,
on the same batches as an uninterrupted run (they depend on the seed and epoch only)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from zmqvision.train.data import Standardizer
from zmqvision.train.trainer import TrainState

NPZ = "checkpoint.npz"
JSON = "checkpoint.json"
VERSION = 1


class CheckpointError(ValueError):
    """No checkpoint to resume, or one for other data or settings."""


def _replace(out: Path, name: str, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, out / name)
    except BaseException:
        os.unlink(tmp)
        raise


def save(out: str | Path, state: TrainState, standardizer: Standardizer, meta: dict) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"params": state.params, "mean": standardizer.mean, "std": standardizer.std,
              **{f"opt_{k}": np.asarray(v) for k, v in state.optimizer.items()}}
    _replace(out, NPZ, lambda fh: np.savez(fh, **arrays))
    doc = {"version": VERSION, "epoch": state.epoch, "history": state.history, **meta}
    _replace(out, JSON, lambda fh: fh.write(json.dumps(doc, indent=1).encode()))


def load(out: str | Path, meta: dict) -> tuple[TrainState, Standardizer]:
    """The saved state, if it was trained with the same ``meta`` (data, labels, layers,
    seed, batches, optimizer; ``epochs`` may differ: a run can be extended)."""
    out = Path(out)
    try:
        doc = json.loads((out / JSON).read_text())
        with np.load(out / NPZ, allow_pickle=False) as z:
            arrays = {k: np.array(z[k]) for k in z.files}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"no usable checkpoint in {out}: {exc}") from None
    for key, value in meta.items():
        if key != "epochs" and doc.get(key) != value:
            raise CheckpointError(f"the checkpoint in {out} was trained with another "
                                  f"{key} ({doc.get(key)!r}, now {value!r})")
    state = TrainState(int(doc["epoch"]), arrays["params"],
                       {k[4:]: v for k, v in arrays.items() if k.startswith("opt_")},
                       list(doc.get("history", [])))
    return state, Standardizer(arrays["mean"], arrays["std"])
