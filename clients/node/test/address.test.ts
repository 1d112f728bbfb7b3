/**
 * The address a client is made with is checked at construction, before anything is dialled:
 * a wrong one is a ModelplaneError INVALID_ARGUMENT naming it, not a TypeError from the URL
 * parser. No server needed.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { ModelplaneClient, ModelplaneError } from "../src/index.js";

const WRONG: Record<string, RegExp> = {
  "127.0.0.1:99999": /port 99999 is not from 1 to 65535/,
  "127.0.0.1:0": /port 0 is not from 1 to 65535/,
  "not a host": /not HOST:PORT/,
  "127.0.0.1": /not HOST:PORT/,
  ":50051": /not HOST:PORT/,
  "cp.internal:grpc": /not HOST:PORT/,
  "[::1": /not HOST:PORT/,
  "[:::::]:50051": /not a valid host name or IP address/,
  "": /not HOST:PORT/,
  "http://127.0.0.1:50051": /without a scheme/,
};

test("a malformed address is INVALID_ARGUMENT at construction, naming the address", () => {
  for (const [address, why] of Object.entries(WRONG)) {
    assert.throws(
      () => new ModelplaneClient(address),
      (err: unknown) => {
        assert.ok(err instanceof ModelplaneError, `${address}: threw ${String(err)}`);
        assert.ok(err instanceof ConnectError);
        assert.equal(err.code, Code.InvalidArgument);
        assert.equal(err.status, "INVALID_ARGUMENT");
        assert.ok(err.rawMessage.includes(JSON.stringify(address)), err.rawMessage);
        assert.match(err.rawMessage, why);
        return true;
      },
      address,
    );
  }
});

test("host names, IPv4 and bracketed IPv6 addresses are taken without dialling", () => {
  for (const address of ["127.0.0.1:50051", "localhost:1", "cp.internal:443", "[::1]:65535"]) {
    const client = new ModelplaneClient(address, { scheme: "https" });
    client.close();
  }
});
