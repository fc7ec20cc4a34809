#!/usr/bin/env python3
"""The auto-destroy flow from Python, against a running Ebb server.

    python3 clients/python/tests/auto_destroy.py ADDR [TOKEN]

Creates an organization, a project and a workspace, schedules its destroy a few seconds ahead,
waits for the scheduler to queue the AUTO_DESTROY run, starts `ebb runner --simulate succeed`
(the binary named by $EBB_BIN, else `ebb` on PATH) and waits until the workspace is ARCHIVED
with auto-destroy status SUCCEEDED. Exits 0 on success, 1 with a reason otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ebb_client  # noqa: E402
from ebb_client import lifecycle_pb2 as pb  # noqa: E402
from ebb_client import lifecycle_resources_pb2 as res  # noqa: E402
from google.protobuf import timestamp_pb2  # noqa: E402

TIMEOUT_S = 60.0


def wait_for(what: str, probe, timeout: float = TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"FAIL: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    addr = sys.argv[1]
    token = sys.argv[2] if len(sys.argv) == 3 else os.environ.get("EBB_TOKEN", "")
    ebb_bin = os.environ.get("EBB_BIN", "ebb")
    suffix = uuid.uuid4().hex[:8]

    with ebb_client.connect(addr, token=token) as ebb:
        org = ebb.lifecycle.CreateOrganization(
            pb.CreateOrganizationRequest(request_id=str(uuid.uuid4()), name=f"py-{suffix}"),
            timeout=10,
        ).organization
        project = ebb.lifecycle.CreateProject(
            pb.CreateProjectRequest(
                request_id=str(uuid.uuid4()), organization_id=org.id, name="python"
            ),
            timeout=10,
        ).project
        ws = ebb.lifecycle.CreateWorkspace(
            pb.CreateWorkspaceRequest(
                request_id=str(uuid.uuid4()),
                project_id=project.id,
                name=f"preview-{suffix}",
                labels={"client": "python"},
            ),
            timeout=10,
        ).workspace
        print(f"organization {org.id}, project {project.id}, workspace {ws.id}")

        due = timestamp_pb2.Timestamp()
        due.GetCurrentTime()
        due.seconds += 3
        ws = ebb.lifecycle.SetAutoDestroy(
            pb.SetAutoDestroyRequest(
                request_id=str(uuid.uuid4()), workspace_id=ws.id, auto_destroy_at=due
            ),
            timeout=10,
        ).workspace
        if not ws.HasField("next_auto_destroy_at") or ws.next_auto_destroy_at.seconds != due.seconds:
            raise SystemExit(f"FAIL: next_auto_destroy_at not set to the schedule: {ws}")
        print(f"auto_destroy_at {due.ToJsonString()}")

        def auto_destroy_run():
            runs = ebb.lifecycle.ListRuns(
                pb.ListRunsRequest(
                    organization_id=org.id,
                    workspace_id=ws.id,
                    source=res.RUN_SOURCE_AUTO_DESTROY,
                ),
                timeout=10,
            ).runs
            return runs[0] if runs else None

        run = wait_for("the AUTO_DESTROY run", auto_destroy_run)
        if not (run.is_destroy and run.auto_apply):
            raise SystemExit(f"FAIL: the queued run is not an auto-applied destroy: {run}")
        print(f"run {run.id} queued ({res.RunStatus.Name(run.status)})")

        env = dict(os.environ)
        if token:
            env["EBB_TOKEN"] = token
        runner = subprocess.Popen(
            [
                ebb_bin,
                "runner",
                "--lifecycle-url",
                f"http://{addr}",
                "--organization-id",
                org.id,
                "--runner-id",
                "python-test",
                "--simulate",
                "succeed",
                "--max-runs",
                "1",
                "--claim-wait",
                "1s",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        try:

            def archived():
                w = ebb.lifecycle.GetWorkspace(
                    pb.GetWorkspaceRequest(workspace_id=ws.id), timeout=10
                ).workspace
                done = (
                    w.state == res.WORKSPACE_STATE_ARCHIVED
                    and w.auto_destroy_status == res.AUTO_DESTROY_STATUS_SUCCEEDED
                )
                return w if done else None

            final = wait_for("the workspace to be ARCHIVED with status SUCCEEDED", archived)
            if final.HasField("auto_destroy_at"):
                raise SystemExit("FAIL: the one-shot auto_destroy_at was not cleared")
            run = ebb.lifecycle.GetRun(pb.GetRunRequest(run_id=run.id), timeout=10).run
            if run.status != res.RUN_STATUS_SUCCEEDED:
                raise SystemExit(f"FAIL: run ended {res.RunStatus.Name(run.status)}")
            code = runner.wait(timeout=30)
            if code != 0:
                raise SystemExit(f"FAIL: ebb runner exited {code}")
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.wait()

    print(
        f"workspace {ws.id}: {res.WorkspaceState.Name(final.state)}, "
        f"{res.AutoDestroyStatus.Name(final.auto_destroy_status)}; run {run.id} "
        f"{res.RunStatus.Name(run.status)}"
    )
    print("PASS python auto-destroy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
