/**
 * A small typed client for the Modelplane control plane over gRPC (Connect's gRPC transport
 * for Node.js). Every service is reachable as a generated client (`registry`, `blobs`, ...);
 * a few helpers cover the steps a CI job takes: upload, register, evaluate, gate.
 */
import { createHash, randomUUID } from "node:crypto";
import {
  Code,
  ConnectError,
  createClient,
  type CallOptions,
  type Client,
  type Interceptor,
} from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { create, type DescService, type MessageInitShape } from "@bufbuild/protobuf";
import { AuditService } from "./gen/modelplane/v1/audit_pb.js";
import {
  BlobService,
  UploadBlobHeaderSchema,
  UploadBlobRequestSchema,
  type Blob,
  type UploadBlobRequest,
} from "./gen/modelplane/v1/blobs_pb.js";
import { DeploymentService } from "./gen/modelplane/v1/deployments_pb.js";
import { EvaluationService } from "./gen/modelplane/v1/evaluation_pb.js";
import { GovernanceService, type GateDecision } from "./gen/modelplane/v1/governance_pb.js";
import { OperationsService } from "./gen/modelplane/v1/operations_pb.js";
import {
  CodeRefSchema,
  ModelSchema,
  RegistryService,
  type DatasetInputSchema,
  type Model,
  type ModelVersion,
} from "./gen/modelplane/v1/registry_pb.js";
import { TracingSessionManager, unavailableWhenUnreached } from "./connection.js";
import { ModelplaneError, toModelplaneError, withModelplaneErrors } from "./errors.js";

/** Metadata keys a server without access control reads the caller from. */
export const PRINCIPAL_HEADER = "x-modelplane-principal";
export const ROLES_HEADER = "x-modelplane-roles";

/** Bytes per UploadBlob chunk message. */
export const CHUNK_BYTES = 1 << 20;

/**
 * The longest deadline, in milliseconds (about 24.8 days): Node's timers run a longer delay
 * after 1 ms, which would fail every call with DEADLINE_EXCEEDED at once.
 */
export const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/** How to reach and present yourself to a control plane. */
export interface ClientOptions {
  /**
   * The principal named to a server without access control (default: none sent): 1-128
   * letters, digits and `._@:+-`, or the server refuses each call (INVALID_ARGUMENT).
   */
  principal?: string;
  /** Roles claimed for approvals from a server without access control. */
  roles?: string[];
  /** A bearer token (or JWT) for a server with access control; spaces around it are dropped. */
  token?: string;
  /**
   * Deadline in milliseconds (default 60 s) of each unary call and each client stream with one
   * answer (UploadBlob) that does not pass its own `timeoutMs`. Server streams (a download, a
   * `watchDeployment`) are not bounded by it: they may rightly run longer. As in the Go client.
   * `0` or `Infinity` is no deadline; NaN, a negative value or one over `MAX_TIMEOUT_MS` is
   * refused (INVALID_ARGUMENT), here and in a call's own `timeoutMs`. A fraction of a
   * millisecond is rounded up (`1000.5` is 1001 ms), here and in a call's own `timeoutMs`.
   */
  timeoutMs?: number;
  /**
   * `https://` for TLS (Node's default trust store); default plain HTTP/2, or TLS when `tls` is
   * given.
   */
  scheme?: "http" | "https";
  /**
   * TLS with a private CA, or with a client certificate for a server that asks for one
   * (`--client-ca`).
   */
  tls?: TlsOptions;
}

/** PEM contents (not file names), as Node's `tls.connect` takes them. */
export interface TlsOptions {
  /** CA certificate(s) to trust instead of Node's default trust store. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** The client certificate chain, for mutual TLS (with `key`). */
  cert?: string | Buffer | Array<string | Buffer>;
  /** The client certificate's private key. */
  key?: string | Buffer | Array<string | Buffer>;
}

/** What `registerVersion` records beyond the ONNX bytes. */
export interface RegisterOptions {
  description?: string;
  labels?: Record<string, string>;
  /** Datasets uploaded beforehand (`uploadBlob`), by role: `train`, `holdout`, ... */
  datasets?: MessageInitShape<typeof DatasetInputSchema>[];
  labelColumn?: string;
  featureNames?: string[];
  parameters?: Record<string, string>;
  metrics?: Record<string, number>;
  codeRepository?: string;
  codeCommit?: string;
  trainingRunId?: string;
  /** Idempotency key (a UUID); one is made up when absent. */
  requestId?: string;
  /**
   * Deadline in milliseconds of each of the two calls (UploadBlob, then CreateModelVersion)
   * instead of the client's `timeoutMs`: a large ONNX file may need longer to upload. Checked
   * as the client's is (`0` or `Infinity` is none).
   */
  timeoutMs?: number;
}

/** Per-call options of `uploadBlob`. */
export interface UploadOptions {
  /**
   * Deadline in milliseconds of the upload instead of the client's `timeoutMs`; checked as
   * the client's is (`0` or `Infinity` is none).
   */
  timeoutMs?: number;
}

/** `models/{model}` for a model id; a full name (`models/...`) is kept as it is. */
export function modelName(model: string): string {
  return model.startsWith("models/") ? model : `models/${model}`;
}

/** `models/{model}/versions/{version}`, or `models/{model}@{alias}` for `"@alias"`. */
export function versionName(model: string, version: bigint | number | string): string {
  const v = String(version);
  return v.startsWith("@") ? `${modelName(model)}${v}` : `${modelName(model)}/versions/${v}`;
}

/**
 * A connection to one control plane. Nothing is dialled until the first call; the address and
 * options are checked at construction (a ModelplaneError INVALID_ARGUMENT when they are wrong:
 * reason INVALID_METADATA, with `info.field`, for a principal, role or token that gRPC
 * metadata cannot carry).
 */
export class ModelplaneClient {
  readonly registry: Client<typeof RegistryService>;
  readonly blobs: Client<typeof BlobService>;
  readonly evaluation: Client<typeof EvaluationService>;
  readonly governance: Client<typeof GovernanceService>;
  readonly operations: Client<typeof OperationsService>;
  readonly deployments: Client<typeof DeploymentService>;
  readonly audit: Client<typeof AuditService>;
  private readonly sessions: TracingSessionManager;

  /** `address` is `HOST:PORT`, e.g. `127.0.0.1:50051` or `[::1]:50051`. */
  constructor(address: string, options: ClientOptions = {}) {
    const timeoutMs = checkedTimeout(options.timeoutMs ?? 60_000, "timeoutMs");
    const headers = identityHeaders(options);
    const scheme = options.scheme ?? (options.tls ? "https" : "http");
    const baseUrl = `${scheme}://${checkedAddress(address)}`;
    this.sessions = new TracingSessionManager(baseUrl, undefined, options.tls);
    const transport = createGrpcTransport({
      baseUrl,
      sessionManager: this.sessions,
      // A connection that fails before the server answers (a refused TLS handshake, a reset)
      // is UNAVAILABLE, as gRPC core says, not whatever the Node error maps to.
      interceptors: [unavailableWhenUnreached(), identity(headers)],
    });
    const connect = <S extends DescService>(service: S): Client<S> =>
      withModelplaneErrors(
        cancelledWhenLeft(
          service,
          withTimeout(service, createClient(service, transport), timeoutMs),
        ),
        address,
      );
    this.registry = connect(RegistryService);
    this.blobs = connect(BlobService);
    this.evaluation = connect(EvaluationService);
    this.governance = connect(GovernanceService);
    this.operations = connect(OperationsService);
    this.deployments = connect(DeploymentService);
    this.audit = connect(AuditService);
  }

  /** Close the HTTP/2 connection so the process can exit. */
  close(): void {
    this.sessions.abort();
  }

  /**
   * Upload bytes (the server checks the sha256 computed here); returns the stored blob.
   * `options.timeoutMs` bounds this upload instead of the client's `timeoutMs`.
   */
  async uploadBlob(
    data: Uint8Array,
    mediaType = "application/octet-stream",
    options: UploadOptions = {},
  ): Promise<Blob> {
    const sha256 = createHash("sha256").update(data).digest("hex");
    const header = create(UploadBlobHeaderSchema, {
      sha256,
      sizeBytes: BigInt(data.byteLength),
      mediaType,
    });
    // The header rides with the first chunk; a blob up to CHUNK_BYTES is one message.
    async function* messages(): AsyncGenerator<UploadBlobRequest> {
      yield create(UploadBlobRequestSchema, { header, chunk: data.subarray(0, CHUNK_BYTES) });
      for (let i = CHUNK_BYTES; i < data.byteLength; i += CHUNK_BYTES) {
        yield create(UploadBlobRequestSchema, { chunk: data.subarray(i, i + CHUNK_BYTES) });
      }
    }
    return this.blobs.uploadBlob(messages(), { timeoutMs: options.timeoutMs });
  }

  /** Create `models/{modelId}`; a failure's ModelplaneError carries `requestId`. */
  async createModel(
    modelId: string,
    model: { description?: string; labels?: Record<string, string> } = {},
    requestId: string = randomUUID(),
  ): Promise<Model> {
    return withRequestId(requestId, () =>
      this.registry.createModel({
        modelId,
        model: create(ModelSchema, model),
        requestId,
      }),
    );
  }

  /**
   * Upload the ONNX bytes, then register them as the model's next version; a failure's
   * ModelplaneError carries `requestId` (made up here when `options` gives none).
   * `options.timeoutMs` bounds each of the two calls instead of the client's `timeoutMs`.
   */
  async registerVersion(
    model: string,
    onnx: Uint8Array,
    options: RegisterOptions = {},
  ): Promise<ModelVersion> {
    const requestId = options.requestId ?? randomUUID();
    return withRequestId(requestId, async () => {
      const timeoutMs = options.timeoutMs;
      const artifact = await this.uploadBlob(onnx, "application/onnx", { timeoutMs });
      return this.registry.createModelVersion(
        {
          parent: modelName(model),
          artifactSha256: artifact.sha256,
          description: options.description ?? "",
          labels: options.labels ?? {},
          datasets: options.datasets ?? [],
          labelColumn: options.labelColumn ?? "",
          featureNames: options.featureNames ?? [],
          trainingRunId: options.trainingRunId ?? "",
          parameters: options.parameters ?? {},
          metrics: options.metrics ?? {},
          code: create(CodeRefSchema, {
            repository: options.codeRepository ?? "",
            commit: options.codeCommit ?? "",
          }),
          requestId,
        },
        { timeoutMs },
      );
    });
  }

  /**
   * Evaluate the policy bound to `target` (an alias or `deployments/NAME`) for a version; a
   * failure's ModelplaneError carries `requestId`, to evaluate again without a second decision.
   */
  async evaluateGate(
    model: string,
    version: bigint | number,
    target: string,
    requestId: string = randomUUID(),
  ): Promise<GateDecision> {
    return withRequestId(requestId, () =>
      this.governance.evaluateGate({
        name: versionName(model, version),
        target,
        requestId,
      }),
    );
  }
}

/**
 * A service client whose unary and client-streaming calls get `timeoutMs` unless the call
 * passes its own (a `timeoutMs` left undefined is none); server and bidi streams get no
 * deadline of ours. A call's own `timeoutMs` is checked as the client's is: a wrong one fails
 * the call (the promise rejects, a stream throws when read) before anything is sent.
 */
function withTimeout<S extends DescService>(
  service: S,
  client: Client<S>,
  timeoutMs: number,
): Client<S> {
  const kinds = new Map(service.methods.map((m) => [m.localName, m.methodKind]));
  return new Proxy(client, {
    get(target, prop, receiver) {
      const value: unknown = Reflect.get(target, prop, receiver);
      const kind = typeof prop === "string" ? kinds.get(prop) : undefined;
      if (typeof value !== "function" || kind === undefined) {
        return value;
      }
      const bounded = kind === "unary" || kind === "client_streaming";
      return (request: unknown, options: CallOptions = {}) => {
        let own: number | undefined;
        try {
          own =
            options.timeoutMs === undefined
              ? undefined
              : checkedTimeout(options.timeoutMs, "the call's timeoutMs");
        } catch (err) {
          if (bounded) {
            return Promise.reject(err);
          }
          throw err; // inside the stream's generator (cancelledWhenLeft): thrown when read
        }
        return value.call(target, request, {
          ...options,
          timeoutMs: own ?? (bounded ? timeoutMs : undefined),
        });
      };
    },
  });
}

/**
 * A service client whose server streams are cancelled when the caller stops reading them
 * (`break`, `return` or a throw out of `for await`). Connect's streams have no `return()`, so
 * otherwise the HTTP/2 stream stayed open, holding a watch slot on the server or a download's
 * worker, until `close()`. The caller's own `signal` still cancels the stream too.
 */
function cancelledWhenLeft<S extends DescService>(service: S, client: Client<S>): Client<S> {
  const streaming = new Set(
    service.methods.filter((m) => m.methodKind === "server_streaming").map((m) => m.localName),
  );
  return new Proxy(client, {
    get(target, prop, receiver) {
      const value: unknown = Reflect.get(target, prop, receiver);
      if (typeof value !== "function" || typeof prop !== "string" || !streaming.has(prop)) {
        return value;
      }
      return (request: unknown, options: CallOptions = {}) =>
        cancelling(
          (signal) => value.call(target, request, { ...options, signal }) as AsyncIterable<unknown>,
          options.signal,
        );
    },
  });
}

/**
 * Start the stream once read, with a signal of its own that follows the caller's (by hand:
 * `AbortSignal.any` needs Node 20.3), and abort it however reading ends.
 */
async function* cancelling<M>(
  start: (signal: AbortSignal) => AsyncIterable<M>,
  caller: AbortSignal | undefined,
): AsyncGenerator<M> {
  const own = new AbortController();
  const follow = () => own.abort(caller?.reason);
  if (caller?.aborted) {
    follow();
  }
  caller?.addEventListener("abort", follow, { once: true });
  try {
    yield* start(own.signal);
  } finally {
    caller?.removeEventListener("abort", follow);
    own.abort();
  }
}

/**
 * The metadata naming the caller, each value checked (`checkedMetadata`) so that a wrong one
 * is refused when the client is made rather than failing every call.
 */
function identityHeaders(options: ClientOptions): [string, string][] {
  const headers: [string, string][] = [];
  if (options.principal) {
    headers.push([PRINCIPAL_HEADER, checkedMetadata(options.principal, "principal")]);
  }
  const roles = (options.roles ?? []).map((r) => r.trim()).filter((r) => r);
  if (roles.length) {
    headers.push([ROLES_HEADER, checkedMetadata(roles.join(","), "roles")]);
  }
  const token = options.token?.trim();
  if (token) {
    headers.push(["authorization", `Bearer ${checkedMetadata(token, "token", true)}`]);
  }
  return headers;
}

function identity(headers: [string, string][]): Interceptor {
  return (next) => async (req) => {
    for (const [name, value] of headers) {
      req.header.set(name, value);
    }
    return next(req);
  };
}

/** A ModelplaneError for a wrong argument found before any call. */
function invalidArgument(
  message: string,
  reason = "",
  info: Record<string, string> = {},
): ModelplaneError {
  return new ModelplaneError(new ConnectError(message, Code.InvalidArgument), reason, info);
}

/**
 * `value`, checked for sending as gRPC metadata, which carries printable ASCII only (no
 * accents, no CR or LF): anything else is refused as the Python SDK refuses it, INVALID_ARGUMENT
 * with reason INVALID_METADATA and `info.field` = `what`, instead of a call failing UNKNOWN (a
 * line break, which Node refuses to send) or the server reading another name (an accent). A
 * `secret` value is not shown.
 */
function checkedMetadata(value: string, what: string, secret = false): string {
  const bad = [...String(value)].find((ch) => ch < " " || ch > "~");
  if (bad === undefined) {
    return value;
  }
  const held = secret
    ? `${what} holds a character`
    : `${what} ${JSON.stringify(value)} holds ${JSON.stringify(bad)}`;
  throw invalidArgument(
    `${held} that gRPC metadata cannot carry: printable ASCII only ` +
      "(no accents, no control characters or line breaks)",
    "INVALID_METADATA",
    { field: what },
  );
}

/**
 * A deadline as Connect takes it: `Infinity` is none (0, as Connect reads it); NaN, a
 * negative value and one over MAX_TIMEOUT_MS (which Node's timers would fire after 1 ms) are
 * refused. A fraction of a millisecond is rounded up to the next whole one: Connect writes
 * `grpc-timeout` as the number it is given (`1000.5m`), which a gRPC server refuses (its
 * header takes whole units), and rounding down could make a deadline of 0, which is none.
 */
function checkedTimeout(timeoutMs: number, what: string): number {
  if (timeoutMs === Infinity) {
    return 0;
  }
  if (typeof timeoutMs !== "number" || !(timeoutMs >= 0 && timeoutMs <= MAX_TIMEOUT_MS)) {
    throw invalidArgument(
      `${what} ${String(timeoutMs)} is not a deadline: give milliseconds from 0 to ` +
        `${MAX_TIMEOUT_MS} (about 24.8 days), or 0 or Infinity for none`,
    );
  }
  return Math.ceil(timeoutMs);
}

/** `HOST:PORT`: a host name or IPv4 address, or an IPv6 address in brackets, then a port. */
const ADDRESS = /^(?:\[[0-9A-Fa-f:.]+\]|[^\s:/?#@[\]\\]+):(\d+)$/;

/**
 * The address, checked: `HOST:PORT` with a port from 1 to 65535 and a host a URL can hold,
 * or a ModelplaneError INVALID_ARGUMENT naming the address and what is wrong with it.
 */
function checkedAddress(address: string): string {
  const wrong = (why: string) => invalidArgument(`address ${JSON.stringify(address)}: ${why}`);
  if (address.includes("://")) {
    throw wrong("give HOST:PORT without a scheme (options.scheme or options.tls choose TLS)");
  }
  const match = ADDRESS.exec(address);
  if (!match) {
    throw wrong("not HOST:PORT (e.g. 127.0.0.1:50051, cp.internal:50051, [::1]:50051)");
  }
  const port = Number(match[1]);
  if (port < 1 || port > 65535) {
    throw wrong(`port ${match[1]} is not from 1 to 65535`);
  }
  try {
    new URL(`http://${address}`);
  } catch {
    throw wrong("the host is not a valid host name or IP address");
  }
  return address;
}

/**
 * Run a call made with `requestId`, putting the id on the ModelplaneError it fails with, so
 * that the caller can send the call again with it.
 */
async function withRequestId<T>(requestId: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    const error = toModelplaneError(err);
    error.requestId = requestId;
    throw error;
  }
}
