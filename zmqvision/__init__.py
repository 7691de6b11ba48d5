"""zmqvision: brokerless distributed image recognition over ZeroMQ with OpenVINO workers.

``zmqvision.Pool`` hands a pool of workers images from code (paths, bytes or arrays) and
returns their records (``submit``, ``map``, ``await detect``); ``zmqvision.detect(paths,
model=...)`` runs one embedded job and returns one record per image; the command line is
``zmqvision run DIR``.
"""

__version__ = "0.1.0"

__all__ = ["Pool", "PoolClosed", "RequestTimeout", "__version__", "detect"]


def detect(*args, **kwargs):  # noqa: D103 - documented in zmqvision.api.detect
    from zmqvision.api import detect as _detect

    return _detect(*args, **kwargs)


detect.__doc__ = "Run the embedded pipeline; see zmqvision.api.detect."


def __getattr__(name: str):
    # The Pool imports ZeroMQ, OpenVINO's catalog and numpy: only when asked for, so that
    # `zmqvision --help` and the roles' start-up stay fast.
    if name in ("Pool", "PoolClosed"):
        from zmqvision import pool

        return getattr(pool, name)
    if name == "RequestTimeout":
        from zmqvision.engine import RequestTimeout

        return RequestTimeout
    raise AttributeError(f"module 'zmqvision' has no attribute {name!r}")
