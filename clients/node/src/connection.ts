/**
 * Connection-level failures reported as gRPC core reports them: UNAVAILABLE.
 *
 * Connect's Node transport reports a connection that fails before the server answers by what
 * the Node error happens to be: a TLS certificate the client does not trust is INTERNAL, a
 * connection reset during the handshake is ABORTED, and a server that closes the connection
 * right after the TLS 1.3 handshake (as gRPC servers do to a client presenting no client
 * certificate, or speaking plaintext to a TLS port) leaves the call's stream cancelled:
 * CANCELLED. A connection lost while an answer is on its way (a control plane killed under a
 * `watchDeployment`, a network cut) is CANCELLED or ABORTED too. gRPC core (the Python SDK,
 * the Go client) says UNAVAILABLE for all of these, so this client does too, keeping the
 * original message and its cause.
 *
 * Only errors that came with no grpc-status are changed: an answer of the server, even
 * CANCELLED or INTERNAL, comes with one. A call cut by this client (`close()`, the caller's
 * signal) keeps its CANCELLED.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import type * as http2 from "node:http2";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { Http2SessionManager } from "@connectrpc/connect-node";

/** What one call learnt of its HTTP/2 stream. */
interface CallTrace {
  /** Response headers came: the server answered (a gRPC status included). */
  answered: boolean;
  /** The stream closed because its connection was gone (not closed by this client). */
  connectionLost: boolean;
}

/** X.509 verification failures, as Node names them on a TLS socket's error. */
const CERTIFICATE_ERRORS = new Set([
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_CRL",
  "UNABLE_TO_DECRYPT_CERT_SIGNATURE",
  "UNABLE_TO_DECRYPT_CRL_SIGNATURE",
  "UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY",
  "CERT_SIGNATURE_FAILURE",
  "CRL_SIGNATURE_FAILURE",
  "CERT_NOT_YET_VALID",
  "CERT_HAS_EXPIRED",
  "CRL_NOT_YET_VALID",
  "CRL_HAS_EXPIRED",
  "ERROR_IN_CERT_NOT_BEFORE_FIELD",
  "ERROR_IN_CERT_NOT_AFTER_FIELD",
  "ERROR_IN_CRL_LAST_UPDATE_FIELD",
  "ERROR_IN_CRL_NEXT_UPDATE_FIELD",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "CERT_CHAIN_TOO_LONG",
  "CERT_REVOKED",
  "INVALID_CA",
  "PATH_LENGTH_EXCEEDED",
  "INVALID_PURPOSE",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "HOSTNAME_MISMATCH",
  "ERR_TLS_CERT_ALTNAME_INVALID",
  "ERR_TLS_HANDSHAKE_TIMEOUT",
]);

/** Sockets reset, dropped or unreachable. */
const SOCKET_ERRORS = new Set([
  "ECONNRESET",
  "ECONNABORTED",
  "ECONNREFUSED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "EHOSTDOWN",
  "ENETUNREACH",
  "ENETDOWN",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

/**
 * The Node error code of a TLS or socket failure in `err`'s cause chain: a certificate check,
 * an OpenSSL error such as a handshake alert (`ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED`), a
 * reset socket. Undefined when there is none.
 */
export function connectionErrorCode(err: unknown): string | undefined {
  const seen = new Set<unknown>();
  for (let e = err; e instanceof Error && !seen.has(e); e = e.cause) {
    seen.add(e);
    const code = (e as { code?: unknown }).code;
    if (
      typeof code === "string" &&
      (CERTIFICATE_ERRORS.has(code) || SOCKET_ERRORS.has(code) || code.startsWith("ERR_SSL_"))
    ) {
      return code;
    }
  }
  return undefined;
}

/** The codes Connect's transport gives failures of its own (not the server's answers). */
const TRANSPORT_CODES = new Set([Code.Canceled, Code.Unknown, Code.Internal, Code.Aborted]);

/** nghttp2's NGHTTP2_ERR_PROTO, the `errno` of Node's ERR_HTTP2_ERROR "Protocol error". */
const NGHTTP2_ERR_PROTO = -505;

/**
 * Whether `err`'s cause chain holds nghttp2's protocol error: the peer sent bytes that are no
 * HTTP/2 frames (an HTTP/1.1 answer, a banner), where HTTP/2 begins with a SETTINGS frame.
 */
export function isNotHttp2(err: unknown): boolean {
  const seen = new Set<unknown>();
  for (let e = err; e instanceof Error && !seen.has(e); e = e.cause) {
    seen.add(e);
    const { code, errno } = e as { code?: unknown; errno?: unknown };
    if (code === "ERR_HTTP2_ERROR" && errno === NGHTTP2_ERR_PROTO) {
      return true;
    }
  }
  return false;
}

/** The TLS alert of a server that offers no HTTP/2 (no `h2` in its ALPN protocols). */
const NO_H2_ALERT = "ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL";

/** What to check when the peer at `address` turned out not to be a gRPC server. */
function notGrpcHint(address: string): string {
  return (
    `is ${address} an HTTP/1.1 port, such as a metrics port, or a proxy without HTTP/2? ` +
    "Give the control plane's gRPC address"
  );
}

/** `err` as UNAVAILABLE with `message`, its metadata kept, its cause (or itself) the cause. */
function unavailable(err: ConnectError, message: string): ConnectError {
  return new ConnectError(message, Code.Unavailable, err.metadata, undefined, err.cause ?? err);
}

/**
 * `err` as UNAVAILABLE when it is a connection-level failure (see the top of this file) of a
 * call to `address`; otherwise `err` itself. The message is kept (the Node error code added,
 * or what the failure means), and so is the cause: the Node error, or Connect's own error
 * where there was none.
 */
export function unavailableIfConnectionFailed(
  err: unknown,
  trace: CallTrace,
  address: string,
): unknown {
  if (
    !(err instanceof ConnectError) ||
    !TRANSPORT_CODES.has(err.code) ||
    err.metadata.has("grpc-status")
  ) {
    return err;
  }
  const code = connectionErrorCode(err.cause);
  const message = err.rawMessage.trim();
  if (trace.answered) {
    // Headers came, then the connection went before the trailers: the server died or the
    // network failed under the answer (a reset of this stream alone leaves the session up).
    if (trace.connectionLost || (code !== undefined && SOCKET_ERRORS.has(code))) {
      return unavailable(
        err,
        `the connection to ${address} was lost before the call ended (${message})`,
      );
    }
    return err;
  }
  if (isNotHttp2(err.cause)) {
    return unavailable(
      err,
      `the server at ${address} does not speak HTTP/2, so it is no gRPC server: its first ` +
        `bytes were no HTTP/2 frame (${message}); ${notGrpcHint(address)}`,
    );
  }
  if (code === NO_H2_ALERT) {
    return unavailable(
      err,
      `${message} (${code}): the TLS server at ${address} offers no HTTP/2, so it is no gRPC ` +
        `server; ${notGrpcHint(address)}`,
    );
  }
  if (code !== undefined) {
    return unavailable(err, message.includes(code) ? message : `${message} (${code})`);
  }
  if (trace.connectionLost) {
    return unavailable(
      err,
      `the server closed the connection before answering (${err.rawMessage}); a TLS server ` +
        "does so when the client presents no certificate it trusts, or speaks plaintext",
    );
  }
  return err;
}

const traces = new AsyncLocalStorage<CallTrace>();

/**
 * An Http2SessionManager that notes, for the call that opened each stream, whether the server
 * answered and whether the stream closed because its connection was gone.
 */
export class TracingSessionManager extends Http2SessionManager {
  /** Sessions this client closed itself (`abort`): their streams were not lost. */
  private readonly abandoned = new WeakSet<http2.Http2Session>();
  private readonly sessions = new Set<http2.Http2Session>();

  override async request(
    method: string,
    path: string,
    headers: http2.OutgoingHttpHeaders,
    options: Omit<http2.ClientSessionRequestOptions, "signal">,
  ): Promise<http2.ClientHttp2Stream> {
    const stream = await super.request(method, path, headers, options);
    const trace = traces.getStore();
    const session = stream.session;
    if (session === undefined) {
      return stream;
    }
    if (!this.sessions.has(session)) {
      this.sessions.add(session);
      session.once("close", () => this.sessions.delete(session));
      // A session's error reaches its calls through their streams. Connect's abort() leaves
      // only a one-shot listener, so an error the session emits after it (a peer that is no
      // HTTP/2 server, then close()) had none and killed the process.
      session.on("error", () => {});
    }
    if (trace === undefined) {
      return stream;
    }
    stream.once("response", () => {
      trace.answered = true;
    });
    stream.once("close", () => {
      trace.connectionLost = session.destroyed && !this.abandoned.has(session);
    });
    return stream;
  }

  override abort(reason?: Error): void {
    for (const session of this.sessions) {
      this.abandoned.add(session);
    }
    this.sessions.clear();
    super.abort(reason);
  }
}

/**
 * Report connection-level failures as UNAVAILABLE (see the top of this file): those of the
 * call, and those raised while a server stream's messages are read. Goes with a
 * TracingSessionManager.
 */
export function unavailableWhenUnreached(): Interceptor {
  return (next) => async (req) => {
    const trace: CallTrace = { answered: false, connectionLost: false };
    const address = new URL(req.url).host;
    const failed = (err: unknown) =>
      req.signal.aborted ? err : unavailableIfConnectionFailed(err, trace, address);
    let res;
    try {
      res = await traces.run(trace, () => next(req));
    } catch (err) {
      throw failed(err);
    }
    return res.stream ? { ...res, message: mapped(res.message, failed) } : res;
  };
}

/** The messages of `stream`, with the error reading them ends in passed through `failed`. */
async function* mapped<M>(
  stream: AsyncIterable<M>,
  failed: (err: unknown) => unknown,
): AsyncGenerator<M> {
  try {
    yield* stream;
  } catch (err) {
    throw failed(err);
  }
}
