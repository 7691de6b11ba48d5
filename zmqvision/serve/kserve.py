"""The Open Inference Protocol (KServe v2) REST format, as Triton and OpenVINO Model
Server speak it: metadata documents, and inference requests and responses in JSON or with
the binary tensor data extension (a JSON header of ``Inference-Header-Content-Length``
bytes, then each binary tensor's raw bytes in order).

The model takes one encoded image (PNG, JPEG, …) as a ``BYTES`` input of shape ``[1]``,
as OVMS takes encoded images; a BYTES element is a 4-byte little-endian length and the
bytes (binary), or base64 (JSON: a string, or ``{"b64": …}``). It answers ``boxes``
(FP32 ``[N, 4]``, x1 y1 x2 y2 in image pixels), ``scores`` (FP32 ``[N]``), ``labels``
(INT32 ``[N]``: class ids) and ``label_names`` (BYTES ``[N]``). Pure functions, no I/O."""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HEADER = "Inference-Header-Content-Length"
INPUT = "image"
OUTPUTS = {  # name → (datatype, shape with -1 for the detections)
    "boxes": ("FP32", [-1, 4]),
    "scores": ("FP32", [-1]),
    "labels": ("INT32", [-1]),
    "label_names": ("BYTES", [-1]),
}
MAX_JSON = 1 << 20  # a header larger than this is not an inference request of ours


class InferError(ValueError):
    """A request that does not follow the protocol (or our model's signature): 400."""


@dataclass
class InferRequest:
    id: str | None
    image: bytes
    outputs: list[tuple[str, bool]]  # (name, as binary)
    parameters: dict[str, Any] = field(default_factory=dict)


def server_metadata(version: str) -> dict:
    return {"name": "zmqvision", "version": version, "extensions": ["binary_tensor_data"]}


def model_metadata(name: str, version: str) -> dict:
    return {
        "name": name,
        "versions": [version],
        "platform": "zmqvision",
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": n, "datatype": d, "shape": s} for n, (d, s) in OUTPUTS.items()],
    }


def _bytes_elements(raw: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise InferError("a BYTES element's length is cut off")
        (n,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + n > len(raw):
            raise InferError("a BYTES element is longer than the data")
        out.append(raw[i:i + n])
        i += n
    return out


def _json_element(item: Any) -> bytes:
    text = item.get("b64") if isinstance(item, dict) else item
    if not isinstance(text, str):
        raise InferError("a JSON BYTES element must be base64 text or {\"b64\": …}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InferError("a JSON BYTES element is not valid base64") from None


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """An inference request's image, requested outputs and parameters."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise InferError(f"{HEADER} {header_length!r} is not a number") from None
        if not 0 < n <= min(len(body), MAX_JSON):
            raise InferError(f"{HEADER} {n} does not fit the body ({len(body)} bytes)")
        head, rest = body[:n], memoryview(body)[n:]
    else:
        head, rest = body, memoryview(b"")
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError):
        raise InferError("the inference header is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise InferError("an inference request needs an \"inputs\" list")
    image = None
    offset = 0
    for tensor in doc["inputs"]:
        if not isinstance(tensor, dict):
            raise InferError("an input must be an object")
        params = tensor.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(rest):
                raise InferError(f"input {tensor.get('name')!r}: binary_data_size {size} "
                                 "does not fit the body")
            raw, offset = bytes(rest[offset:offset + size]), offset + size
        else:
            raw = None
        if tensor.get("name") != INPUT:
            raise InferError(f"unknown input {tensor.get('name')!r}; the model takes "
                             f"one: {INPUT!r} (BYTES, an encoded image)")
        if tensor.get("datatype") != "BYTES":
            raise InferError(f"input {INPUT!r} is BYTES (an encoded image), not "
                             f"{tensor.get('datatype')!r}")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or int(np.prod(shape or [0])) != 1:
            raise InferError(f"input {INPUT!r} has shape [1] (one image a request), not "
                             f"{shape!r}")
        if raw is not None:
            elements = _bytes_elements(raw)
        else:
            data = tensor.get("data")
            while isinstance(data, list) and len(data) == 1 and isinstance(data[0], list):
                data = data[0]
            if not isinstance(data, list):
                raise InferError(f"input {INPUT!r} has neither data nor binary_data_size")
            elements = [_json_element(x) for x in data]
        if len(elements) != 1:
            raise InferError(f"input {INPUT!r} holds {len(elements)} elements, not 1")
        image = elements[0]
    if image is None:
        raise InferError(f"the request has no {INPUT!r} input")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InferError("\"parameters\" must be an object")
    default_binary = bool(params.get("binary_data_output", False))
    outputs: list[tuple[str, bool]] = []
    for out in doc.get("outputs") or [{"name": n} for n in OUTPUTS]:
        if not isinstance(out, dict) or out.get("name") not in OUTPUTS:
            raise InferError(f"unknown output {out!r}; the outputs: {', '.join(OUTPUTS)}")
        p = out.get("parameters") or {}
        outputs.append((out["name"], bool(p.get("binary_data", default_binary))))
    options = {k: v for k, v in params.items()
               if k not in ("binary_data_output", "headers", "priority", "timeout")}
    if "timeout" in params:  # Triton's: microseconds
        try:
            options["timeout"] = float(params["timeout"]) / 1e6
        except (TypeError, ValueError):
            raise InferError("parameter timeout is microseconds, a number") from None
    rid = doc.get("id")
    return InferRequest(id=rid if isinstance(rid, str) else None, image=image,
                        outputs=outputs, parameters=options)


def tensors(record: dict) -> dict[str, np.ndarray]:
    """The record's detections as the output tensors."""
    dets = record.get("detections") or []
    return {
        "boxes": np.array([d["box"] for d in dets], dtype=np.float32).reshape(-1, 4),
        "scores": np.array([d["score"] for d in dets], dtype=np.float32),
        "labels": np.array([d.get("class_id", 0) for d in dets], dtype=np.int32),
        "label_names": np.array([str(d.get("label", "")) for d in dets], dtype=object),
    }


def _serialise_bytes(items: np.ndarray) -> bytes:
    parts = []
    for item in items:
        b = item.encode() if isinstance(item, str) else bytes(item)
        parts += [struct.pack("<I", len(b)), b]
    return b"".join(parts)


def infer_response(model: str, version: str, request: InferRequest,
                   record: dict) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    values = tensors(record)
    outputs, blobs = [], []
    for name, binary in request.outputs:
        datatype, _ = OUTPUTS[name]
        arr = values[name]
        doc: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            blob = (_serialise_bytes(arr) if datatype == "BYTES"
                    else np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"),
                                                          copy=False).tobytes())
            doc["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            doc["data"] = arr.reshape(-1).tolist()
        outputs.append(doc)
    resp: dict[str, Any] = {"model_name": model, "model_version": version,
                            "outputs": outputs}
    if request.id is not None:
        resp["id"] = request.id
    head = json.dumps(resp, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)
