"""The worker's start-up line says what it runs: under ``--batch`` its infer requests and
the tiles each takes, not their product as if it were requests (a real batched
CenterFace worker, the fixture of tests/test_worker_batch.py)."""

from __future__ import annotations

import logging

import pytest

from tests.test_worker_batch import batched  # noqa: F401 - a fixture

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def info_logs(caplog):
    """The worker's INFO lines, from before it starts (requested ahead of ``batched``)."""
    caplog.set_level(logging.INFO, logger="zmqvision.worker")
    return caplog


def test_a_batched_worker_says_its_requests_and_batch(info_logs, batched):  # noqa: F811
    (line,) = [r.getMessage() for r in info_logs.get_records("setup")
               if r.getMessage().startswith("worker wb: ")]
    assert ", 2 requests of 4 tiles (--batch), tiles from " in line, line
