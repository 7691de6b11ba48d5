"""zmqvision: brokerless distributed image recognition over ZeroMQ with OpenVINO workers.

``zmqvision.detect(paths, model=...)`` runs the embedded pipeline and returns one record
per image; the command line is ``zmqvision run DIR``.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "detect"]


def detect(*args, **kwargs):  # noqa: D103 - documented in zmqvision.api.detect
    from zmqvision.api import detect as _detect

    return _detect(*args, **kwargs)


detect.__doc__ = "Run the embedded pipeline; see zmqvision.api.detect."
