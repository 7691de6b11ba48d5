"""The result cache: an image already recognised with the same model and settings is not
recognised again.

The parts, each one job:

* ``key``: what names a result — the image's content hash plus a fingerprint of every
  setting that changes the result (model file, input size, tiling, merge, threshold).
* ``entry``: the stored value — the image's merged detections (with a two-stage job's
  points and stage-2 answers, never identities; a segmentation job's mask file and class
  counts) or a bytes-intrinsic error, versioned msgpack; anything unreadable is a miss,
  never a crash.
* ``sqlite_store`` / ``redis_store``: where entries live (SQLite file by default; Redis or
  Redis Cluster for many hosts). Bytes in, bytes out.
* ``guard``: a store that fails (Redis gone, disk locked) makes the job go on without the
  cache, with one warning, and is tried again with backoff.
* ``result_cache``: what the ventilator (lookups, before decoding) and the sink (saves, as
  images complete) call.
* ``url``: ``--cache URL`` / ``--no-cache`` / ``$ZMQVISION_RESULTS_CACHE`` → a cache.

docs/cache.md describes the key and the entry format.
"""

from zmqvision.cache.entry import Entry, EntryError
from zmqvision.cache.key import fingerprint, job_fingerprint
from zmqvision.cache.result_cache import ResultCache
from zmqvision.cache.url import ENV_VAR, open_cache, open_store, resolve_url

__all__ = [
    "ENV_VAR",
    "Entry",
    "EntryError",
    "ResultCache",
    "fingerprint",
    "job_fingerprint",
    "open_cache",
    "open_store",
    "resolve_url",
]
