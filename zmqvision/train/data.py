"""The pictures to learn from: ``DIR/<label>/*.jpg``, a seeded stratified validation
split, class weights for unbalanced folders, and the embeddings' standardisation."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Labelled:
    """Image paths and their class ids; ``labels[i]`` names class ``i``."""

    paths: tuple[str, ...]
    y: np.ndarray
    labels: tuple[str, ...]

    def take(self, idx: np.ndarray) -> Labelled:
        return Labelled(tuple(self.paths[i] for i in idx), self.y[idx], self.labels)


def walk(root: str, labels: tuple[str, ...] | None = None) -> Labelled:
    """Every image under ``root/<label>/`` (sorted: the run's fixed example order); the
    labels are the folder names, sorted, unless given (a validation folder must use the
    training folder's)."""
    found = sorted(d.name for d in os.scandir(root) if d.is_dir()
                   and not d.name.startswith("."))
    names = tuple(labels) if labels is not None else tuple(found)
    paths, y = [], []
    for name in found:
        if name not in names:
            raise ValueError(f"{root}/{name}: no such class in the training folder "
                             f"({', '.join(names)})")
        for dirpath, dirnames, files in os.walk(os.path.join(root, name)):
            dirnames.sort()
            for f in sorted(files):
                if f.lower().endswith(IMAGE_SUFFIXES):
                    paths.append(os.path.join(dirpath, f))
                    y.append(names.index(name))
    if labels is None and len(names) < 2:
        raise ValueError(f"{root}: a classifier needs at least two class folders, "
                         f"found {len(names)}")
    if not paths:
        raise ValueError(f"{root}: no images in its class folders")
    return Labelled(tuple(paths), np.asarray(y, np.int32), names)


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray,
                                                                        np.ndarray]:
    """``(train, val)`` indices: per class a seeded shuffle, ``round(fraction * n)`` to
    validation (at least one of a class with two or more, never all), both sorted."""
    rng = np.random.default_rng([int(seed), 0x5E1])
    val = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        k = int(round(fraction * len(members)))
        if fraction > 0 and len(members) > 1:
            k = min(max(k, 1), len(members) - 1)
        val.extend(rng.permutation(members)[:k].tolist())
    val_idx = np.sort(np.asarray(val, np.int64))
    train_idx = np.setdiff1d(np.arange(len(y)), val_idx)
    return train_idx, val_idx


def class_weights(y: np.ndarray, classes: int) -> np.ndarray:
    """``n / (classes · n_c)``: each class weighs as much in the loss as any other
    (1.0 each for balanced folders); a class with no example gets 0."""
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    return np.where(counts > 0, len(y) / (classes * np.maximum(counts, 1)), 0.0)


@dataclass(frozen=True)
class Standardizer:
    """Per-feature mean and standard deviation of the training embeddings: the head
    learns on ``(e - mean) / std``, and the export folds both into its first layer."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        x = np.asarray(x, np.float64)
        std = x.std(axis=0)
        # A feature (almost) constant in training must not be blown up: efficientnet-
        # lite0's pooled features are int8-quantised (steps of ~0.0115), and one step
        # over a tiny std made one test picture's class flip between the backbone run
        # alone and the exported IR, whose features can differ by that step.
        floor = max(1e-6, 0.1 * float(np.median(std)))
        return cls(x.mean(axis=0), np.maximum(std, floor))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) / self.std).astype(np.float32)
