// TypeScript client of Ebb's gRPC API, for Node.js (20 or later).
//
// The messages and service descriptors are generated from Ebb's protos when the package is
// built (buf + protoc-gen-es into src/gen); this module re-exports them and adds `connect`,
// which builds one transport (gRPC over HTTP/2, or gRPC-Web over HTTP/1.1 with
// `protocol: "grpc-web"`; @connectrpc/connect-node) and a client per service, sending
// `authorization: Bearer <token>` on every call when a token is given. Browsers import
// `@ebb/client/web` instead (gRPC-Web over fetch).
//
//   import { connect } from "@ebb/client";
//   const ebb = connect("127.0.0.1:50051", { token: process.env.EBB_TOKEN });
//   const { organization } = await ebb.lifecycle.createOrganization({ name: "acme" });

import { createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";

import { baseUrl, clients, interceptorsOf, type Ebb, type TokenOptions } from "./services.js";

export * from "./services.js";
export * from "./errors.js";

export interface ConnectOptions extends TokenOptions {
  /** For a `host:port` target: `http` (default, plaintext) or `https`. */
  scheme?: "http" | "https";
  /**
   * `grpc` (default: gRPC over HTTP/2) or `grpc-web` (gRPC-Web over HTTP/1.1, as proxies
   * without HTTP/2 trailers speak it; every Ebb server answers both).
   */
  protocol?: "grpc" | "grpc-web";
}

/** Connects to `target`: `host:port`, or a full `http(s)://host:port` URL. */
export function connect(target: string, options: ConnectOptions = {}): Ebb {
  const url = baseUrl(target, options.scheme);
  const interceptors = interceptorsOf(options);
  const transport =
    options.protocol === "grpc-web"
      ? createGrpcWebTransport({ baseUrl: url, httpVersion: "1.1", interceptors })
      : createGrpcTransport({ baseUrl: url, interceptors });
  return clients(transport);
}
