"""Drives tritonclient against a sidecar, in its own process.

tritonclient registers the ``inference.*`` protobuf messages under its own file name, so it
cannot share a process with ``modelplane.oip``; the tests run this script instead. Input: a
JSON file of cases; each case's outputs are written as ``.npy`` files next to it, and a
summary JSON (health answers, metadata, response ids, errors) on stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as tc


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out_dir = Path(sys.argv[1]).parent
    summary: list[dict[str, object]] = []
    for case in spec:
        client = tc.InferenceServerClient(case["address"])
        result: dict[str, object] = {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(case["model"]),
        }
        meta = client.get_model_metadata(case["model"], as_json=True)
        result["metadata"] = meta
        inputs = []
        for item in case["inputs"]:
            array = np.load(item["npy"], allow_pickle=True)
            inp = tc.InferInput(item["name"], list(array.shape), item["datatype"])
            inp.set_data_from_numpy(array)
            inputs.append(inp)
        outputs = [tc.InferRequestedOutput(n) for n in case["outputs"]] if case["outputs"] else None
        try:
            response = client.infer(
                case["model"], inputs, outputs=outputs, request_id=case["id"], client_timeout=30
            )
        except tc.InferenceServerException as exc:
            result["error"] = {"status": exc.status(), "message": exc.message()}
        else:
            result["id"] = response.get_response().id
            names = [o.name for o in response.get_response().outputs]
            result["outputs"] = names
            for name in names:
                np.save(out_dir / f"{case['id']}-{name}.npy", response.as_numpy(name))
        summary.append(result)
        client.close()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
