"""Reading plates and text: detect (stage 1), crop from the original, read (stage 2).

The steps, each a module with one job:

* ``runtime``: compile a catalog model so that it takes uint8 RGB pixels as they come
  (per-channel means, BGR and NCHW inside the graph), for any input size.
* ``plates``: the plate detector (RetinaFace priors → boxes and 4 corners, NMS) and
  ``read_plates``, the single-process reference.
* ``text``: the DB text detector (probability map → rotated line boxes, PaddleOCR's
  post-processing without OpenCV) and ``read_text``, the single-process reference.
* ``regions``: connected regions of a binary map, by runs (numpy only).
* ``geometry``: corner order, minimum-area rectangles, and the crop of a quadrilateral
  from the ORIGINAL image (Pillow's QUAD transform).
* ``ctc``: ``CtcReader``, crops of any width → text and confidence (both readers).

docs/recognition.md has the models, their licences, the measured costs and the API the
two-stage pipeline wiring calls.
"""
