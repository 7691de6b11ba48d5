"""Detection models: what exists (catalog), where it is kept (store), how it runs (runtime).

Each model family has one small decoder module (``ssd``, ``blazeface``, ``centerface``,
``detection_output``) of pure numpy functions from raw outputs to ``Detections``.
"""

from zmqvision.models.catalog import (
    CATALOG,
    DEFAULT_MODEL,
    ModelNotFound,
    ModelSpec,
    resolve,
)
from zmqvision.models.runtime import Detector, DeviceError
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
    "Detector",
    "DeviceError",
    "ModelNotFound",
    "ModelSpec",
    "ModelStoreError",
    "cache_dir",
    "ensure",
    "is_pulled",
    "model_file",
    "ov_cache_dir",
    "pull",
    "resolve",
]
