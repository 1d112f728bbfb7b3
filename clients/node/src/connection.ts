/**
 * Connection-level failures reported as gRPC core reports them: UNAVAILABLE.
 *
 * Connect's Node transport reports a connection that fails before the server answers by what
 * the Node error happens to be: a TLS certificate the client does not trust is INTERNAL, a
 * connection reset during the handshake is ABORTED, and a server that closes the connection
 * right after the TLS 1.3 handshake (as gRPC servers do to a client presenting no client
 * certificate, or speaking plaintext to a TLS port) leaves the call's stream cancelled:
 * CANCELLED. gRPC core (the Python SDK, the Go client) says UNAVAILABLE for all of these, so
 * this client does too, keeping the original message and its cause.
 *
 * Only errors of calls that got no answer at all are changed: an answer of the server, even
 * CANCELLED or INTERNAL, comes with response headers and a grpc-status.
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

/**
 * `err` as UNAVAILABLE when it is a connection-level failure of a call the server never
 * answered; otherwise `err` itself. The message is kept (the Node error code added), and so
 * is the cause: the Node error, or Connect's own error where there was none.
 */
export function unavailableIfUnanswered(err: unknown, trace: CallTrace): unknown {
  if (
    !(err instanceof ConnectError) ||
    !TRANSPORT_CODES.has(err.code) ||
    trace.answered ||
    err.metadata.has("grpc-status")
  ) {
    return err;
  }
  const code = connectionErrorCode(err.cause);
  if (code !== undefined) {
    const message = err.rawMessage.trim();
    return new ConnectError(
      message.includes(code) ? message : `${message} (${code})`,
      Code.Unavailable,
      err.metadata,
      undefined,
      err.cause,
    );
  }
  if (trace.connectionLost) {
    return new ConnectError(
      `the server closed the connection before answering (${err.rawMessage}); a TLS server ` +
        "does so when the client presents no certificate it trusts, or speaks plaintext",
      Code.Unavailable,
      err.metadata,
      undefined,
      err.cause ?? err,
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
    if (trace === undefined || session === undefined) {
      return stream;
    }
    if (!this.sessions.has(session)) {
      this.sessions.add(session);
      session.once("close", () => this.sessions.delete(session));
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
 * Report connection-level failures of calls the server never answered as UNAVAILABLE (see
 * the top of this file). Goes with a TracingSessionManager.
 */
export function unavailableWhenUnreached(): Interceptor {
  return (next) => async (req) => {
    const trace: CallTrace = { answered: false, connectionLost: false };
    try {
      return await traces.run(trace, () => next(req));
    } catch (err) {
      throw req.signal.aborted ? err : unavailableIfUnanswered(err, trace);
    }
  };
}
