"""Import OpenVINO without its model converter, in zmqvision's own processes.

``import openvino`` also imports ``openvino.tools.ovc`` (the model converter) and, through
it, OpenVINO's telemetry client with urllib, http.client and ssl: about 90 ms of the
150 ms the import takes on a 2-core machine, and a tenth of a one-image ``zmqvision run``.
zmqvision reads every model with ``Core.read_model`` and never converts one, so its command
line (``cli.main``, which every role's process goes through) asks for the import without
it. A library user's process (``zmqvision.detect``) keeps the stock import, converter
included: we do not change what ``openvino`` offers in someone else's program.

The converter is skipped the way the import system itself allows: ``None`` under its name
in ``sys.modules`` makes its import raise ImportError, which ``openvino/__init__.py``
catches. The entry is removed right after, so a later explicit ``import
openvino.tools.ovc`` still works; only the ``openvino.convert_model`` shortcut is absent.
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType

CONVERTER = "openvino.tools.ovc"
_lean = False
_lock = threading.Lock()


def skip_converter() -> None:
    """From now on in this process, import OpenVINO without its converter."""
    global _lean
    _lean = True


def import_openvino() -> ModuleType:
    """The ``openvino`` module, imported lean where ``skip_converter`` was called."""
    if "openvino" not in sys.modules and _lean:
        with _lock:
            blocked = sys.modules.setdefault(CONVERTER, None) is None
            try:
                import openvino  # noqa: F401
            finally:
                if blocked and sys.modules.get(CONVERTER, 0) is None:
                    del sys.modules[CONVERTER]
    import openvino

    return openvino
