"""Model versions: registration with lineage and baseline, reads, updates, archiving."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.artifacts import inspect_onnx
from controlplane.blobstore import Blobs
from controlplane.dataset_size import check_dataset_size
from controlplane.domain import (
    BaselineRef,
    Blob,
    Column,
    DatasetRef,
    Lineage,
    ModelVersion,
    Signature,
    VersionState,
)
from controlplane.names import (
    check_id,
    check_labels,
    check_sha256,
    check_text,
    parse_model,
    parse_version,
    shown,
)
from controlplane.services.blobs import require_readable
from controlplane.services.filters import (
    FILTER_FIELD,
    masked_changes,
    parse_filter,
    parse_order,
)
from controlplane.services.models import (
    lock_model,
    model_not_found,
    named_deployments,
    require_model,
)
from controlplane.store import Store, Tx
from controlplane.store.convert import lineage_to_json, signature_to_json
from controlplane.store.deployment_repos import Deployments
from controlplane.store.pagination import decode, encode, page_size
from controlplane.store.repos import stale_etag
from modelplane.errors import FailedPrecondition, InvalidArgument, NotFound
from modelplane.server.context import RequestContext

VERSION_UPDATE_PATHS = ("description", "labels")
MAX_FEATURES = 100_000
MAX_PACKAGES = 10_000
#: Datasets one registration may attach: each is read and decoded by the server.
MAX_DATASETS = 32
#: Training parameters and metrics a version records, and the longest name of one and value
#: of a parameter (a value is free text, as a description is).
MAX_PARAMETERS = 1_000
MAX_METRICS = 1_000
MAX_LINEAGE_NAME = 256
MAX_PARAMETER_VALUE = 10_000
#: ListModelVersions ends a page early rather than let its versions pass this many bytes (a
#: page always holds one version): a page of versions smaller than that stays under gRPC's
#: default 4 MiB receive limit.
MAX_PAGE_BYTES = 3 * 1024**2
#: What a version's fixed fields can take: numbers, timestamps, state, format, digests, etag.
_FIXED_BYTES = 1024
PROFILE_MEDIA_TYPE = "application/vnd.modelplane.profile+json"


@dataclass(frozen=True)
class NewDataset:
    """A dataset to attach: its bytes were uploaded as a blob."""

    role: str
    source: str
    sha256: str


@dataclass(frozen=True)
class NewVersion:
    """What a caller gives to register a version."""

    artifact_sha256: str
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    datasets: list[NewDataset] = field(default_factory=list)
    label_column: str = ""
    feature_names: list[str] = field(default_factory=list)
    training_run_id: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    code_repository: str = ""
    code_commit: str = ""
    python_version: str = ""
    platform: str = ""
    packages: list[tuple[str, str]] = field(default_factory=list)


def require_version(tx: Tx, model_id: str, version: int) -> ModelVersion:
    got = tx.versions.get(model_id, version)
    if got is None:
        raise NotFound(
            f"version models/{model_id}/versions/{version} does not exist",
            reason="VERSION_NOT_FOUND",
        )
    return got


def resolve_version(tx: Tx, model_id: str, version: int | None, alias: str | None) -> ModelVersion:
    """The version named by number, or by ``alias`` (``models/{model}@{alias}``)."""
    if alias:
        got = tx.aliases.get(model_id, alias)
        if got is None:
            raise NotFound(
                f"alias models/{model_id}/aliases/{alias} does not exist",
                reason="ALIAS_NOT_FOUND",
            )
        version = got.version
    assert version is not None
    return require_version(tx, model_id, version)


def _check_new(new: NewVersion) -> None:
    """Every refusal names the request field at fault in its metadata (AIP-193 style paths:
    ``code.commit``, ``datasets.role``; ``index`` says which dataset)."""
    check_sha256(new.artifact_sha256, "artifact_sha256")
    check_text(new.description, "description", field="description")
    check_labels(new.labels)
    check_text(new.label_column, "label_column", 256, single_line=True, field="label_column")
    check_text(
        new.training_run_id, "training_run_id", 256, single_line=True, field="training_run_id"
    )
    check_text(
        new.code_repository, "code.repository", 2048, single_line=True, field="code.repository"
    )
    check_no_credentials(new.code_repository)
    check_text(new.code_commit, "code.commit", 256, single_line=True, field="code.commit")
    _check_feature_names(new.feature_names)
    _check_parameters(new.parameters)
    _check_metrics(new.metrics)
    _check_environment(new)
    if len(new.datasets) > MAX_DATASETS:
        raise InvalidArgument(
            f"a version records at most {MAX_DATASETS} datasets (one per role), and "
            f"{len(new.datasets)} were given; attach at most {MAX_DATASETS}",
            reason="TOO_MANY_DATASETS",
            metadata={"field": "datasets", "limit": str(MAX_DATASETS)},
        )
    seen: set[str] = set()
    for index, d in enumerate(new.datasets):
        at = {"index": str(index)}
        if d.role in seen:
            raise InvalidArgument(
                f"dataset role {shown(d.role)} appears more than once; each role may appear once",
                reason="DUPLICATE_DATASET_ROLE",
                metadata={"field": "datasets.role", **at},
            )
        seen.add(d.role)
        _with_metadata(at, check_id, d.role, "dataset role", "datasets.role")
        _with_metadata(
            at,
            check_text,
            d.source,
            "dataset source",
            2048,
            single_line=True,
            field="datasets.source",
        )
        _with_metadata(
            at, check_sha256, d.sha256, f"sha256 of dataset {d.role!r}", "datasets.sha256"
        )


#: Where a URL's userinfo may sit: a scheme, any slashes ("\\" too, which some parsers take
#: for "/"), then the userinfo up to the last "@" before the path; searched anywhere, as a URL
#: behind a prefix (a space, a character that does not print) is still read as one.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):([/\\]*)([^/\\?#\s]*)@")


#: A query string or fragment after a scheme or an scp-like ``host:`` (a Windows drive letter,
#: ``C:\\`` or ``C:/``, is neither), where a token can go (``?access_token=...``); git remotes
#: have none.
_QUERY = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.\-]+:|[A-Za-z]:(?![/\\]))[^?#]*[?#]")


def _is_secret(url: str, match: re.Match[str]) -> bool:
    """Whether ``match`` of :data:`_USERINFO` in ``url`` holds a secret: a password
    (``user:password@``), any user name after an http(s) scheme (a token often goes there),
    or a ``user:secret@`` straight after a "/", "\\" or ":" (``https://user:pw@host`` with
    a mangled scheme reads so). An scp-like remote (``git@host:org/repo``, ``host:repo@tag``)
    and an ssh login (``ssh://git@host/...``) hold none."""
    scheme, slashes, userinfo = match.groups()
    if ":" in userinfo or any(p in ("http", "https") for p in scheme.lower().split("+")):
        return True
    return not slashes and match.start() > 0 and url[match.start() - 1] in "/\\:"


def check_no_credentials(url: str) -> None:
    """Refuse a code repository URL that carries credentials, which immutable lineage would
    show to every reader: INVALID_ARGUMENT (CREDENTIALS_IN_URL) for a password in any URL
    (``user:password@`` after a scheme, wherever it stands and however many slashes follow
    the scheme), and for any user name in an http(s) URL, ``git+https`` too (where a token
    often goes as the user name), and for a query string or fragment (``?access_token=...``,
    ``#...``) after a scheme, which git remotes do not have and where a token can go.
    ``ssh://git@host/...`` and scp-like ``git@host:org/repo`` name a login, not a secret, and
    pass. So that what a reader sees is what was checked, a URL without credentials but with
    surrounding whitespace or a character that does not print (a zero-width space, a
    direction mark) is INVALID_ARGUMENT. The messages do not repeat the URL."""
    if any(_is_secret(url, m) for m in _USERINFO.finditer(url)):
        raise InvalidArgument(
            "code.repository carries credentials (user:password@ or a user name in an http(s) "
            "URL); record the URL without them",
            reason="CREDENTIALS_IN_URL",
            metadata={"field": "code.repository"},
        )
    if _QUERY.search(url):
        raise InvalidArgument(
            "code.repository has a query string or fragment (?... or #...), where a token can "
            "go (?access_token=...) and which git remotes do not have; record the URL without it",
            reason="CREDENTIALS_IN_URL",
            metadata={"field": "code.repository"},
        )
    if url != url.strip():
        raise InvalidArgument(
            "code.repository has whitespace around it; record the URL without it",
            reason="INVALID_ARGUMENT",
            metadata={"field": "code.repository"},
        )
    hidden = next((ch for ch in url if not ch.isprintable()), None)
    if hidden is not None:
        raise InvalidArgument(
            f"code.repository contains a character that does not print (U+{ord(hidden):04X}); "
            "record the URL without it",
            reason="INVALID_ARGUMENT",
            metadata={"field": "code.repository"},
        )


def _with_metadata(
    metadata: dict[str, str], check: Callable[..., object], *args: Any, **kw: Any
) -> None:
    """``check(*args, **kw)``, whose refusal gets ``metadata`` added (which dataset it was)."""
    try:
        check(*args, **kw)
    except InvalidArgument as err:
        raise InvalidArgument(
            err.message, reason=err.reason, metadata={**err.metadata, **metadata}
        ) from None


def _check_lineage_name(key: str, what: str, field_: str, reason: str) -> None:
    """A parameter or metric name: one line of 1-256 characters (policies read it by name)."""
    if not key:
        raise InvalidArgument(
            f"a {what} name must not be empty (policies read {what}s by name)",
            reason=reason,
            metadata={"field": field_},
        )
    check_text(
        key,
        f"{what} name {shown(key)}",
        MAX_LINEAGE_NAME,
        single_line=True,
        field=field_,
        reason=reason,
    )


def _too_many(count: int, limit: int, what: str, field_: str) -> InvalidArgument:
    return InvalidArgument(
        f"a version records at most {limit} {what}, and {count} were given",
        reason=f"TOO_MANY_{field_.upper()}",
        metadata={"field": field_, "limit": str(limit)},
    )


def _check_parameters(parameters: Mapping[str, str]) -> None:
    """At most MAX_PARAMETERS, each named as :func:`_check_lineage_name` says, with a value of
    at most MAX_PARAMETER_VALUE characters without control characters but newlines and tabs
    (INVALID_PARAMETER, field ``parameters``)."""
    if len(parameters) > MAX_PARAMETERS:
        raise _too_many(len(parameters), MAX_PARAMETERS, "parameters", "parameters")
    for key, value in parameters.items():
        _check_lineage_name(key, "parameter", "parameters", "INVALID_PARAMETER")
        check_text(
            value,
            f"the value of parameter {shown(key)}",
            MAX_PARAMETER_VALUE,
            field="parameters",
            reason="INVALID_PARAMETER",
        )


def _check_metrics(metrics: Mapping[str, float]) -> None:
    """At most MAX_METRICS, each named as :func:`_check_lineage_name` says, with a finite
    value (INVALID_METRIC, field ``metrics``)."""
    if len(metrics) > MAX_METRICS:
        raise _too_many(len(metrics), MAX_METRICS, "metrics", "metrics")
    for key, metric in metrics.items():
        _check_lineage_name(key, "metric", "metrics", "INVALID_METRIC")
        if not math.isfinite(metric):
            raise InvalidArgument(
                f"metric {shown(key)} is not a finite number",
                reason="INVALID_METRIC",
                metadata={"field": "metrics"},
            )


def _check_feature_names(names: list[str]) -> None:
    """Feature names as a version stores them: at most MAX_FEATURES, each non-empty single-line
    text of at most 256 characters without control characters, no two alike."""
    field_ = {"field": "feature_names"}
    if len(names) > MAX_FEATURES:
        raise InvalidArgument(
            f"at most {MAX_FEATURES} feature names are allowed",
            reason="TOO_MANY_FEATURES",
            metadata={**field_, "limit": str(MAX_FEATURES)},
        )
    seen: set[str] = set()
    for name in names:
        if not name:
            raise InvalidArgument(
                "feature names must not be empty", reason="INVALID_FEATURE_NAMES", metadata=field_
            )
        check_text(
            name,
            f"feature name {shown(name)}",
            256,
            single_line=True,
            field="feature_names",
            reason="INVALID_FEATURE_NAMES",
        )
        if name in seen:
            raise InvalidArgument(
                f"feature names must be unique, and {shown(name)} appears more than once",
                reason="INVALID_FEATURE_NAMES",
                metadata=field_,
            )
        seen.add(name)


def _utf8(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


def _strings(values: Iterable[str]) -> int:
    """At least what ``values`` take in a message: each string's UTF-8 bytes, and 6 for its tag
    and length (a length below 2 MiB takes 3 bytes, a tag 1 or 2)."""
    return sum(_utf8(v) + 6 for v in values)


def _string_map(values: Mapping[str, str]) -> int:
    """At least what a ``map<string, string>`` takes: per entry a key, a value and the entry's
    own tag and length."""
    return sum(_utf8(k) + _utf8(v) + 18 for k, v in values.items())


def _lineage_bytes(lineage: Lineage) -> dict[str, int]:
    """What each request field of a lineage takes as a message, at least (see
    :func:`_strings`); the small single-line fields go under ``lineage``."""
    return {
        "parameters": _string_map(lineage.parameters),
        # An entry: its tag and length, the key, the double and its tag.
        "metrics": sum(_utf8(k) + 21 for k in lineage.metrics),
        "environment.packages": sum(_utf8(n) + _utf8(v) + 18 for n, v in lineage.packages),
        # A dataset: its strings and numbers, a column its name, type, tag and length.
        "datasets": sum(
            _strings([d.role, d.source, d.sha256, d.format])
            + 32
            + sum(_utf8(c.name) + _utf8(c.type) + 18 for c in d.schema)
            for d in lineage.datasets
        ),
        "lineage": _strings(
            [
                lineage.training_run_id,
                lineage.code_repository,
                lineage.code_commit,
                lineage.python_version,
                lineage.platform,
            ]
        )
        + 32,
    }


def version_bytes(version: ModelVersion) -> dict[str, int]:
    """What each part of ``version`` takes as a ModelVersion message, at least as much as it
    does, by the request field that gave it: the signature is the artifact's
    (``artifact_sha256``)."""
    tensors = [*version.signature.inputs, *version.signature.outputs]
    artifact = version.artifact
    return {
        **_lineage_bytes(version.lineage),
        "description": _strings([version.description]),
        "labels": _string_map(version.labels),
        "feature_names": _strings(version.feature_names),
        # A tensor: its name, datatype, tag and length, and 11 bytes a dimension (-1 takes 10).
        "artifact_sha256": sum(
            _strings([t.name, t.datatype]) + 6 + 11 * len(t.shape) for t in tensors
        )
        + _strings([artifact.producer_name, artifact.producer_version]),
        "version": _strings(
            [version.name, version.label_column, version.created_by, version.etag, *version.aliases]
        )
        + _FIXED_BYTES,
    }


def _check_derived_feature_names(names: list[str]) -> None:
    """Feature names taken from the train dataset's columns pass the checks given ones do;
    INVALID_ARGUMENT (DATASET_COLUMNS_INVALID) naming the column when one does not."""
    try:
        _check_feature_names(names)
    except InvalidArgument as err:
        raise InvalidArgument(
            "no feature_names were given, and the train dataset's columns cannot serve as "
            f"feature names: {err.message}; rename the column(s) in the dataset, or pass "
            "feature_names naming the columns the model takes",
            reason="DATASET_COLUMNS_INVALID",
            metadata={"field": "feature_names"},
        ) from None


def _environment_text(value: str, field_: str, limit: int, what: str = "") -> None:
    """Single-line text of the environment lineage, refused with its field named."""
    try:
        check_text(value, what or field_, limit, single_line=True)
    except InvalidArgument as err:
        raise InvalidArgument(
            err.message, reason="INVALID_ENVIRONMENT", metadata={"field": field_}
        ) from None


def _check_environment(new: NewVersion) -> None:
    _environment_text(new.python_version, "environment.python_version", 64)
    _environment_text(new.platform, "environment.platform", 256)
    if len(new.packages) > MAX_PACKAGES:
        raise InvalidArgument(
            f"at most {MAX_PACKAGES} environment packages are allowed",
            reason="TOO_MANY_PACKAGES",
            metadata={"field": "environment.packages", "limit": str(MAX_PACKAGES)},
        )
    for name, version in new.packages:
        if not name:
            raise InvalidArgument(
                "environment package names must not be empty",
                reason="INVALID_ENVIRONMENT",
                metadata={"field": "environment.packages.name"},
            )
        _environment_text(name, "environment.packages.name", 256, "environment package name")
        _environment_text(
            version,
            "environment.packages.version",
            256,
            f"version of environment package {name!r}",
        )


#: States the API defines (for wire compatibility) that nothing sets: a filter on them is refused.
_UNSET_STATES = (VersionState.APPROVED.value, VersionState.REJECTED.value)
_FILTER_STATES = [s for s in VersionState.__members__ if s not in _UNSET_STATES]


def _state_term(value: str) -> str:
    """The state a ``state=`` filter term names (``ARCHIVED`` or ``VERSION_STATE_ARCHIVED``)."""
    # ASCII only: str.upper() maps some other letters onto ASCII ones (dotless i to I).
    state = value.upper().removeprefix("VERSION_STATE_") if value.isascii() else ""
    if state in _UNSET_STATES:
        raise InvalidArgument(
            f"state={state} matches no version: no version is ever {state}, as approvals and "
            "gate decisions are made per target (an alias or a deployment), not for the version "
            "as a whole; read them with ListApprovals and ListGateDecisions, or in the model "
            f"card (a state filter takes {' or '.join(_FILTER_STATES)})",
            reason="INVALID_FILTER",
            metadata=FILTER_FIELD,
        )
    if state not in VersionState.__members__:
        raise InvalidArgument(
            f"unknown state {shown(value)}; use one of {', '.join(_FILTER_STATES)}",
            reason="INVALID_FILTER",
            metadata=FILTER_FIELD,
        )
    return state


def _tabular_width(signature: Signature) -> int | None:
    """F when the model takes exactly one ``[-1, F]`` input."""
    if len(signature.inputs) == 1 and len(signature.inputs[0].shape) == 2:
        width = signature.inputs[0].shape[1]
        return width if width > 0 else None
    return None


def _check_feature_count(
    signature: Signature, feature_names: list[str], *, derived: bool = False, label: str = ""
) -> None:
    """INVALID_ARGUMENT (FEATURE_COUNT_MISMATCH) when the model takes one ``[-1, F]`` input and
    ``feature_names`` are not F names. ``derived``: no feature names were given, so these are
    the train dataset's columns less the label column ``label`` (if one was given); the message
    then says so, and when one column too many was taken without a label column, that it may
    be the label."""
    width = _tabular_width(signature)
    count = len(feature_names)
    if width is None or not feature_names or count == width:
        return
    takes = f"the model's input {shown(signature.inputs[0].name)} takes {width} features"
    if not derived:
        message = f"{takes} but {count} feature names were given"
    elif label:
        message = (
            f"{takes} but the train dataset has {count} columns besides its label column "
            f"{shown(label)}, all taken as features as no feature_names were given: list the "
            "model's features with feature_names (--feature-names), or leave the other columns "
            "out of the dataset"
        )
    elif count == width + 1:
        message = (
            f"{takes} but the train dataset has {count} columns, all taken as features as no "
            "label_column and no feature_names were given: the one column too many may be the "
            f"label (the last column is {shown(feature_names[-1])}); name it with label_column "
            "(--label COLUMN), or list the model's features with feature_names (--feature-names)"
        )
    else:
        message = (
            f"{takes} but the train dataset has {count} columns, all taken as features as no "
            "label_column and no feature_names were given: name the label column with "
            "label_column (--label) and list the model's features with feature_names "
            "(--feature-names), or leave the other columns out of the dataset"
        )
    raise InvalidArgument(
        message, reason="FEATURE_COUNT_MISMATCH", metadata={"field": "feature_names"}
    )


def input_columns(signature: Signature, profiled: Sequence[str]) -> list[str]:
    """The feature columns a sidecar reads from the model's inputs when it monitors drift
    against a baseline that profiles ``profiled`` (:func:`modelplane.profiles.input_columns`,
    the rule the sidecar applies, with the names it picks without ``--feature-names``)."""
    from modelplane import profiles

    return list(profiles.input_columns([(t.name, t.shape) for t in signature.inputs], profiled))


def _listed(names: Sequence[str], limit: int = 10) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(shown(n) for n in names[:limit]) + more


def _check_baseline_inputs(signature: Signature, profiled: list[str], given: bool) -> None:
    """INVALID_ARGUMENT (BASELINE_MISMATCH) when the baseline would profile a feature that the
    model's inputs do not provide: no sidecar could monitor the version's drift against it."""
    columns = input_columns(signature, profiled)
    provided = set(columns)
    extra = [n for n in profiled if n not in provided]
    if not extra:
        return
    have = _listed(columns) if columns else "no feature columns"
    if given:
        fix = "list only features the model's inputs provide in feature_names (--feature-names)"
    else:
        fix = (
            "leave those columns out of the train dataset, name the label column with "
            "label_column (--label), or list the model's features with feature_names "
            "(--feature-names)"
        )
    raise InvalidArgument(
        f"the baseline profile of the train dataset would hold feature(s) {_listed(extra)}, "
        f"which the model's inputs do not provide (they provide {have}), so no sidecar could "
        f"monitor this version's drift: {fix}",
        reason="BASELINE_MISMATCH",
        metadata={"field": "datasets", "features": ",".join(extra)[:1000]},
    )


def _within_page_bytes(versions: list[ModelVersion]) -> list[ModelVersion]:
    """The first of ``versions`` that together stay within MAX_PAGE_BYTES, one at least."""
    total = 0
    for count, version in enumerate(versions):
        total += sum(version_bytes(version).values())
        if count and total > MAX_PAGE_BYTES:
            return versions[:count]
    return versions


class VersionService:
    """Registers versions and answers for them.

    A registration's datasets are held to ``max_rows`` rows and ``max_cells`` rows x columns
    each, read from their metadata before they are decoded, and are read one at a time."""

    def __init__(
        self,
        store: Store,
        blobs: Blobs,
        *,
        baseline_sample_size: int = 10_000,
        max_rows: int = 10_000_000,
        max_cells: int = 50_000_000,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.baseline_sample_size = baseline_sample_size
        self.max_rows = max_rows
        self.max_cells = max_cells

    def _require_stored(self, recorded: set[str], sha256: str, what: str) -> None:
        if sha256 not in recorded or not self.blobs.exists(sha256):
            raise FailedPrecondition(
                f"{what} blobs/{sha256} has not been uploaded; upload it first with UploadBlob",
                reason="BLOB_NOT_FOUND",
            )

    def create(
        self, ctx: RequestContext, parent: str, new: NewVersion, request_id: str = ""
    ) -> ModelVersion:
        model_id = parse_model(parent, "parent")
        _check_new(new)
        with self.store.read() as tx:
            digests = [new.artifact_sha256, *(d.sha256 for d in new.datasets)]
            model_found, recorded = tx.blobs.model_and_blobs(model_id, digests)
            if not model_found:
                raise model_not_found(model_id)
            # The server reads these blobs for the caller: only those it may read itself.
            require_readable(tx, ctx, digests)
        self._require_stored(recorded, new.artifact_sha256, "artifact")
        for d in new.datasets:
            self._require_stored(recorded, d.sha256, f"dataset {d.role!r}")
        artifact, signature = inspect_onnx(
            self.blobs.read_bytes(new.artifact_sha256), new.artifact_sha256
        )
        datasets, feature_names, baseline = self._read_datasets(new, signature)
        _check_feature_count(signature, feature_names)
        lineage = Lineage(
            training_run_id=new.training_run_id,
            datasets=datasets,
            parameters=dict(new.parameters),
            metrics=dict(new.metrics),
            code_repository=new.code_repository,
            code_commit=new.code_commit,
            python_version=new.python_version,
            platform=new.platform,
            packages=list(new.packages),
        )
        columns = {
            "description": new.description,
            "labels": dict(new.labels),
            "state": VersionState.REGISTERED.value,
            "artifact_sha256": artifact.sha256,
            "artifact": artifact.__dict__,
            "signature": signature_to_json(signature),
            "lineage": lineage_to_json(lineage),
            "feature_names": feature_names,
            "label_column": new.label_column,
            "baseline": baseline.__dict__ if baseline else {},
            "created_by": ctx.principal,
        }
        request = {"parent": parent, "version": new}
        with self.store.write(ctx, "CreateModelVersion", request_id, request=request) as wtx:
            if wtx.replay is not None:
                ref = parse_version(wtx.replay)
                assert ref.version is not None
                return require_version(wtx, ref.model_id, ref.version)
            version = wtx.versions.add_numbered(
                model_id, {**columns, "create_time": wtx.now, "update_time": wtx.now}
            )
            if version is None:
                raise model_not_found(model_id)
            if baseline is not None:
                # Profiles are stored like uploads, so that DownloadBlob serves them. Two
                # registrations on one train dataset make the same profile: the row is added
                # only if absent, in one statement, so neither fails on the other's insert.
                size = self.blobs.size(baseline.sha256)
                profile = Blob(baseline.sha256, size, PROFILE_MEDIA_TYPE, ctx.principal, wtx.now)
                if wtx.blobs.add_if_absent(profile):
                    wtx.record("StoreProfile", profile.name, None, profile)
            wtx.record("CreateModelVersion", version.name, None, version)
            return version

    def _read_datasets(
        self, new: NewVersion, signature: Signature
    ) -> tuple[list[DatasetRef], list[str], BaselineRef | None]:
        refs: list[DatasetRef] = []
        feature_names = list(new.feature_names)
        baseline: BaselineRef | None = None
        for d in new.datasets:
            # One at a time: a dataset's bytes and table are let go before the next is read.
            ref, feature_names, profiled = self._read_dataset(new, d, feature_names, signature)
            refs.append(ref)
            baseline = profiled or baseline
        return refs, feature_names, baseline

    def _read_dataset(
        self, new: NewVersion, d: NewDataset, feature_names: list[str], signature: Signature
    ) -> tuple[DatasetRef, list[str], BaselineRef | None]:
        """The dataset's lineage entry; for the train dataset also the feature names (given,
        or derived from its columns) and the baseline profile, stored as a blob."""
        from modelplane import profiles

        data = self.blobs.read_bytes(d.sha256)
        check_dataset_size(
            data,
            max_rows=self.max_rows,
            max_cells=self.max_cells,
            settings=("registration_max_rows", "registration_max_cells"),
            dataset=f"dataset {d.role!r}",
            serves="registers versions with",
            advice="attach a sample",
            metadata={"field": "datasets", "role": d.role},
        )
        table = profiles.read_table(data)
        ref = DatasetRef(
            role=d.role,
            source=d.source,
            sha256=d.sha256,
            row_count=table.num_rows,
            schema=[Column(f.name, str(f.type)) for f in table.schema],
            format=profiles.detect_format(data),
        )
        if d.role != "train":
            return ref, feature_names, None
        # Read once: pyarrow builds a new list on every access of ``column_names``.
        columns = set(table.column_names)
        if new.label_column and new.label_column not in columns:
            raise InvalidArgument(
                f"label column {new.label_column!r} is not in the train dataset",
                reason="DATASET_COLUMNS_MISSING",
                metadata={"field": "label_column"},
            )
        derived = not feature_names
        if derived:
            feature_names = profiles.default_feature_names(table, new.label_column or None)
            _check_derived_feature_names(feature_names)
        missing = [f for f in feature_names if f not in columns]
        if missing:
            raise InvalidArgument(
                f"the train dataset lacks feature column(s) {', '.join(missing[:10])}",
                reason="DATASET_COLUMNS_MISSING",
                metadata={"field": "feature_names"},
            )
        _check_feature_count(signature, feature_names, derived=derived, label=new.label_column)
        if not input_columns(signature, feature_names):
            # No input of the model is a column or a fixed-width table (an image, a [-1, -1]
            # tensor): drift cannot be watched on it, so there is no baseline; the dataset
            # stays in the lineage.
            return ref, feature_names, None
        _check_baseline_inputs(signature, feature_names, bool(new.feature_names))
        profile = profiles.build_profile(
            profiles.profiling_table(data, table),
            feature_names,
            sample_size=self.baseline_sample_size,
        )
        sha = self.blobs.put_bytes(profile.to_bytes())
        baseline = BaselineRef(
            sha256=sha, row_count=table.num_rows, feature_count=len(feature_names)
        )
        return ref, feature_names, baseline

    def get(self, name: str) -> ModelVersion:
        ref = parse_version(name, allow_alias=True)
        with self.store.read() as tx:
            if not tx.models.exists(ref.model_id):
                raise model_not_found(ref.model_id)
            return resolve_version(tx, ref.model_id, ref.version, ref.alias)

    def list_versions(
        self,
        parent: str,
        *,
        filter: str = "",
        order_by: str = "",
        page_size_: int = 0,
        page_token: str = "",
    ) -> tuple[list[ModelVersion], str]:
        model_id = parse_model(parent, "parent")
        terms = parse_filter(filter, {"state": _state_term})
        states = {terms.fields["state"]} if "state" in terms.fields else set()
        _, desc = parse_order(order_by, ("version",), "version desc")
        query = {"list": "versions", "parent": parent, "filter": filter, "order_by": order_by}
        after = decode(page_token, query)
        limit = page_size(page_size_)
        with self.store.read() as tx:
            require_model(tx, model_id)
            if terms.matches_nothing:
                return [], ""
            versions, next_key = tx.versions.page(
                model_id, terms.labels, states, desc, after, limit
            )
        kept = _within_page_bytes(versions)
        if len(kept) < len(versions):
            # The key the repository pages versions by: the next page starts after the last kept.
            next_key = [kept[-1].version]
        return kept, encode(query, next_key) if next_key else ""

    def update(
        self,
        ctx: RequestContext,
        name: str,
        etag: str,
        paths: list[str],
        values: Mapping[str, object],
        request_id: str = "",
    ) -> ModelVersion:
        ref = parse_version(name, field="version.name")
        assert ref.version is not None
        changes = masked_changes(
            paths, values, VERSION_UPDATE_PATHS, resource="version", implicit=True
        )
        request = {"name": name, "etag": etag, "changes": changes}
        with self.store.write(ctx, "UpdateModelVersion", request_id, request=request) as tx:
            # The model's lock, as archive takes it: no other write to the version can commit
            # between the etag check and the update. The check is made here, as the
            # repository's would compare an etag of the revision alone, which a version of a
            # model deleted and created again under its id repeats.
            lock_model(tx, ref.model_id)
            before = require_version(tx, ref.model_id, ref.version)
            if tx.replay is not None:
                return before
            if etag and etag != before.etag:
                raise stale_etag(before.name)
            after = tx.versions.update(ref.model_id, ref.version, "", changes, tx.now)
            tx.record("UpdateModelVersion", after.name, before, after)
            return after

    def archive(
        self, ctx: RequestContext, name: str, etag: str = "", request_id: str = ""
    ) -> ModelVersion:
        ref = parse_version(name)
        assert ref.version is not None
        request = {"name": name, "etag": etag}
        with self.store.write(ctx, "ArchiveModelVersion", request_id, request=request) as tx:
            lock_model(tx, ref.model_id)
            before = require_version(tx, ref.model_id, ref.version)
            if tx.replay is not None:
                return before
            # Checked here, as in update: before the no-op, so that a stale etag is refused
            # even when the version is archived already.
            if etag and etag != before.etag:
                raise stale_etag(before.name)
            if before.state is VersionState.ARCHIVED:
                return before
            if before.aliases:
                raise FailedPrecondition(
                    f"version {name} is still pointed to by alias(es) {', '.join(before.aliases)}; "
                    "move or delete them first",
                    reason="VERSION_HAS_ALIASES",
                )
            serving = Deployments(tx.session).using_version(ref.model_id, ref.version)
            if serving:
                raise FailedPrecondition(
                    f"version {name} is served by {named_deployments(serving)} (as champion or "
                    "as the candidate of a rollout in progress); promote another version, end "
                    "the rollout (abort or roll back) or delete the deployment first",
                    reason="VERSION_IN_USE",
                    metadata={"deployments": ",".join(serving)},
                )
            after = tx.versions.update(
                ref.model_id, ref.version, "", {"state": VersionState.ARCHIVED.value}, tx.now
            )
            tx.record("ArchiveModelVersion", after.name, before, after)
            return after
