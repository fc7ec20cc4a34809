// The part of the client that runs anywhere (Node.js and browsers): a client per service on a
// transport, the bearer-token interceptor, and the generated modules.

import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";

import { AuditService } from "./gen/ebb/audit/v1/audit_service_pb.js";
import { DeprovisionService } from "./gen/ebb/lifecycle/v1/deprovision_service_pb.js";
import { LifecycleService } from "./gen/ebb/lifecycle/v1/lifecycle_service_pb.js";
import { RunnerService } from "./gen/ebb/lifecycle/v1/runner_service_pb.js";
import { SchedulingService } from "./gen/ebb/lifecycle/v1/scheduling_service_pb.js";
import { TokenService } from "./gen/ebb/lifecycle/v1/token_service_pb.js";
import { NotifierService } from "./gen/ebb/notifier/v1/notifier_service_pb.js";
import { SchedulerService } from "./gen/ebb/scheduler/v1/scheduler_service_pb.js";

export * as audit from "./gen/ebb/audit/v1/audit_service_pb.js";
export * as deprovision from "./gen/ebb/lifecycle/v1/deprovision_service_pb.js";
export * as lifecycle from "./gen/ebb/lifecycle/v1/lifecycle_service_pb.js";
export * as lifecycleResources from "./gen/ebb/lifecycle/v1/resources_pb.js";
export * as runner from "./gen/ebb/lifecycle/v1/runner_service_pb.js";
export * as scheduling from "./gen/ebb/lifecycle/v1/scheduling_service_pb.js";
export * as tokens from "./gen/ebb/lifecycle/v1/token_service_pb.js";
export * as notifier from "./gen/ebb/notifier/v1/notifier_service_pb.js";
export * as notifierResources from "./gen/ebb/notifier/v1/resources_pb.js";
export * as scheduler from "./gen/ebb/scheduler/v1/scheduler_service_pb.js";
export * as rpcErrorDetails from "./gen/google/rpc/error_details_pb.js";

export {
  AuditService,
  DeprovisionService,
  LifecycleService,
  NotifierService,
  RunnerService,
  SchedulerService,
  SchedulingService,
  TokenService,
};

/** A client for each of Ebb's services, sharing one transport. */
export interface Ebb {
  transport: Transport;
  /** Organizations, projects, workspaces, runs, auto-destroy. */
  lifecycle: Client<typeof LifecycleService>;
  /** The catalog, entities, relationships and action runs of deprovisioning. */
  deprovision: Client<typeof DeprovisionService>;
  /** Claiming, heartbeating and completing runs. */
  runner: Client<typeof RunnerService>;
  /** API tokens. */
  tokens: Client<typeof TokenService>;
  /** The scheduler's calls to lifecycle (service tokens only). */
  scheduling: Client<typeof SchedulingService>;
  /** The scheduler's tasks. */
  scheduler: Client<typeof SchedulerService>;
  /** Notification configurations and deliveries. */
  notifier: Client<typeof NotifierService>;
  /** The audit log. */
  audit: Client<typeof AuditService>;
}

/** What both `connect`s take. */
export interface TokenOptions {
  /** Sent as `authorization: Bearer <token>` on every call; nothing is sent when empty. */
  token?: string;
  /** More interceptors, run after the token's. */
  interceptors?: Interceptor[];
}

/** An interceptor that adds `authorization: Bearer <token>` to every request. */
export function bearerToken(token: string): Interceptor {
  if (!token || /[\r\n]/.test(token)) {
    throw new TypeError("@ebb/client: a token must be non-empty text on one line");
  }
  return (next) => async (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
}

/** The interceptors of `options`: the token's first. */
export function interceptorsOf(options: TokenOptions): Interceptor[] {
  return [...(options.token ? [bearerToken(options.token)] : []), ...(options.interceptors ?? [])];
}

/** A client per service on `transport` (any Connect transport). */
export function clients(transport: Transport): Ebb {
  return {
    transport,
    lifecycle: createClient(LifecycleService, transport),
    deprovision: createClient(DeprovisionService, transport),
    runner: createClient(RunnerService, transport),
    tokens: createClient(TokenService, transport),
    scheduling: createClient(SchedulingService, transport),
    scheduler: createClient(SchedulerService, transport),
    notifier: createClient(NotifierService, transport),
    audit: createClient(AuditService, transport),
  };
}

/** `http(s)://host:port` of `target`: `host:port` (with `scheme`) or a full URL. */
export function baseUrl(target: string, scheme: "http" | "https" = "http"): string {
  if (/^https?:\/\//.test(target)) {
    return target.replace(/\/+$/, "");
  }
  if (!target || target.includes("/")) {
    throw new TypeError(`@ebb/client: ${JSON.stringify(target)} is not a server address (host:port)`);
  }
  return `${scheme}://${target}`;
}
