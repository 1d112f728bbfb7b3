"""The prediction log: one Arrow record per prediction row, in rotating IPC stream files.

Server integration (the writer never runs on the response path except for the bounded
queue)::

    from sidecar.predlog import PredictionBatch, RejectedRequest, open_prediction_log
    from sidecar.predlog import PredictionLogSettings, add_arguments

    add_arguments(parser)                                  # the --log-* flags
    log_settings = PredictionLogSettings.from_args(args)
    writer = None
    if log_settings.dir is not None:
        writer = open_prediction_log(
            log_settings, registry=metrics_registry,
            on_failure=lambda err: health.set("", NOT_SERVING),
        )
    # after each session call (the sidecar's hub does this with sidecar.recording.LogFeed):
    ticket = writer.append(PredictionBatch(
        model_name, model_version, request_ids, row_counts, inputs, outputs,
        latencies_s=latencies, trace_ids=trace_ids, arm="champion"))
    ticket.result()          # only in sync durability, before answering the request
    writer.append_rejected(RejectedRequest(request_id, code, reason, message, ...))
    writer.close()           # at shutdown: writes what is queued, fsyncs, closes

``append`` returns a ``concurrent.futures.Future`` shared by every append written in the
same round (``asyncio.wrap_future`` makes it awaitable). ``writer.healthy`` turns False, and
``on_failure`` runs, when the disk fails; appends then raise :class:`PredictionLogFailed`.

Records: ``timestamp`` (arrival, UTC), ``request_id`` (the OIP id, a UUID when empty),
``row``, ``trace_id``, ``model_name``, ``model_version``, ``arm``, ``status_code`` (gRPC
name), ``status_reason``, ``status_message``, ``latency_s``, ``batch_size``, then one column
per feature and one ``out_<name>`` column per output (see :mod:`sidecar.predlog.layout`).

Reading and querying::

    from sidecar.predlog import read_logs, join_labels
    table = read_logs("/var/log/predictions", since="-1h", model_name="fraud",
                      model_version="3", widen_float16=True)
    import duckdb
    duckdb.sql("SELECT arm, count(*), avg(latency_s) FROM table GROUP BY arm")

DuckDB cannot open Arrow IPC stream files itself: query the table ``read_logs`` returns, or
the Parquet written by :func:`compact` (``modelplane logs compact DIR --out URI``,
partitioned ``date=D/model_name=N/model_version=V``) with
``read_parquet('URI/*/model_name=fraud/**/*.parquet', hive_partitioning = true,
union_by_name = true, hive_types = {'model_name': VARCHAR, 'model_version': VARCHAR})``:
files of one partition may differ in columns (e.g. once retention removed a log file that
added one), and ``union_by_name`` casts a column whose types differ between the files read
(an INT64 feature of one model or version, FP32 of another) to one type, so read one model
(and one version, where versions' types differ) at a time. Nor does DuckDB take float16
Arrow columns (FP16 inputs and outputs): ``widen_float16=True`` reads them as float32.

The writer only ever appends to the files it has open: take (ship, move, delete) only closed
files, which end with Arrow's end-of-stream mark and which no writer holds a lock on. A file
taken while open is noticed before the next write, which goes to a new file
(``modelplane_prediction_log_files_lost_total`` counts them).
"""

from sidecar.predlog.collect import read_logs
from sidecar.predlog.compact import CompactResult, compact, redact_uri
from sidecar.predlog.files import SUFFIX, list_log_files
from sidecar.predlog.layout import OUTPUT_PREFIX, RESERVED_COLUMNS
from sidecar.predlog.metrics import PredictionLogMetrics
from sidecar.predlog.reader import (
    BASE_SCHEMA,
    DamagedLogFile,
    TornLogFile,
    iter_log_batches,
    join_labels,
    parse_time,
    read_file_batches,
)
from sidecar.predlog.records import ARMS, PredictionBatch, RejectedRequest
from sidecar.predlog.settings import PredictionLogSettings, add_arguments
from sidecar.predlog.writer import (
    PredictionLogClosed,
    PredictionLogError,
    PredictionLogFailed,
    PredictionLogWriter,
    open_prediction_log,
)

__all__ = [
    "ARMS",
    "BASE_SCHEMA",
    "OUTPUT_PREFIX",
    "RESERVED_COLUMNS",
    "SUFFIX",
    "CompactResult",
    "DamagedLogFile",
    "PredictionBatch",
    "PredictionLogClosed",
    "PredictionLogError",
    "PredictionLogFailed",
    "PredictionLogMetrics",
    "PredictionLogSettings",
    "PredictionLogWriter",
    "RejectedRequest",
    "TornLogFile",
    "add_arguments",
    "compact",
    "iter_log_batches",
    "join_labels",
    "list_log_files",
    "open_prediction_log",
    "parse_time",
    "read_file_batches",
    "read_logs",
    "redact_uri",
]
