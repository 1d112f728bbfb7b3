/**
 * The deadline the client puts on unary calls, as a gRPC server sees it (`grpc-timeout`):
 * a loopback HTTP/2 server records each call's headers and answers UNIMPLEMENTED (after
 * 20 ms, so that a deadline that fires at once is seen as DEADLINE_EXCEEDED).
 */
import assert from "node:assert/strict";
import type { IncomingHttpHeaders } from "node:http2";
import { after, before, describe, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { ModelplaneClient, ModelplaneError } from "../src/index.js";
import { type RecordingServer, startRecordingServer } from "./recording-server.js";

/** The longest delay Node's timers keep (a longer one fires after 1 ms). */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

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
  let server: RecordingServer;
  let address: string;
  let seen: IncomingHttpHeaders[];

  before(async () => {
    server = await startRecordingServer(20);
    ({ address, seen } = server);
  });
  after(() => server.close());

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

  /** A call's error: UNIMPLEMENTED when it reached the server with no deadline passed. */
  async function failure(
    client: ModelplaneClient,
    options?: { timeoutMs?: number },
  ): Promise<ModelplaneError> {
    try {
      await client.registry.getModel({ name: "models/x" }, options);
    } catch (err) {
      assert.ok(err instanceof ModelplaneError, `not a ModelplaneError: ${String(err)}`);
      return err;
    }
    assert.fail("the call succeeded");
  }

  test("Infinity, the client's or a call's own, is no deadline (not 1 ms)", async () => {
    const unbounded = new ModelplaneClient(address, { timeoutMs: Infinity });
    const bounded = new ModelplaneClient(address, { timeoutMs: 7_000 });
    try {
      for (const [client, options] of [
        [unbounded, undefined],
        [bounded, { timeoutMs: Infinity }],
        [bounded, { timeoutMs: 0 }],
      ] as const) {
        const before = seen.length;
        const err = await failure(client, options);
        assert.equal(err.status, "UNIMPLEMENTED", `options ${String(options?.timeoutMs)}`);
        assert.equal(seen.length, before + 1);
        assert.equal(deadlineMs(seen[before]), undefined);
      }
      // The longest deadline Node's timers keep is sent as it is, and does not fire at once.
      const longest = await failure(bounded, { timeoutMs: MAX_TIMEOUT_MS });
      assert.equal(longest.status, "UNIMPLEMENTED");
      assert.equal(deadlineMs(seen[seen.length - 1]), MAX_TIMEOUT_MS);
    } finally {
      unbounded.close();
      bounded.close();
    }
  });

  /** The deadline sent on each call `run` makes (its UNIMPLEMENTED failure expected). */
  async function sentDeadlines(run: () => Promise<unknown>): Promise<(number | undefined)[]> {
    const before = seen.length;
    await assert.rejects(run(), (err: unknown) => err instanceof ModelplaneError);
    return seen.slice(before).map(deadlineMs);
  }

  test("uploadBlob and registerVersion send their own timeoutMs, or the client's", async () => {
    const client = new ModelplaneClient(address, { timeoutMs: 7_000 });
    const onnx = new Uint8Array([1, 2, 3]);
    const near = (ms: number | undefined, want: number) =>
      ms !== undefined && ms > want - 1_000 && ms <= want;
    try {
      const [byDefault] = await sentDeadlines(() => client.uploadBlob(onnx));
      assert.ok(near(byDefault, 7_000), `uploadBlob sent ${byDefault} ms`);
      const [own] = await sentDeadlines(() =>
        client.uploadBlob(onnx, "application/onnx", { timeoutMs: 300_000 }),
      );
      assert.ok(near(own, 300_000), `uploadBlob sent ${own} ms`);
      // The upload fails (UNIMPLEMENTED), so it is the one call registerVersion makes here.
      const [registered] = await sentDeadlines(() =>
        client.registerVersion("m", onnx, { timeoutMs: 300_000 }),
      );
      assert.ok(near(registered, 300_000), `registerVersion sent ${registered} ms`);
      const [unbounded] = await sentDeadlines(() =>
        client.registerVersion("m", onnx, { timeoutMs: Infinity }),
      );
      assert.equal(unbounded, undefined);
      // A wrong one fails before anything is sent, with the request id to retry with.
      const before = seen.length;
      await assert.rejects(
        client.registerVersion("m", onnx, { timeoutMs: -1, requestId: "r-1" }),
        (err: unknown) =>
          err instanceof ModelplaneError &&
          err.code === Code.InvalidArgument &&
          err.requestId === "r-1",
      );
      assert.equal(seen.length, before);
    } finally {
      client.close();
    }
  });

  test("a fraction of a millisecond, the client's or a call's own, is rounded up", async () => {
    // Connect writes grpc-timeout as the number it is given ("1000.5m"), which a gRPC server
    // refuses (INTERNAL: Error parsing 'grpc-timeout' metadata): whole milliseconds are sent.
    const raw = (headers: IncomingHttpHeaders) => headers["grpc-timeout"];
    const fractional = new ModelplaneClient(address, { timeoutMs: 1000.5 });
    const whole = new ModelplaneClient(address, { timeoutMs: 7_000 });
    const onnx = new Uint8Array([1, 2, 3]);
    try {
      assert.equal(await sentDeadline(fractional), 1001);
      assert.equal(raw(seen[seen.length - 1]), "1001m");
      for (const [timeoutMs, want] of [
        [333.3, 334],
        [1999.0001, 2000],
        [MAX_TIMEOUT_MS - 0.5, MAX_TIMEOUT_MS],
      ]) {
        assert.equal(await sentDeadline(whole, { timeoutMs }), want, String(timeoutMs));
        assert.equal(raw(seen[seen.length - 1]), `${want}m`);
      }
      const [uploaded] = await sentDeadlines(() =>
        whole.uploadBlob(onnx, "application/onnx", { timeoutMs: 2500.25 }),
      );
      assert.equal(uploaded, 2501);
      const [registered] = await sentDeadlines(() =>
        whole.registerVersion("m", onnx, { timeoutMs: 2500.25 }),
      );
      assert.equal(registered, 2501);
      // Under a millisecond is 1 ms, not 0 (no deadline): it fires before the answer, maybe
      // before the server has the call; wait for it there, so that no later test sees it.
      const before = seen.length;
      const tiny = await failure(whole, { timeoutMs: 0.3 });
      assert.equal(tiny.status, "DEADLINE_EXCEEDED");
      for (let i = 0; i < 50 && seen.length === before; i++) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      for (const headers of seen.slice(before)) {
        assert.equal(raw(headers), "1m");
      }
    } finally {
      fractional.close();
      whole.close();
    }
  });

  const WRONG = [NaN, -1, -Infinity, MAX_TIMEOUT_MS + 1, 2 ** 31, 1e12];

  test("NaN, a negative or too long timeoutMs is refused when the client is made", () => {
    for (const timeoutMs of WRONG) {
      assert.throws(
        () => new ModelplaneClient(address, { timeoutMs }),
        (err: unknown) =>
          err instanceof ModelplaneError &&
          err.code === Code.InvalidArgument &&
          err.rawMessage.startsWith(`timeoutMs ${String(timeoutMs)} is not a deadline`),
        String(timeoutMs),
      );
    }
  });

  test("NaN, a negative or too long timeoutMs fails its call before anything is sent", async () => {
    const client = new ModelplaneClient(address);
    try {
      for (const timeoutMs of WRONG) {
        const before = seen.length;
        const err = await failure(client, { timeoutMs });
        assert.equal(err.code, Code.InvalidArgument, String(timeoutMs));
        assert.match(err.rawMessage, /^the call's timeoutMs .* is not a deadline/);
        assert.equal(seen.length, before, `${timeoutMs}: the call was sent`);
      }
      // A server stream takes no default deadline, but its own is checked too: it throws
      // when read.
      const watch = client.deployments.watchDeployment(
        { name: "deployments/x" },
        { timeoutMs: -1 },
      );
      await assert.rejects(
        (async () => {
          for await (const _ of watch) {
            assert.fail("a state arrived");
          }
        })(),
        (err: unknown) => err instanceof ModelplaneError && err.code === Code.InvalidArgument,
      );
    } finally {
      client.close();
    }
  });
});
