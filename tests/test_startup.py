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


CONVERTER_PROBE = """
import json, sys
LEAN = {lean}
if LEAN:  # the command line's own entry point, as every role's process starts
    import zmqvision.cli
    sys.argv = ["zmqvision", "--help"]
    try:
        zmqvision.cli.main()
    except SystemExit:
        pass
from zmqvision.models import Detector, ensure, resolve
spec = resolve("blazeface-short")
det = Detector(spec, model_path=ensure(spec))
dets = det.infer(__import__("numpy").zeros((128, 128, 3), "uint8"))  # a lean one runs
state = {{m: m in sys.modules for m in ("openvino.tools.ovc", "openvino_telemetry")}}
import openvino.tools.ovc  # still importable when asked for
state["converter importable"] = callable(openvino.tools.ovc.convert_model)
state["inferred"] = type(dets).__name__
print(json.dumps(state))
"""


@pytest.mark.parametrize("lean", [True, False], ids=["command line", "library"])
def test_openvino_is_imported_without_its_converter_only_by_the_command_line(lean,
                                                                            models_ready):
    """`import openvino` pulls in the model converter and its telemetry (about 90 ms of a
    one-image run); zmqvision's processes skip it, a library user's process keeps it."""
    p = subprocess.run([sys.executable, "-c", CONVERTER_PROBE.format(lean=lean)],
                       capture_output=True, text=True, timeout=50)
    assert p.returncode == 0, p.stderr
    state = json.loads(p.stdout.strip().splitlines()[-1])
    assert state == {"openvino.tools.ovc": not lean, "openvino_telemetry": not lean,
                     "converter importable": True, "inferred": "Detections"}, state
