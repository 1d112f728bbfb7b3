/**
 * Errors from the control plane: the gRPC status plus the `google.rpc.ErrorInfo` reason
 * (an UPPER_SNAKE word such as `MODEL_NOT_FOUND`) that every Modelplane error carries.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** The ErrorInfo domain the Modelplane servers put on their errors. */
export const ERROR_DOMAIN = "modelplane.dev";

/**
 * A failed call. It is a ConnectError (so `code`, `rawMessage` and `metadata` are there) with
 * the gRPC status name and the ErrorInfo reason added.
 */
export class ModelplaneError extends ConnectError {
  /** The gRPC status name, e.g. `NOT_FOUND`. */
  readonly status: string;
  /** The ErrorInfo reason, e.g. `MODEL_NOT_FOUND`; empty when the server sent none. */
  readonly reason: string;
  /** The ErrorInfo metadata. */
  readonly info: Readonly<Record<string, string>>;
  /**
   * The request id (idempotency key) of the failed `createModel`, `registerVersion` or
   * `evaluateGate`, made up or given: pass it to the same call again (after a lost answer, a
   * deadline, UNAVAILABLE) to get the first call's answer instead of a second model, version
   * or gate decision. Undefined on errors of other calls.
   */
  requestId?: string;

  /** Only errors made by this class; ConnectError's own check accepts any ConnectError. */
  static override [Symbol.hasInstance](v: unknown): boolean {
    return typeof v === "object" && v !== null && ModelplaneError.prototype.isPrototypeOf(v);
  }

  constructor(error: ConnectError, reason: string, info: Record<string, string>) {
    super(error.rawMessage, error.code, error.metadata, undefined, error.cause);
    // `name` stays "ConnectError": ConnectError's instanceof check (and so ConnectError.from,
    // which would otherwise wrap this as Unknown) accepts a subclass only under that name.
    this.details = error.details;
    this.status = statusName(error.code);
    this.reason = reason;
    this.info = info;
    this.message = reason
      ? `${this.status} ${reason}: ${error.rawMessage}`
      : `${this.status}: ${error.rawMessage}`;
  }
}

/**
 * gRPC's canonical status names, by code number. A table, not Connect's enum names
 * upper-cased: Connect spells code 1 `Canceled`, gRPC `CANCELLED`.
 */
const STATUS_NAMES: readonly string[] = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
];

/** A code as gRPC names it: `Code.InvalidArgument` is `INVALID_ARGUMENT`, `Code.Canceled`
 * `CANCELLED`; a number outside the 17 codes is `UNKNOWN`. */
export function statusName(code: Code): string {
  return STATUS_NAMES[code] ?? "UNKNOWN";
}

/**
 * Turn whatever a call threw into a ModelplaneError, reading ErrorInfo from the trailers.
 * With the `address` the call went to, an UNIMPLEMENTED that carries no ErrorInfo (gRPC's own
 * answer for a method the server does not serve at all, as a sidecar answers this API) says
 * so and names the likely mix-up of addresses.
 */
export function toModelplaneError(err: unknown, address?: string): ModelplaneError {
  if (err instanceof ModelplaneError) {
    return err;
  }
  let connect = ConnectError.from(err);
  const info = connect.findDetails(ErrorInfoSchema).find((d) => d.domain === ERROR_DOMAIN);
  if (address !== undefined && info === undefined && connect.code === Code.Unimplemented) {
    const explained = new ConnectError(
      `${address} answers, but does not serve this API (${connect.rawMessage}): is ` +
        `${address} a sidecar's address? Give the control plane's gRPC address ` +
        "(ModelplaneClient's address, the example's --server or MODELPLANE_SERVER), not a " +
        "sidecar's; or the control plane there is older than this client and lacks the call",
      connect.code,
      connect.metadata,
      undefined,
      connect.cause,
    );
    explained.details = connect.details;
    connect = explained;
  }
  return new ModelplaneError(connect, info?.reason ?? "", { ...(info?.metadata ?? {}) });
}

/**
 * Wrap a generated service client so that its calls reject (or, for server streams, throw
 * while iterating) with ModelplaneError instead of a bare ConnectError; `address` (the one the
 * client calls) is for the errors' messages.
 */
export function withModelplaneErrors<T extends object>(client: T, address?: string): T {
  return new Proxy(client, {
    get(target, prop, receiver) {
      const value: unknown = Reflect.get(target, prop, receiver);
      if (typeof value !== "function") {
        return value;
      }
      return (...args: unknown[]) => {
        const result: unknown = value.apply(target, args);
        if (result instanceof Promise) {
          return result.catch((err: unknown) => {
            throw toModelplaneError(err, address);
          });
        }
        if (isAsyncIterable(result)) {
          return rethrowing(result, address);
        }
        return result;
      };
    },
  });
}

function isAsyncIterable(v: unknown): v is AsyncIterable<unknown> {
  return typeof v === "object" && v !== null && Symbol.asyncIterator in v;
}

async function* rethrowing<M>(stream: AsyncIterable<M>, address?: string): AsyncGenerator<M> {
  try {
    yield* stream;
  } catch (err) {
    throw toModelplaneError(err, address);
  }
}
