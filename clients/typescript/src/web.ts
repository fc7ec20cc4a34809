// The browser entry of Ebb's TypeScript client: gRPC-Web over `fetch`
// (@connectrpc/connect-web), which every Ebb server answers; a page of another origin may call
// once the server lists it in `grpc_web.allowed_origins` (docs/auth.md, "gRPC-Web and
// browsers"). It runs wherever `fetch` does, Node.js 20 included, and never loads Node's
// modules.
//
//   import { connect } from "@ebb/client/web";
//   const ebb = connect("https://ebb.example.com", { token });
//   const { workspaces } = await ebb.lifecycle.listWorkspaces({ projectId });

import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { baseUrl, clients, interceptorsOf, type Ebb, type TokenOptions } from "./services.js";

export * from "./services.js";
export * from "./errors.js";

export interface WebConnectOptions extends TokenOptions {
  /** The `fetch` to call with; the global one by default. */
  fetch?: typeof globalThis.fetch;
}

/** Connects to `target`: the server's URL (`https://host:port`), or `host:port` over http. */
export function connect(target: string, options: WebConnectOptions = {}): Ebb {
  const transport = createGrpcWebTransport({
    baseUrl: baseUrl(target),
    interceptors: interceptorsOf(options),
    fetch: options.fetch,
  });
  return clients(transport);
}
