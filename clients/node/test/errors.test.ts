/**
 * The status names errors carry: gRPC's canonical spelling of the 17 codes, which Connect's
 * enum names do not always match (`Canceled` is `CANCELLED`); what an UNIMPLEMENTED of a
 * server that serves none of this API says. No server needed.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { ERROR_DOMAIN, ModelplaneError, statusName, toModelplaneError } from "../src/index.js";

const CANONICAL: Record<number, string> = {
  0: "OK",
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

test("statusName spells each of the 17 codes as gRPC does", () => {
  assert.equal(Object.keys(CANONICAL).length, 17);
  for (const [code, name] of Object.entries(CANONICAL)) {
    assert.equal(statusName(Number(code) as Code), name, `code ${code}`);
  }
  assert.equal(statusName(99 as Code), "UNKNOWN");
});

test("a cancelled call's error says CANCELLED", () => {
  const err = new ModelplaneError(new ConnectError("stopped", Code.Canceled), "", {});
  assert.equal(err.status, "CANCELLED");
  assert.equal(err.message, "CANCELLED: stopped");
});

test("an UNIMPLEMENTED without ErrorInfo names the likely mix-up: a sidecar's address", () => {
  // gRPC's own answer for a service the server does not have, as a sidecar answers this API.
  const err = toModelplaneError(
    new ConnectError("Method not found!", Code.Unimplemented),
    "127.0.0.1:8001",
  );
  assert.equal(err.code, Code.Unimplemented);
  assert.equal(err.status, "UNIMPLEMENTED");
  assert.equal(err.reason, "");
  assert.ok(
    err.message.startsWith(
      "UNIMPLEMENTED: 127.0.0.1:8001 answers, but does not serve this API (Method not found!)" +
        ": is 127.0.0.1:8001 a sidecar's address? Give the control plane's gRPC address",
    ),
    err.message,
  );
});

test("an UNIMPLEMENTED the control plane explains (ErrorInfo) keeps its own message", () => {
  const info = { domain: ERROR_DOMAIN, reason: "NOT_ENABLED", metadata: { field: "x" } };
  const answered = new ConnectError("not on this server", Code.Unimplemented, undefined, [
    { desc: ErrorInfoSchema, value: info },
  ]);
  const err = toModelplaneError(answered, "127.0.0.1:50051");
  assert.equal(err.message, "UNIMPLEMENTED NOT_ENABLED: not on this server");
  assert.deepEqual(err.info, { field: "x" });
  // Without the address (an error made outside a client's call) nothing is added either.
  const bare = toModelplaneError(new ConnectError("Method not found!", Code.Unimplemented));
  assert.equal(bare.message, "UNIMPLEMENTED: Method not found!");
});
