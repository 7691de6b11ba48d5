"""Face identity: who is this face, among the people enrolled?

The steps, each a module with one job:

* ``align``: five landmarks (CenterFace's, ``models.centerface.decode(landmarks=True)``)
  → a similarity transform → the 112 × 112 crop, read from the original image.
* ``embed``: ``FaceEmbedder``, aligned crops → unit 192-d vectors (MobileFaceNet).
* ``gallery``: enrolled people (name → embeddings + metadata) in SQLite or Redis, and
  exact cosine search with a calibrated threshold.
* ``identify``: the single-process reference, image → faces with names.

docs/faces.md has the models, the threshold's calibration and the measured costs.
OpenVINO is imported only by ``embed`` and ``identify``: the gallery works without it.
"""
