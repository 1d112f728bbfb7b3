/** Every message, enum and service of the modelplane.v1 API (generated from protos/). */
export * from "./gen/modelplane/v1/audit_pb.js";
export * from "./gen/modelplane/v1/blobs_pb.js";
export * from "./gen/modelplane/v1/deployments_pb.js";
export * from "./gen/modelplane/v1/evaluation_pb.js";
export * from "./gen/modelplane/v1/governance_pb.js";
export * from "./gen/modelplane/v1/operations_pb.js";
export * from "./gen/modelplane/v1/registry_pb.js";
export * from "./gen/modelplane/v1/sidecar_pb.js";
