"""The sink: PULL partial results, merge them per image, deliver records, publish events.

Module map (one job each):

- ``config``: ``SinkConfig``, and where the journal is for each output format.
- ``jobs``: merge state per job (images in flight, early results, counters, Progress).
- ``journal``: the results file as the journal: the one-writer lock, what each job
  already has, the sync before acks.
- ``embeddings_file``: ``--embed-file``'s ``.npy`` sidecar, locked, synced and continued
  with the journal.
- ``output``: where a record goes (``options["records"]``: write, publish, both), the
  COCO file rewritten from its journal at each job end, drawings.
- ``acks``: tile and image acks to ventilators, after the journal is synced.
- ``forgotten``: published and withdrawn images whose late results are dropped quietly.
- ``saves``: computed results into the result cache.
- ``roster``, ``events``: the workers heard lately; progress, status and JobDone on PUB.
- ``core``: ``Sink``, which hands each decoded message to those parts.
- ``loop``: ``run_sink``, the sockets and the poll loop.
"""

from zmqvision.sink.config import SinkConfig
from zmqvision.sink.core import Sink
from zmqvision.sink.loop import run_sink

__all__ = ["Sink", "SinkConfig", "run_sink"]
