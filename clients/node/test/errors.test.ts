/**
 * The status names errors carry: gRPC's canonical spelling of the 17 codes, which Connect's
 * enum names do not always match (`Canceled` is `CANCELLED`). No server needed.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { ModelplaneError, statusName } from "../src/index.js";

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
