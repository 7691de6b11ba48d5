"""``zmqvision train DIR --out MODEL/``: teach the pool a new classifier.

The parts, each one job:

* ``data``: ``DIR/<label>/*.jpg`` walked, a seeded stratified validation split, class
  weights, the embeddings' standardisation.
* ``embed``: every picture's 1,280-d efficientnet-lite0 embedding, computed on the pool
  (the heavy part) and kept by content hash (``zmqvision.cache.embeddings``).
* ``head``: the head as numpy (softmax regression, or one hidden ReLU layer): forward,
  loss, gradient sums. ``schedule``: seeded batches and the fixed shards. ``optim``:
  SGD with momentum, Adam.
* ``trainer``: the epoch loop over a gradient source: ``LocalGradients`` (the
  single-process reference) or ``master.PoolGradients`` (data-parallel over the pool's
  worker processes; the worker side is ``zmqvision.worker.train``).
* ``checkpoint``, ``progress`` (a bar and ``zv.train_progress`` events), ``export``
  (the OpenVINO IR: backbone + head + softmax, labels beside it), ``run`` (all of it).

docs/train.md describes the command, the determinism and the figures.
"""
