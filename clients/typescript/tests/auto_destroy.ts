// The auto-destroy flow from TypeScript, against a running Ebb server.
//
//   npm run build && node dist/tests/auto_destroy.js ADDR [TOKEN]
//   EBB_PROTOCOL=grpc-web node dist/tests/auto_destroy.js ADDR [TOKEN]   # over gRPC-Web
//
// Creates an organization, a project and a workspace, schedules its destroy a few seconds
// ahead, waits for the scheduler to queue the AUTO_DESTROY run, starts
// `ebb runner --simulate succeed` (the binary named by $EBB_BIN, else `ebb` on PATH) and waits
// until the workspace is ARCHIVED with auto-destroy status SUCCEEDED. Exits 0 on success,
// 1 with a reason otherwise.

import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";

import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";

import { connect, lifecycleResources } from "../src/index.js";

const { AutoDestroyStatus, RunSource, RunStatus, WorkspaceState } = lifecycleResources;
const TIMEOUT_MS = 60_000;

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

function exited(child: ChildProcess, timeoutMs: number): Promise<number | null> {
  if (child.exitCode !== null) {
    return Promise.resolve(child.exitCode);
  }
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("FAIL: ebb runner did not exit")), timeoutMs);
    child.once("exit", (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

async function main(): Promise<void> {
  const [addr, tokenArg] = process.argv.slice(2);
  if (!addr) {
    console.error("usage: node dist/tests/auto_destroy.js ADDR [TOKEN]");
    process.exit(2);
  }
  const token = tokenArg ?? process.env.EBB_TOKEN ?? "";
  const ebbBin = process.env.EBB_BIN ?? "ebb";
  const suffix = randomUUID().slice(0, 8);
  // EBB_PROTOCOL=grpc-web runs the same flow over gRPC-Web (HTTP/1.1).
  const protocol = process.env.EBB_PROTOCOL === "grpc-web" ? "grpc-web" : "grpc";
  const ebb = connect(addr, { token, protocol });
  const opts = { timeoutMs: 10_000 };

  const { organization: org } = await ebb.lifecycle.createOrganization(
    { requestId: randomUUID(), name: `ts-${suffix}` },
    opts,
  );
  if (!org) fail("CreateOrganization answered no organization");
  const { project } = await ebb.lifecycle.createProject(
    { requestId: randomUUID(), organizationId: org.id, name: "typescript" },
    opts,
  );
  if (!project) fail("CreateProject answered no project");
  const created = await ebb.lifecycle.createWorkspace(
    {
      requestId: randomUUID(),
      projectId: project.id,
      name: `preview-${suffix}`,
      labels: { client: "typescript" },
    },
    opts,
  );
  const ws = created.workspace ?? fail("CreateWorkspace answered no workspace");
  console.log(`organization ${org.id}, project ${project.id}, workspace ${ws.id}`);

  const due = new Date(Date.now() + 3_000);
  const scheduled = await ebb.lifecycle.setAutoDestroy(
    { requestId: randomUUID(), workspaceId: ws.id, autoDestroyAt: timestampFromDate(due) },
    opts,
  );
  const next = scheduled.workspace?.nextAutoDestroyAt;
  if (!next || Math.abs(timestampDate(next).getTime() - due.getTime()) > 1) {
    fail(`next_auto_destroy_at not set to the schedule: ${JSON.stringify(next)}`);
  }
  console.log(`auto_destroy_at ${due.toISOString()}`);

  const run = await waitFor("the AUTO_DESTROY run", async () => {
    const { runs } = await ebb.lifecycle.listRuns(
      { organizationId: org.id, workspaceId: ws.id, source: RunSource.AUTO_DESTROY },
      opts,
    );
    return runs[0];
  });
  if (!run.isDestroy || !run.autoApply) {
    fail(`the queued run is not an auto-applied destroy: ${run.id}`);
  }
  console.log(`run ${run.id} queued (${RunStatus[run.status]})`);

  const env = { ...process.env };
  if (token) env.EBB_TOKEN = token;
  const runner = spawn(
    ebbBin,
    [
      "runner",
      "--lifecycle-url",
      `http://${addr}`,
      "--organization-id",
      org.id,
      "--runner-id",
      "typescript-test",
      "--simulate",
      "succeed",
      "--max-runs",
      "1",
      "--claim-wait",
      "1s",
    ],
    { env, stdio: ["ignore", "inherit", "inherit"] },
  );
  try {
    const final = await waitFor("the workspace to be ARCHIVED with status SUCCEEDED", async () => {
      const { workspace: w } = await ebb.lifecycle.getWorkspace({ workspaceId: ws.id }, opts);
      return w &&
        w.state === WorkspaceState.ARCHIVED &&
        w.autoDestroyStatus === AutoDestroyStatus.SUCCEEDED
        ? w
        : undefined;
    });
    if (final.autoDestroyAt) fail("the one-shot auto_destroy_at was not cleared");
    const { run: done } = await ebb.lifecycle.getRun({ runId: run.id }, opts);
    if (done?.status !== RunStatus.SUCCEEDED) {
      fail(`run ended ${done ? RunStatus[done.status] : "missing"}`);
    }
    const code = await exited(runner, 30_000);
    if (code !== 0) fail(`ebb runner exited ${code}`);
    console.log(
      `workspace ${ws.id}: ${WorkspaceState[final.state]}, ` +
        `${AutoDestroyStatus[final.autoDestroyStatus]}; run ${run.id} ${RunStatus[done.status]}`,
    );
  } finally {
    if (runner.exitCode === null && runner.signalCode === null) {
      runner.kill("SIGKILL");
    }
  }
  console.log(
    protocol === "grpc" ? "PASS typescript auto-destroy" : `PASS typescript auto-destroy over ${protocol}`,
  );
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
