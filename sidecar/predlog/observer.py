"""An observer for the sidecar's observer hub that feeds the prediction log.

It reads the hub's records by attribute (``model``, ``version``, ``inputs``, ``outputs``,
``request_ids``, ``trace_ids``, ``row_counts``, ``latencies_s``, ``status``, ``finished_at``;
for rejections ``request_id``, ``trace_id``, ``code``, ``reason``, ``message``, ``at``) and
takes ``arm``, ``feature_names`` and a rejection's decoded ``inputs`` when a record has them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sidecar.predlog.records import FeatureNames, PredictionBatch, RejectedRequest
from sidecar.predlog.writer import PredictionLogError, PredictionLogWriter


class PredictionLogObserver:
    """Turns observer-hub records into :meth:`PredictionLogWriter.append` calls.

    Once the writer has failed (it logged that and turned unhealthy), further records are
    counted in ``refused`` rather than raising on the hub's thread.
    """

    def __init__(
        self,
        writer: PredictionLogWriter,
        *,
        arm: str = "champion",
        feature_names: FeatureNames = None,
    ) -> None:
        self.writer = writer
        self.arm = arm
        self.feature_names = feature_names
        self.refused = 0

    def on_batch(self, record: Any) -> None:
        """Log one completed session batch."""
        status: Sequence[str] = record.status
        all_ok = status.count("OK") == len(status)
        latencies = np.asarray(record.latencies_s, np.float64)
        batch = PredictionBatch(
            model_name=record.model,
            model_version=record.version,
            request_ids=record.request_ids,
            row_counts=record.row_counts,
            inputs=record.inputs,
            outputs=record.outputs,
            latencies_s=latencies,
            trace_ids=record.trace_ids,
            arm=getattr(record, "arm", None) or self.arm,
            timestamps=record.finished_at - latencies,
            status_codes="OK" if all_ok else ["OK" if s == "OK" else "INTERNAL" for s in status],
            status_reasons=None if all_ok else [None if s == "OK" else s for s in status],
            feature_names=getattr(record, "feature_names", None) or self.feature_names,
        )
        try:
            self.writer.append(batch)
        except PredictionLogError:
            self.refused += len(record.request_ids)

    def on_rejected(self, record: Any) -> None:
        """Log one rejected request."""
        request = RejectedRequest(
            request_id=record.request_id,
            status_code=record.code,
            reason=record.reason,
            message=record.message,
            model_name=record.model,
            model_version=record.version,
            arm=getattr(record, "arm", None) or self.arm,
            trace_id=record.trace_id or None,
            inputs=getattr(record, "inputs", None) or {},
            timestamp=record.at,
            feature_names=getattr(record, "feature_names", None) or self.feature_names,
        )
        try:
            self.writer.append_rejected(request)
        except PredictionLogError:
            self.refused += 1
