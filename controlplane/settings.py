"""Typed settings of the control-plane server; each may come from a ``MODELPLANE_`` variable."""

from __future__ import annotations

from threading import TIMEOUT_MAX

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from controlplane.blobstore import is_object_uri, local_root, object_uri_problem, shown_uri
from modelplane.errors import InvalidArgument


class ControlPlaneSettings(BaseSettings):
    """How the control plane listens, where it keeps state, and its limits."""

    # No setting means "never" by inf, and nan compares false with every limit.
    model_config = SettingsConfigDict(env_prefix="MODELPLANE_", extra="ignore", allow_inf_nan=False)

    listen: str = Field(
        "127.0.0.1:50051", description="gRPC HOST:PORT to listen on (port 0 picks a free one)"
    )
    db_url: str = Field(
        "sqlite:///.modelplane/controlplane.db",
        description="database URL: sqlite:///PATH (default, under ./.modelplane/) or postgresql://...",
    )
    artifact_root: str = Field(
        ".modelplane/artifacts",
        description="where uploaded artifacts and datasets are kept by digest: a folder on a "
        "local or mounted file system (a path or a file:///path URI), or object storage as "
        "s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (connection options in the URI's query, "
        "credentials from the provider's usual chain; needs signing_key)",
    )
    metrics_listen: str = Field(
        "", description="HOST:PORT of the Prometheus endpoint; none when empty"
    )
    max_upload_bytes: int = Field(
        2 * 1024**3, gt=0, description="largest blob an upload may carry, in bytes"
    )
    max_request_bytes: int = Field(
        16 * 1024**2,
        gt=0,
        description="largest request message accepted, in bytes; larger ones are refused "
        "(RESOURCE_EXHAUSTED) before they are authenticated. Uploads travel in 1 MiB chunks; "
        "raise it only for registrations whose lineage or feature names exceed it",
    )
    max_workers: int = Field(16, gt=0, description="threads handling RPCs in each process")
    max_watches: int = Field(
        256,
        gt=0,
        description="WatchDeployment streams each process serves at once (one per managed "
        "sidecar worker); each holds a thread of its own besides the max_workers threads, so "
        "watches never starve other calls or health checks. More are refused with "
        "RESOURCE_EXHAUSTED (TOO_MANY_WATCHES) and their sidecars retry",
    )
    max_uploads: int = Field(
        0,
        ge=0,
        description="UploadBlob streams each process receives at once, on its max_workers "
        "threads (an upload holds one while it lasts); 0: half of max_workers, at least 1. "
        "Keep it below max_workers, so that uploads leave threads to other calls and health "
        "checks. More are refused at once with RESOURCE_EXHAUSTED (TOO_MANY_UPLOADS)",
    )
    max_waits: int = Field(
        0,
        ge=0,
        description="WaitOperation calls each process holds at once, on its max_workers threads "
        "(a wait holds one for up to a minute); 0: a quarter of max_workers, at least 1. More "
        "are answered at once with the operation as it stands (AIP-151), and clients ask again",
    )
    upload_idle_seconds: float = Field(
        60.0,
        gt=0,
        le=TIMEOUT_MAX,  # the longest a queue can wait
        description="how long an upload may send no message before it is ended with "
        "DEADLINE_EXCEEDED (UPLOAD_IDLE) and its partial file removed, freeing its thread",
    )
    workers: int = Field(
        1,
        ge=0,
        description="server processes sharing the port (SO_REUSEPORT); 0 or auto means one per "
        "usable core",
    )
    reuse_port: bool = Field(
        False, description="bind with SO_REUSEPORT (set for the processes that --workers starts)"
    )
    grace_seconds: float = Field(
        10.0,
        ge=0,
        le=TIMEOUT_MAX,  # the longest the server's stop can wait
        description="on SIGTERM, how long unary calls may finish before open streams are ended",
    )
    shutdown_delay_seconds: float = Field(
        0.0,
        ge=0,
        le=TIMEOUT_MAX,
        description="on SIGTERM, how long health answers NOT_SERVING while calls are still "
        "served before the listener closes and the grace starts, so that load balancers and "
        "Kubernetes endpoints stop sending first (in Kubernetes: a few seconds, e.g. 5)",
    )
    log_level: str = Field("info", description="debug, info, warning or error")
    baseline_sample_size: int = Field(
        10_000,
        gt=0,
        le=10_000_000,
        description="rows of each numeric training feature kept as the drift reference sample",
    )
    signing_key: str = Field(
        "",
        description="Ed25519 PEM private key signing approvals and audit checkpoints, which must "
        "exist (openssl genpkey -algorithm ed25519 -out FILE); empty: "
        "ARTIFACT_ROOT/keys/signing-key.pem, created with mode 0600 when absent",
    )
    verification_keys: str = Field(
        "",
        description="folder of the Ed25519 public keys (PEM, as `modelplane keys show` prints "
        "them) of signing keys retired from signing: approvals and checkpoints they signed stay "
        "valid, while only signing_key signs; empty: none",
    )
    allow_empty_database: bool = Field(
        False,
        description="start even when the database holds no registry (no Modelplane tables, or "
        "none with a row) while the artifact root holds stored blobs: a new, empty registry "
        "over existing artifacts, on purpose. Without it such a start is refused "
        "(DATABASE_EMPTY_ARTIFACTS_PRESENT): the database is most likely a SQLite file copied "
        "with cp while the server ran, or not the one the artifacts belong to",
    )
    evaluation_workers: int = Field(2, gt=0, description="threads running server-side evaluations")
    evaluation_timeout_seconds: float = Field(
        3600.0,
        gt=0,
        le=TIMEOUT_MAX,  # the longest a timer thread can wait
        description="how long one evaluation may run (from when a worker takes it) before it is "
        "stopped and its operation fails with DEADLINE_EXCEEDED (EVALUATION_TIMEOUT)",
    )
    evaluation_queue_size: int = Field(
        32,
        gt=0,
        description="evaluations each process holds at once, running and waiting for a worker; "
        "more are refused with RESOURCE_EXHAUSTED (EVALUATION_QUEUE_FULL)",
    )
    evaluation_max_rows: int = Field(
        10_000_000,
        gt=0,
        description="rows an evaluation dataset may have; larger ones are refused "
        "(DATASET_TOO_LARGE) before they are read",
    )
    evaluation_max_cells: int = Field(
        50_000_000,
        gt=0,
        description="rows times columns an evaluation dataset may have; larger ones are refused "
        "(DATASET_TOO_LARGE) before they are read",
    )
    registration_max_rows: int = Field(
        10_000_000,
        gt=0,
        description="rows each dataset of a version registration may have; larger ones are "
        "refused (DATASET_TOO_LARGE) before they are read",
    )
    registration_max_cells: int = Field(
        50_000_000,
        gt=0,
        description="rows times columns each dataset of a version registration may have; "
        "larger ones are refused (DATASET_TOO_LARGE) before they are read",
    )
    operation_lease_seconds: float = Field(
        60.0,
        gt=0,
        le=TIMEOUT_MAX,  # the longest a timer thread can wait
        description="how long a replica holds a running operation without renewing it; "
        "operations whose lease expired are marked failed (REPLICA_LOST) by any replica",
    )
    auth: str = Field(
        "",
        description="access control: empty (off, loopback clients only), 'none' (off, any "
        "address), 'tokens:FILE' (bearer tokens from a YAML file) or 'jwt'",
    )
    jwt_issuer: str = Field("", description="with --auth jwt: the required iss claim")
    jwt_audience: str = Field("", description="with --auth jwt: the required aud claim")
    jwt_key: str = Field(
        "",
        description="with --auth jwt: a PEM public key (RS256/ES256/EdDSA) or a file holding "
        "an HMAC secret of at least 32 bytes (HS256)",
    )
    jwt_roles_claim: str = Field(
        "roles", description="with --auth jwt: the claim holding roles (dotted for nested)"
    )
    jwt_models_claim: str = Field(
        "models",
        description="with --auth jwt: the claim listing the model ids a token's roles are "
        "limited to (dotted for nested); a token without it acts on every model, and one whose "
        "claim is not a list of 1-1,000 model ids is refused",
    )
    tls_cert: str = Field("", description="PEM certificate chain; serve TLS when set")
    tls_key: str = Field("", description="PEM private key of tls_cert")
    client_ca: str = Field(
        "", description="PEM CA bundle; when set, clients must present a certificate it signed"
    )
    hooks_file: str = Field(
        "",
        description="YAML/JSON file naming a retraining command (argv, no shell) per deployment: "
        "{deployments: {NAME: {command: [...]}}}; commands are never set through the API and "
        "run with the server's environment less its MODELPLANE_* settings",
    )
    hook_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=TIMEOUT_MAX,  # the longest a timer thread can wait
        description="how long a retraining webhook or command may take in all before it is "
        "abandoned (the webhook's connection cut, the command killed with every process of its "
        "session)",
    )
    report_interval_seconds: float = Field(
        2.0,
        ge=0.1,
        le=TIMEOUT_MAX,
        description="how often sidecars report a window (sent to them in the desired state)",
    )
    regression_tolerance: float = Field(
        0.1,
        gt=0,
        description="relative difference beyond which two regression outputs disagree "
        "(sent to sidecars in the desired state); above 0, as sidecars read 0 as unset",
    )
    guard_min_requests: int = Field(
        20,
        ge=1,
        description="requests (shadow pairs) an arm needs in the merged window before guards "
        "reading it are evaluated",
    )
    reconcile_interval_seconds: float = Field(
        0.25,
        ge=0.01,
        le=TIMEOUT_MAX,
        description="how often each process applies due time-driven rollout transitions",
    )
    blue_green_switch_seconds: float = Field(
        2.0,
        ge=0,
        le=TIMEOUT_MAX,
        description="blue/green: how long the switch phase lasts (sidecars apply the switch) "
        "before the watch phase starts",
    )
    watch_heartbeat_seconds: float = Field(
        5.0,
        ge=0.1,
        le=TIMEOUT_MAX,
        description="WatchDeployment repeats the current state this often without changes",
    )
    watch_poll_seconds: float = Field(
        0.2,
        ge=0.01,
        le=TIMEOUT_MAX,
        description="on SQLite, how often each process polls deployment generations for "
        "other processes' changes (PostgreSQL uses LISTEN/NOTIFY)",
    )
    report_retention_seconds: float = Field(
        3600.0, ge=0, le=TIMEOUT_MAX, description="how long stored window reports are kept"
    )

    @property
    def upload_slots(self) -> int:
        """How many uploads each process receives at once: ``max_uploads``, or when it is 0
        half of ``max_workers`` (at least 1)."""
        return self.max_uploads or max(1, self.max_workers // 2)

    @property
    def wait_slots(self) -> int:
        """How many WaitOperation calls each process holds at once: ``max_waits``, or when it
        is 0 a quarter of ``max_workers`` (at least 1)."""
        return self.max_waits or max(1, self.max_workers // 4)

    @field_validator("artifact_root")
    @classmethod
    def _local_artifact_root(cls, value: str) -> str:
        """A folder (a ``file://`` URI becomes its path) or an object-storage URI, kept as
        given; any other URI is refused."""
        if is_object_uri(value):
            problem = object_uri_problem(value)
            if problem:
                raise ValueError(f"artifact root {shown_uri(value)}: {problem}")
            return value
        try:
            return local_root(value)
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _key_beside_object_storage(self) -> ControlPlaneSettings:
        """The signing key's default place is a file under a folder root: an object-storage
        root needs the key named (a private key does not belong in an artifact bucket)."""
        if is_object_uri(self.artifact_root) and not self.signing_key:
            raise ValueError(
                "with an object-storage artifact root, name the Ed25519 signing key's file "
                "(--signing-key PATH or MODELPLANE_SIGNING_KEY; create it with `openssl genpkey "
                "-algorithm ed25519 -out PATH`): its default place is under a folder root"
            )
        return self

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: object) -> object:
        """``auto`` (as ``--workers auto`` takes it) is 0: one process per usable core."""
        return 0 if isinstance(value, str) and value.strip().lower() == "auto" else value
