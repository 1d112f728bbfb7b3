"""Building, starting and stopping the control-plane gRPC server."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
import structlog
from prometheus_client import CollectorRegistry

from controlplane import audit, auth
from controlplane.api.audit_servicer import AuditServicer
from controlplane.api.blobs_servicer import BlobServicer
from controlplane.api.deployments_servicer import DeploymentServicer
from controlplane.api.evaluation_servicer import EvaluationServicer
from controlplane.api.governance_converters import evaluation_result
from controlplane.api.governance_servicer import GovernanceServicer
from controlplane.api.operations_servicer import OperationsServicer
from controlplane.api.registry_servicer import RegistryServicer
from controlplane.blobstore import Blobs, is_object_uri
from controlplane.objectstore import open_blob_store
from controlplane.rollouts.drift import ProfileCache
from controlplane.rollouts.hooks import HookRunner
from controlplane.rollouts.notifier import GenerationHub, polling_feed, postgres_feed
from controlplane.rollouts.reconciler import Reconciler
from controlplane.rollouts.reports import ReportService
from controlplane.rollouts.service import RolloutService
from controlplane.services import BlobService, ModelService, OperationService, VersionService
from controlplane.services.approvals import ApprovalService
from controlplane.services.audit_trail import AuditTrailService
from controlplane.services.deployments import DeploymentService
from controlplane.services.evaluations import EvaluationService
from controlplane.services.gates import GateService
from controlplane.services.model_cards import ModelCardService
from controlplane.services.policies import PolicyService
from controlplane.settings import ControlPlaneSettings
from controlplane.store import Store, migrate
from modelplane.errors import FailedPrecondition
from modelplane.server import (
    GrpcServerHandle,
    RequestInterceptor,
    RpcMetrics,
    add_health_and_reflection,
    serve_metrics,
)
from modelplane.server.lifecycle import add_port, grpc_options
from modelplane.server.logging import export_write_errors
from modelplane.server.memory import keep_large_buffers
from modelplane.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    blobs_pb2,
    blobs_pb2_grpc,
    deployments_pb2,
    deployments_pb2_grpc,
    evaluation_pb2,
    evaluation_pb2_grpc,
    governance_pb2,
    governance_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

log = structlog.get_logger("modelplane.controlplane")

SERVICE_NAMES = [
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    blobs_pb2.DESCRIPTOR.services_by_name["BlobService"].full_name,
    operations_pb2.DESCRIPTOR.services_by_name["OperationsService"].full_name,
    evaluation_pb2.DESCRIPTOR.services_by_name["EvaluationService"].full_name,
    governance_pb2.DESCRIPTOR.services_by_name["GovernanceService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    deployments_pb2.DESCRIPTOR.services_by_name["DeploymentService"].full_name,
]
SIGNING_KEY_FILE = "keys/signing-key.pem"
#: Keepalive pings the server accepts: one every 10 s at most, also on a connection without
#: an open call (managed sidecars ping every 20 s, ``sidecar.managed.server.KEEPALIVE_OPTIONS``,
#: to notice a connection that died silently). Pings more frequent than that, with no data
#: in between, still end the connection (GOAWAY too_many_pings) after two strikes.
PING_POLICY: list[tuple[str, int]] = [
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def signing_key_path(settings: ControlPlaneSettings) -> Path:
    """Where the server's Ed25519 key lives: ``signing_key`` or under the artifact root."""
    return Path(settings.signing_key or Path(settings.artifact_root) / SIGNING_KEY_FILE)


def signing_keys(settings: ControlPlaneSettings, *, check: bool = True) -> audit.SigningKeys:
    """The server's keys: the ``signing_key`` file, which must exist (only the default one
    under the artifact root is created when absent), and the retired keys in the
    ``verification_keys`` folder.

    A default key generated now, over an artifact root already in use, while the database
    holds approvals signed by keys the server does not have (the database restored without
    ``ARTIFACT_ROOT/keys/``), is refused: FAILED_PRECONDITION (SIGNING_KEY_MISMATCH), and the
    new key is removed, so that the next start checks again instead of signing with it.

    A key named with ``signing_key`` is the operator's choice and is used, but when the
    database holds approvals signed by keys the server does not have (neither it nor a
    verification key), a warning names them unless ``check`` is False (a ``--workers``
    worker, whose supervisor warned)."""
    keys = audit.load_signing_keys(
        signing_key_path(settings),
        create=not settings.signing_key,
        verification_keys=settings.verification_keys,
    )
    if keys.created is not None:
        try:
            _check_new_key(settings, keys)
        except BaseException:
            keys.discard_created()
            raise
    elif settings.signing_key and check:
        _warn_unverifiable(settings, keys)
    return keys


def _unverifiable(settings: ControlPlaneSettings, keys: audit.SigningKeys) -> dict[str, int]:
    """The ids of the keys, neither ``keys``' own nor one of its verification keys, that
    signed approvals in the database, with how many each signed."""
    held = migrate.contents(settings.db_url).approval_keys
    return {k: n for k, n in held.items() if k != keys.key_id and k not in keys.retired}


def _check_new_key(settings: ControlPlaneSettings, keys: audit.SigningKeys) -> None:
    """Refuse a just-generated key when the database's approvals name other keys and the
    artifact root already held blobs (see :func:`signing_keys`); only log when the root is new
    as well (a database shared with another artifact root, whose key this is not)."""
    unknown = _unverifiable(settings, keys)
    if not unknown:
        return
    ids = ", ".join(audit.shown_key_id(k) for k in unknown)
    count = sum(unknown.values())
    if not holds_blobs(settings.artifact_root):
        log.warning(
            "a new signing key was generated, and the database holds approvals signed by "
            "other keys: they fail verification unless their public keys are given with "
            "--verification-keys",
            key_id=keys.key_id,
            approval_key_ids=sorted(unknown),
            approvals=count,
        )
        return
    path = signing_key_path(settings)
    raise FailedPrecondition(
        f"no signing key was at {path}, so a new one ({keys.key_id}) was generated, but the "
        f"database holds {count} approval{'s' if count != 1 else ''} signed by key {ids}, "
        "which this server does not have: each would fail verification, and gates needing "
        f"them would fail. Restore {path} (ARTIFACT_ROOT/keys/signing-key.pem) from the backup "
        "taken with the database; if that key is lost, start with its public key (as "
        "`modelplane keys show` printed it) in a folder given as --verification-keys DIR; if "
        "both are lost, start with a new key named explicitly (`openssl genpkey -algorithm "
        "ed25519 -out FILE`, then --signing-key FILE), accepting that those approvals no "
        "longer count: they must be given again. The new key was removed",
        reason="SIGNING_KEY_MISMATCH",
        metadata={"key_id": keys.key_id, "approval_key_ids": ",".join(sorted(unknown))},
    )


def _warn_unverifiable(settings: ControlPlaneSettings, keys: audit.SigningKeys) -> None:
    """Log which of the database's approvals the explicit signing key cannot verify (see
    :func:`signing_keys`)."""
    unknown = _unverifiable(settings, keys)
    if not unknown:
        return
    log.warning(
        "the database holds approvals signed by keys that are neither this server's signing "
        "key nor one of its verification keys: they no longer verify, and gates needing them "
        "fail, unless the old key's public key is given with --verification-keys DIR (or they "
        "are given again)",
        key_id=keys.key_id,
        approval_key_ids=sorted(unknown),
        approvals=sum(unknown.values()),
    )


def holds_blobs(artifact_root: str) -> bool:
    """Whether the local artifact root holds a stored blob (an object-storage root is not
    listed: False)."""
    if is_object_uri(artifact_root):
        return False
    blobs = Path(artifact_root).expanduser() / "blobs" / "sha256"
    try:
        with os.scandir(blobs) as prefixes:
            for prefix in prefixes:
                if not prefix.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(prefix.path) as files:
                    if any(f.is_file() and not f.name.startswith(".") for f in files):
                        return True
    except OSError:  # none there, or unreadable: opening the blob store reports the latter
        return False
    return False


def check_database(settings: ControlPlaneSettings) -> None:
    """Refuse, before migrating it, a database holding no registry (no Modelplane tables, or
    none with a row) while the artifact root holds stored blobs: FAILED_PRECONDITION
    (DATABASE_EMPTY_ARTIFACTS_PRESENT), unless ``allow_empty_database``. Such a database is
    almost always a SQLite file copied with cp while the server ran (its data still in the
    ``-wal`` file), or not the database meant; served, it would be a new, empty registry.
    UNAVAILABLE (DATABASE_UNAVAILABLE) when it cannot be reached."""
    if settings.allow_empty_database or not holds_blobs(settings.artifact_root):
        return
    if migrate.contents(settings.db_url).holds_data:
        return
    raise FailedPrecondition(
        f"the database {_redacted(settings.db_url)} holds no registry (no Modelplane tables, "
        f"or none with a row), but the artifact root {settings.artifact_root} holds stored "
        "blobs: the database is most likely not the one they belong to. A SQLite file copied "
        "with cp while the server ran holds nothing (its data was in the -wal file beside it; "
        "back up with `modelplane controlplane backup`), or --db names another database. "
        "Restore the database (the server stopped, the -wal and -shm files beside it removed) "
        "or fix --db; to start a new, empty registry over these artifacts on purpose, pass "
        "--allow-empty-database",
        reason="DATABASE_EMPTY_ARTIFACTS_PRESENT",
    )


def start(settings: ControlPlaneSettings, *, migrate: bool = True) -> GrpcServerHandle:
    """Open the store (migrating it unless ``migrate`` is False: a ``--workers`` worker, whose
    supervisor migrated it and checked its approvals' keys), start serving, and report SERVING
    once ready.

    Refuses (FAILED_PRECONDITION) a database that holds no registry over an artifact root
    holding blobs (:func:`check_database`) and a new signing key that cannot verify the
    database's approvals (:func:`signing_keys`).

    Raises :class:`controlplane.auth.AccessConfigError` before opening anything when the
    access-control or TLS settings cannot work (among them: a non-loopback ``listen`` without
    access control, unless ``auth`` is ``none``).
    """
    access = auth.build(settings)
    keep_large_buffers()
    hooks = HookRunner.load(settings.hooks_file, settings.hook_timeout_seconds)
    check_database(settings)
    key = signing_keys(settings, check=migrate)
    log.info(
        "audit signing key",
        key_id=key.key_id,
        path=str(signing_key_path(settings)),
        verification_keys=sorted(key.retired),
    )
    store = Store.open(settings.db_url, migrate=migrate)
    audit.install(store)
    if isinstance(access.authorizer, auth.PermissionPolicy):
        access.authorizer.find_deployments_with(lambda d: _deployment_model(store, d))
    blobs = open_blob_store(settings.artifact_root, settings.max_upload_bytes)
    registry = CollectorRegistry()
    export_write_errors(registry)
    interceptor = RequestInterceptor(
        RpcMetrics("modelplane_controlplane", registry),
        authenticator=access.authenticator,
        authorizer=access.authorizer,
    )
    # Watch streams hold their thread for as long as they last: they get threads of their
    # own on top of max_workers (DeploymentService refuses those past max_watches). Uploads
    # run on the max_workers threads, fewer at once than those (BlobServicer refuses those
    # past max_uploads, and ends those that stall).
    rpc_threads = futures.ThreadPoolExecutor(
        max_workers=settings.max_workers + settings.max_watches, thread_name_prefix="rpc"
    )
    server = grpc.server(
        rpc_threads,
        interceptors=[interceptor],
        options=grpc_options(
            reuse_port=settings.reuse_port, max_receive_bytes=settings.max_request_bytes
        )
        + PING_POLICY,
    )
    models = ModelService(store)
    versions = VersionService(
        store,
        blobs,
        baseline_sample_size=settings.baseline_sample_size,
        max_rows=settings.registration_max_rows,
        max_cells=settings.registration_max_cells,
    )
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(
        RegistryServicer(models, versions), server
    )
    blobs_pb2_grpc.add_BlobServiceServicer_to_server(
        BlobServicer(
            BlobService(store, blobs),
            max_uploads=settings.upload_slots,
            idle_seconds=settings.upload_idle_seconds,
        ),
        server,
    )
    operations = OperationService(store)
    operations_pb2_grpc.add_OperationsServiceServicer_to_server(
        OperationsServicer(operations, max_waits=settings.wait_slots), server
    )
    evaluations = EvaluationService(
        store,
        blobs,
        operations,
        evaluation_result,
        workers=settings.evaluation_workers,
        lease_seconds=settings.operation_lease_seconds,
        timeout_seconds=settings.evaluation_timeout_seconds,
        queue_size=settings.evaluation_queue_size,
        max_rows=settings.evaluation_max_rows,
        max_cells=settings.evaluation_max_cells,
    )
    evaluation_pb2_grpc.add_EvaluationServiceServicer_to_server(
        EvaluationServicer(evaluations), server
    )
    governance_pb2_grpc.add_GovernanceServiceServicer_to_server(
        GovernanceServicer(
            PolicyService(store),
            GateService(store, key),
            ApprovalService(store, key),
            ModelCardService(store, key),
        ),
        server,
    )
    audit_pb2_grpc.add_AuditServiceServicer_to_server(
        AuditServicer(AuditTrailService(store, key)), server
    )
    deployments = _add_deployments(server, settings, store, blobs, hooks)
    health = add_health_and_reflection(server, SERVICE_NAMES)
    try:
        port = add_port(server, settings.listen, access.credentials)
    except OSError:
        evaluations.close()
        hooks.close()
        store.close()
        raise
    handle = GrpcServerHandle(
        server,
        port,
        health,
        SERVICE_NAMES,
        settings.grace_seconds,
        shutdown_delay=settings.shutdown_delay_seconds,
    )
    # A SQLite file deleted under the server: writes are refused, and health says so.
    store.on_database_lost(handle.mark_not_serving)
    # Closed last: gRPC's stop leaves the pool's idle threads running.
    handle.closers.append(lambda: rpc_threads.shutdown(wait=False))
    handle.closers.append(store.close)
    handle.closers.append(evaluations.close)
    handle.closers.append(hooks.close)
    if settings.metrics_listen:
        httpd, metrics_port = serve_metrics(settings.metrics_listen, registry)
        handle.closers.append(httpd.shutdown)
        log.info("metrics listening", metrics_port=metrics_port)
    evaluations.watch_leases(max(settings.operation_lease_seconds / 3, 0.05))
    handle.closers.extend(deployments.start(settings, store))
    handle.on_stop.append(deployments.hub.close)
    # Before the grace period: the evaluations this replica holds end (REPLICA_LOST), then
    # waits answer at once, so a caller waiting on one learns its end instead of being cut
    # off when the grace ends, and the stop does not wait for it.
    handle.on_stop.append(evaluations.stop)
    handle.on_stop.append(operations.stop_waits)
    server.start()
    handle.mark_serving()
    host = settings.listen.rpartition(":")[0]
    log.info(
        "control plane serving",
        listen=f"{host}:{port}",
        port=port,
        db=_redacted(settings.db_url),
        auth=access.mode,
        tls="mutual" if settings.client_ca else ("on" if access.credentials else "off"),
    )
    _warn_about(access, settings)
    return handle


class _Deployments:
    """The deployment services of one process and their background threads."""

    def __init__(self, hub: GenerationHub, rollouts: RolloutService) -> None:
        self.hub = hub
        self.rollouts = rollouts

    def start(self, settings: ControlPlaneSettings, store: Store) -> list[Callable[[], None]]:
        """Start the change feed and the reconciler; returns their closers (run after the
        server stopped; the hub closes as stopping starts, so watch streams end at once)."""
        if store.dialect == "postgresql":
            feed = postgres_feed(str(store.engines.write.url.render_as_string(False)), self.hub)
        else:
            feed = polling_feed(lambda: _generations(store), self.hub, settings.watch_poll_seconds)
        feed.start()
        reconciler = Reconciler(self.rollouts, settings.reconcile_interval_seconds).start()
        return [reconciler.close, feed.close]


def _deployment_model(store: Store, deployment_id: str) -> str | None:
    """The id of the model ``deployments/{deployment_id}`` serves; None when there is none.

    An id that no deployment can have is none without asking the database: PostgreSQL refuses
    text holding NUL, and that error must not turn a scoped caller's bad name into INTERNAL."""
    from controlplane.store.deployment_repos import Deployments
    from modelplane.ids import is_id

    if not is_id(deployment_id):
        return None
    with store.read() as tx:
        row = Deployments(tx.session).row(deployment_id)
        return row.model_id if row is not None else None


def _generations(store: Store) -> dict[str, int]:
    from controlplane.store.deployment_repos import Deployments

    with store.read() as tx:
        return Deployments(tx.session).generations()


def _add_deployments(
    server: grpc.Server,
    settings: ControlPlaneSettings,
    store: Store,
    blobs: Blobs,
    hooks: HookRunner,
) -> _Deployments:
    hub = GenerationHub()
    deployments = DeploymentService(
        store,
        hub,
        hooks,
        report_interval=settings.report_interval_seconds,
        regression_tolerance=settings.regression_tolerance,
        heartbeat=settings.watch_heartbeat_seconds,
        max_watches=settings.max_watches,
    )
    reports = ReportService(
        store,
        hub,
        hooks,
        ProfileCache(blobs),
        report_interval=settings.report_interval_seconds,
        guard_min_requests=settings.guard_min_requests,
        switch_seconds=settings.blue_green_switch_seconds,
    )
    rollouts = RolloutService(
        store,
        deployments,
        hub,
        switch_seconds=settings.blue_green_switch_seconds,
        report_retention_seconds=settings.report_retention_seconds,
        unloaded_max_age_seconds=reports.max_age.total_seconds(),
    )
    deployments_pb2_grpc.add_DeploymentServiceServicer_to_server(
        DeploymentServicer(deployments, rollouts, reports), server
    )
    return _Deployments(hub, rollouts)


def _warn_about(access: auth.AccessControl, settings: ControlPlaneSettings) -> None:
    """Say so in the log when callers are not authenticated or tokens travel in the clear."""
    if not access.enabled:
        log.warning(
            "access control is off: principals and roles are whatever clients send"
            + ("; loopback clients only" if access.mode == "off" else ""),
            auth=access.mode,
        )
    elif access.credentials is None and not auth.is_loopback_listen(settings.listen):
        log.warning("bearer credentials travel unencrypted: serve with --tls-cert/--tls-key")


#: Query parameters of a database URL whose values are not logged (libpq's ``password``,
#: ``sslpassword``, ``passfile``; drivers' tokens and secrets).
_SECRET_QUERY_WORDS = ("pass", "pwd", "secret", "token")
_MASK = "***"


def _redacted(url: str) -> str:
    """The database URL for the log: its password and password-like query values masked."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        scheme, sep, _ = url.partition("://")
        return f"{scheme}://{_MASK}" if sep else _MASK
    query = {
        key: _MASK if any(word in key.lower() for word in _SECRET_QUERY_WORDS) else value
        for key, value in parsed.query.items()
    }
    shown = parsed.set(query=query).render_as_string(hide_password=True)
    return shown.replace("%2A%2A%2A", _MASK)
