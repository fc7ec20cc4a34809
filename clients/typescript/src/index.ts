// TypeScript client of Ebb's gRPC API.
//
// The messages and service descriptors are generated from proto/ by `npm run generate`
// (buf + protoc-gen-es) into src/gen; this module re-exports them and adds `connect`, which
// builds one transport (gRPC over HTTP/2, or gRPC-Web over HTTP/1.1 with `protocol:
// "grpc-web"`; @connectrpc/connect-node) and a client per service,
// sending `authorization: Bearer <token>` on every call when a token is given.
//
//   import { connect, lifecycle } from "@ebb/client";
//   const ebb = connect("127.0.0.1:50051", { token: process.env.EBB_TOKEN });
//   const { organization } = await ebb.lifecycle.createOrganization({ name: "acme" });

import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";

import { AuditService } from "./gen/ebb/audit/v1/audit_service_pb.js";
import { LifecycleService } from "./gen/ebb/lifecycle/v1/lifecycle_service_pb.js";
import { RunnerService } from "./gen/ebb/lifecycle/v1/runner_service_pb.js";
import { NotifierService } from "./gen/ebb/notifier/v1/notifier_service_pb.js";
import { SchedulerService } from "./gen/ebb/scheduler/v1/scheduler_service_pb.js";

export * as audit from "./gen/ebb/audit/v1/audit_service_pb.js";
export * as lifecycle from "./gen/ebb/lifecycle/v1/lifecycle_service_pb.js";
export * as lifecycleResources from "./gen/ebb/lifecycle/v1/resources_pb.js";
export * as runner from "./gen/ebb/lifecycle/v1/runner_service_pb.js";
export * as notifier from "./gen/ebb/notifier/v1/notifier_service_pb.js";
export * as notifierResources from "./gen/ebb/notifier/v1/resources_pb.js";
export * as scheduler from "./gen/ebb/scheduler/v1/scheduler_service_pb.js";

/** A client for each of Ebb's public services, sharing one transport. */
export interface Ebb {
  transport: Transport;
  lifecycle: Client<typeof LifecycleService>;
  runner: Client<typeof RunnerService>;
  scheduler: Client<typeof SchedulerService>;
  audit: Client<typeof AuditService>;
  notifier: Client<typeof NotifierService>;
}

export interface ConnectOptions {
  /** Sent as `authorization: Bearer <token>` on every call; nothing is sent when empty. */
  token?: string;
  /** `http` (default, plaintext HTTP/2) or `https`. */
  scheme?: "http" | "https";
  /** More interceptors, run after the token's. */
  interceptors?: Interceptor[];
  /**
   * `grpc` (default: gRPC over HTTP/2) or `grpc-web` (gRPC-Web over HTTP/1.1, as browsers and
   * proxies without HTTP/2 trailers speak it; every Ebb server answers both).
   */
  protocol?: "grpc" | "grpc-web";
}

/** An interceptor that adds `authorization: Bearer <token>` to every request. */
export function bearerToken(token: string): Interceptor {
  return (next) => async (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
}

/** Connects to `target`: `host:port`, or a full `http://host:port` URL. */
export function connect(target: string, options: ConnectOptions = {}): Ebb {
  const baseUrl = /^https?:\/\//.test(target) ? target : `${options.scheme ?? "http"}://${target}`;
  const interceptors: Interceptor[] = [];
  if (options.token) {
    interceptors.push(bearerToken(options.token));
  }
  interceptors.push(...(options.interceptors ?? []));
  const transport =
    options.protocol === "grpc-web"
      ? createGrpcWebTransport({ baseUrl, httpVersion: "1.1", interceptors })
      : createGrpcTransport({ baseUrl, interceptors });
  return {
    transport,
    lifecycle: createClient(LifecycleService, transport),
    runner: createClient(RunnerService, transport),
    scheduler: createClient(SchedulerService, transport),
    audit: createClient(AuditService, transport),
    notifier: createClient(NotifierService, transport),
  };
}
