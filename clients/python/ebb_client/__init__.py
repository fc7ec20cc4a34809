"""Python client of Ebb's gRPC API.

The message and stub modules are generated from Ebb's protos when the package is built (see
``hatch_build.py``); this module re-exports them under short names and adds :func:`connect`,
which opens one channel to an Ebb server (``ebb serve`` or a single service) and returns a stub
per service, sending ``authorization: Bearer <token>`` on every call when a token is given.
:mod:`ebb_client.aio` does the same over ``grpc.aio``; :func:`error_details` decodes the
``google.rpc`` details an error carries.

    import ebb_client
    from ebb_client import lifecycle_pb2

    with ebb_client.connect("127.0.0.1:50051", token=os.environ.get("EBB_TOKEN")) as ebb:
        org = ebb.lifecycle.CreateOrganization(
            lifecycle_pb2.CreateOrganizationRequest(name="acme")
        ).organization
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import grpc

from ebb_client._auth import BearerToken, channel_target
from ebb_client._generated.ebb.audit.v1 import audit_service_pb2 as audit_pb2
from ebb_client._generated.ebb.audit.v1 import audit_service_pb2_grpc as audit_grpc
from ebb_client._generated.ebb.lifecycle.v1 import deprovision_service_pb2 as deprovision_pb2
from ebb_client._generated.ebb.lifecycle.v1 import (
    deprovision_service_pb2_grpc as deprovision_grpc,
)
from ebb_client._generated.ebb.lifecycle.v1 import lifecycle_service_pb2 as lifecycle_pb2
from ebb_client._generated.ebb.lifecycle.v1 import lifecycle_service_pb2_grpc as lifecycle_grpc
from ebb_client._generated.ebb.lifecycle.v1 import resources_pb2 as lifecycle_resources_pb2
from ebb_client._generated.ebb.lifecycle.v1 import runner_service_pb2 as runner_pb2
from ebb_client._generated.ebb.lifecycle.v1 import runner_service_pb2_grpc as runner_grpc
from ebb_client._generated.ebb.lifecycle.v1 import scheduling_service_pb2 as scheduling_pb2
from ebb_client._generated.ebb.lifecycle.v1 import (
    scheduling_service_pb2_grpc as scheduling_grpc,
)
from ebb_client._generated.ebb.lifecycle.v1 import token_service_pb2 as token_pb2
from ebb_client._generated.ebb.lifecycle.v1 import token_service_pb2_grpc as token_grpc
from ebb_client._generated.ebb.notifier.v1 import notifier_service_pb2 as notifier_pb2
from ebb_client._generated.ebb.notifier.v1 import notifier_service_pb2_grpc as notifier_grpc
from ebb_client._generated.ebb.notifier.v1 import resources_pb2 as notifier_resources_pb2
from ebb_client._generated.ebb.scheduler.v1 import scheduler_service_pb2 as scheduler_pb2
from ebb_client._generated.ebb.scheduler.v1 import scheduler_service_pb2_grpc as scheduler_grpc
from ebb_client.errors import ErrorDetails, error_details

__version__ = "0.1.0"

__all__ = [
    "Ebb",
    "ErrorDetails",
    "BearerToken",
    "connect",
    "error_details",
    "audit_pb2",
    "audit_grpc",
    "deprovision_pb2",
    "deprovision_grpc",
    "lifecycle_pb2",
    "lifecycle_grpc",
    "lifecycle_resources_pb2",
    "runner_pb2",
    "runner_grpc",
    "scheduling_pb2",
    "scheduling_grpc",
    "token_pb2",
    "token_grpc",
    "notifier_pb2",
    "notifier_grpc",
    "notifier_resources_pb2",
    "scheduler_pb2",
    "scheduler_grpc",
]

ChannelOptions = Sequence[Tuple[str, object]]


class Ebb:
    """One channel and a stub for each of Ebb's services.

    ``lifecycle`` (organizations, projects, workspaces, runs, auto-destroy), ``deprovision``
    (catalog, entities, relationships, action runs), ``runner`` (claim, heartbeat and complete
    runs), ``tokens`` (API tokens), ``scheduling`` (the scheduler's calls; service tokens only),
    ``scheduler`` (the scheduler's tasks), ``notifier`` (notification configurations and
    deliveries) and ``audit`` (the audit log).
    """

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.lifecycle = lifecycle_grpc.LifecycleServiceStub(channel)
        self.deprovision = deprovision_grpc.DeprovisionServiceStub(channel)
        self.runner = runner_grpc.RunnerServiceStub(channel)
        self.tokens = token_grpc.TokenServiceStub(channel)
        self.scheduling = scheduling_grpc.SchedulingServiceStub(channel)
        self.scheduler = scheduler_grpc.SchedulerServiceStub(channel)
        self.notifier = notifier_grpc.NotifierServiceStub(channel)
        self.audit = audit_grpc.AuditServiceStub(channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Ebb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    target: str,
    token: Optional[str] = None,
    *,
    credentials: Optional[grpc.ChannelCredentials] = None,
    options: Optional[ChannelOptions] = None,
    interceptors: Sequence[Any] = (),
) -> Ebb:
    """Connects to ``target``: ``host:port``, or ``http://host:port`` / ``https://host:port``.

    ``token``: sent as ``authorization: Bearer <token>`` on every call (``None`` or empty sends
    nothing). ``credentials``: TLS channel credentials (``grpc.ssl_channel_credentials(...)``);
    plaintext when ``None``, except for an ``https://`` target, which gets the system's roots.
    ``options``: gRPC channel arguments. ``interceptors``: more client interceptors, run after
    the token's.
    """
    address, tls = channel_target(target)
    if credentials is None and tls:
        credentials = grpc.ssl_channel_credentials()
    if credentials is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        channel = grpc.secure_channel(address, credentials, options=options)
    chain = ([BearerToken(token)] if token else []) + list(interceptors)
    if chain:
        channel = grpc.intercept_channel(channel, *chain)
    return Ebb(channel)
