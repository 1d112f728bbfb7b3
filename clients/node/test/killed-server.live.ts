/**
 * A watchDeployment cut by a control plane that dies (SIGKILL: no grpc-status, no GOAWAY) is
 * UNAVAILABLE, as gRPC core reports it, not CANCELLED, which a watcher reads as its own
 * cancellation. This test kills the control plane, so it gets one of its own:
 * `tests/clients/test_node_client_failures.py` starts it and passes its address
 * (MODELPLANE_DOOMED_SERVER), its process id (MODELPLANE_DOOMED_PID) and MODELPLANE_TEST_ONNX.
 * Not one of `npm test`'s files (`*.test.js`); run on its own, it skips saying so.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { Code } from "@connectrpc/connect";
import { ModelplaneClient, ModelplaneError, modelName } from "../src/index.js";

const LIVE = ["MODELPLANE_DOOMED_SERVER", "MODELPLANE_DOOMED_PID", "MODELPLANE_TEST_ONNX"];
const unset = LIVE.filter((name) => !process.env[name]);
/** Why the test skips: false when the harness has set every variable. */
const skip =
  unset.length > 0 &&
  `${unset.join(", ")} unset: run \`pytest tests/clients/test_node_client_failures.py\` at ` +
    "the repository root, which starts the control plane this test kills";

test("a watch cut by a control plane killed under it is UNAVAILABLE", { skip }, async () => {
  const server = process.env.MODELPLANE_DOOMED_SERVER ?? "";
  const pid = Number(process.env.MODELPLANE_DOOMED_PID);
  const client = new ModelplaneClient(server, { principal: "ops-admin", timeoutMs: 30_000 });
  const model = `node-doomed-${randomUUID().slice(0, 8)}`;
  try {
    await client.createModel(model);
    const version = await client.registerVersion(
      model,
      readFileSync(process.env.MODELPLANE_TEST_ONNX ?? ""),
    );
    const id = `w-${randomUUID().slice(0, 8)}`;
    await client.deployments.createDeployment({
      deploymentId: id,
      deployment: { model: modelName(model), championVersion: version.version },
      requestId: randomUUID(),
    });
    let states = 0;
    let failure: unknown;
    try {
      for await (const state of client.deployments.watchDeployment({ name: `deployments/${id}` })) {
        assert.equal(state.championVersion, version.version);
        if (states++ === 0) {
          process.kill(pid, "SIGKILL");
        }
      }
    } catch (err) {
      failure = err;
    }
    assert.ok(states >= 1, "no state came before the kill");
    assert.ok(failure instanceof ModelplaneError, `the watch ended with ${String(failure)}`);
    assert.equal(failure.code, Code.Unavailable, failure.message);
    assert.equal(failure.status, "UNAVAILABLE");
    assert.match(failure.rawMessage, new RegExp(`^the connection to ${server} was lost`));
  } finally {
    client.close();
  }
});
