"""The one table of who may call what: every control-plane RPC, the built-in roles allowed to
call it, and how a grant scoped to some models applies to it.

Built-in roles: ``viewer`` reads; ``developer`` also creates models, registers versions,
uploads blobs, runs (and cancels) evaluations and gates and moves aliases (gates still apply);
``approver`` also approves and rejects; ``admin`` may do everything, including policies,
deletions, archiving, audit export, checkpoints and audit verification. Any other role name
(``risk``, ``ml-lead``) grants no RPC by itself; policies may require it of approvers.

Deployments: everyone who reads may get and list deployments and their rollout events and
watch their desired state; ``developer`` (and ``admin``) create and update deployments, start
rollouts and pause, resume, abort, promote or roll them back (gates still apply to starting,
and only an admin may set a retraining webhook); deleting a deployment is admin-only. The
``sidecar`` role is what a sidecar's token holds: it may watch deployments, report windows,
read deployments and download the blobs it serves, and nothing else (``developer`` and
``admin`` may report windows too, for tests and tools). A deployment serves one model, fixed
at its creation, and a grant scoped to some models covers the deployments of those models
(ListDeployments shows a scoped caller those deployments only): a sidecar token scoped to
``fraud`` follows, reports on and downloads for ``fraud``'s deployments and no others.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

VIEWER = "viewer"
DEVELOPER = "developer"
APPROVER = "approver"
ADMIN = "admin"
SIDECAR = "sidecar"
BUILT_IN_ROLES = (VIEWER, DEVELOPER, APPROVER, ADMIN, SIDECAR)

READ = frozenset({VIEWER, DEVELOPER, APPROVER, ADMIN})
#: Reads a sidecar needs as well: its deployment, its desired state, the blobs it loads.
SIDECAR_READ = READ | {SIDECAR}
REPORT = frozenset({SIDECAR, DEVELOPER, ADMIN})
WRITE = frozenset({DEVELOPER, ADMIN})
APPROVE = frozenset({APPROVER, ADMIN})
ADMIN_ONLY = frozenset({ADMIN})


class Scope(enum.Enum):
    """How grants scoped to some models count for an RPC."""

    #: The request names a model (``name``, ``parent``, ``model_id``...); only grants covering
    #: it count. A request naming no model needs an unscoped grant.
    MODEL = "model"
    #: Lists spanning models: any grant allows the call; entries of models outside a scoped
    #: caller's grants are dropped from the response (a model named in the request must be
    #: covered, as for MODEL).
    LISTED = "listed"
    #: The request names an operation; the operation's target model must be covered.
    OPERATION = "operation"
    #: Resources that belong to no model (content-addressed blobs, policies as read-only
    #: configuration, the public key): any grant counts.
    SHARED = "shared"
    #: Server-wide changes and whole-trail reads: only unscoped grants count.
    GLOBAL = "global"


@dataclass(frozen=True)
class Rule:
    """Who may call one RPC; ``listed`` names the repeated response field a LISTED scope
    filters and ``key`` the field of its entries that names the resource."""

    roles: frozenset[str]
    scope: Scope
    listed: str = ""
    key: str = ""


_R = "/modelplane.v1.RegistryService/"
_B = "/modelplane.v1.BlobService/"
_O = "/modelplane.v1.OperationsService/"
_E = "/modelplane.v1.EvaluationService/"
_G = "/modelplane.v1.GovernanceService/"
_A = "/modelplane.v1.AuditService/"
_D = "/modelplane.v1.DeploymentService/"

#: Full method name → rule. A method missing here is refused (a test checks none is missing).
PERMISSIONS: dict[str, Rule] = {
    _R + "CreateModel": Rule(WRITE, Scope.MODEL),
    _R + "GetModel": Rule(READ, Scope.MODEL),
    _R + "ListModels": Rule(READ, Scope.LISTED, listed="models", key="name"),
    _R + "UpdateModel": Rule(WRITE, Scope.MODEL),
    _R + "DeleteModel": Rule(ADMIN_ONLY, Scope.MODEL),
    _R + "CreateModelVersion": Rule(WRITE, Scope.MODEL),
    _R + "GetModelVersion": Rule(READ, Scope.MODEL),
    _R + "ListModelVersions": Rule(READ, Scope.MODEL),
    _R + "UpdateModelVersion": Rule(WRITE, Scope.MODEL),
    _R + "ArchiveModelVersion": Rule(ADMIN_ONLY, Scope.MODEL),
    _R + "SetAlias": Rule(WRITE, Scope.MODEL),
    _R + "GetAlias": Rule(READ, Scope.MODEL),
    _R + "ListAliases": Rule(READ, Scope.MODEL),
    _R + "DeleteAlias": Rule(ADMIN_ONLY, Scope.MODEL),
    _R + "ListAliasHistory": Rule(READ, Scope.MODEL),
    _B + "UploadBlob": Rule(WRITE, Scope.SHARED),
    _B + "GetBlob": Rule(SIDECAR_READ, Scope.SHARED),
    _B + "DownloadBlob": Rule(SIDECAR_READ, Scope.SHARED),
    _O + "GetOperation": Rule(READ, Scope.OPERATION),
    _O + "ListOperations": Rule(READ, Scope.LISTED, listed="operations", key="target"),
    _O + "WaitOperation": Rule(READ, Scope.OPERATION),
    _O + "CancelOperation": Rule(WRITE, Scope.OPERATION),
    _E + "Evaluate": Rule(WRITE, Scope.MODEL),
    _E + "GetEvaluation": Rule(READ, Scope.MODEL),
    _E + "ListEvaluations": Rule(READ, Scope.MODEL),
    _G + "CreatePolicy": Rule(ADMIN_ONLY, Scope.GLOBAL),
    _G + "GetPolicy": Rule(READ, Scope.SHARED),
    _G + "ListPolicies": Rule(READ, Scope.SHARED),
    _G + "UpdatePolicy": Rule(ADMIN_ONLY, Scope.GLOBAL),
    _G + "DeletePolicy": Rule(ADMIN_ONLY, Scope.GLOBAL),
    _G + "EvaluateGate": Rule(WRITE, Scope.MODEL),
    _G + "ListGateDecisions": Rule(READ, Scope.MODEL),
    _G + "Approve": Rule(APPROVE, Scope.MODEL),
    _G + "ListApprovals": Rule(READ, Scope.MODEL),
    _G + "VerifyVersion": Rule(READ, Scope.MODEL),
    _G + "GetPublicKey": Rule(READ, Scope.SHARED),
    _G + "GetModelCard": Rule(READ, Scope.MODEL),
    _A + "ListAuditEvents": Rule(READ, Scope.LISTED, listed="events", key="resource"),
    _A + "ExportAuditEvents": Rule(ADMIN_ONLY, Scope.GLOBAL),
    _A + "CreateCheckpoint": Rule(ADMIN_ONLY, Scope.GLOBAL),
    _A + "VerifyAudit": Rule(ADMIN_ONLY, Scope.GLOBAL),
    _D + "CreateDeployment": Rule(WRITE, Scope.MODEL),
    _D + "GetDeployment": Rule(SIDECAR_READ, Scope.MODEL),
    _D + "ListDeployments": Rule(READ, Scope.LISTED, listed="deployments", key="model"),
    _D + "UpdateDeployment": Rule(WRITE, Scope.MODEL),
    _D + "DeleteDeployment": Rule(ADMIN_ONLY, Scope.MODEL),
    _D + "StartRollout": Rule(WRITE, Scope.MODEL),
    _D + "PauseRollout": Rule(WRITE, Scope.MODEL),
    _D + "ResumeRollout": Rule(WRITE, Scope.MODEL),
    _D + "AbortRollout": Rule(WRITE, Scope.MODEL),
    _D + "PromoteRollout": Rule(WRITE, Scope.MODEL),
    _D + "RollbackRollout": Rule(WRITE, Scope.MODEL),
    _D + "ListRolloutEvents": Rule(READ, Scope.MODEL),
    _D + "WatchDeployment": Rule(SIDECAR_READ, Scope.MODEL),
    _D + "ReportWindow": Rule(REPORT, Scope.MODEL),
}

#: modelplane.v1 services that the control plane does not serve (they have no entry above):
#: the sidecar's admin service, and the one between the worker processes of one sidecar.
SERVED_ELSEWHERE = frozenset(
    {"modelplane.v1.SidecarAdminService", "modelplane.v1.SidecarWorkerService"}
)
