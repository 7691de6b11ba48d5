"""Image input: find image files lazily and decode each one into RGB pixels or an error.

A job may point at a folder of millions of files, some of them broken, huge, or not images
at all. Two rules follow from that:

* :func:`iter_image_paths` never lists a directory into memory; it walks ``os.scandir``
  iterators as a generator, so the first tile can leave while the walk is still going.
* :func:`read_image` / :func:`decode_image` turn every per-image problem into an
  :class:`ImageError` with a stable ``type`` (the error record's type) and a message that
  names the file. Nothing one file does may stop the job.

Pixels always come out as C-contiguous, read-only ``uint8 [H, W, 3]`` RGB with the EXIF
orientation applied, whatever the file's mode (CMYK, 16-bit, palette, alpha ...).

Global state: importing this module adds one ``warnings`` filter that ignores Pillow's
``DecompressionBombWarning`` (the warning only: ``DecompressionBombError`` still applies).
We check ``max_pixels`` ourselves from the header, per call; a per-call
``warnings.catch_warnings`` is not thread-safe and images are decoded in threads, so the
filter is installed once here instead. ``PIL.Image.MAX_IMAGE_PIXELS`` and
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` are never changed: truncated files must raise, so
if a caller sets ``LOAD_TRUNCATED_IMAGES = True`` elsewhere, truncated images may decode
with grey bands instead of becoming ``corrupt_image``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "SUPPORTED_FORMATS",
    "ImageError",
    "LoadedImage",
    "content_hash",
    "decode_image",
    "iter_image_paths",
    "read_file",
    "read_image",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 100_000_000
"""Decompression-bomb guard: images with more pixels are rejected from their header."""

# Pillow format names we decode; MPO is a multi-picture JPEG (we take the first picture).
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP"})
_SUPPORTED_TEXT = "JPEG, PNG, BMP, TIFF, WebP"

IMAGE_EXTENSIONS = frozenset(
    {"jpg", "jpeg", "jpe", "jfif", "mpo", "png", "bmp", "dib", "tif", "tiff", "webp"}
)
"""File name extensions of the supported formats, for ``iter_image_paths(extensions=...)``."""

# Header signatures of the supported formats: bytes that claim a format we decode but
# that Pillow cannot open are a damaged image, not an unsupported one.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)

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
    """One decoded image, ready to tile.

    ``pixels`` is ``uint8 [H, W, 3]`` RGB, C-contiguous and read-only (copy it before
    modifying), with the EXIF orientation applied, so ``width``/``height`` are the
    displayed size. ``mode`` is the file's Pillow mode before conversion, kept because it
    explains odd-looking results (a CMYK or 16-bit source). Equality is identity: comparing
    pixel arrays field by field is neither cheap nor what anyone means.

    ``reduced`` > 1: a JPEG decoded at that fraction of its size (``decode_image``'s
    ``reduce``), for tiles that are all shrunk more than that anyway. ``width`` and
    ``height`` stay the image's own size, which tile boxes and records use; ``pixels`` is
    about ``width / reduced`` wide.
    """

    pixels: np.ndarray
    width: int
    height: int
    content_hash: str
    format: str
    mode: str
    reduced: int = 1


def content_hash(data: bytes) -> str:
    """Name an image by its bytes, so the same file under two paths is recognised."""
    return "blake2b:" + hashlib.blake2b(data, digest_size=32).hexdigest()


# --------------------------------------------------------------------------- paths


def iter_image_paths(
    inputs: Iterable[str],
    *,
    recursive: bool = True,
    extensions: frozenset[str] | None = None,
) -> Iterator[str]:
    """Yield the files to process, lazily, in the order found.

    Explicit file arguments are yielded exactly as given, even a missing file or a
    ``.txt``: the user named it, so it gets a result (an error record) rather than
    vanishing. Directories are walked with ``os.scandir`` one entry at a time (a folder of
    a million files is never listed into memory); inside them only regular files (or
    symlinks to them) are yielded, hidden names (leading ``.``) are skipped, and
    ``extensions`` (lower-case, no dot) filters by name. Directory symlinks are not
    followed, so symlink loops cannot hang the walk. A directory that cannot be listed is
    logged and skipped. Order is the filesystem's, not sorted: sorting needs the full list.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]  # one path, not an iterable of characters
    exts = None
    if extensions is not None:
        exts = frozenset(e.lower().lstrip(".") for e in extensions)
    for item in inputs:
        path = os.fspath(item)
        if os.path.isdir(path):
            yield from _walk(path, recursive, exts)
        else:
            yield path


def _walk(top: str, recursive: bool, exts: frozenset[str] | None) -> Iterator[str]:
    # A stack of open scandir iterators: memory grows with depth, never with folder size.
    stack: list[Iterator[os.DirEntry[str]]] = []
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
            name = entry.name
            if name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
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
                    continue
            yield entry.path
    finally:
        for it in stack:  # the caller stopped early: release the directory handles
            _close(it)


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


# --------------------------------------------------------------------------- decoding


def read_image(path: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read a file once (the same bytes are hashed and decoded) and decode it.

    Raises :class:`ImageError` for every per-image problem: ``not_found``, ``unreadable``
    (permissions, a directory, an I/O error) and everything :func:`decode_image` raises.
    """
    path = os.fspath(path)
    return decode_image(read_file(path), max_pixels=max_pixels, name=path)


def read_file(path: str) -> bytes:
    """A file's bytes, or :class:`ImageError` (``not_found``, ``unreadable``,
    ``too_large``). Separate from decoding so a caller can hash the bytes and look their
    result up in a cache before paying for the decode (and then decode the same bytes)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageError("not_found", f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError("unreadable", f"{path}: is a directory, not an image file") from None
    except PermissionError:
        raise ImageError("unreadable", f"{path}: permission denied") from None
    except MemoryError:
        raise ImageError("too_large", f"{path}: out of memory reading the file") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ImageError("unreadable", f"{path}: cannot read file ({reason})") from None


def peek_size(path: str) -> tuple[int, int] | None:
    """Width and height as the image will be decoded (EXIF rotation included), from the
    header alone; None for anything that is not a readable image.

    Lets the CLI show what a tiling costs before the job starts, without decoding.
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            try:
                rotated = im.getexif().get(0x0112) in (5, 6, 7, 8)
            except _DECODE_ERRORS:
                rotated = False
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return (height, width) if rotated else (width, height)


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "<bytes>",
    digest: str | None = None, reduce: Callable[[int, int], int] | None = None,
) -> LoadedImage:
    """Decode encoded image bytes into RGB pixels, or raise :class:`ImageError`.

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
    if not data:
        raise ImageError("empty_file", f"{name}: file is empty (0 bytes)")
    digest = digest or content_hash(data)
    try:
        return _decode(data, digest, max_pixels, name, reduce)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError("too_large", f"{name}: out of memory while decoding") from None


def _decode(data: bytes, digest: str, max_pixels: int, name: str,
            reduce: Callable[[int, int], int] | None = None) -> LoadedImage:
    try:
        im = Image.open(io.BytesIO(data))
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

    with im:
        fmt = im.format or "unknown"
        if fmt not in SUPPORTED_FORMATS:
            raise ImageError(
                "unsupported_format",
                f"{name}: file is in {fmt} format; supported: {_SUPPORTED_TEXT}",
            )
        width, height = im.size
        if width <= 0 or height <= 0:
            raise ImageError("corrupt_image", f"{name}: header declares {width}×{height}")
        if width * height > max_pixels:
            raise ImageError(
                "too_large",
                f"{name}: {width}×{height} = {width * height:,} pixels exceeds the limit "
                f"of {max_pixels:,} (max_pixels)",
            )
        mode = im.mode
        reduced, shown = (_draft(im, reduce) if reduce is not None and fmt in _DRAFTABLE
                          else (1, None))
        try:
            im.load()
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - truncated or damaged pixel data
            raise ImageError(
                "corrupt_image", f"{name}: {fmt} image data is damaged or truncated ({exc})"
            ) from None
        try:
            im = _orient(im, name)
            pixels = _to_rgb(im, name)
        except ImageError:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ImageError(
                "corrupt_image", f"{name}: cannot convert {fmt} mode {mode} to RGB ({exc})"
            ) from None

    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    pixels.flags.writeable = False
    h, w = pixels.shape[:2]
    if shown is not None and reduced > 1:  # the displayed size, as if decoded in full
        w, h = shown
    return LoadedImage(pixels=pixels, width=w, height=h, content_hash=digest,
                       format=fmt, mode=mode, reduced=reduced)


_DRAFTABLE = frozenset({"JPEG", "MPO"})
_ORIENTATION = 0x0112  # EXIF tag; 5-8 turn the image a quarter


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


def _orient(im: Image.Image, name: str) -> Image.Image:
    """Apply the EXIF orientation; a damaged EXIF block costs the rotation, not the image."""
    try:
        return ImageOps.exif_transpose(im)
    except _DECODE_ERRORS as exc:
        log.warning("%s: ignoring unreadable EXIF orientation (%s)", name, exc)
        return im


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    """Convert any decoded mode to uint8 RGB.

    Alpha is composited over black (transparent pixels become black, half-transparent ones
    darker), so whatever colour an editor left under transparent pixels cannot produce
    detections. 16-bit samples keep their top 8 bits (``v >> 8``: 65535 → 255, 32768 →
    128). Mode ``I`` (32-bit int) is taken as 16-bit-range data, the usual source, and
    clipped to 0..65535 first; mode ``F`` is scaled from 0..1 when its values fit there,
    otherwise clipped to 0..255. Grayscale is replicated into the three channels.
    """
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        if mode == "I":
            a = np.clip(a, 0, 65535)
        g = (a.astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if a.size and float(a.min()) >= 0.0 and float(a.max()) <= 1.0:
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


def _claimed_format(data: bytes) -> str | None:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


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


def _unidentified(data: bytes, name: str) -> ImageError:
    claimed = _claimed_format(data)
    if claimed is not None:
        return ImageError(
            "corrupt_image",
            f"{name}: starts like a {claimed} file but its header is damaged",
        )
    ext = os.path.splitext(name)[1]
    hint = f" (despite the {ext} extension)" if ext else ""
    if _looks_like_text(data):
        what = "content is text, not an image"
    else:
        what = "content is not in a recognised image format"
    return ImageError(
        "unsupported_format", f"{name}: {what}{hint}; supported: {_SUPPORTED_TEXT}"
    )


def _damaged(data: bytes, name: str, exc: BaseException) -> ImageError:
    claimed = _claimed_format(data)
    if claimed is None:
        return ImageError(
            "unsupported_format",
            f"{name}: not a readable image ({exc}); supported: {_SUPPORTED_TEXT}",
        )
    return ImageError("corrupt_image", f"{name}: damaged {claimed} header ({exc})")
