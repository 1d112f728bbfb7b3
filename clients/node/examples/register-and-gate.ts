/**
 * Register an ONNX file as a new model version and run a release gate on it, as a CI job
 * written in TypeScript would:
 *
 *   node dist/examples/register-and-gate.js --server 127.0.0.1:50051 \
 *       --model fraud --onnx model.onnx --target production [--as ci-bot] [--timeout 90s] \
 *       [--token TOKEN] [--tls-ca ca.pem | --tls] [--tls-cert me.pem --tls-key me.key]
 *
 * The model is created when it does not exist yet. The gate's line names the policy that
 * decided, or "no policy bound" (a target without one passes). Exit code 0 when the gate
 * passes, 1 when it fails, 2 on a usage error (an unknown or missing option, a --server that
 * is not HOST:PORT, a --timeout that is not a duration, an --as or --token that gRPC metadata
 * cannot carry) or an unreadable ONNX or TLS file (read before any call, so nothing is
 * created), 3 when the server answers an error (its status and reason are printed:
 * UNAUTHENTICATED MISSING_CREDENTIALS from a control plane with access control when no token
 * is given; UNIMPLEMENTED, with the hint, from a sidecar's address), 4 when it cannot be
 * reached or does not answer in time (UNAVAILABLE: refused, reset, a TLS handshake or
 * certificate check that failed, or a server that does not speak HTTP/2, such as a metrics
 * port; DEADLINE_EXCEEDED: no answer within --timeout), as the Go example and the
 * `modelplane` CLI exit.
 *
 * --timeout (default 60s) bounds each call: seconds (`90`, `1.5`) or a duration (`90s`,
 * `500ms`, `2m`, `1h`); `0` is none; a fraction of a millisecond is rounded up.
 *
 * As the `modelplane` CLI: --token (default: env MODELPLANE_TOKEN) is the bearer token for a
 * control plane with access control; --tls-ca FILE (env MODELPLANE_TLS_CA) connects with TLS
 * trusting that PEM CA bundle, --tls with Node's default CAs; --tls-cert and --tls-key (env
 * MODELPLANE_TLS_CERT, MODELPLANE_TLS_KEY) present a client certificate (mutual TLS).
 */
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { Code } from "@connectrpc/connect";
import { ModelplaneClient, ModelplaneError, type TlsOptions } from "../src/index.js";

const USAGE =
  "usage: register-and-gate --model MODEL --onnx FILE [--server HOST:PORT] [--target NAME] " +
  "[--as PRINCIPAL] [--timeout SECONDS|DURATION] [--token TOKEN] [--tls-ca FILE | --tls] " +
  "[--tls-cert FILE --tls-key FILE]";

/** Milliseconds per unit of a --timeout; a bare number is seconds. */
const UNIT_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };

/**
 * --timeout in whole milliseconds, a fraction of one rounded up (`1.0005s` is 1001 ms, and
 * `0.0001` 1 ms, not 0, which is none), or undefined when it is not a duration. The product
 * is first rounded to a nanosecond, so that binary floating point does not turn `2.007` into
 * 2008 ms (2.007 * 1000 is 2007.0000000000002).
 */
function parseTimeout(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)?$/.exec(text.trim());
  if (!match) {
    return undefined;
  }
  const ms = Number(match[1]) * UNIT_MS[match[2] ?? "s"];
  return Math.ceil(Math.round(ms * 1e6) / 1e6);
}

/**
 * 4 when the server could not be reached or did not answer in time, 3 when it answered an
 * error, as the `modelplane` CLI exits.
 */
function exitCode(code: Code): number {
  return code === Code.Unavailable || code === Code.DeadlineExceeded ? 4 : 3;
}

const OPTIONS = {
  server: { type: "string", default: process.env.MODELPLANE_SERVER ?? "127.0.0.1:50051" },
  model: { type: "string" },
  onnx: { type: "string" },
  target: { type: "string", default: "production" },
  as: { type: "string", default: "ci" },
  timeout: { type: "string", default: "60s" },
  token: { type: "string", default: process.env.MODELPLANE_TOKEN ?? "" },
  "tls-ca": { type: "string", default: process.env.MODELPLANE_TLS_CA ?? "" },
  "tls-cert": { type: "string", default: process.env.MODELPLANE_TLS_CERT ?? "" },
  "tls-key": { type: "string", default: process.env.MODELPLANE_TLS_KEY ?? "" },
  tls: { type: "boolean", default: false },
} as const;

/** The option a client refusal is about, by its `info.field` or its message. */
function optionOf(err: ModelplaneError): string {
  const byField: Record<string, string> = { principal: "--as", token: "--token" };
  const field = byField[err.info.field ?? ""];
  if (field) {
    return field;
  }
  return err.rawMessage.startsWith("timeoutMs") ? "--timeout" : "--server";
}

/**
 * The PEM contents of a TLS option's file, or a usage error naming the option when it cannot
 * be read or holds no PEM block (Node would otherwise fail the handshake, reported as
 * unreachable).
 */
async function pem(option: string, file: string): Promise<Buffer> {
  let text: Buffer;
  try {
    text = await readFile(file);
  } catch (err) {
    throw new UsageError(`${option}: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (!text.includes("-----BEGIN ")) {
    throw new UsageError(`${option}: ${file} holds no PEM block`);
  }
  return text;
}

/** A mistake in the options, found before any call (exit 2). */
class UsageError extends Error {}

/**
 * The TLS options for the TLS flags, as the `modelplane` CLI takes them: TLS when any is
 * given, trusting --tls-ca (or Node's default CAs), presenting --tls-cert and --tls-key (given
 * together) for mutual TLS; undefined (plaintext) when none is.
 */
async function tlsOptions(values: {
  "tls-ca": string;
  "tls-cert": string;
  "tls-key": string;
  tls: boolean;
}): Promise<{ scheme?: "https"; tls?: TlsOptions }> {
  const { "tls-ca": ca, "tls-cert": cert, "tls-key": key } = values;
  if (!cert !== !key) {
    throw new UsageError("--tls-cert and --tls-key: give both (mutual TLS) or neither");
  }
  if (!ca && !cert) {
    return values.tls ? { scheme: "https" } : {};
  }
  const tls: TlsOptions = {};
  if (ca) {
    tls.ca = await pem("--tls-ca", ca);
  }
  if (cert) {
    tls.cert = await pem("--tls-cert", cert);
    tls.key = await pem("--tls-key", key);
  }
  return { tls };
}

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({ options: OPTIONS }));
  } catch (err) {
    // A mistyped option is a usage error (2), not a failed gate (1).
    console.error(`error: ${err instanceof Error ? err.message : String(err)}\n${USAGE}`);
    return 2;
  }
  if (!values.model || !values.onnx) {
    console.error(USAGE);
    return 2;
  }
  const timeoutMs = parseTimeout(values.timeout);
  if (timeoutMs === undefined) {
    console.error(
      `error: --timeout: ${JSON.stringify(values.timeout)} is not seconds or a duration ` +
        `(e.g. 90, 90s, 500ms, 2m)\n${USAGE}`,
    );
    return 2;
  }
  let transport;
  try {
    transport = await tlsOptions(values);
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`error: ${err.message}\n${USAGE}`);
      return 2;
    }
    throw err;
  }
  let client: ModelplaneClient;
  try {
    // Dials nothing; a malformed --server (no port, a port past 65535, spaces), a --timeout
    // past MAX_TIMEOUT_MS, or an --as or --token that gRPC metadata cannot carry is refused
    // here.
    client = new ModelplaneClient(values.server, {
      principal: values.as,
      token: values.token,
      timeoutMs,
      ...transport,
    });
  } catch (err) {
    if (err instanceof ModelplaneError && err.code === Code.InvalidArgument) {
      console.error(`error: ${optionOf(err)}: ${err.rawMessage}\n${USAGE}`);
      return 2;
    }
    throw err;
  }
  try {
    let onnx: Buffer;
    try {
      onnx = await readFile(values.onnx);
    } catch (err) {
      // A missing or unreadable file is the caller's mistake (2), found before any call.
      console.error(`error: ${err instanceof Error ? err.message : String(err)}`);
      return 2;
    }
    try {
      await client.createModel(values.model, { description: "registered from TypeScript" });
      console.log(`created models/${values.model}`);
    } catch (err) {
      if (!(err instanceof ModelplaneError && err.code === Code.AlreadyExists)) {
        throw err;
      }
    }
    const version = await client.registerVersion(values.model, onnx, {
      description: "registered by the TypeScript example",
      labels: { source: "node-example" },
    });
    const input = version.signature?.inputs[0];
    console.log(
      `registered ${version.name}: sha256 ${version.artifact?.sha256}, ` +
        `input ${input?.name} ${input?.datatype}[${input?.shape.join(",")}]`,
    );
    const decision = await client.evaluateGate(values.model, version.version, values.target);
    for (const r of decision.results) {
      console.log(`[${r.outcome}] ${r.expression}${r.message ? ` (${r.message})` : ""}`);
    }
    // As the `modelplane` CLI says it: which policy decided (a target with none passes).
    const policy = decision.policy
      ? `${decision.policy} r${decision.policyRevision}`
      : "no policy bound";
    const against = decision.comparedVersion ? `; delta against ${decision.comparedVersion}` : "";
    console.log(
      `gate ${values.target}: ${decision.passed ? "passed" : "failed"} ` +
        `(${policy}; evidence ${decision.evaluation || "none"}${against})`,
    );
    return decision.passed ? 0 : 1;
  } catch (err) {
    if (err instanceof ModelplaneError) {
      console.error(`error: ${err.message}`);
      return exitCode(err.code);
    }
    throw err;
  } finally {
    client.close();
  }
}

process.exitCode = await main();
