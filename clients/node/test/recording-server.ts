/**
 * A loopback HTTP/2 server that records each gRPC call's headers and answers UNIMPLEMENTED: what
 * the tests of the metadata a client sends (deadline, identity) talk to. No control plane needed.
 */
import { createServer, type IncomingHttpHeaders } from "node:http2";
import type { AddressInfo } from "node:net";

export interface RecordingServer {
  /** `127.0.0.1:PORT`. */
  address: string;
  /** The headers of each call, in order. */
  seen: IncomingHttpHeaders[];
  close(): void;
}

/** Start one; each answer waits `endDelayMs` after the request ends (0: none). */
export async function startRecordingServer(endDelayMs = 0): Promise<RecordingServer> {
  const seen: IncomingHttpHeaders[] = [];
  const server = createServer();
  server.on("stream", (stream, headers) => {
    seen.push(headers);
    stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
    stream.on("wantTrailers", () => {
      stream.sendTrailers({ "grpc-status": "12", "grpc-message": "not here" });
    });
    stream.resume();
    stream.on("end", () => (endDelayMs ? setTimeout(() => stream.end(), endDelayMs) : stream.end()));
    stream.on("error", () => {}); // a call whose deadline fired first resets its stream
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    close: () => server.close(),
  };
}
