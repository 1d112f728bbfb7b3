/**
 * Which failures are UNAVAILABLE: a loopback HTTP/2 server answers each call as its
 * `x-behave` header says, or drops the connection, or never answers; an HTTP/1.1 server; a
 * server process killed while it streams an answer.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createServer as createHttp1Server } from "node:http";
import { createServer, constants, type Http2Server, type Http2Session } from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
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
      } else if (behave === "answer" || behave === "answer-reset") {
        // Headers and one empty message (a default DeploymentState), then nothing more or,
        // for answer-reset, this stream alone reset on a connection that stays up.
        stream.respond({ ":status": 200, "content-type": "application/grpc" });
        stream.write(Buffer.alloc(5));
        if (behave === "answer-reset") {
          setTimeout(() => stream.close(constants.NGHTTP2_CANCEL), 50);
        }
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

  /** The error reading a watchDeployment stream ends in; `onState` runs on each state. */
  async function watchFailure(client: ModelplaneClient, behave: string, onState = () => {}) {
    const stream = client.deployments.watchDeployment(
      { name: "deployments/d" },
      { headers: { "x-behave": behave } },
    );
    return failure(
      (async () => {
        for await (const _ of stream) {
          onState();
        }
      })(),
    );
  }

  test("a stream reset after its answer began, the connection up, is no lost one", async () => {
    const client = new ModelplaneClient(address);
    try {
      const err = await watchFailure(client, "answer-reset");
      assert.notEqual(err.code, Code.Unavailable, err.message);
      assert.doesNotMatch(err.rawMessage, /was lost/);
    } finally {
      client.close();
    }
  });

  test("a stream cut by close() after its first message stays CANCELLED", async () => {
    const client = new ModelplaneClient(address);
    try {
      const err = await watchFailure(client, "answer", () => client.close());
      assert.equal(err.code, Code.Canceled, err.message);
    } finally {
      client.close();
    }
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

test("an HTTP/1.1 server (a metrics port) is UNAVAILABLE, named as no HTTP/2 server", async () => {
  // Close at once after the failure, as a try/finally does: Connect's abort() left the
  // session's pending error with no listener, and the process died of it.
  const http1 = createHttp1Server((_req, res) => res.end("# HELP up 1\n"));
  await new Promise<void>((resolve) => http1.listen(0, "127.0.0.1", resolve));
  const address = `127.0.0.1:${(http1.address() as AddressInfo).port}`;
  const uncaught: unknown[] = [];
  const note = (err: unknown) => uncaught.push(err);
  process.on("uncaughtException", note);
  const client = new ModelplaneClient(address, { timeoutMs: 10_000 });
  try {
    const err = await failure(client.registry.listModels({}));
    client.close();
    assert.equal(err.code, Code.Unavailable, err.message);
    assert.match(err.rawMessage, /^the server at 127\.0\.0\.1:\d+ does not speak HTTP\/2/);
    assert.ok(err.rawMessage.includes(`is ${address} an HTTP/1.1 port`), err.rawMessage);
    assert.doesNotMatch(err.rawMessage, /TLS/);
    await sleep(200);
    assert.deepEqual(uncaught, []);
  } finally {
    process.off("uncaughtException", note);
    client.close();
    http1.close();
  }
});

/**
 * A gRPC-like HTTP/2 server in a child process: it answers each call with its headers and one
 * empty message, then waits. Its port comes on its first line of output.
 */
const STREAMING_SERVER = `
import { createServer } from "node:http2";
const server = createServer();
server.on("stream", (stream) => {
  stream.respond({ ":status": 200, "content-type": "application/grpc" });
  stream.write(Buffer.alloc(5));
});
server.listen(0, "127.0.0.1", () => console.log(server.address().port));
`;

async function startStreamingServer(): Promise<{ address: string; child: ChildProcess }> {
  const child = spawn(process.execPath, ["--input-type=module", "-e", STREAMING_SERVER], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const port = await new Promise<string>((resolve, reject) => {
    child.stdout?.once("data", (data: Buffer) => resolve(String(data).trim()));
    child.once("exit", (code) => reject(new Error(`the server exited (${String(code)})`)));
  });
  return { address: `127.0.0.1:${port}`, child };
}

test("a server killed while streaming an answer is UNAVAILABLE, as gRPC core says", async () => {
  // A control plane killed (SIGKILL, OOM) under a watchDeployment sends no grpc-status: the
  // stream was CANCELLED (or ABORTED), which a watcher reads as its own cancellation.
  const { address, child } = await startStreamingServer();
  const client = new ModelplaneClient(address);
  let states = 0;
  try {
    const stream = client.deployments.watchDeployment({ name: "deployments/d" });
    const err = await failure(
      (async () => {
        for await (const _ of stream) {
          states++;
          child.kill("SIGKILL");
        }
      })(),
    );
    assert.equal(states, 1);
    assert.equal(err.code, Code.Unavailable, err.message);
    assert.equal(err.status, "UNAVAILABLE");
    assert.match(err.rawMessage, new RegExp(`^the connection to ${address} was lost`));
  } finally {
    client.close();
    child.kill("SIGKILL");
  }
});
