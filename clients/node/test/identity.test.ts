/**
 * The principal, roles and token a client is made with travel as gRPC metadata, which carries
 * printable ASCII only: anything else is refused at construction, INVALID_ARGUMENT with reason
 * INVALID_METADATA naming the option, as the Python SDK refuses it (a line break used to fail
 * each call as UNKNOWN with no reason; an accent reached the server as another name). The
 * values that pass are sent as given, to a loopback HTTP/2 server that records each call's
 * headers. No control plane needed.
 */
import assert from "node:assert/strict";
import type { IncomingHttpHeaders } from "node:http2";
import { after, before, describe, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { ModelplaneClient, ModelplaneError, type ClientOptions } from "../src/index.js";
import { type RecordingServer, startRecordingServer } from "./recording-server.js";

function refused(options: ClientOptions, field: string): ModelplaneError {
  let caught: unknown;
  try {
    new ModelplaneClient("127.0.0.1:50051", options).close();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof ModelplaneError, `${JSON.stringify(options)}: ${String(caught)}`);
  assert.equal(caught.code, Code.InvalidArgument);
  assert.equal(caught.status, "INVALID_ARGUMENT");
  assert.equal(caught.reason, "INVALID_METADATA");
  assert.deepEqual(caught.info, { field });
  assert.match(caught.rawMessage, /gRPC metadata cannot carry: printable ASCII only/);
  return caught;
}

test("a principal gRPC metadata cannot carry is refused at construction, shown", () => {
  for (const principal of ["josé", "a\r\nb", "line\n", "tab\there", "nul\0"]) {
    const err = refused({ principal }, "principal");
    assert.ok(
      err.rawMessage.startsWith(`principal ${JSON.stringify(principal)} holds `),
      err.rawMessage,
    );
  }
});

test("roles gRPC metadata cannot carry are refused at construction", () => {
  const err = refused({ roles: ["risk", "prüfer"] }, "roles");
  assert.match(err.rawMessage, /^roles "risk,prüfer" holds "ü"/);
});

test("a token gRPC metadata cannot carry is refused without showing it", () => {
  for (const token of ["s3crét-token-0123456789", "s3cret-token\r\n0123456789"]) {
    const err = refused({ token }, "token");
    assert.ok(err.rawMessage.startsWith("token holds a character"), err.rawMessage);
    assert.ok(!err.rawMessage.includes("s3cr"), err.rawMessage);
  }
});

describe("the identity metadata sent", () => {
  let server: RecordingServer;
  let address: string;
  let seen: IncomingHttpHeaders[];

  before(async () => {
    server = await startRecordingServer();
    ({ address, seen } = server);
  });
  after(() => server.close());

  async function sent(options: ClientOptions): Promise<IncomingHttpHeaders> {
    const client = new ModelplaneClient(address, options);
    try {
      const before = seen.length;
      await assert.rejects(client.registry.getModel({ name: "models/x" }), ModelplaneError);
      assert.equal(seen.length, before + 1);
      return seen[before];
    } finally {
      client.close();
    }
  }

  test("is the principal, roles and token as given, the token without spaces around", async () => {
    const headers = await sent({
      principal: "ci.bot_1@corp:x+y-z",
      roles: [" risk", "", "ml-lead "],
      token: " tok-0123456789abcdef\n",
    });
    assert.equal(headers["x-modelplane-principal"], "ci.bot_1@corp:x+y-z");
    assert.equal(headers["x-modelplane-roles"], "risk,ml-lead");
    assert.equal(headers["authorization"], "Bearer tok-0123456789abcdef");
  });

  test("names nobody when no principal, roles or token is given", async () => {
    const headers = await sent({ principal: "", roles: [], token: " " });
    assert.equal(headers["x-modelplane-principal"], undefined);
    assert.equal(headers["x-modelplane-roles"], undefined);
    assert.equal(headers["authorization"], undefined);
  });
});
