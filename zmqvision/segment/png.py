"""A streaming palette-PNG writer: label rows go in strip by strip, never the whole map.

PNG needs only its size up front (IHDR); the pixels are one zlib stream cut into IDAT
chunks, so rows can be compressed as they are finished and written out in chunks of
``CHUNK`` bytes. Pillow would need the whole image in memory. Each row gets filter type 0
(none): label maps are long runs of one value, which zlib's matches already take.
The file is written under a temporary name and renamed when complete, so a reader never
sees a half-written mask.

A mask from the result cache is the bytes this writer made: ``write_bytes`` puts them in
place the same way (temporary name, rename), ``chunks`` checks one's structure and CRCs,
and ``read_rows`` gives its label rows back strip by strip (for COCO RLE), in bounded
memory whatever the bytes claim.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
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


def write_bytes(path: str | Path, data: bytes | memoryview) -> Path:
    """A whole mask file's bytes at ``path`` as ``PalettePNGWriter`` puts a mask there:
    under a temporary name in the same directory, renamed when complete (mode 0644)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def chunks(data: bytes | memoryview) -> Iterator[tuple[bytes, memoryview]]:
    """A PNG's chunks, ``(kind, payload)``, each CRC checked; ValueError for bytes that
    are not one whole PNG (signature, lengths, CRCs, IEND last and nothing after it)."""
    v = memoryview(data)
    if v[:8] != SIGNATURE:
        raise ValueError("not a PNG")
    pos = 8
    while True:
        if pos + 12 > len(v):
            raise ValueError("a PNG cut short")
        n = int.from_bytes(v[pos:pos + 4], "big")
        kind = bytes(v[pos + 4:pos + 8])
        end = pos + 12 + n
        if end > len(v):
            raise ValueError(f"a PNG's {kind!r} chunk runs past its end")
        payload = v[pos + 8:end - 4]
        if zlib.crc32(payload, zlib.crc32(kind)) & 0xFFFFFFFF != int.from_bytes(
                v[end - 4:end], "big"):
            raise ValueError(f"a PNG's {kind!r} chunk fails its CRC")
        yield kind, payload
        pos = end
        if kind == b"IEND":
            if pos != len(v):
                raise ValueError("bytes after a PNG's end")
            return


def read_rows(data: bytes | memoryview, width: int, height: int,
              rows: int = 1024) -> Iterator[np.ndarray]:
    """The label rows of a mask this module wrote (8-bit palette, ``width`` ×
    ``height``, every row filter type 0), u8 ``[r, width]`` arrays of at most ``rows``
    rows, top to bottom. Inflates at most a strip at a time, so a stream that would
    inflate past ``height`` rows stops there. ValueError for any other PNG or damage."""
    parts = chunks(data)
    kind, ihdr = next(parts)
    if kind != b"IHDR" or bytes(ihdr) != struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0,
                                                       0):
        raise ValueError(f"not a {width}x{height} 8-bit palette PNG")
    stride = width + 1
    strip = stride * max(1, rows)
    room = stride * height  # inflated bytes still expected
    z = zlib.decompressobj()
    buf = bytearray()
    for kind, payload in parts:
        if kind != b"IDAT":
            continue
        pending: bytes | memoryview = payload
        while pending:
            if room == 0:
                raise ValueError("a PNG with more pixels than its size")
            out = z.decompress(pending, min(room, strip))
            pending = z.unconsumed_tail
            room -= len(out)
            buf += out
            while len(buf) >= strip:
                yield _unfiltered(buf[:strip], stride)
                del buf[:strip]
    out = z.flush()
    room -= len(out)
    buf += out
    if room != 0 or not z.eof:
        raise ValueError("a PNG's pixels do not fill its size")
    if buf:
        yield _unfiltered(buf, stride)


def _unfiltered(buf: bytearray, stride: int) -> np.ndarray:
    rows = np.frombuffer(bytes(buf), np.uint8).reshape(-1, stride)
    if rows[:, 0].any():
        raise ValueError("a PNG row with a filter this writer does not use")
    return rows[:, 1:]
