// Ebb's flows from the installed TypeScript client, against a running Ebb server.
//
//   node flows.js ADDR TOKEN CATALOG
//   EBB_PROTOCOL=grpc-web node flows.js ...   # gRPC-Web over HTTP/1.1 (Node's transport)
//   EBB_PROTOCOL=web node flows.js ...        # @ebb/client/web: the browser transport (fetch)
//
// This file is not part of the package: it imports `@ebb/client` as an application would, so
// it compiles and runs in a project where the package is installed (tests/tests/e2e/clients.rs
// installs the tarball `npm pack` makes into a clean one). ADDR is the server (`host:port`),
// TOKEN an admin token, CATALOG the path of the example catalog
// (deploy/catalog/deprovision-tenant.yaml); `ebb runner` is $EBB_BIN, else `ebb` on PATH.
//
// - services: every client reaches its service (no UNIMPLEMENTED), and a refused call's
//   google.rpc.BadRequest decodes with errorDetails;
// - auto-destroy: a workspace's destroy is scheduled a few seconds ahead, the scheduler queues
//   the AUTO_DESTROY run, `ebb runner --simulate succeed` runs it, the workspace ends ARCHIVED
//   with auto-destroy status SUCCEEDED;
// - deprovisioning: the catalog is applied, a tenant running on an account is torn down leaves
//   first by DeprovisionTenant, run by `ebb runner` with a RUNNER token made by TokenService;
//   the blast-radius refusal (FAILED_PRECONDITION, ErrorInfo CONFIRM_COUNT_REQUIRED) decodes
//   and its count is echoed;
// - no-token: a client without a token is refused (UNAUTHENTICATED).
//
// Prints `PASS typescript[ over PROTOCOL] <flow>` per flow; exits 0 on success, 1 otherwise.

import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { timestampDate, timestampFromDate, timestampMs } from "@bufbuild/protobuf/wkt";

import {
  Code,
  connect,
  deprovision,
  errorDetails,
  lifecycleResources,
  tokens,
  type Ebb,
} from "@ebb/client";
import { connect as connectWeb } from "@ebb/client/web";

const { AutoDestroyStatus, RunSource, RunStatus, WorkspaceState } = lifecycleResources;
const { ActionRunStatus, RelationshipState } = deprovision;
const TIMEOUT_MS = 60_000;
const opts = { timeoutMs: 10_000 };

const protocol = process.env.EBB_PROTOCOL ?? "grpc";
const NAME = protocol === "grpc" ? "typescript" : `typescript over ${protocol}`;

function fail(reason: string): never {
  throw new Error(`FAIL: ${reason}`);
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + TIMEOUT_MS;
  for (;;) {
    const value = await probe();
    if (value !== undefined) {
      return value;
    }
    if (Date.now() > deadline) {
      fail(`timed out after ${TIMEOUT_MS / 1000}s waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** A client of the transport EBB_PROTOCOL names. */
function open(addr: string, token?: string): Ebb {
  if (protocol === "web") return connectWeb(addr, { token });
  if (protocol === "grpc" || protocol === "grpc-web") return connect(addr, { token, protocol });
  throw new Error(`EBB_PROTOCOL=${protocol}: use grpc, grpc-web or web`);
}

/** `ebb runner --simulate succeed` for `runs` runs of `orgId`, with `token`. */
function runner(addr: string, orgId: string, token: string, runs: number): ChildProcess {
  return spawn(
    process.env.EBB_BIN ?? "ebb",
    [
      "runner",
      "--lifecycle-url",
      `http://${addr}`,
      "--organization-id",
      orgId,
      "--runner-id",
      "typescript-test",
      "--simulate",
      "succeed",
      "--max-runs",
      String(runs),
      "--claim-wait",
      "1s",
    ],
    { env: { ...process.env, EBB_TOKEN: token }, stdio: ["ignore", "inherit", "inherit"] },
  );
}

/** Waits for `child` to exit 0; kills it if it has not within 30 s. */
async function finish(child: ChildProcess): Promise<void> {
  const code = await new Promise<number | null>((resolve) => {
    if (child.exitCode !== null) {
      resolve(child.exitCode);
      return;
    }
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      resolve(null);
    }, 30_000);
    child.once("exit", (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  if (code !== 0) fail(`ebb runner exited ${code}`);
}

async function organization(ebb: Ebb, prefix: string) {
  const { organization: org } = await ebb.lifecycle.createOrganization(
    { requestId: randomUUID(), name: `${prefix}-${randomUUID().slice(0, 8)}` },
    opts,
  );
  return org ?? fail("CreateOrganization answered no organization");
}

async function workspace(ebb: Ebb, projectId: string, name: string) {
  const { workspace: ws } = await ebb.lifecycle.createWorkspace(
    { requestId: randomUUID(), projectId, name, labels: { client: "typescript" } },
    opts,
  );
  return ws ?? fail("CreateWorkspace answered no workspace");
}

/** The files `@ebb/client/web` loads never import Node's modules or its Node transport. */
function webEntryLoadsNoNodeModules(): void {
  const seen = new Set<string>();
  const pending = [fileURLToPath(import.meta.resolve("@ebb/client/web"))];
  for (let file = pending.pop(); file !== undefined; file = pending.pop()) {
    if (seen.has(file)) continue;
    seen.add(file);
    for (const [, spec] of readFileSync(file, "utf8").matchAll(/(?:from|import)\s*["']([^"']+)["']/g)) {
      if (spec.startsWith(".")) {
        pending.push(join(dirname(file), spec));
      } else if (spec.startsWith("node:") || spec === "@connectrpc/connect-node") {
        fail(`${file} (loaded by @ebb/client/web) imports ${spec}`);
      }
    }
  }
  console.log(`@ebb/client/web loads ${seen.size} files of the package, none of Node's modules`);
}

async function services(ebb: Ebb): Promise<void> {
  const org = await organization(ebb, "ts-services");
  const calls: [string, () => Promise<unknown>][] = [
    ["lifecycle", () => ebb.lifecycle.getOrganization({ organizationId: org.id }, opts)],
    ["deprovision", () => ebb.deprovision.listEntityKinds({}, opts)],
    ["runner", () => ebb.runner.claimRun({ organizationId: org.id, runnerId: "probe", wait: {} }, opts)],
    ["tokens", () => ebb.tokens.listTokens({ organizationId: org.id }, opts)],
    ["scheduling", () => ebb.scheduling.findDueWorkspaces({ shardCount: 1, limit: 1 }, opts)],
    ["scheduler", () => ebb.scheduler.listTasks({}, opts)],
    ["notifier", () => ebb.notifier.listNotificationConfigurations({ organizationId: org.id }, opts)],
    ["audit", () => ebb.audit.listEvents({ organizationId: org.id }, opts)],
  ];
  const answers: string[] = [];
  for (const [name, call] of calls) {
    try {
      await call();
      answers.push(`${name} OK`);
    } catch (e) {
      const d = errorDetails(e);
      // Refusals (a role without the right, such as scheduling's service-only calls) are
      // answers; a client that reaches no service, or a server fault, is not.
      if ([Code.Unimplemented, Code.Unknown, Code.Internal].includes(d.code)) {
        fail(`${name}: ${d.codeName}: ${d.message}`);
      }
      answers.push(`${name} ${d.codeName}`);
    }
  }
  console.log(`services: ${answers.join(", ")}`);

  try {
    await ebb.lifecycle.createOrganization({ requestId: randomUUID(), name: "" }, opts);
    fail("an organization without a name was created");
  } catch (e) {
    const d = errorDetails(e);
    if (d.code !== Code.InvalidArgument || !d.fieldViolations.some(([f]) => f === "name")) {
      fail(`CreateOrganization without a name: ${JSON.stringify(d)}`);
    }
    console.log(`decoded BadRequest: ${JSON.stringify(d.fieldViolations)}`);
  }
  console.log(`PASS ${NAME} services`);
}

async function autoDestroy(ebb: Ebb, addr: string, token: string): Promise<void> {
  const org = await organization(ebb, "ts");
  const { project } = await ebb.lifecycle.createProject(
    { requestId: randomUUID(), organizationId: org.id, name: "typescript" },
    opts,
  );
  if (!project) fail("CreateProject answered no project");
  const ws = await workspace(ebb, project.id, `preview-${randomUUID().slice(0, 8)}`);
  const due = new Date(Math.floor(Date.now() / 1000) * 1000 + 3_000);
  const scheduled = await ebb.lifecycle.setAutoDestroy(
    { requestId: randomUUID(), workspaceId: ws.id, autoDestroyAt: timestampFromDate(due) },
    opts,
  );
  const next = scheduled.workspace?.nextAutoDestroyAt;
  if (!next || timestampDate(next).getTime() !== due.getTime()) {
    fail(`next_auto_destroy_at not set to the schedule: ${JSON.stringify(next)}`);
  }
  console.log(`workspace ${ws.id}: auto_destroy_at ${due.toISOString()}`);

  const run = await waitFor("the AUTO_DESTROY run", async () => {
    const { runs } = await ebb.lifecycle.listRuns(
      { organizationId: org.id, workspaceId: ws.id, source: RunSource.AUTO_DESTROY },
      opts,
    );
    return runs[0];
  });
  if (!run.isDestroy || !run.autoApply) fail(`the queued run is not an auto-applied destroy: ${run.id}`);
  const child = runner(addr, org.id, token, 1);
  try {
    const final = await waitFor("the workspace to be ARCHIVED with status SUCCEEDED", async () => {
      const { workspace: w } = await ebb.lifecycle.getWorkspace({ workspaceId: ws.id }, opts);
      return w?.state === WorkspaceState.ARCHIVED && w.autoDestroyStatus === AutoDestroyStatus.SUCCEEDED
        ? w
        : undefined;
    });
    if (final.autoDestroyAt) fail("the one-shot auto_destroy_at was not cleared");
    const { run: done } = await ebb.lifecycle.getRun({ runId: run.id }, opts);
    if (done?.status !== RunStatus.SUCCEEDED) fail(`run ended ${done ? RunStatus[done.status] : "missing"}`);
    console.log(`run ${run.id} SUCCEEDED; workspace ${WorkspaceState[final.state]}`);
  } finally {
    await finish(child);
  }
  console.log(`PASS ${NAME} auto-destroy`);
}

async function deprovisioning(ebb: Ebb, addr: string, catalog: string): Promise<void> {
  const { kinds } = await ebb.deprovision.applyCatalog({ requestId: randomUUID(), yaml: catalog }, opts);
  if (!kinds.some((k) => k.name === "tenant")) fail(`the catalog has no tenant kind`);
  const org = await organization(ebb, "ts-tenants");
  // Any cascade of more than one entity must echo its count.
  await ebb.lifecycle.updateOrganizationSettings(
    {
      requestId: randomUUID(),
      organizationId: org.id,
      settings: { confirmThreshold: 1 },
      updateMask: { paths: ["confirm_threshold"] },
    },
    opts,
  );
  const { project } = await ebb.lifecycle.createProject(
    { requestId: randomUUID(), organizationId: org.id, name: "stacks" },
    opts,
  );
  if (!project) fail("CreateProject answered no project");
  const entities = [];
  for (const kind of ["tenant", "account"]) {
    const ws = await workspace(ebb, project.id, `${kind}-ws`);
    const { entity } = await ebb.deprovision.createEntity(
      { requestId: randomUUID(), organizationId: org.id, kind, name: `acme-${kind}`, workspaceId: ws.id },
      opts,
    );
    entities.push(entity ?? fail("CreateEntity answered no entity"));
  }
  const [tenant, account] = entities;
  const { relationship: edge } = await ebb.deprovision.createRelationship(
    { requestId: randomUUID(), type: "runs_on", fromEntityId: tenant.id, toEntityId: account.id },
    opts,
  );
  if (!edge) fail("CreateRelationship answered no relationship");

  const trigger = { entityId: tenant.id, action: "DeprovisionTenant", parameters: { gracePeriodSeconds: 0 } };
  const dry = await ebb.deprovision.triggerAction({ ...trigger, dryRun: true }, opts);
  const plan = dry.plan.map((s) => s.entityId);
  if (plan.join() !== [tenant.id, account.id].join() || dry.destroyCount !== 2 || dry.actionRun) {
    fail(`dry run: plan ${plan}, destroy_count ${dry.destroyCount}`);
  }
  let count = 0;
  try {
    await ebb.deprovision.triggerAction({ ...trigger, requestId: randomUUID() }, opts);
    fail("a cascade over the confirm threshold ran without confirm_count");
  } catch (e) {
    const d = errorDetails(e);
    if (d.code !== Code.FailedPrecondition || d.reason !== "CONFIRM_COUNT_REQUIRED" || d.metadata.count !== "2") {
      fail(`the blast-radius refusal: ${JSON.stringify(d)}`);
    }
    count = Number(d.metadata.count);
    console.log(`decoded ErrorInfo: ${d.reason} ${JSON.stringify(d.metadata)}`);
  }
  const { actionRun } = await ebb.deprovision.triggerAction(
    { ...trigger, requestId: randomUUID(), confirmCount: count },
    opts,
  );
  if (actionRun?.status !== ActionRunStatus.RUNNING) fail(`the action run is not RUNNING`);

  // The destroy runs go to a runner holding an organization-bound RUNNER token.
  const made = await ebb.tokens.createToken(
    { requestId: randomUUID(), organizationId: org.id, role: tokens.TokenRole.RUNNER, description: "ts runner" },
    opts,
  );
  if (!made.secret || made.token?.role !== tokens.TokenRole.RUNNER) fail("CreateToken answered no runner token");
  const child = runner(addr, org.id, made.secret, 2);
  let done;
  try {
    done = await waitFor("the action run to succeed", async () => {
      const { actionRun: r } = await ebb.deprovision.getActionRun({ actionRunId: actionRun.id }, opts);
      if (r?.status === ActionRunStatus.FAILED) fail(`the action run failed: ${r.error}`);
      return r?.status === ActionRunStatus.SUCCEEDED ? r : undefined;
    });
  } finally {
    await finish(child);
  }
  const order = [...done.steps]
    .sort((a, b) => timestampMs(a.finishTime!) - timestampMs(b.finishTime!))
    .map((s) => s.entityId);
  if (order.join() !== [tenant.id, account.id].join()) fail(`steps finished in the order ${order}`);
  const { entity } = await ebb.deprovision.getEntity({ entityId: tenant.id }, opts);
  const { relationship } = await ebb.deprovision.getRelationship({ relationshipId: edge.id }, opts);
  if (entity?.state !== "decommissioned" || relationship?.state !== RelationshipState.REMOVED) {
    fail(`tenant ${entity?.state}, relationship ${relationship ? RelationshipState[relationship.state] : "missing"}`);
  }
  console.log(`action run ${done.id} SUCCEEDED; tenant decommissioned, runs_on REMOVED`);
  console.log(`PASS ${NAME} deprovisioning`);
}

/**
 * Without a token the same server refuses: the token interceptor is what authenticates. First:
 * over HTTP/1.1 the refusal closes its connection (`connection: close`), and every later call
 * must get a fresh one rather than a socket the server is closing.
 */
async function noToken(addr: string): Promise<void> {
  try {
    await open(addr).lifecycle.listOrganizations({}, opts);
    fail("a call without a token was answered");
  } catch (e) {
    const d = errorDetails(e);
    if (d.code !== Code.Unauthenticated) fail(`a call without a token: ${d.codeName}: ${d.message}`);
  }
  console.log(`PASS ${NAME} no-token`);
}

async function main(): Promise<void> {
  const [addr, token, catalogPath] = process.argv.slice(2);
  if (!addr || !token || !catalogPath) {
    console.error("usage: node flows.js ADDR TOKEN CATALOG");
    process.exit(2);
  }
  const catalog = readFileSync(catalogPath, "utf8");
  const ebb = open(addr, token);
  if (protocol === "web") webEntryLoadsNoNodeModules();
  await noToken(addr);
  await services(ebb);
  await autoDestroy(ebb, addr, token);
  await deprovisioning(ebb, addr, catalog);
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
