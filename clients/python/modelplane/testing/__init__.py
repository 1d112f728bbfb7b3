"""Helpers for tests, benchmarks and the demo: small ONNX models built from code, and waiting
for a server to report SERVING.

Needs the ``onnx`` package (installed with the ``controlplane`` or ``sidecar`` extra).
"""

from modelplane.testing.health import wait_serving
from modelplane.testing.onnx_models import (
    heavy_mlp,
    identity_model,
    mlp,
    save,
)

__all__ = ["heavy_mlp", "identity_model", "mlp", "save", "wait_serving"]
