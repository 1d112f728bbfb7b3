/**
 * Mutual TLS: `tests/clients/test_node_client.py` starts a control plane that asks for a client
 * certificate from its test CA (MODELPLANE_MTLS_SERVER) and passes the PEM files of that CA and
 * of a client certificate it signed (MODELPLANE_TLS_CA, _CERT, _KEY); without them (`npm test`
 * on its own) the suite skips, saying so.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { ModelplaneClient, ModelplaneError } from "../src/index.js";

const LIVE = [
  "MODELPLANE_MTLS_SERVER",
  "MODELPLANE_TLS_CA",
  "MODELPLANE_TLS_CERT",
  "MODELPLANE_TLS_KEY",
];
const unset = LIVE.filter((name) => !process.env[name]);
/** Why the suite skips: false when the harness has set every variable. */
const skip =
  unset.length > 0 &&
  `${unset.join(", ")} unset: run \`pytest tests/clients/test_node_client.py\` (or ` +
    "`make test`) at the repository root, which starts the control planes";
const server = process.env.MODELPLANE_MTLS_SERVER ?? "";
const pem = (name: string): Buffer =>
  skip ? Buffer.alloc(0) : readFileSync(process.env[name] ?? "");
const ca = pem("MODELPLANE_TLS_CA").toString("utf8");
const cert = pem("MODELPLANE_TLS_CERT");
const key = pem("MODELPLANE_TLS_KEY");

/** Create a model and list the models, closing the client after. */
async function createAndList(client: ModelplaneClient, model: string): Promise<string[]> {
  try {
    await client.createModel(model);
    return (await client.registry.listModels({})).models.map((m) => m.name);
  } finally {
    client.close();
  }
}

async function refusal(client: ModelplaneClient): Promise<ModelplaneError> {
  try {
    await createAndList(client, `node-tls-${randomUUID().slice(0, 8)}`);
  } catch (err) {
    assert.ok(err instanceof ModelplaneError, `expected a ModelplaneError, got ${String(err)}`);
    return err;
  }
  assert.fail("the call succeeded");
}

describe("a control plane that asks for client certificates", { skip }, () => {
  test("answers a client presenting one from its CA (tls implies https)", async () => {
    const client = new ModelplaneClient(server, { tls: { ca, cert, key }, timeoutMs: 10_000 });
    const model = `node-tls-${randomUUID().slice(0, 8)}`;
    assert.ok((await createAndList(client, model)).includes(`models/${model}`));
  });

  test("refuses a client trusting its CA but presenting no certificate: UNAVAILABLE", async () => {
    // The server closes the connection after the handshake (TLS 1.3), before any answer: the
    // stream Connect saw cancelled is reported as gRPC core reports it.
    const client = new ModelplaneClient(server, { tls: { ca }, timeoutMs: 10_000 });
    const err = await refusal(client);
    assert.equal(err.code, Code.Unavailable, err.message);
    assert.equal(err.status, "UNAVAILABLE");
    assert.match(err.message, /closed the connection before answering/);
    assert.match(err.message, /no certificate it trusts/);
  });

  test("is not trusted without its CA: UNAVAILABLE, Node's message and cause kept", async () => {
    const client = new ModelplaneClient(server, { scheme: "https", timeoutMs: 10_000 });
    const err = await refusal(client);
    assert.equal(err.code, Code.Unavailable, err.message);
    assert.match(err.message, /^UNAVAILABLE: unable to verify/);
    assert.match(err.message, /UNABLE_TO_VERIFY_LEAF_SIGNATURE/);
    const cause = err.cause as { code?: string } | undefined;
    assert.equal(cause?.code, "UNABLE_TO_VERIFY_LEAF_SIGNATURE");
  });
});
