/**
 * The deadline the client puts on unary calls, as a gRPC server sees it (`grpc-timeout`):
 * a loopback HTTP/2 server records each call's headers and answers UNIMPLEMENTED.
 */
import assert from "node:assert/strict";
import { createServer, type Http2Server, type IncomingHttpHeaders } from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { ModelplaneClient, ModelplaneError } from "../src/index.js";

/** Milliseconds of a `grpc-timeout` header (`<digits><unit>`), or undefined without one. */
function deadlineMs(headers: IncomingHttpHeaders): number | undefined {
  const value = headers["grpc-timeout"];
  if (typeof value !== "string") {
    return undefined;
  }
  const match = /^(\d+)([HMSmun])$/.exec(value);
  assert.ok(match, `malformed grpc-timeout ${value}`);
  const per: Record<string, number> = { H: 3.6e6, M: 6e4, S: 1e3, m: 1, u: 1e-3, n: 1e-6 };
  return Number(match[1]) * per[match[2]];
}

describe("the deadline of unary calls", () => {
  let server: Http2Server;
  let address: string;
  const seen: IncomingHttpHeaders[] = [];

  before(async () => {
    server = createServer();
    server.on("stream", (stream, headers) => {
      seen.push(headers);
      stream.respond(
        { ":status": 200, "content-type": "application/grpc" },
        { waitForTrailers: true },
      );
      stream.on("wantTrailers", () => {
        stream.sendTrailers({ "grpc-status": "12", "grpc-message": "not here" });
      });
      stream.resume();
      stream.on("end", () => stream.end());
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    address = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => {
    server.close();
  });

  async function sentDeadline(
    client: ModelplaneClient,
    options?: { timeoutMs?: number },
  ): Promise<number | undefined> {
    const before = seen.length;
    await assert.rejects(
      client.registry.getModel({ name: "models/x" }, options),
      (err: unknown) => err instanceof ModelplaneError,
    );
    assert.equal(seen.length, before + 1);
    return deadlineMs(seen[before]);
  }

  test("is the client's default when a call passes none, or passes timeoutMs: undefined", async () => {
    const client = new ModelplaneClient(address, { timeoutMs: 7_000 });
    try {
      for (const options of [undefined, {}, { timeoutMs: undefined }]) {
        const ms = await sentDeadline(client, options);
        assert.ok(
          ms !== undefined && ms > 6_000 && ms <= 7_000,
          `options ${JSON.stringify(options)}: sent ${ms} ms`,
        );
      }
      const own = await sentDeadline(client, { timeoutMs: 2_000 });
      assert.ok(own !== undefined && own > 1_000 && own <= 2_000, `sent ${own} ms`);
    } finally {
      client.close();
    }
  });

  test("is 60 s when the client's options pass timeoutMs: undefined", async () => {
    const client = new ModelplaneClient(address, { timeoutMs: undefined });
    try {
      const ms = await sentDeadline(client, { timeoutMs: undefined });
      assert.ok(ms !== undefined && ms > 59_000 && ms <= 60_000, `sent ${ms} ms`);
    } finally {
      client.close();
    }
  });
});
