"""The inference sidecar: the Open Inference Protocol (KServe v2) over ONNX Runtime.

:func:`sidecar.server.start` builds and starts a server from :class:`SidecarSettings` and
returns a handle with ``port`` and ``stop()``; ``modelplane sidecar serve`` is the command line.
"""

from sidecar.settings import SidecarSettings

__all__ = ["SidecarSettings"]
