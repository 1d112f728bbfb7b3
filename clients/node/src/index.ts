/** The Modelplane control-plane client for Node.js: the typed client and the generated API. */
export * from "./client.js";
export * from "./errors.js";
export * as v1 from "./v1.js";
export * as oip from "./gen/inference/grpc_service_pb.js";
