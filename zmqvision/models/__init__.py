"""Detection and classification models: what exists (catalog), where it is kept (store),
how it runs (runtime).

Each model family has one small decoder module (``ssd``, ``blazeface``, ``centerface``,
``detection_output``) of pure numpy functions from raw outputs to ``Detections``.

``Detector`` and ``DeviceError`` are imported on first use: they need OpenVINO, which takes
a tenth of a second to import, and the ventilator, the sink and the CLI never run a model.
"""

from zmqvision.models.catalog import (
    CATALOG,
    DEFAULT_MODEL,
    ModelNotFound,
    ModelSpec,
    resolve,
)
from zmqvision.models.store import (
    ModelStoreError,
    cache_dir,
    ensure,
    is_pulled,
    model_file,
    ov_cache_dir,
    pull,
)

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "Classifier",
    "Detector",
    "DeviceError",
    "ModelNotFound",
    "ModelSpec",
    "ModelStoreError",
    "cache_dir",
    "ensure",
    "is_pulled",
    "load_network",
    "model_file",
    "ov_cache_dir",
    "pull",
    "resolve",
]


def __getattr__(name: str):
    if name in ("Detector", "Classifier", "DeviceError", "load_network"):
        from zmqvision.models import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
