"""The trained classifier as one OpenVINO IR: the backbone up to its pooled feature, then
the head (MatMul + Add (+ ReLU + MatMul + Add)) and a Softmax, built with OpenVINO's
graph API; ``<stem>.txt`` beside it names the classes, one a line (what
``catalog.user_model`` reads).

Two details make ``zmqvision run PHOTOS --model OUT/model.xml --task classify`` see what
training saw:

* the standardisation (``(e - mean) / std``) is folded into the first layer's weights
  and bias, so the graph takes the raw pooled feature;
* zmqvision feeds a user's ``.xml`` in BGR (the Open Model Zoo convention), while the
  backbone is a TF-Lite network trained on RGB: the IR starts with a channel reversal
  (a Gather over the channel axis), so the backbone gets the RGB it always had.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zmqvision.train import head
from zmqvision.train.data import Standardizer


def folded(params: np.ndarray, layers: Sequence[int],
           standardizer: Standardizer) -> list[tuple[np.ndarray, np.ndarray]]:
    """The head's layers with the standardisation folded into the first one."""
    parts = [(w.copy(), b.copy()) for w, b in head.unpack(params, layers)]
    w, b = parts[0]
    w_std = w / standardizer.std[:, None]
    parts[0] = (w_std, b - (standardizer.mean @ w_std))
    return parts


def export_ir(backbone_path: str, params: np.ndarray, layers: Sequence[int],
              standardizer: Standardizer, labels: Sequence[str], out_xml: str | Path) -> Path:
    """Write ``out_xml`` (+ ``.bin``) and ``<stem>.txt``; returns the XML's path."""
    from zmqvision.models.runtime import embedding_op
    from zmqvision.openvino_import import import_openvino

    ov = import_openvino()
    import openvino.opset13 as ops

    model = ov.Core().read_model(str(backbone_path))
    pool = embedding_op(model)
    if pool is None:
        raise ValueError(f"{backbone_path}: no global pooling to put a head on")
    (param,) = model.get_parameters()
    _reverse_channels(ops, param)
    x = ops.reshape(pool.output(0), ops.constant(np.array([1, -1], np.int64)), False)
    parts = folded(params, layers, standardizer)
    for i, (w, b) in enumerate(parts):
        x = ops.matmul(x, ops.constant(w.astype(np.float32)), False, False)
        x = ops.add(x, ops.constant(b.astype(np.float32).reshape(1, -1)))
        if i < len(parts) - 1:
            x = ops.relu(x)
    probs = ops.softmax(x, 1)
    probs.set_friendly_name("probabilities")
    probs.output(0).get_tensor().set_names({"probabilities"})
    out = ov.Model([probs.output(0)], [param], "zmqvision-trained-classifier")
    out_xml = Path(out_xml)
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(out, str(out_xml), compress_to_fp16=False)
    out_xml.with_suffix(".txt").write_text("".join(f"{name}\n" for name in labels))
    return out_xml


def _reverse_channels(ops, param) -> None:
    """Put a channel reversal between the input and everything that reads it."""
    shape = [d.get_length() for d in param.get_partial_shape()]
    axis = 3 if shape[3] == 3 else 1
    readers = list(param.output(0).get_target_inputs())
    flip = ops.gather(param.output(0), ops.constant(np.array([2, 1, 0], np.int64)),
                      ops.constant(np.array(axis, np.int64)))
    for r in readers:
        r.replace_source_output(flip.output(0))
