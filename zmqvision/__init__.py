"""zmqvision: brokerless distributed image recognition over ZeroMQ with OpenVINO workers."""

__version__ = "0.1.0"
