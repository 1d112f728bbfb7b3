"""GovernanceService over gRPC: policies, gates, approvals, verification and model cards."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from controlplane.api import governance_converters as gcv
from controlplane.services.approvals import ApprovalService
from controlplane.services.gates import GateService
from controlplane.services.model_cards import ModelCardService
from controlplane.services.policies import POLICY_UPDATE_PATHS, PolicyService
from modelplane.server import current_context
from modelplane.v1 import governance_pb2, governance_pb2_grpc


class GovernanceServicer(governance_pb2_grpc.GovernanceServiceServicer):
    """Thin adapter from GovernanceService RPCs to the governance services."""

    def __init__(
        self,
        policies: PolicyService,
        gates: GateService,
        approvals: ApprovalService,
        cards: ModelCardService,
    ) -> None:
        self.policies = policies
        self.gates = gates
        self.approvals = approvals
        self.cards = cards

    def CreatePolicy(
        self, request: governance_pb2.CreatePolicyRequest, context: grpc.ServicerContext
    ) -> governance_pb2.Policy:
        p = request.policy
        policy = self.policies.create(
            current_context(),
            request.policy_id,
            p.target,
            list(p.rules),
            p.description,
            request.request_id,
        )
        return gcv.policy_to_proto(policy)

    def GetPolicy(
        self, request: governance_pb2.GetPolicyRequest, context: grpc.ServicerContext
    ) -> governance_pb2.Policy:
        return gcv.policy_to_proto(self.policies.get(request.name, request.revision))

    def ListPolicies(
        self, request: governance_pb2.ListPoliciesRequest, context: grpc.ServicerContext
    ) -> governance_pb2.ListPoliciesResponse:
        items, token = self.policies.list_policies(request.page_size, request.page_token)
        return governance_pb2.ListPoliciesResponse(
            policies=[gcv.policy_to_proto(p) for p in items], next_page_token=token
        )

    def UpdatePolicy(
        self, request: governance_pb2.UpdatePolicyRequest, context: grpc.ServicerContext
    ) -> governance_pb2.Policy:
        p = request.policy
        paths = list(request.update_mask.paths)
        if paths == ["*"]:
            paths = list(POLICY_UPDATE_PATHS)
        values = {"rules": list(p.rules), "description": p.description, "target": p.target}
        policy = self.policies.update(
            current_context(), p.name, p.etag, paths, values, request.request_id
        )
        return gcv.policy_to_proto(policy)

    def DeletePolicy(
        self, request: governance_pb2.DeletePolicyRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self.policies.delete(current_context(), request.name, request.etag, request.request_id)
        return empty_pb2.Empty()

    def EvaluateGate(
        self, request: governance_pb2.EvaluateGateRequest, context: grpc.ServicerContext
    ) -> governance_pb2.GateDecision:
        decision = self.gates.evaluate_gate(
            current_context(), request.name, request.target, request.request_id
        )
        return gcv.decision_to_proto(decision)

    def ListGateDecisions(
        self, request: governance_pb2.ListGateDecisionsRequest, context: grpc.ServicerContext
    ) -> governance_pb2.ListGateDecisionsResponse:
        items, token = self.gates.list_decisions(
            request.parent, request.target, request.page_size, request.page_token
        )
        return governance_pb2.ListGateDecisionsResponse(
            decisions=[gcv.decision_to_proto(d) for d in items], next_page_token=token
        )

    def Approve(
        self, request: governance_pb2.ApproveRequest, context: grpc.ServicerContext
    ) -> governance_pb2.Approval:
        approval = self.approvals.approve(
            current_context(),
            request.name,
            request.target,
            request.decision,
            request.comment,
            request.request_id,
        )
        return gcv.approval_to_proto(approval)

    def ListApprovals(
        self, request: governance_pb2.ListApprovalsRequest, context: grpc.ServicerContext
    ) -> governance_pb2.ListApprovalsResponse:
        items, token = self.approvals.list_approvals(
            request.parent, request.page_size, request.page_token
        )
        return governance_pb2.ListApprovalsResponse(
            approvals=[gcv.approval_to_proto(a) for a in items], next_page_token=token
        )

    def VerifyVersion(
        self, request: governance_pb2.VerifyVersionRequest, context: grpc.ServicerContext
    ) -> governance_pb2.VerifyVersionResponse:
        checks = self.approvals.verify_version(request.name)
        return governance_pb2.VerifyVersionResponse(
            ok=all(c.ok for c in checks),
            checks=[
                governance_pb2.SignatureCheck(resource=c.resource, ok=c.ok, message=c.message)
                for c in checks
            ],
        )

    def GetPublicKey(
        self, request: governance_pb2.GetPublicKeyRequest, context: grpc.ServicerContext
    ) -> governance_pb2.PublicKey:
        pem, kid = self.approvals.public_key()
        return governance_pb2.PublicKey(pem=pem, key_id=kid, algorithm="Ed25519")

    def GetModelCard(
        self, request: governance_pb2.GetModelCardRequest, context: grpc.ServicerContext
    ) -> governance_pb2.ModelCard:
        return gcv.card_to_proto(self.cards.card(request.name, request.format))
