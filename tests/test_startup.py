"""What `zmqvision run` imports before its first result: a one-image run's time is mostly
imports, so modules only some runs need (a progress bar, CURVE, Redis) must stay unloaded
until a run asks for them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

PROBE = """
import json, sys
import zmqvision.cli, zmqvision.run, zmqvision.sink, zmqvision.ventilator, zmqvision.worker
from zmqvision.console import JobProgressBar
with JobProgressBar(enabled=False) as bar:
    bar.note("a note without a terminal")
print(json.dumps({m: m in sys.modules for m in
                  ("rich", "asyncio", "zmq.auth.thread", "redis", "openvino")}))
"""


def test_a_plain_run_loads_no_optional_module():
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                       timeout=50)
    assert p.returncode == 0, p.stderr
    loaded = json.loads(p.stdout.strip().splitlines()[-1])
    assert loaded == {"rich": False, "asyncio": False, "zmq.auth.thread": False,
                      "redis": False, "openvino": False}, loaded
    assert "a note without a terminal" in p.stderr
