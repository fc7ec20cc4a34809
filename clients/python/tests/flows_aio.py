#!/usr/bin/env python3
"""Ebb's flows from the installed Python client over asyncio (ebb_client.aio).

    python3 flows_aio.py ADDR TOKEN CATALOG

The same flows as flows.py (whose helpers it shares), each call awaited on a grpc.aio
channel. Prints `PASS python-aio <flow>` per flow; exits 0 on success, 1 with a reason
otherwise.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from typing import Awaitable, Callable, List, Optional, Tuple, TypeVar

import ebb_client
import ebb_client.aio
import google.protobuf as protobuf
import grpc
from ebb_client import (
    audit_pb2,
    deprovision_pb2,
    notifier_pb2,
    runner_pb2,
    scheduler_pb2,
    scheduling_pb2,
    token_pb2,
)
from ebb_client import lifecycle_pb2 as pb
from ebb_client import lifecycle_resources_pb2 as res
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2

import flows
from flows import fail, finish, rid

NAME = flows.NAME = "python-aio"
T = TypeVar("T")
Ebb = ebb_client.aio.Ebb


async def wait_for(
    what: str, probe: Callable[[], Awaitable[Optional[T]]], timeout: float = flows.TIMEOUT_S
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            fail(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.2)


async def organization(ebb: Ebb, prefix: str) -> res.Organization:
    answer = await ebb.lifecycle.CreateOrganization(
        pb.CreateOrganizationRequest(request_id=rid(), name=f"{prefix}-{uuid.uuid4().hex[:8]}"),
        timeout=10,
    )
    return answer.organization


async def workspace(ebb: Ebb, project_id: str, name: str) -> res.Workspace:
    answer = await ebb.lifecycle.CreateWorkspace(
        pb.CreateWorkspaceRequest(
            request_id=rid(), project_id=project_id, name=name, labels={"client": NAME}
        ),
        timeout=10,
    )
    return answer.workspace


async def services(ebb: Ebb) -> None:
    org = await organization(ebb, f"{NAME}-services")
    calls: List[Tuple[str, Callable[[], Awaitable[object]]]] = [
        (
            "lifecycle",
            lambda: ebb.lifecycle.GetOrganization(
                pb.GetOrganizationRequest(organization_id=org.id), timeout=10
            ),
        ),
        (
            "deprovision",
            lambda: ebb.deprovision.ListEntityKinds(
                deprovision_pb2.ListEntityKindsRequest(), timeout=10
            ),
        ),
        (
            "runner",
            lambda: ebb.runner.ClaimRun(
                runner_pb2.ClaimRunRequest(
                    organization_id=org.id, runner_id="probe", wait=duration_pb2.Duration()
                ),
                timeout=10,
            ),
        ),
        (
            "tokens",
            lambda: ebb.tokens.ListTokens(
                token_pb2.ListTokensRequest(organization_id=org.id), timeout=10
            ),
        ),
        (
            "scheduling",
            lambda: ebb.scheduling.FindDueWorkspaces(
                scheduling_pb2.FindDueWorkspacesRequest(shard_count=1, limit=1), timeout=10
            ),
        ),
        (
            "scheduler",
            lambda: ebb.scheduler.ListTasks(scheduler_pb2.ListTasksRequest(), timeout=10),
        ),
        (
            "notifier",
            lambda: ebb.notifier.ListNotificationConfigurations(
                notifier_pb2.ListNotificationConfigurationsRequest(organization_id=org.id),
                timeout=10,
            ),
        ),
        (
            "audit",
            lambda: ebb.audit.ListEvents(
                audit_pb2.ListEventsRequest(organization_id=org.id), timeout=10
            ),
        ),
    ]
    answers = []
    for name, call in calls:
        try:
            await call()
            answers.append(f"{name} OK")
        except grpc.aio.AioRpcError as e:
            details = ebb_client.error_details(e)
            if details.code in (
                grpc.StatusCode.UNIMPLEMENTED,
                grpc.StatusCode.UNKNOWN,
                grpc.StatusCode.INTERNAL,
            ):
                fail(f"{name}: {details}")
            answers.append(f"{name} {details.code.name}")
    print("services: " + ", ".join(answers))

    try:
        await ebb.lifecycle.CreateOrganization(
            pb.CreateOrganizationRequest(request_id=rid(), name=""), timeout=10
        )
        fail("an organization without a name was created")
    except grpc.aio.AioRpcError as e:
        details = ebb_client.error_details(e)
        if details.code != grpc.StatusCode.INVALID_ARGUMENT or "name" not in details.fields():
            fail(f"CreateOrganization without a name: {details}")
        print(f"decoded BadRequest: {details.field_violations}")
    print(f"PASS {NAME} services")


async def auto_destroy(ebb: Ebb, addr: str, token: str) -> None:
    org = await organization(ebb, NAME)
    project = (
        await ebb.lifecycle.CreateProject(
            pb.CreateProjectRequest(request_id=rid(), organization_id=org.id, name=NAME), timeout=10
        )
    ).project
    ws = await workspace(ebb, project.id, f"preview-{uuid.uuid4().hex[:8]}")
    due = timestamp_pb2.Timestamp()
    due.GetCurrentTime()
    due.seconds += 3
    due.nanos = 0
    ws = (
        await ebb.lifecycle.SetAutoDestroy(
            pb.SetAutoDestroyRequest(request_id=rid(), workspace_id=ws.id, auto_destroy_at=due),
            timeout=10,
        )
    ).workspace
    if not ws.HasField("next_auto_destroy_at") or ws.next_auto_destroy_at.seconds != due.seconds:
        fail(f"next_auto_destroy_at not set to the schedule: {ws}")
    print(f"workspace {ws.id}: auto_destroy_at {due.ToJsonString()}")

    async def queued() -> Optional[res.Run]:
        runs = (
            await ebb.lifecycle.ListRuns(
                pb.ListRunsRequest(
                    organization_id=org.id, workspace_id=ws.id, source=res.RUN_SOURCE_AUTO_DESTROY
                ),
                timeout=10,
            )
        ).runs
        return runs[0] if runs else None

    run = await wait_for("the AUTO_DESTROY run", queued)
    if not (run.is_destroy and run.auto_apply):
        fail(f"the queued run is not an auto-applied destroy: {run}")
    proc = flows.runner(addr, org.id, token, 1)
    try:

        async def archived() -> Optional[res.Workspace]:
            w = (
                await ebb.lifecycle.GetWorkspace(
                    pb.GetWorkspaceRequest(workspace_id=ws.id), timeout=10
                )
            ).workspace
            done = (
                w.state == res.WORKSPACE_STATE_ARCHIVED
                and w.auto_destroy_status == res.AUTO_DESTROY_STATUS_SUCCEEDED
            )
            return w if done else None

        final = await wait_for("the workspace to be ARCHIVED with status SUCCEEDED", archived)
        if final.HasField("auto_destroy_at"):
            fail("the one-shot auto_destroy_at was not cleared")
        run = (await ebb.lifecycle.GetRun(pb.GetRunRequest(run_id=run.id), timeout=10)).run
        if run.status != res.RUN_STATUS_SUCCEEDED:
            fail(f"run ended {res.RunStatus.Name(run.status)}")
    finally:
        await asyncio.get_running_loop().run_in_executor(None, finish, proc)
    print(
        f"run {run.id} {res.RunStatus.Name(run.status)}; "
        f"workspace {res.WorkspaceState.Name(final.state)}"
    )
    print(f"PASS {NAME} auto-destroy")


async def deprovisioning(ebb: Ebb, addr: str, catalog: str) -> None:
    kinds = (
        await ebb.deprovision.ApplyCatalog(
            deprovision_pb2.ApplyCatalogRequest(request_id=rid(), yaml=catalog), timeout=10
        )
    ).kinds
    if "tenant" not in [k.name for k in kinds]:
        fail(f"the catalog has no tenant kind: {[k.name for k in kinds]}")
    org = await organization(ebb, f"{NAME}-tenants")
    await ebb.lifecycle.UpdateOrganizationSettings(
        pb.UpdateOrganizationSettingsRequest(
            request_id=rid(),
            organization_id=org.id,
            settings=res.OrganizationSettings(confirm_threshold=1),
            update_mask=field_mask_pb2.FieldMask(paths=["confirm_threshold"]),
        ),
        timeout=10,
    )
    project = (
        await ebb.lifecycle.CreateProject(
            pb.CreateProjectRequest(request_id=rid(), organization_id=org.id, name="stacks"),
            timeout=10,
        )
    ).project
    entities = []
    for kind in ("tenant", "account"):
        ws = await workspace(ebb, project.id, f"{kind}-ws")
        created = await ebb.deprovision.CreateEntity(
            deprovision_pb2.CreateEntityRequest(
                request_id=rid(),
                organization_id=org.id,
                kind=kind,
                name=f"acme-{kind}",
                workspace_id=ws.id,
            ),
            timeout=10,
        )
        entities.append(created.entity)
    tenant, account = entities
    edge = (
        await ebb.deprovision.CreateRelationship(
            deprovision_pb2.CreateRelationshipRequest(
                request_id=rid(), type="runs_on", from_entity_id=tenant.id, to_entity_id=account.id
            ),
            timeout=10,
        )
    ).relationship

    grace = struct_pb2.Struct()
    grace.update({"gracePeriodSeconds": 0})
    dry = await ebb.deprovision.TriggerAction(
        deprovision_pb2.TriggerActionRequest(
            entity_id=tenant.id, action="DeprovisionTenant", parameters=grace, dry_run=True
        ),
        timeout=10,
    )
    plan = [s.entity_id for s in dry.plan]
    if plan != [tenant.id, account.id] or dry.destroy_count != 2 or dry.HasField("action_run"):
        fail(f"dry run: plan {plan}, destroy_count {dry.destroy_count}")
    try:
        await ebb.deprovision.TriggerAction(
            deprovision_pb2.TriggerActionRequest(
                request_id=rid(), entity_id=tenant.id, action="DeprovisionTenant", parameters=grace
            ),
            timeout=10,
        )
        fail("a cascade over the confirm threshold ran without confirm_count")
    except grpc.aio.AioRpcError as e:
        details = ebb_client.error_details(e)
        if (
            details.code != grpc.StatusCode.FAILED_PRECONDITION
            or details.reason != "CONFIRM_COUNT_REQUIRED"
            or details.metadata.get("count") != "2"
        ):
            fail(f"the blast-radius refusal: {details}")
        count = int(details.metadata["count"])
        print(f"decoded ErrorInfo: {details.reason} {details.metadata}")
    action_run = (
        await ebb.deprovision.TriggerAction(
            deprovision_pb2.TriggerActionRequest(
                request_id=rid(),
                entity_id=tenant.id,
                action="DeprovisionTenant",
                parameters=grace,
                confirm_count=count,
            ),
            timeout=10,
        )
    ).action_run
    if action_run.status != deprovision_pb2.ACTION_RUN_STATUS_RUNNING:
        fail(f"the action run is {deprovision_pb2.ActionRunStatus.Name(action_run.status)}")

    made = await ebb.tokens.CreateToken(
        token_pb2.CreateTokenRequest(
            request_id=rid(),
            organization_id=org.id,
            role=token_pb2.TOKEN_ROLE_RUNNER,
            description=f"{NAME} runner",
        ),
        timeout=10,
    )
    if not made.secret or made.token.role != token_pb2.TOKEN_ROLE_RUNNER:
        fail(f"CreateToken answered {made.token}")
    proc = flows.runner(addr, org.id, made.secret, 2)
    try:

        async def succeeded() -> Optional[deprovision_pb2.ActionRun]:
            r = (
                await ebb.deprovision.GetActionRun(
                    deprovision_pb2.GetActionRunRequest(action_run_id=action_run.id), timeout=10
                )
            ).action_run
            if r.status == deprovision_pb2.ACTION_RUN_STATUS_FAILED:
                fail(f"the action run failed: {r.error}")
            return r if r.status == deprovision_pb2.ACTION_RUN_STATUS_SUCCEEDED else None

        done = await wait_for("the action run to succeed", succeeded)
    finally:
        await asyncio.get_running_loop().run_in_executor(None, finish, proc)
    order = [s.entity_id for s in sorted(done.steps, key=lambda s: s.finish_time.ToNanoseconds())]
    if order != [tenant.id, account.id]:
        fail(f"steps finished in the order {order}, not leaves first")
    state = (
        await ebb.deprovision.GetEntity(
            deprovision_pb2.GetEntityRequest(entity_id=tenant.id), timeout=10
        )
    ).entity.state
    removed = (
        await ebb.deprovision.GetRelationship(
            deprovision_pb2.GetRelationshipRequest(relationship_id=edge.id), timeout=10
        )
    ).relationship
    if state != "decommissioned" or removed.state != deprovision_pb2.RELATIONSHIP_STATE_REMOVED:
        fail(
            f"tenant {state}, relationship {deprovision_pb2.RelationshipState.Name(removed.state)}"
        )
    print(f"action run {done.id} SUCCEEDED; tenant {state}, runs_on REMOVED")
    print(f"PASS {NAME} deprovisioning")


async def no_token(addr: str) -> None:
    """Without a token the same server refuses: the token interceptor is what authenticates."""
    async with ebb_client.aio.connect(addr) as anonymous:
        try:
            await anonymous.lifecycle.ListOrganizations(pb.ListOrganizationsRequest(), timeout=10)
            fail("a call without a token was answered")
        except grpc.aio.AioRpcError as e:
            if ebb_client.error_details(e).code != grpc.StatusCode.UNAUTHENTICATED:
                fail(f"a call without a token: {ebb_client.error_details(e)}")
    print(f"PASS {NAME} no-token")


async def run(addr: str, token: str, catalog: str) -> None:
    async with ebb_client.aio.connect(addr, token=token) as ebb:
        await services(ebb)
        await auto_destroy(ebb, addr, token)
        await deprovisioning(ebb, addr, catalog)
    await no_token(addr)


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    addr, token, catalog_path = sys.argv[1:]
    with open(catalog_path, encoding="utf-8") as f:
        catalog = f.read()
    print(
        f"ebb_client {ebb_client.__version__} from {ebb_client.__file__} "
        f"(grpcio {grpc.__version__}, protobuf {protobuf.__version__})"
    )
    asyncio.run(run(addr, token, catalog))
    return 0


if __name__ == "__main__":
    sys.exit(main())
