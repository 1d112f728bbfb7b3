/**
 * The TypeScript client against a live control plane. `tests/clients/test_node_client.py`
 * starts the servers and passes MODELPLANE_SERVER, MODELPLANE_ONE_WATCH_SERVER (one that
 * serves a single watch at a time) and MODELPLANE_TEST_ONNX (an MLP built with
 * modelplane.testing): `npm test` on its own has nothing to talk to, and skips these suites
 * saying so.
 */
import assert from "node:assert/strict";
import { createHash, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import {
  connect as http2Connect,
  constants as http2,
  createServer,
  type OutgoingHttpHeaders,
  type ServerHttp2Session,
} from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ModelplaneClient,
  ModelplaneError,
  modelName,
  versionName,
  v1,
} from "../src/index.js";

const LIVE = ["MODELPLANE_SERVER", "MODELPLANE_ONE_WATCH_SERVER", "MODELPLANE_TEST_ONNX"];
const unset = LIVE.filter((name) => !process.env[name]);
/** Why the live suites skip: false when the harness has set every variable. */
const skip =
  unset.length > 0 &&
  `${unset.join(", ")} unset: run \`pytest tests/clients/test_node_client.py\` (or ` +
    "`make test`) at the repository root, which starts the control planes";
const server = process.env.MODELPLANE_SERVER ?? "";
const oneWatchServer = process.env.MODELPLANE_ONE_WATCH_SERVER ?? "";
const onnx = skip ? Buffer.alloc(0) : readFileSync(process.env.MODELPLANE_TEST_ONNX ?? "");

function unique(prefix: string): string {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

async function rejection(promise: Promise<unknown>): Promise<ModelplaneError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof ModelplaneError, `expected a ModelplaneError, got ${String(err)}`);
    return err;
  }
  assert.fail("the call succeeded");
}

/**
 * A loopback proxy that passes each call on to `upstream`, waits for the whole answer, then
 * resets the stream: the server has done what was asked, the caller never hears of it.
 */
async function answerLosingProxy(
  upstream: string,
): Promise<{ address: string; close: () => void }> {
  const session = http2Connect(`http://${upstream}`);
  const accepted: ServerHttp2Session[] = [];
  const proxy = createServer();
  proxy.on("session", (s) => accepted.push(s));
  proxy.on("stream", (stream, headers) => {
    const forwarded: OutgoingHttpHeaders = {};
    for (const [name, value] of Object.entries(headers)) {
      if (!name.startsWith(":") || name === ":method" || name === ":path") {
        forwarded[name] = value;
      }
    }
    const call = session.request(forwarded);
    stream.pipe(call);
    call.resume();
    const lose = () => stream.close(http2.NGHTTP2_INTERNAL_ERROR);
    stream.on("error", () => {}); // the reset, as this side sees it
    call.on("end", lose);
    call.on("error", lose);
  });
  await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  return {
    address: `127.0.0.1:${(proxy.address() as AddressInfo).port}`,
    close: () => {
      accepted.forEach((s) => s.destroy());
      proxy.close();
      session.close();
    },
  };
}

describe("ModelplaneClient against a live control plane", { skip }, () => {
  let alice: ModelplaneClient;
  let admin: ModelplaneClient;

  before(() => {
    alice = new ModelplaneClient(server, { principal: "alice", timeoutMs: 30_000 });
    admin = new ModelplaneClient(server, { principal: "ops-admin", timeoutMs: 30_000 });
  });
  after(() => {
    alice.close();
    admin.close();
  });

  test("registers a version: UploadBlob then CreateModelVersion", async () => {
    const model = unique("node");
    await alice.createModel(model, { description: "from node", labels: { team: "ts" } });
    const version = await alice.registerVersion(model, onnx, {
      metrics: { holdout_auc: 0.91 },
      parameters: { hidden: "16" },
      labels: { stage: "beta" },
    });
    assert.equal(version.name, `${modelName(model)}/versions/1`);
    assert.equal(version.version, 1n);
    assert.equal(version.artifact?.sha256, createHash("sha256").update(onnx).digest("hex"));
    assert.equal(version.artifact?.sizeBytes, BigInt(onnx.byteLength));
    assert.equal(version.createdBy, "alice");
    const input = version.signature?.inputs[0];
    assert.equal(input?.name, "input");
    assert.equal(input?.datatype, "FP32");
    assert.deepEqual(version.lineage?.metrics, { holdout_auc: 0.91 });

    const again = await alice.registry.getModelVersion({ name: versionName(model, 1) });
    assert.equal(again.artifact?.sha256, version.artifact?.sha256);
    const blob = await alice.blobs.getBlob({ name: `blobs/${version.artifact?.sha256}` });
    assert.equal(blob.mediaType, "application/onnx");
    const chunks: Uint8Array[] = [];
    for await (const m of alice.blobs.downloadBlob({ name: blob.name })) {
      chunks.push(m.chunk);
    }
    assert.deepEqual(Buffer.concat(chunks), onnx);
  });

  test("registers a version with datasets given as plain objects", async () => {
    const model = unique("node-data");
    await alice.createModel(model);
    const csv = Buffer.from("f0,f1,f2,f3,label\n0.1,0.2,0.3,0.4,1\n0.5,0.6,0.7,0.8,0\n");
    const holdout = await alice.uploadBlob(csv, "text/csv");
    // No `create(v1.DatasetInputSchema, ...)`: RegisterOptions takes the message's init shape.
    const version = await alice.registerVersion(model, onnx, {
      datasets: [{ role: "holdout", source: "holdout.csv", sha256: holdout.sha256 }],
    });
    const [dataset] = version.lineage?.datasets ?? [];
    assert.equal(dataset?.role, "holdout");
    assert.equal(dataset?.sha256, holdout.sha256);
    assert.equal(dataset?.rowCount, 2n);
  });

  test("runs a gate: failing rule, then a target without a policy", async () => {
    const model = unique("node-gate");
    const target = unique("release");
    await alice.createModel(model);
    const version = await alice.registerVersion(model, onnx);
    await admin.governance.createPolicy({
      policyId: unique("policy"),
      policy: create(v1.PolicySchema, { target, rules: ["metrics.roc_auc >= 0.9"] }),
      requestId: randomUUID(),
    });

    const failed = await alice.evaluateGate(model, version.version, target);
    assert.equal(failed.passed, false);
    assert.equal(failed.target, target);
    assert.equal(failed.results.length, 1);
    assert.notEqual(failed.results[0].outcome, "passed");
    assert.equal(failed.createdBy, "alice");

    const listed = await alice.governance.listGateDecisions({
      parent: versionName(model, version.version),
    });
    assert.deepEqual(
      listed.decisions.map((d) => d.name),
      [failed.name],
    );

    const open = await alice.evaluateGate(model, version.version, unique("unbound"));
    assert.equal(open.passed, true);
    assert.equal(open.policy, "");
  });

  test("full model names are kept, and a request id given twice replays", async () => {
    const model = unique("node");
    assert.equal(modelName(`models/${model}`), `models/${model}`);
    assert.equal(versionName(`models/${model}`, "@prod"), `models/${model}@prod`);
    const requestId = randomUUID();
    const first = await alice.createModel(model, {}, requestId);
    const again = await alice.createModel(model, {}, requestId);
    assert.equal(again.etag, first.etag);
    const version = await alice.registerVersion(`models/${model}`, onnx);
    assert.equal(version.name, `models/${model}/versions/1`);
  });

  test("a lost gate answer, sent again with its requestId, records one decision", async () => {
    const model = unique("node-retry");
    const target = unique("release");
    await alice.createModel(model);
    const version = await alice.registerVersion(model, onnx);
    const decisions = async () =>
      (
        await alice.governance.listGateDecisions({ parent: versionName(model, version.version) })
      ).decisions.map((d) => d.name);

    const lossy = await answerLosingProxy(server);
    const lost = new ModelplaneClient(lossy.address, { principal: "alice", timeoutMs: 30_000 });
    let err: ModelplaneError;
    try {
      err = await rejection(lost.evaluateGate(model, version.version, target));
    } finally {
      lost.close();
      lossy.close();
    }
    assert.match(err.requestId ?? "", /^[0-9a-f-]{36}$/, `no request id on ${err.message}`);
    const recorded = await decisions();
    assert.equal(recorded.length, 1, "the lost call was not evaluated");

    const again = await alice.evaluateGate(model, version.version, target, err.requestId);
    assert.equal(again.name, recorded[0]);
    assert.deepEqual(await decisions(), recorded);
    // Without the id it is a new evaluation: a second decision.
    await alice.evaluateGate(model, version.version, target);
    assert.equal((await decisions()).length, 2);
  });

  test("the helpers' errors carry the request id they sent; other calls' none", async () => {
    const requestId = randomUUID();
    const bad = await rejection(alice.createModel("Not_A_Valid_Id", {}, requestId));
    assert.equal(bad.requestId, requestId);
    const missing = unique("absent");
    const unregistered = await rejection(alice.registerVersion(missing, onnx, { requestId }));
    assert.equal(unregistered.code, Code.NotFound);
    assert.equal(unregistered.requestId, requestId);
    const made = await rejection(alice.registerVersion(missing, onnx));
    assert.match(made.requestId ?? "", /^[0-9a-f-]{36}$/);
    const plain = await rejection(alice.registry.getModel({ name: modelName(missing) }));
    assert.equal(plain.requestId, undefined);
  });

  test("timeoutMs Infinity and the longest timer are no deadline of 1 ms", async () => {
    const unbounded = new ModelplaneClient(server, { principal: "alice", timeoutMs: Infinity });
    try {
      const model = unique("node-inf");
      await unbounded.createModel(model);
      const got = await unbounded.registry.getModel(
        { name: modelName(model) },
        { timeoutMs: 2 ** 31 - 1 },
      );
      assert.equal(got.name, modelName(model));
    } finally {
      unbounded.close();
    }
  });

  test("a missing model is NOT_FOUND with reason MODEL_NOT_FOUND", async () => {
    const model = unique("absent");
    const err = await rejection(alice.registry.getModel({ name: modelName(model) }));
    assert.equal(err.code, Code.NotFound);
    assert.equal(err.status, "NOT_FOUND");
    assert.equal(err.reason, "MODEL_NOT_FOUND");
    assert.match(err.message, new RegExp(model));
  });

  test("a ModelplaneError is a ConnectError: ConnectError.from keeps it whole", async () => {
    const err = await rejection(alice.registry.getModel({ name: modelName(unique("absent")) }));
    assert.ok(err instanceof ConnectError);
    assert.ok(err instanceof Error);
    const connect = ConnectError.from(err);
    assert.equal(connect, err);
    assert.equal(connect.code, Code.NotFound);
    assert.ok(connect.details.length > 0, "the ErrorInfo detail was lost");
    // The other way round: a plain ConnectError is not a ModelplaneError.
    assert.ok(!(new ConnectError("plain", Code.Internal) instanceof ModelplaneError));
  });

  test("an invalid model id is INVALID_ARGUMENT with reason INVALID_NAME", async () => {
    const err = await rejection(alice.createModel("Not_A_Valid_Id"));
    assert.equal(err.code, Code.InvalidArgument);
    assert.equal(err.reason, "INVALID_NAME");
    const models = await alice.registry.listModels({ filter: "" });
    assert.ok(models.models.every((m) => m.name !== "models/Not_A_Valid_Id"));
  });

  test("bytes that do not hash to the declared sha256 are refused and not stored", async () => {
    const declared = createHash("sha256").update("something else").digest("hex");
    async function* messages() {
      yield create(v1.UploadBlobRequestSchema, {
        header: create(v1.UploadBlobHeaderSchema, { sha256: declared }),
      });
      yield create(v1.UploadBlobRequestSchema, { chunk: onnx });
    }
    const err = await rejection(alice.blobs.uploadBlob(messages()));
    assert.equal(err.code, Code.InvalidArgument);
    assert.equal(err.reason, "DIGEST_MISMATCH");
    assert.equal(err.info.declared, declared);
    const missing = await rejection(alice.blobs.getBlob({ name: `blobs/${declared}` }));
    assert.equal(missing.reason, "BLOB_NOT_FOUND");
    const stream = async () => {
      for await (const _ of alice.blobs.downloadBlob({ name: `blobs/${declared}` })) {
        assert.fail("a missing blob streamed bytes");
      }
    };
    const streamed = await rejection(stream());
    assert.equal(streamed.code, Code.NotFound);
    assert.equal(streamed.reason, "BLOB_NOT_FOUND");
  });

  test("an artifact never uploaded is FAILED_PRECONDITION; no version is made", async () => {
    const model = unique("node-noblob");
    await alice.createModel(model);
    const err = await rejection(
      alice.registry.createModelVersion({
        parent: modelName(model),
        artifactSha256: createHash("sha256").update(randomUUID()).digest("hex"),
      }),
    );
    assert.equal(err.code, Code.FailedPrecondition);
    assert.equal(err.reason, "BLOB_NOT_FOUND");
    assert.match(err.message, /upload it first/);
    const versions = await alice.registry.listModelVersions({ parent: modelName(model) });
    assert.equal(versions.versions.length, 0);
  });

  test("a gate on a missing version is NOT_FOUND", async () => {
    const model = unique("node-nover");
    await alice.createModel(model);
    const err = await rejection(alice.evaluateGate(model, 7, "production"));
    assert.equal(err.code, Code.NotFound);
    assert.equal(err.reason, "VERSION_NOT_FOUND");
  });

  test("timeoutMs bounds unary calls but not a watchDeployment stream", async () => {
    const model = unique("node-watch");
    await alice.createModel(model);
    const version = await alice.registerVersion(model, onnx);
    const id = unique("w");
    await admin.deployments.createDeployment({
      deploymentId: id,
      deployment: { model: modelName(model), championVersion: version.version },
      requestId: randomUUID(),
    });
    const short = new ModelplaneClient(server, { principal: "alice", timeoutMs: 1_000 });
    const started = Date.now();
    let states = 0;
    try {
      // The server repeats the state every few seconds (a heartbeat): the second one arrives
      // well after the 1 s that bounds each unary call.
      const watch = short.deployments.watchDeployment({ name: `deployments/${id}` });
      for await (const state of watch) {
        assert.equal(state.championVersion, version.version);
        if (++states === 2) {
          break;
        }
      }
    } finally {
      short.close();
    }
    assert.equal(states, 2);
    assert.ok(Date.now() - started > 1_000, "the heartbeat came before the timeout passed");
  });

  test("an unreachable server is UNAVAILABLE", async () => {
    const nobody = new ModelplaneClient("127.0.0.1:1", { timeoutMs: 5_000 });
    try {
      const err = await rejection(nobody.registry.getModel({ name: "models/x" }));
      assert.equal(err.code, Code.Unavailable);
      assert.equal(err.status, "UNAVAILABLE");
    } finally {
      nobody.close();
    }
  });
});

const oneWatch = "a server stream left early, on a control plane serving one watch at a time";
describe(oneWatch, { skip }, () => {
  let client: ModelplaneClient;
  let deployment: string;

  before(async () => {
    client = new ModelplaneClient(oneWatchServer, { principal: "ops-admin", timeoutMs: 30_000 });
    const model = unique("node-once");
    await client.createModel(model);
    const version = await client.registerVersion(model, onnx);
    const id = unique("w");
    await client.deployments.createDeployment({
      deploymentId: id,
      deployment: { model: modelName(model), championVersion: version.version },
      requestId: randomUUID(),
    });
    deployment = `deployments/${id}`;
  });
  after(() => {
    client.close();
  });

  /**
   * Retry `watch` while the server refuses it with TOO_MANY_WATCHES. The server notices a watch
   * that was left within its poll (a quarter second), so the slot may stay taken a moment
   * longer; a watch left open while its client stays open never frees it.
   */
  async function retried<T>(watch: () => Promise<T>): Promise<T> {
    const deadline = Date.now() + 5_000;
    for (;;) {
      try {
        return await watch();
      } catch (err) {
        if (!(err instanceof ModelplaneError && err.reason === "TOO_MANY_WATCHES")) {
          throw err;
        }
        if (Date.now() > deadline) {
          assert.fail("a watch left earlier still holds the only slot");
        }
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  }

  /** The first state of a watch, leaving its loop by `return`. */
  async function firstState(): Promise<bigint> {
    for await (const state of client.deployments.watchDeployment({ name: deployment })) {
      return state.generation;
    }
    assert.fail("the watch ended without a state");
  }

  test("leaving the loop (break, return) cancels the stream, freeing the slot", async () => {
    const byBreak = async () => {
      const states: bigint[] = [];
      for await (const state of client.deployments.watchDeployment({ name: deployment })) {
        states.push(state.generation);
        break;
      }
      return states;
    };
    for (let i = 0; i < 3; i++) {
      const states = await retried(byBreak);
      assert.equal(states.length, 1);
      assert.ok(states[0] >= 1n);
      assert.ok((await retried(firstState)) >= 1n);
    }
  });

  // A timeout: were the caller's signal not followed, the loop would wait for heartbeats forever.
  test("the caller's own signal still cancels the stream", { timeout: 20_000 }, async () => {
    const abort = new AbortController();
    const stream = async () => {
      const watch = client.deployments.watchDeployment(
        { name: deployment },
        { signal: abort.signal },
      );
      for await (const _ of watch) {
        abort.abort();
      }
    };
    const err = await rejection(retried(stream));
    assert.equal(err.code, Code.Canceled);
    assert.ok((await retried(firstState)) >= 1n);
  });
});
