"""The asyncio client: :func:`connect` over ``grpc.aio``.

    import ebb_client.aio
    from ebb_client import lifecycle_pb2

    async with ebb_client.aio.connect("127.0.0.1:50051", token=token) as ebb:
        org = (
            await ebb.lifecycle.CreateOrganization(
                lifecycle_pb2.CreateOrganizationRequest(name="acme")
            )
        ).organization

The stubs are the generated ones on a ``grpc.aio`` channel: every method returns an awaitable
(a unary call) or an async iterator (a streaming one), and errors are ``grpc.aio.AioRpcError``,
which :func:`ebb_client.error_details` decodes as well.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple, cast

import grpc
import grpc.aio

from ebb_client import (
    audit_grpc,
    deprovision_grpc,
    lifecycle_grpc,
    notifier_grpc,
    runner_grpc,
    scheduler_grpc,
    scheduling_grpc,
    token_grpc,
)
from ebb_client._auth import AioBearerToken, channel_target

if TYPE_CHECKING:
    from ebb_client._generated.ebb.audit.v1.audit_service_pb2_grpc import AuditServiceAsyncStub
    from ebb_client._generated.ebb.lifecycle.v1.deprovision_service_pb2_grpc import (
        DeprovisionServiceAsyncStub,
    )
    from ebb_client._generated.ebb.lifecycle.v1.lifecycle_service_pb2_grpc import (
        LifecycleServiceAsyncStub,
    )
    from ebb_client._generated.ebb.lifecycle.v1.runner_service_pb2_grpc import (
        RunnerServiceAsyncStub,
    )
    from ebb_client._generated.ebb.lifecycle.v1.scheduling_service_pb2_grpc import (
        SchedulingServiceAsyncStub,
    )
    from ebb_client._generated.ebb.lifecycle.v1.token_service_pb2_grpc import (
        TokenServiceAsyncStub,
    )
    from ebb_client._generated.ebb.notifier.v1.notifier_service_pb2_grpc import (
        NotifierServiceAsyncStub,
    )
    from ebb_client._generated.ebb.scheduler.v1.scheduler_service_pb2_grpc import (
        SchedulerServiceAsyncStub,
    )

__all__ = ["Ebb", "AioBearerToken", "connect"]


class Ebb:
    """One ``grpc.aio`` channel and a stub for each of Ebb's services (the same names as
    :class:`ebb_client.Ebb`)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.lifecycle = cast(
            "LifecycleServiceAsyncStub", lifecycle_grpc.LifecycleServiceStub(channel)
        )
        self.deprovision = cast(
            "DeprovisionServiceAsyncStub", deprovision_grpc.DeprovisionServiceStub(channel)
        )
        self.runner = cast("RunnerServiceAsyncStub", runner_grpc.RunnerServiceStub(channel))
        self.tokens = cast("TokenServiceAsyncStub", token_grpc.TokenServiceStub(channel))
        self.scheduling = cast(
            "SchedulingServiceAsyncStub", scheduling_grpc.SchedulingServiceStub(channel)
        )
        self.scheduler = cast(
            "SchedulerServiceAsyncStub", scheduler_grpc.SchedulerServiceStub(channel)
        )
        self.notifier = cast("NotifierServiceAsyncStub", notifier_grpc.NotifierServiceStub(channel))
        self.audit = cast("AuditServiceAsyncStub", audit_grpc.AuditServiceStub(channel))

    async def close(self, grace: Optional[float] = None) -> None:
        await self.channel.close(grace)

    async def __aenter__(self) -> Ebb:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def connect(
    target: str,
    token: Optional[str] = None,
    *,
    credentials: Optional[grpc.ChannelCredentials] = None,
    options: Optional[Sequence[Tuple[str, Any]]] = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> Ebb:
    """Connects to ``target`` over ``grpc.aio``; the arguments are those of
    :func:`ebb_client.connect`, with ``grpc.aio`` interceptors. Call it where an event loop
    runs (inside a coroutine)."""
    address, tls = channel_target(target)
    if credentials is None and tls:
        credentials = grpc.ssl_channel_credentials()
    chain = ([AioBearerToken(token)] if token else []) + list(interceptors)
    if credentials is None:
        channel = grpc.aio.insecure_channel(address, options=options, interceptors=chain)
    else:
        channel = grpc.aio.secure_channel(address, credentials, options=options, interceptors=chain)
    return Ebb(channel)
