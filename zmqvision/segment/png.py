"""A streaming palette-PNG writer: label rows go in strip by strip, never the whole map.

PNG needs only its size up front (IHDR); the pixels are one zlib stream cut into IDAT
chunks, so rows can be compressed as they are finished and written out in chunks of
``CHUNK`` bytes. Pillow would need the whole image in memory. Each row gets filter type 0
(none): label maps are long runs of one value, which zlib's matches already take.
The file is written under a temporary name and renamed when complete, so a reader never
sees a half-written mask.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

CHUNK = 1 << 18  # bytes of compressed data per IDAT chunk
SIGNATURE = b"\x89PNG\r\n\x1a\n"


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (``[n, 3]`` u8): class ``i``'s colour from the bits of
    ``i`` spread over R, G and B, high bits first (0 black, 15 person (192, 128, 128))."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF)


class PalettePNGWriter:
    """Writes a ``width`` × ``height`` 8-bit palette PNG at ``path``, rows in order.

    ``write(rows)`` takes u8 ``[r, width]`` label rows; ``close()`` checks that exactly
    ``height`` rows came and renames the file into place. ``abort()`` (or leaving a
    ``with`` block by an exception) removes the partial file.
    """

    def __init__(self, path: str | Path, width: int, height: int, *,
                 palette: np.ndarray | None = None, level: int = 6) -> None:
        if not (0 < width < 2**31 and 0 < height < 2**31):
            raise ValueError(f"PNG size {width}x{height} out of range")
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.rows = 0
        pal = voc_palette() if palette is None else np.asarray(palette, np.uint8)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._fh = os.fdopen(fd, "wb")
        self._z = zlib.compressobj(level)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        ihdr = struct.pack(">IIBBBBB", self.width, self.height, 8, 3, 0, 0, 0)
        self._fh.write(SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"PLTE", pal.tobytes()))

    def write(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"rows must be u8 [r, {self.width}], got {rows.dtype} "
                             f"{list(rows.shape)}")
        if self.rows + len(rows) > self.height:
            raise ValueError(f"more than {self.height} rows written")
        buf = np.zeros((len(rows), self.width + 1), np.uint8)  # column 0: filter type 0
        buf[:, 1:] = rows
        self._queue(self._z.compress(buf))
        self.rows += len(rows)

    def close(self) -> Path:
        if self.rows != self.height:
            self.abort()
            raise ValueError(f"PNG {self.path.name}: {self.rows} of {self.height} rows written")
        self._queue(self._z.flush(), final=True)
        self._fh.write(_chunk(b"IEND", b""))
        self._fh.close()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> PalettePNGWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._fh.closed:
            self.close()

    def _queue(self, data: bytes, final: bool = False) -> None:
        if data:
            self._pending.append(data)
            self._pending_bytes += len(data)
        if self._pending_bytes >= CHUNK or (final and self._pending):
            self._fh.write(_chunk(b"IDAT", b"".join(self._pending)))
            self._pending, self._pending_bytes = [], 0
