"""Helpers for tests and benchmarks: small ONNX models built from code.

Needs the ``onnx`` package (installed with the ``controlplane`` or ``sidecar`` extra).
"""

from modelplane.testing.onnx_models import (
    heavy_mlp,
    identity_model,
    mlp,
    save,
)

__all__ = ["heavy_mlp", "identity_model", "mlp", "save"]
