/**
 * Which failures are UNAVAILABLE: a loopback HTTP/2 server answers each call as its
 * `x-behave` header says, or drops the connection, or never answers.
 */
import assert from "node:assert/strict";
import { createServer, constants, type Http2Server, type Http2Session } from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { ModelplaneClient, ModelplaneError } from "../src/index.js";

async function failure(call: Promise<unknown>): Promise<ModelplaneError> {
  try {
    await call;
  } catch (err) {
    assert.ok(err instanceof ModelplaneError, `expected a ModelplaneError, got ${String(err)}`);
    return err;
  }
  assert.fail("the call succeeded");
}

describe("connection-level failures", () => {
  let server: Http2Server;
  let address: string;
  const sessions = new Set<Http2Session>();

  before(async () => {
    server = createServer();
    server.on("session", (session) => {
      sessions.add(session);
      session.on("error", () => {});
      session.on("close", () => sessions.delete(session));
    });
    server.on("stream", (stream, headers) => {
      stream.on("error", () => {});
      const behave = headers["x-behave"];
      if (typeof behave === "string" && behave.startsWith("status-")) {
        // A trailers-only answer of the server, as a gRPC server gives an error.
        stream.respond(
          {
            ":status": 200,
            "content-type": "application/grpc",
            "grpc-status": behave.slice("status-".length),
            "grpc-message": "the server says so",
          },
          { endStream: true },
        );
      } else if (behave === "reset") {
        stream.close(constants.NGHTTP2_CANCEL);
      } else if (behave === "drop") {
        setTimeout(() => stream.session?.destroy(), 50);
      }
      // Otherwise no answer: the caller gives up.
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    address = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  after(() => {
    for (const session of sessions) {
      session.destroy();
    }
    server.close();
  });

  async function call(behave: string, client = new ModelplaneClient(address)) {
    try {
      return await failure(
        client.registry.getModel({ name: "models/m" }, { headers: { "x-behave": behave } }),
      );
    } finally {
      client.close();
    }
  }

  test("a connection dropped before any answer is UNAVAILABLE", async () => {
    const err = await call("drop");
    assert.equal(err.code, Code.Unavailable, err.message);
    assert.match(err.message, /closed the connection before answering \(http\/2 stream closed/);
  });

  test("so is one dropped under a server stream before its first message", async () => {
    const client = new ModelplaneClient(address);
    try {
      const stream = client.deployments.watchDeployment(
        { name: "deployments/d" },
        { headers: { "x-behave": "drop" } },
      );
      const err = await failure(
        (async () => {
          for await (const _ of stream) {
            // nothing comes
          }
        })(),
      );
      assert.equal(err.code, Code.Unavailable, err.message);
    } finally {
      client.close();
    }
  });

  test("CANCELLED and INTERNAL answered by the server stay as they are", async () => {
    for (const [status, code, name] of [
      ["1", Code.Canceled, "CANCELLED"],
      ["13", Code.Internal, "INTERNAL"],
    ] as const) {
      const err = await call(`status-${status}`);
      assert.equal(err.code, code, err.message);
      assert.equal(err.status, name);
      assert.match(err.message, /the server says so/);
    }
  });

  test("a stream the server resets on a live connection stays CANCELLED", async () => {
    const err = await call("reset");
    assert.equal(err.code, Code.Canceled, err.message);
  });

  test("a call cut by close() or by its caller stays CANCELLED", async () => {
    const closed = new ModelplaneClient(address);
    setTimeout(() => closed.close(), 50);
    assert.equal((await call("wait", closed)).code, Code.Canceled);

    const client = new ModelplaneClient(address);
    const caller = new AbortController();
    setTimeout(() => caller.abort(), 50);
    try {
      const err = await failure(
        client.registry.getModel({ name: "models/m" }, { signal: caller.signal }),
      );
      assert.equal(err.code, Code.Canceled, err.message);
    } finally {
      client.close();
    }
  });
});
