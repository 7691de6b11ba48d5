"""Image input: find image files lazily and decode each one into RGB pixels or an error.

A job may point at a folder of millions of files, some of them broken, huge, not images
at all, or not files (a named pipe, a device). Three rules follow from that:

* :func:`iter_image_paths` never lists a directory into memory; it walks ``os.scandir``
  iterators lazily, so the first tile can leave while the walk is still going. In folders
  it takes image extensions only and counts what it left out (:class:`ImageWalk`);
  :func:`count_image_paths` counts the same walk ahead, by listing only, for a progress
  total.
* Nothing one input does may stop or stall the job. :func:`read_file` never blocks on
  opening (a FIFO, a device: ``unreadable``), reads a file's first bytes to tell its format
  before reading the rest (a 3 GB text file costs 4 KiB), and refuses files over
  ``max_bytes`` from their size. :func:`decode_image` checks ``max_pixels`` from the header
  of every frame before its pixels are allocated, and converts to RGB band by band, so
  one decode peaks at about 7 bytes per pixel (Pillow's 4-byte pixels and our 3-byte
  output), not the 13-21 that whole-image conversion cost.
* Every per-image problem becomes an :class:`ImageError` with a stable ``type`` (the error
  record's type) and a message that names the file.

Pixels always come out as C-contiguous, read-only ``uint8 [H, W, 3]`` RGB with the EXIF
orientation applied, whatever the file's mode (CMYK, 16-bit, palette, alpha ...).
Multi-frame files (animated GIF, PNG and WebP, multi-page TIFF) give their first frame by
default; :func:`decode_frames` gives every frame, each a :class:`LoadedImage` that says
which frame it is.

Global state: importing this module adds one ``warnings`` filter that ignores Pillow's
``DecompressionBombWarning`` (the warning only: ``DecompressionBombError`` still applies).
We check ``max_pixels`` ourselves from the header, per call; a per-call
``warnings.catch_warnings`` is not thread-safe and images are decoded in threads, so the
filter is installed once here instead. ``PIL.Image.MAX_IMAGE_PIXELS`` and
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` are never changed: truncated files must raise, so
if a caller sets ``LOAD_TRUNCATED_IMAGES = True`` elsewhere, truncated images may decode
with grey bands instead of becoming ``corrupt_image``. (A JPEG cut short *and then given
an end marker* also decodes grey: libjpeg only warns about it and Pillow drops warnings.
Files cut by a crash, a full disk or an aborted copy have no end marker and are refused.)
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import re
import stat
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.JpegImagePlugin import MARKER as _JPEG_MARKERS

__all__ = [
    "ALL_EXTENSIONS",
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_FRAMES",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "SUPPORTED_FORMATS",
    "FrameMode",
    "ImageError",
    "ImageWalk",
    "InputCounter",
    "LoadedImage",
    "content_hash",
    "count_image_paths",
    "decode_frames",
    "decode_image",
    "frame_count",
    "iter_image_paths",
    "peek_size",
    "read_file",
    "read_image",
    "sniff_format",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 100_000_000
"""Decompression-bomb guard: images (each frame) with more pixels are rejected from their
header. One decode peaks at about 7 bytes per pixel, so this bounds it to ~700 MB."""

DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024
"""Files larger than this (256 MiB) are refused from their size, before being read: the
whole file is held in memory to be hashed and decoded."""

DEFAULT_MAX_FRAMES = 10_000
"""``decode_frames(frames="all")`` refuses files with more frames than this."""

FrameMode = Literal["first", "all"]

# Pillow format names we decode; MPO is a multi-picture JPEG (we take the first picture).
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP"})
_SUPPORTED_TEXT = "JPEG, PNG, GIF, BMP, TIFF, WebP"
# The Pillow plugins that hostile bytes may reach (MPO comes from the JPEG plugin).
_PLUGINS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
# Formats whose frames are pictures of their own (MPO's second picture is another view
# of the same scene, not a frame: it stays one image).
_MULTI_FRAME = frozenset({"GIF", "PNG", "TIFF", "WEBP"})

IMAGE_EXTENSIONS = frozenset(
    {"jpg", "jpeg", "jpe", "jfif", "mpo", "png", "apng", "gif", "bmp", "dib", "tif",
     "tiff", "webp"}
)
"""File name extensions that directory walks take by default (``extensions=None``)."""

ALL_EXTENSIONS = frozenset({"*"})
"""``extensions=ALL_EXTENSIONS`` (or any set containing ``"*"``): take every file."""

# Header signatures, exactly those Pillow's plugins accept for the formats we decode: a
# file that starts with none of them is refused from its first bytes, and bytes that claim
# a format but that Pillow cannot open are a damaged image, not an unsupported one.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"MM*\x00", "TIFF"),
    (b"II\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)
_HEAD_BYTES = 4096  # read to tell the format, and to name an unsupported one

# Decoders fed hostile bytes raise more than OSError; all of these mean "damaged file".
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
    struct.error, zlib.error,
)

warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageError(Exception):
    """A per-image failure that becomes that image's error record; never stops a job.

    ``type`` is one of ``not_found``, ``unreadable``, ``empty_file``,
    ``unsupported_format``, ``corrupt_image``, ``too_large``; ``message`` names the file
    and says what is wrong with it, for a person to read.
    """

    def __init__(self, type: str, message: str) -> None:  # noqa: A002 - the record's field
        # Passing both to Exception keeps the error picklable (args rebuild it).
        super().__init__(type, message)
        self.type = type
        self.message = message

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """One decoded image (one frame of it), ready to tile.

    ``pixels`` is ``uint8 [H, W, 3]`` RGB, C-contiguous and read-only (copy it before
    modifying), with the EXIF orientation applied, so ``width``/``height`` are the
    displayed size. ``mode`` is the file's Pillow mode before conversion, kept because it
    explains odd-looking results (a CMYK or 16-bit source). Equality is identity: comparing
    pixel arrays field by field is neither cheap nor what anyone means.

    ``reduced`` > 1: a JPEG decoded at that fraction of its size (``decode_image``'s
    ``reduce``), for tiles that are all shrunk more than that anyway. ``width`` and
    ``height`` stay the image's own size, which tile boxes and records use; ``pixels`` is
    about ``width / reduced`` wide.

    ``frame`` is this frame's index (0-based) among the file's ``frames`` (1 for a still
    image; an animated GIF/PNG/WebP or a multi-page TIFF has more).
    """

    pixels: np.ndarray
    width: int
    height: int
    content_hash: str
    format: str
    mode: str
    reduced: int = 1
    frame: int = 0
    frames: int = 1


def content_hash(data: bytes) -> str:
    """Name an image by its bytes, so the same file under two paths is recognised."""
    return "blake2b:" + hashlib.blake2b(data, digest_size=32).hexdigest()


# --------------------------------------------------------------------------- paths


def _extension_filter(extensions: Iterable[str] | str | None) -> frozenset[str] | None:
    """The lower-case extensions to take; None: every file. ``None`` means the image
    extensions; ``"*"`` (alone or in the set, as ``--ext '*'`` gives) means all files."""
    if extensions is None:
        return IMAGE_EXTENSIONS
    if isinstance(extensions, str):
        extensions = extensions.split(",")
    exts = frozenset(e.strip().lower().lstrip(".") for e in extensions)
    return None if "*" in exts else exts - {""}


class ImageWalk:
    """The files of a job, yielded lazily in the order found; counts what it left out.

    Explicit file arguments are yielded exactly as given, whatever their name (even a
    missing file or a ``.txt``): the user named it, so it gets a result (an error record)
    rather than vanishing. Directories are walked with ``os.scandir`` one entry at a time
    (a folder of a million files is never listed into memory); inside them only regular
    files (or symlinks to them) are yielded, hidden names (leading ``.``) are skipped, and
    only ``extensions`` are taken (lower-case, no dot; ``None``: :data:`IMAGE_EXTENSIONS`;
    a set containing ``"*"``: every file). Files left out for their extension are counted
    in ``skipped``, the first few named in ``skipped_examples``, so the user can be told
    (``--ext '*'`` takes them). Directory symlinks are not followed, so symlink loops
    cannot hang the walk. A directory that cannot be listed is logged and skipped. Order is
    the filesystem's, not sorted: sorting needs the full list.

    Reading entries only: ``DirEntry.is_dir``/``is_file`` use the type the directory
    listing gives, so no file is opened or (on Linux filesystems) even stat'ed, except
    the symlinks among them. ``stop`` (an Event) ends the walk early, also between
    entries that are not yielded.
    """

    EXAMPLES = 3

    def __init__(self, inputs: Iterable[str] | str | os.PathLike, *, recursive: bool = True,
                 extensions: Iterable[str] | str | None = None,
                 stop: threading.Event | None = None) -> None:
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]  # one path, not an iterable of characters
        self.skipped = 0
        self.skipped_examples: list[str] = []
        self._inputs = inputs
        self._recursive = recursive
        self._exts = _extension_filter(extensions)
        self._stop = stop
        self._gen = self._paths()

    def __iter__(self) -> ImageWalk:
        return self

    def __next__(self) -> str:
        return next(self._gen)

    def close(self) -> None:
        """Stop early and release the directory handles still open."""
        self._gen.close()

    def _paths(self) -> Iterator[str]:
        for item in self._inputs:
            path = os.fspath(item)
            if os.path.isdir(path):
                yield from self._walk(path)
            else:
                yield path
            if self._stopped():
                return

    def _stopped(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _skip(self, path: str) -> None:
        self.skipped += 1
        if len(self.skipped_examples) < self.EXAMPLES:
            self.skipped_examples.append(path)

    def _walk(self, top: str) -> Iterator[str]:
        # A stack of open scandir iterators: memory grows with depth, never with folder size.
        stack: list[Iterator[os.DirEntry[str]]] = []
        exts, seen = self._exts, 0
        try:
            it = _scandir(top)
            if it is None:
                return
            stack.append(it)
            while stack:
                entry = next(stack[-1], None)
                if entry is None:
                    _close(stack.pop())
                    continue
                seen += 1
                if seen % 256 == 0 and self._stopped():
                    return
                name = entry.name
                if name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if self._recursive:
                            sub = _scandir(entry.path)
                            if sub is not None:
                                stack.append(sub)
                        continue
                    if not entry.is_file():  # follows file symlinks; skips fifos, broken links
                        continue
                except OSError as exc:
                    log.warning("skipping %s: %s", entry.path, exc)
                    continue
                if exts is not None:
                    ext = name.rpartition(".")[2].lower() if "." in name else ""
                    if ext not in exts:
                        self._skip(entry.path)
                        continue
                yield entry.path
        finally:
            for it in stack:  # the caller stopped early: release the directory handles
                _close(it)


def iter_image_paths(
    inputs: Iterable[str] | str,
    *,
    recursive: bool = True,
    extensions: Iterable[str] | str | None = None,
) -> ImageWalk:
    """Yield the files to process, lazily, in the order found: an :class:`ImageWalk`
    (an iterator whose ``skipped`` says how many files the extension filter left out)."""
    return ImageWalk(inputs, recursive=recursive, extensions=extensions)


def count_image_paths(
    inputs: Iterable[str] | str,
    *,
    recursive: bool = True,
    extensions: Iterable[str] | str | None = None,
    stop: threading.Event | None = None,
) -> int | None:
    """How many paths :func:`iter_image_paths` with the same arguments yields, by
    listing only (no file is opened), or None if ``stop`` was set before the end.

    For a progress bar's total: it runs while the job already goes (see
    :class:`InputCounter`). Files added or removed meanwhile make it approximate.
    """
    walk = ImageWalk(inputs, recursive=recursive, extensions=extensions, stop=stop)
    n = 0
    try:
        for _ in walk:
            n += 1
    finally:
        walk.close()
    if stop is not None and stop.is_set():
        return None
    return n


class InputCounter:
    """Counts a job's inputs on a daemon thread (:func:`count_image_paths`), so progress
    can show a real total instead of "found so far".

    ``total`` is None until the count is done (show "counting", not an ETA) and stays None
    if :meth:`stop` ended it early; :meth:`wait` blocks up to a timeout for it.
    """

    def __init__(self, inputs: Iterable[str] | str, *, recursive: bool = True,
                 extensions: Iterable[str] | str | None = None) -> None:
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        self.total: int | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(list(inputs), recursive, extensions),
            name="zv-count", daemon=True)
        self._thread.start()

    def _run(self, inputs: list, recursive: bool, extensions) -> None:
        try:
            self.total = count_image_paths(inputs, recursive=recursive,
                                           extensions=extensions, stop=self._stop)
        except Exception:  # noqa: BLE001 - a count is a nicety; the job goes on without it
            log.exception("counting inputs failed")
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> int | None:
        """The total, waiting up to ``timeout`` s for it; None if not known by then."""
        self._done.wait(timeout)
        return self.total

    def stop(self, timeout: float | None = 1.0) -> None:
        """Stop counting (the job ended first) and wait up to ``timeout`` s for the thread."""
        self._stop.set()
        self._thread.join(timeout)


def _scandir(path: str) -> Iterator[os.DirEntry[str]] | None:
    try:
        return os.scandir(path)
    except OSError as exc:
        log.warning("cannot list directory %s: %s", path, exc)
        return None


def _close(it: Iterator[os.DirEntry[str]]) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


# --------------------------------------------------------------------------- reading


def sniff_format(head: bytes) -> str | None:
    """The Pillow format name (``JPEG``, ``PNG``, ``GIF``, ``BMP``, ``TIFF``, ``WEBP``)
    a file's first bytes claim, for the formats we decode; None for anything else."""
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


_KIND = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _open_regular(path: str) -> tuple[BinaryIO, int]:
    """Open a regular file without ever blocking; its file object and size.

    ``O_NONBLOCK`` makes opening a FIFO return at once (a blocking open waits for a
    writer for ever, deaf to timeouts and signals); ``fstat`` of the open descriptor then
    refuses anything that is not a regular file, with no window for a swap in between.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) \
        | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageError("not_found", f"{path}: no such file") from None
    except PermissionError:
        raise ImageError("unreadable", f"{path}: permission denied") from None
    except IsADirectoryError:
        raise ImageError("unreadable", f"{path}: is a directory, not an image file") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket, or a device with nothing behind it
            raise ImageError("unreadable", f"{path}: not a regular file") from None
        reason = exc.strerror or str(exc)
        raise ImageError("unreadable", f"{path}: cannot open file ({reason})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError("unreadable", f"{path}: is a directory, not an image file")
        if not stat.S_ISREG(st.st_mode):
            kind = next((k for test, k in _KIND if test(st.st_mode)), "a special file")
            raise ImageError("unreadable", f"{path}: not a regular file ({kind})")
        if flags & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)  # a no-op for regular files on Linux; be plain anyway
        return os.fdopen(fd, "rb", buffering=0), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _read_head(f: BinaryIO) -> bytes:
    head = f.read(_HEAD_BYTES)
    f.seek(0)
    return head


def read_file(path: str, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """A file's bytes, or :class:`ImageError`: ``not_found``; ``unreadable`` (permissions,
    a directory, a FIFO or device, an I/O error); ``unsupported_format`` told from the
    first 4 KiB, before the rest is read; ``too_large`` over ``max_bytes``, told from the
    file's size, before it is read. An empty file gives ``b""`` (``decode_image`` says so).

    Separate from decoding so a caller can hash the bytes and look their result up in a
    cache before paying for the decode (and then decode the same bytes).
    """
    path = os.fspath(path)
    try:
        f, size = _open_regular(path)
        with f:
            head = _read_head(f)
            if not head:
                return b""
            if sniff_format(head) is None:
                raise _unidentified(head, path)
            if size > max_bytes:
                raise ImageError("too_large", f"{path}: file is {_mib(size)}, over the limit "
                                              f"of {_mib(max_bytes)} (max_bytes)")
            return _read_capped(f, size, max_bytes, path)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError("too_large", f"{path}: out of memory reading the file") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ImageError("unreadable", f"{path}: cannot read file ({reason})") from None


def _read_capped(f: BinaryIO, size: int, max_bytes: int, path: str) -> bytes:
    """Read to the end, in one read of the size fstat gave when the file is not growing,
    refusing once more than ``max_bytes`` came."""
    data = f.read(size + 1)  # one byte more: tells whether the file grew since fstat
    if len(data) <= size:
        return data
    parts, total = [data], len(data)
    while total <= max_bytes:
        chunk = f.read(min(1 << 20, max_bytes + 1 - total))
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        total += len(chunk)
    raise ImageError("too_large", f"{path}: file grew past the limit of {_mib(max_bytes)} "
                                  "(max_bytes) while being read")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def read_image(path: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> LoadedImage:
    """Read a file once (the same bytes are hashed and decoded) and decode its first frame.

    Raises :class:`ImageError` for every per-image problem: what :func:`read_file` and
    :func:`decode_image` raise.
    """
    path = os.fspath(path)
    return decode_image(read_file(path, max_bytes=max_bytes), max_pixels=max_pixels,
                        name=path)


def peek_size(path: str, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[int, int] | None:
    """Width and height as the image will be decoded (EXIF rotation included), from the
    header alone; None for anything that is not a readable image (read as
    :func:`read_file` reads it: never blocking, never over ``max_bytes``).

    Lets the CLI show what a tiling costs before the job starts, without decoding.
    """
    try:
        data = read_file(os.fspath(path), max_bytes=max_bytes)
        claimed = sniff_format(data[:_HEAD_BYTES])
        if claimed is None:
            return None
        if claimed == "JPEG":
            _check_jpeg_markers(data, "")
        with Image.open(io.BytesIO(data), formats=_PLUGINS) as im:
            width, height = im.size
            rotated = _swaps_axes(im)
    except (ImageError, Image.DecompressionBombError, *_DECODE_ERRORS):
        return None
    return (height, width) if rotated else (width, height)


# --------------------------------------------------------------------------- decoding


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "<bytes>",
    digest: str | None = None, reduce: Callable[[int, int], int] | None = None,
) -> LoadedImage:
    """Decode encoded image bytes (the first frame of a multi-frame file) into RGB pixels,
    or raise :class:`ImageError`.

    The pixel count is checked against ``max_pixels`` from the header, before any pixel
    is decoded, so a small file declaring 30000×30000 is rejected without allocating.
    ``name`` only appears in error messages. ``digest``: ``content_hash(data)`` when the
    caller already computed it (it is not computed twice).

    ``reduce(width, height)``, given the displayed size from the header, may answer 2, 4
    or 8: a JPEG is then decoded at about that fraction of its size by the decoder's own
    DCT scaling (Pillow's ``draft``), several times faster than a full decode and resize.
    Other formats ignore it. The ventilator asks for it when every tile of the image is
    shrunk to the model input by at least that factor (``tiling.draft_factor``).
    """
    frames = decode_frames(data, frames="first", max_pixels=max_pixels, name=name,
                           digest=digest, reduce=reduce)
    try:
        return next(frames)
    finally:
        frames.close()


def decode_frames(
    data: bytes, *, frames: FrameMode = "first", max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str = "<bytes>", digest: str | None = None,
    reduce: Callable[[int, int], int] | None = None, max_frames: int = DEFAULT_MAX_FRAMES,
) -> Iterator[LoadedImage]:
    """Decode the first frame (``frames="first"``) or every frame (``"all"``), one
    :class:`LoadedImage` each, with ``frame`` and ``frames`` set; arguments as
    :func:`decode_image`.

    Lazy: one frame's pixels at a time. Every frame's size is checked against
    ``max_pixels`` before it is decoded (pages of a TIFF differ; a GIF frame may grow the
    canvas). With ``"all"``, a file of more than ``max_frames`` frames is ``too_large``
    before any is decoded, and a damaged frame raises :class:`ImageError` after the frames
    before it were yielded: the caller records those and an error for the rest.
    """
    if frames not in ("first", "all"):
        raise ValueError(f"frames must be 'first' or 'all', not {frames!r}")
    if not data:
        raise ImageError("empty_file", f"{name}: file is empty (0 bytes)")
    claimed = sniff_format(data[:_HEAD_BYTES])
    if claimed is None:
        raise _unidentified(data, name)
    if claimed == "JPEG":
        _check_jpeg_markers(data, name)
    digest = digest or content_hash(data)
    # A GIF frame can grow the canvas, and Pillow allocates for frame 0 as it opens.
    canvases = _gif_canvases(data, max_frames) if claimed == "GIF" else None
    if canvases:
        _check_pixels(*canvases[0], max_pixels, name, 0)
    try:
        im = _open(data, name)
    except MemoryError:
        raise ImageError("too_large", f"{name}: out of memory while decoding") from None
    with im:
        fmt = im.format or "unknown"
        if fmt not in SUPPORTED_FORMATS:  # not reachable with _PLUGINS; kept as a guard
            raise ImageError("unsupported_format",
                             f"{name}: file is in {fmt} format; supported: {_SUPPORTED_TEXT}")
        if canvases is not None:
            count = max(1, len(canvases))
        else:
            count = _frame_count(im, data, fmt, max_frames)
        if frames == "all" and count > max_frames:
            raise ImageError("too_large", f"{name}: {fmt} has more than {max_frames:,} "
                                          "frames (max_frames)")
        for k in range(count if frames == "all" else 1):
            try:
                yield _frame(im, k, count, canvases, data, digest, max_pixels, name,
                             reduce if k == 0 else None)
            except MemoryError:
                raise ImageError("too_large", f"{name}: out of memory while decoding"
                                 + (f" frame {k}" if count > 1 else "")) from None


def frame_count(data: bytes, *, max_frames: int = DEFAULT_MAX_FRAMES) -> int:
    """How many frames ``decode_frames`` finds in these bytes (1 for a still image, and for
    bytes it cannot tell: decoding them says what is wrong), counted as it counts them,
    from headers alone and never past ``max_frames + 1``. Cheap: no pixel is decoded, so a
    file whose frames are all in the result cache is never decoded."""
    claimed = sniff_format(data[:_HEAD_BYTES])
    if claimed == "GIF":
        try:
            return max(1, len(_gif_canvases(data, max_frames)))
        except _DECODE_ERRORS:
            return 1
    if claimed == "TIFF":
        try:
            return max(1, _tiff_pages(data, max_frames))
        except _DECODE_ERRORS:
            return 1
    if claimed not in ("PNG", "WEBP"):
        return 1
    try:
        with Image.open(io.BytesIO(data), formats=_PLUGINS) as im:
            return _frame_count(im, data, im.format or "unknown", max_frames)
    except Exception:  # noqa: BLE001 - hostile bytes: decoding them will say what is wrong
        return 1


def _open(data: bytes, name: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=_PLUGINS)
    except Image.DecompressionBombError as exc:
        raise ImageError(
            "too_large",
            f"{name}: image is too large to decode safely ({exc}; raise "
            "PIL.Image.MAX_IMAGE_PIXELS to allow it)",
        ) from None
    except Image.DecompressionBombWarning as exc:  # warnings turned into errors (-W error)
        raise ImageError(
            "too_large",
            f"{name}: image exceeds Pillow's MAX_IMAGE_PIXELS and warnings are errors ({exc})",
        ) from None
    except UnidentifiedImageError:
        raise _unidentified(data, name) from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any plugin failure on hostile bytes
        raise _damaged(data, name, exc) from None


def _frame_count(im: Image.Image, data: bytes, fmt: str, limit: int) -> int:
    """How many frames, counted from headers only (and never past ``limit + 1``: Pillow's
    own TIFF count is quadratic in pages, a hostile file's could take hours)."""
    if fmt not in _MULTI_FRAME:
        return 1
    try:
        if fmt == "TIFF":
            return max(1, _tiff_pages(data, limit))
        return max(1, int(getattr(im, "n_frames", 1)))
    except _DECODE_ERRORS:
        return 1


def _check_pixels(width: int, height: int, max_pixels: int, name: str, frame: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError("corrupt_image", f"{name}: header declares {width}×{height}")
    if width * height > max_pixels:
        where = f" (frame {frame})" if frame else ""
        raise ImageError(
            "too_large",
            f"{name}: {width}×{height} = {width * height:,} pixels{where} exceeds the limit "
            f"of {max_pixels:,} (max_pixels)",
        )


def _frame(im: Image.Image, k: int, count: int, canvases: list[tuple[int, int]] | None,
           data: bytes, digest: str, max_pixels: int, name: str,
           reduce: Callable[[int, int], int] | None) -> LoadedImage:
    fmt = im.format or "unknown"
    if canvases is not None and k < len(canvases):  # before seek: seeking allocates
        _check_pixels(*canvases[k], max_pixels, name, k)
    if k:
        try:
            im.seek(k)
        except Image.DecompressionBombError as exc:
            raise ImageError("too_large", f"{name}: frame {k} is too large to decode "
                                          f"safely ({exc})") from None
        except (*_DECODE_ERRORS, Image.DecompressionBombWarning) as exc:
            raise ImageError("corrupt_image", f"{name}: cannot read frame {k} of {count} "
                                              f"({exc})") from None
    width, height = im.size
    _check_pixels(width, height, max_pixels, name, k)
    mode = im.mode
    reduced, shown = (_draft(im, reduce) if reduce is not None and fmt in _DRAFTABLE
                      else (1, None))
    try:
        im.load()
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or damaged pixel data
        where = f" frame {k}" if count > 1 else ""
        raise ImageError(
            "corrupt_image", f"{name}: {fmt} image data{where} is damaged or truncated ({exc})"
        ) from None
    try:
        pixels = _pixels(im, _orientation(im, name), name)
    except (ImageError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise ImageError(
            "corrupt_image", f"{name}: cannot convert {fmt} mode {im.mode} to RGB ({exc})"
        ) from None
    h, w = pixels.shape[:2]
    if shown is not None and reduced > 1:  # the displayed size, as if decoded in full
        w, h = shown
    return LoadedImage(pixels=pixels, width=w, height=h, content_hash=digest,
                       format=fmt, mode=mode, reduced=reduced, frame=k, frames=count)


def _gif_canvases(data: bytes, limit: int) -> list[tuple[int, int]]:
    """A GIF's canvas size as each frame is reached (Pillow grows the canvas to fit a
    frame that overhangs it, before anything checks the size), for at most ``limit + 1``
    frames; read from the block structure alone, as Pillow's parser reads it."""
    if len(data) < 13:
        return []
    cw, ch = struct.unpack_from("<HH", data, 6)
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    out: list[tuple[int, int]] = []
    n = len(data)
    while pos < n and len(out) <= limit:
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image descriptor
            if pos + 10 > n:
                break
            x, y, w, h, flags = struct.unpack_from("<HHHHB", data, pos + 1)
            cw, ch = max(cw, x + w), max(ch, y + h)
            out.append((cw, ch))
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            pos = _skip_sub_blocks(data, pos + 1)  # after the LZW minimum code size
        else:  # Pillow skips stray bytes one at a time
            pos += 1
    return out


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    n = len(data)
    while pos < n:
        size = data[pos]
        pos += 1 + size
        if size == 0:
            break
    return pos


_MAX_JPEG_JUNK = 1 << 20
_NOT_FF = re.compile(rb"[^\xff]")


def _check_jpeg_markers(data: bytes, name: str) -> None:
    """Refuse a JPEG whose header has more than 1 MiB of junk where markers belong.

    Pillow's JPEG parser steps over junk one byte per Python loop: a 256 MiB file of a
    JPEG signature and zeros held a decode thread for about a minute before failing. This
    walks the markers as that parser does (the same rules, jumping over junk with
    ``bytes.find``) up to the start of scan, and gives no verdict on anything else.
    """
    # Pillow takes the signature's third byte, 0xFF, as the start of the first marker.
    pos, n, junk = 2, len(data), 0
    while pos < n and junk <= _MAX_JPEG_JUNK:
        if data[pos] != 0xFF:  # junk up to the next 0xFF
            nxt = data.find(b"\xff", pos)
            junk += (n if nxt < 0 else nxt) - pos
            if nxt < 0:
                break
            pos = nxt
        if pos + 1 >= n:
            return
        marker = 0xFF00 | data[pos + 1]
        if marker == 0xFFFF:  # padding: each 0xFF after the first is stepped over alone
            m = _NOT_FF.search(data, pos + 1)
            end = n if m is None else m.start() - 1
            junk += end - pos
            pos = end
            continue
        if marker == 0xFF00:
            pos += 2
            continue
        info = _JPEG_MARKERS.get(marker)
        if info is None:
            return  # Pillow refuses it at once: "no marker found"
        pos += 2
        if marker == 0xFFDA:
            return  # start of scan: the header is complete
        if info[2] is not None:  # a segment: its length counts its own two bytes
            if pos + 2 > n:
                return
            pos += struct.unpack_from(">H", data, pos)[0]
    if junk > _MAX_JPEG_JUNK:
        raise ImageError("corrupt_image", f"{name}: JPEG header has {junk:,}+ bytes of "
                                          "junk where markers belong")


def _tiff_pages(data: bytes, limit: int) -> int:
    """How many IFDs (pages) a TIFF chains, up to ``limit + 1``; a loop ends the chain."""
    bo = "<" if data[:2] == b"II" else ">"
    big = struct.unpack_from(bo + "H", data, 2)[0] == 43
    off = struct.unpack_from(bo + ("Q" if big else "I"), data, 8 if big else 4)[0]
    seen: set[int] = set()
    n = len(data)
    while off and off not in seen and len(seen) <= limit:
        seen.add(off)
        if big:
            if off + 8 > n:
                break
            entries = struct.unpack_from(bo + "Q", data, off)[0]
            nxt = off + 8 + 20 * entries
            off = struct.unpack_from(bo + "Q", data, nxt)[0] if nxt + 8 <= n else 0
        else:
            if off + 2 > n:
                break
            entries = struct.unpack_from(bo + "H", data, off)[0]
            nxt = off + 2 + 12 * entries
            off = struct.unpack_from(bo + "I", data, nxt)[0] if nxt + 4 <= n else 0
    return len(seen)


_DRAFTABLE = frozenset({"JPEG", "MPO"})
_ORIENTATION = 0x0112  # EXIF tag; 5-8 turn the image a quarter
_BAND_BYTES = 4 << 20  # rows converted to RGB at a time


def _swaps_axes(im: Image.Image) -> bool:
    try:
        return im.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)
    except _DECODE_ERRORS:
        return False


def _draft(im: Image.Image, reduce: Callable[[int, int], int]) -> tuple[int, tuple[int, int]]:
    """Ask the JPEG decoder for a reduced image before loading: the factor it used, and
    the displayed size of the whole image (its EXIF orientation applied)."""
    width, height = im.size
    shown = (height, width) if _swaps_axes(im) else (width, height)
    factor = int(reduce(*shown))
    if factor < 2:
        return 1, shown
    # Pillow picks the largest scale s in 8, 4, 2 with size // requested >= s (so ask for
    # the floor) and answers the whole image's box in reduced pixels: width / scale.
    got = im.draft(im.mode, (max(1, width // factor), max(1, height // factor)))
    if got is None:
        return 1, shown
    return round(width / got[1][2]), shown


def _orientation(im: Image.Image, name: str) -> int:
    """The EXIF orientation (1-8); a damaged EXIF block costs the rotation, not the image."""
    try:
        value = im.getexif().get(_ORIENTATION, 1)
    except _DECODE_ERRORS as exc:
        log.warning("%s: ignoring unreadable EXIF orientation (%s)", name, exc)
        return 1
    return value if value in range(1, 9) else 1


def _source_view(out: np.ndarray, orientation: int) -> np.ndarray:
    """A view of ``out`` (the displayed image) shaped and ordered like the stored image:
    writing stored rows into it lays them out displayed, with no second full copy.
    Orientation values as ``ImageOps.exif_transpose`` applies them."""
    if orientation == 2:
        return out[:, ::-1]
    if orientation == 3:
        return out[::-1, ::-1]
    if orientation == 4:
        return out[::-1]
    if orientation == 5:
        return out.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(out, 1)
    if orientation == 7:
        return out.transpose(1, 0, 2)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(out, -1)
    return out


def _pixels(im: Image.Image, orientation: int, name: str) -> np.ndarray:
    """The loaded image as read-only ``uint8 [H, W, 3]`` RGB, displayed the right way up.

    Converted a band of rows at a time into the one output array: whole-image conversion
    held Pillow's image, a converted copy, ``tobytes``' chunks and their join at once
    (a 99 MP RGBA PNG peaked at 2 GB), bands keep it to the image and the output.
    """
    width, height = im.size
    rows = max(1, _BAND_BYTES // max(1, width * 4))
    rgb = im.mode == "RGB"
    if rgb and orientation == 1 and rows >= height:
        return _to_rgb(im, name)  # the common case: one copy out of Pillow, kept as is
    swap = orientation in (5, 6, 7, 8)
    out = np.empty((width, height, 3) if swap else (height, width, 3), np.uint8)
    view = _source_view(out, orientation)
    unit = _float_unit(im) if im.mode == "F" else None
    for y in range(0, height, rows):
        y1 = min(height, y + rows)
        if rgb:
            view[y:y1] = _rgb_rows(im, y, y1)
            continue
        band = im if (y == 0 and y1 == height) else im.crop((0, y, width, y1))
        view[y:y1] = _to_rgb(band, name, unit)
    out.flags.writeable = False
    return out


def _rgb_rows(im: Image.Image, y0: int, y1: int) -> np.ndarray:
    """Rows ``y0:y1`` of a loaded RGB image as read-only ``uint8 [rows, W, 3]``, packed
    from Pillow's 4-byte pixels by its raw encoder in one call, into the bytes the array
    then wraps (no copy). ``np.asarray(im)`` (``tobytes``) packs the same bytes in 64 KiB
    pieces and joins them: a second copy, and 9x the time for a 300 x 300 image (the
    pieces and the join churned fresh memory); a band also needed no ``crop`` copy."""
    width = im.size[0]
    size = width * (y1 - y0) * 3
    encoder = Image._getencoder("RGB", "raw", "RGB")
    encoder.setimage(im.im, (0, y0, width, y1))
    _, status, data = encoder.encode(size)
    if status != 1 or len(data) != size:  # not all in one call: never seen; Pillow's way
        band = im if (y0, y1) == (0, im.size[1]) else im.crop((0, y0, width, y1))
        return np.asarray(band)
    return np.frombuffer(data, np.uint8).reshape(y1 - y0, width, 3)


def _float_unit(im: Image.Image) -> bool:
    """Whether a float image's values all lie in 0..1 (then they are scaled by 255)."""
    a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return bool(a.size) and float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def _to_rgb(im: Image.Image, name: str, float_unit: bool | None = None) -> np.ndarray:
    """Convert any decoded mode to uint8 RGB.

    Alpha is composited over black (transparent pixels become black, half-transparent ones
    darker), so whatever colour an editor left under transparent pixels cannot produce
    detections. 16-bit samples keep their top 8 bits (``v >> 8``: 65535 → 255, 32768 →
    128). Mode ``I`` (32-bit int) is taken as 16-bit-range data, the usual source, and
    clipped to 0..65535 first; mode ``F`` is scaled from 0..1 when its values fit there
    (``float_unit``; decided on the whole image, not this band), otherwise clipped to
    0..255. Grayscale is replicated into the three channels.
    """
    mode = im.mode
    if mode == "RGB":
        return _rgb_rows(im, 0, im.size[1])
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        if mode == "I":
            a = np.clip(a, 0, 65535)
        g = (a.astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if float_unit is None:
            float_unit = bool(a.size) and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
        if float_unit:
            a = a * 255.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (0, 0, 0))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return np.asarray(out)
    try:
        return np.asarray(im.convert("RGB"))
    except ValueError:
        raise ImageError(
            "unsupported_format", f"{name}: pixel mode {mode} cannot be converted to RGB"
        ) from None


def _looks_like_text(data: bytes) -> bool:
    head = data[:1024]
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character cut at the 1024-byte boundary is still text
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in "\t\r\n\f" for c in text)


def _claimed(data: bytes) -> str | None:
    fmt = sniff_format(data[:_HEAD_BYTES])
    return "WebP" if fmt == "WEBP" else fmt


def _named_format(head: bytes) -> str | None:
    """The format Pillow sees in a file we do not decode (ICO, PSD, PPM ...), from its
    first bytes only, to name it in the error; None when nothing claims them."""
    try:
        with Image.open(io.BytesIO(head[:_HEAD_BYTES])) as im:
            return im.format
    except Exception:  # noqa: BLE001 - any plugin failure on a cut header: just unnamed
        return None


def _unidentified(data: bytes, name: str) -> ImageError:
    claimed = _claimed(data)
    if claimed is not None:
        return ImageError(
            "corrupt_image",
            f"{name}: starts like a {claimed} file but its header is damaged",
        )
    ext = os.path.splitext(name)[1]
    hint = f" (despite the {ext} extension)" if ext[1:].lower() in IMAGE_EXTENSIONS else ""
    if _looks_like_text(data):
        what = "content is text, not an image"
    else:
        fmt = _named_format(data)
        what = (f"file is in {fmt} format" if fmt
                else "content is not in a recognised image format")
    return ImageError(
        "unsupported_format", f"{name}: {what}{hint}; supported: {_SUPPORTED_TEXT}"
    )


def _damaged(data: bytes, name: str, exc: BaseException) -> ImageError:
    claimed = _claimed(data)
    if claimed is None:
        return ImageError(
            "unsupported_format",
            f"{name}: not a readable image ({exc}); supported: {_SUPPORTED_TEXT}",
        )
    return ImageError("corrupt_image", f"{name}: damaged {claimed} header ({exc})")
