"""The input normalisation a TF-Lite file declares in its own metadata.

A float TF-Lite image model expects its pixels already normalised (deeplabv3: to [-1, 1]);
OpenVINO reads the graph but not the ``TFLITE_METADATA`` buffer that says how, so a
user's float ``.tflite`` file fed raw 0..255 pixels gives wrong scores. The TF-Lite
Metadata schema keeps it as ``NormalizationOptions {mean: [float], std: [float]}`` in the
first input tensor's process units; this reads just that path through the two
flatbuffers, with bounds checks (the file is a user's: any malformed offset means "none
declared", never an exception or an out-of-range read). No dependency on the
``flatbuffers`` or ``tflite-support`` packages.

Field ids are those of tensorflow/lite/schema/schema.fbs (``Model``: 4 buffers,
6 metadata; ``Metadata``: 0 name, 1 buffer; ``Buffer``: 0 data, 1 offset, 2 size) and
tensorflow_lite_support/metadata/metadata_schema.fbs (``ModelMetadata``: 3
subgraph_metadata; ``SubGraphMetadata``: 2 input_tensor_metadata; ``TensorMetadata``:
4 process_units; ``ProcessUnit``: 0 options_type, 1 options; ``NormalizationOptions``:
0 mean, 1 std; options type 1 is NormalizationOptions).
"""

from __future__ import annotations

import struct
from pathlib import Path

_NORMALIZATION = 1  # ProcessUnitOptions.NormalizationOptions


class _Malformed(Exception):
    pass


class _Buf:
    """Bounds-checked reads of flatbuffer tables, vectors and scalars in one buffer."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data

    def _unpack(self, fmt: str, at: int):
        if at < 0 or at + struct.calcsize(fmt) > len(self.data):
            raise _Malformed
        return struct.unpack_from(fmt, self.data, at)

    def u8(self, at: int) -> int:
        return self._unpack("<B", at)[0]

    def u32(self, at: int) -> int:
        return self._unpack("<I", at)[0]

    def u64(self, at: int) -> int:
        return self._unpack("<Q", at)[0]

    def ref(self, at: int) -> int:
        """Follow the uoffset stored at ``at``."""
        return at + self.u32(at)

    def root(self) -> int:
        return self.ref(0)

    def field(self, table: int, index: int) -> int | None:
        """Where field ``index`` of the table at ``table`` lies; None when absent."""
        vtable = table - self._unpack("<i", table)[0]
        vt_len = self._unpack("<H", vtable)[0]
        if 4 + 2 * index + 2 > vt_len:
            return None
        off = self._unpack("<H", vtable + 4 + 2 * index)[0]
        return table + off if off else None

    def vector(self, at: int, item: int = 4) -> tuple[int, int]:
        """(start, length) of the vector of ``item``-byte elements whose offset is stored
        at ``at``; a length running past the buffer is malformed (no huge loops)."""
        start = self.ref(at)
        n = self.u32(start)
        if start + 4 + n * item > len(self.data):
            raise _Malformed
        return start + 4, n

    def table_at(self, vec_start: int, i: int) -> int:
        return self.ref(vec_start + 4 * i)

    def string(self, at: int) -> bytes:
        start, n = self.vector(at, 1)
        return bytes(self.data[start:start + n])

    def floats(self, at: int) -> tuple[float, ...]:
        start, n = self.vector(at)
        return self._unpack(f"<{n}f", start) if n else ()


def _metadata_buffer(model: _Buf) -> bytes | memoryview | None:
    root = model.root()
    meta, buffers = model.field(root, 6), model.field(root, 4)
    if meta is None or buffers is None:
        return None
    start, n = model.vector(meta)
    for i in range(n):
        entry = model.table_at(start, i)
        name, index = model.field(entry, 0), model.field(entry, 1)
        if name is None or index is None or model.string(name) != b"TFLITE_METADATA":
            continue
        b_start, b_n = model.vector(buffers)
        k = model.u32(index)
        if k >= b_n:
            return None
        buf = model.table_at(b_start, k)
        data = model.field(buf, 0)
        if data is not None:
            d_start, d_n = model.vector(data, 1)
            return model.data[d_start:d_start + d_n]
        offset, size = model.field(buf, 1), model.field(buf, 2)  # > 2 GB models
        if offset is None or size is None:
            return None
        o, s = model.u64(offset), model.u64(size)
        return model.data[o:o + s] if o + s <= len(model.data) else None
    return None


def _normalization(meta: _Buf) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    root = meta.root()
    subgraphs = meta.field(root, 3)
    if subgraphs is None:
        return None
    sg_start, sg_n = meta.vector(subgraphs)
    if not sg_n:
        return None
    inputs = meta.field(meta.table_at(sg_start, 0), 2)
    if inputs is None:
        return None
    in_start, in_n = meta.vector(inputs)
    if not in_n:
        return None
    units = meta.field(meta.table_at(in_start, 0), 4)
    if units is None:
        return None
    u_start, u_n = meta.vector(units)
    for i in range(u_n):
        unit = meta.table_at(u_start, i)
        kind, options = meta.field(unit, 0), meta.field(unit, 1)
        if kind is None or options is None or meta.u8(kind) != _NORMALIZATION:
            continue
        opts = meta.ref(options)
        mean, std = meta.field(opts, 0), meta.field(opts, 1)
        if mean is None or std is None:
            return None
        return meta.floats(mean), meta.floats(std)
    return None


def input_normalization(path: str | Path) -> tuple[float, float] | None:
    """``(mean, std)`` that the TF-Lite file's metadata says its first input is
    normalised with (``(x - mean) / std``), when it declares one value for every channel;
    None when the file declares none, declares per-channel values that differ, or is not
    a readable TF-Lite flatbuffer."""
    try:
        data = Path(path).read_bytes()
        if data[4:8] != b"TFL3":  # the TF-Lite file identifier
            return None
        meta = _metadata_buffer(_Buf(data))
        if meta is None:
            return None
        found = _normalization(_Buf(meta))
    except (_Malformed, OSError, struct.error, ValueError, OverflowError):
        return None
    if found is None:
        return None
    mean, std = found
    if not mean or not std or len(set(mean)) != 1 or len(set(std)) != 1 or std[0] == 0:
        return None
    return float(mean[0]), float(std[0])
