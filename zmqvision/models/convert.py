"""One-time conversions of catalog models that OpenVINO cannot read as shipped.

MediaPipe's selfie segmentation model uses a TFLite *custom* op,
``Convolution2DTransposeBias`` (a transposed convolution with its bias fused), which
``Core.read_model`` refuses. The TFLite frontend accepts a ``ConversionExtension`` for a
custom op; this module supplies one and saves the converted model as an OpenVINO IR, so
that workers load it with a plain ``read_model`` and never need the extension.

The op, as MediaPipe defines it: NHWC input, weights OHWI ``[C_out, kH, kW, C_in]``, bias
``[C_out]``; output ``y[s*i + ki, s*j + kj, o] = sum_c x[i, j, c] * w[o, ki, kj, c] + b[o]``
with stride ``s`` equal to the kernel size and no padding in the selfie model (2×2 kernel,
stride 2, 128² → 256²). That is exactly OpenVINO's ``ConvolutionBackpropData`` (the
gradient of a convolution: kernel not flipped) on NCHW data with an IOHW filter. Checked:
the flipped kernel gives a visible 2-px checkerboard in the probability map, this one a
smooth map (docs/segmentation.md). The op's ``custom_options`` (its padding and stride) are
not readable through the Python NodeContext, so the stride is taken from the kernel's
static size and anything else is refused rather than guessed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from zmqvision.openvino_import import import_openvino


class ConversionError(RuntimeError):
    """The model could not be converted; the message says why."""


def _transpose_conv_bias(context):
    """ConversionExtension body for MediaPipe's ``Convolution2DTransposeBias``."""
    import openvino.opset13 as ops

    if context.get_input_size() != 3:
        raise ConversionError("Convolution2DTransposeBias: expected input, weights and bias")
    x, w, b = (context.get_input(i) for i in range(3))
    kernel = w.get_partial_shape()
    if kernel.is_dynamic or len(kernel) != 4:
        raise ConversionError(f"Convolution2DTransposeBias: weights shape {kernel} not static 4-D")
    _, kh, kw, _ = (d.get_length() for d in kernel)
    if (kh, kw) != (2, 2):  # the only case seen (and checked); stride 2, no padding
        raise ConversionError(f"Convolution2DTransposeBias: kernel {kh}x{kw} not supported")

    def perm(*axes):
        return ops.constant(np.array(axes, np.int64))

    data = ops.transpose(x, perm(0, 3, 1, 2))  # NHWC -> NCHW
    filt = ops.transpose(w, perm(3, 0, 1, 2))  # OHWI -> IOHW
    y = ops.convolution_backprop_data(data, filt, strides=[kh, kw], pads_begin=[0, 0],
                                      pads_end=[0, 0], dilations=[1, 1])
    y = ops.add(y, ops.reshape(b, perm(1, -1, 1, 1), False))
    return [ops.transpose(y, perm(0, 2, 3, 1)).output(0)]  # NCHW -> NHWC


def mediapipe_transpose_conv(source: Path):
    """An ``ov.Model`` of a MediaPipe .tflite that uses ``Convolution2DTransposeBias``."""
    import_openvino()
    from openvino.frontend import ConversionExtension, FrontEndManager

    fe = FrontEndManager().load_by_framework("tflite")
    fe.add_extension(ConversionExtension("Convolution2DTransposeBias", _transpose_conv_bias))
    try:
        return fe.convert(fe.load(str(source)))
    except Exception as exc:  # the frontend wraps everything in RuntimeError with a trace
        raise ConversionError(f"TFLite frontend failed on {source.name}: {exc}") from exc


CONVERSIONS = {"mediapipe-transpose-conv": mediapipe_transpose_conv}


def convert_file(name: str, source: Path, target: Path) -> Path:
    """Convert ``source`` with conversion ``name`` and save the IR at ``target`` (.xml).

    Written beside the target under temporary names and renamed into place, ``.bin``
    first, so that a process that sees the ``.xml`` also sees its weights.
    """
    ov = import_openvino()
    try:
        model = CONVERSIONS[name](Path(source))
    except KeyError:
        raise ConversionError(f"unknown conversion {name!r}") from None
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=target.parent) as tmp:
        xml = Path(tmp) / target.name
        ov.save_model(model, str(xml), compress_to_fp16=False)
        for part in (xml.with_suffix(".bin"), xml):
            os.chmod(part, 0o644)
            os.replace(part, target.with_name(part.name))
    return target
