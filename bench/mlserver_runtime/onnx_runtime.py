"""An MLServer runtime that serves one ONNX model with ONNX Runtime (CPU provider).

MLServer 1.7.1 has no ONNX runtime of its own; this one is the peer the sidecar benchmark
compares against. ``parameters.uri`` in ``model-settings.json`` names the ``.onnx`` file.
It runs in MLServer's own environment (``.venv-peers/mlserver``), not in ours.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntimeModel(MLModel):
    """Decode the inputs with the NumPy codec, run the session, encode every output."""

    async def load(self) -> bool:
        """Open the ONNX Runtime session on the file that ``parameters.uri`` names."""
        path = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """Run the model on the request's inputs."""
        feeds = {inp.name: NumpyCodec.decode_input(inp) for inp in payload.inputs}
        results = self._session.run(self._output_names, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, value)
                for name, value in zip(self._output_names, results, strict=True)
            ],
        )
