"""Python client of Ebb's gRPC API.

The message and stub modules are generated from ``proto/`` by ``generate.sh`` into
``ebb_client/_generated``; this module re-exports them under short names and adds
:func:`connect`, which opens one channel to an Ebb server (``ebb serve`` or a single service)
and returns a stub per service, sending ``authorization: Bearer <token>`` on every call when a
token is given.

    import ebb_client
    from ebb_client import lifecycle_pb2

    ebb = ebb_client.connect("127.0.0.1:50051", token=os.environ.get("EBB_TOKEN"))
    org = ebb.lifecycle.CreateOrganization(
        lifecycle_pb2.CreateOrganizationRequest(name="acme")
    ).organization
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Optional

import grpc

try:
    from ebb_client._generated.ebb.audit.v1 import audit_service_pb2 as audit_pb2
    from ebb_client._generated.ebb.audit.v1 import audit_service_pb2_grpc as audit_grpc
    from ebb_client._generated.ebb.lifecycle.v1 import lifecycle_service_pb2 as lifecycle_pb2
    from ebb_client._generated.ebb.lifecycle.v1 import (
        lifecycle_service_pb2_grpc as lifecycle_grpc,
    )
    from ebb_client._generated.ebb.lifecycle.v1 import resources_pb2 as lifecycle_resources_pb2
    from ebb_client._generated.ebb.lifecycle.v1 import runner_service_pb2 as runner_pb2
    from ebb_client._generated.ebb.lifecycle.v1 import runner_service_pb2_grpc as runner_grpc
    from ebb_client._generated.ebb.notifier.v1 import notifier_service_pb2 as notifier_pb2
    from ebb_client._generated.ebb.notifier.v1 import (
        notifier_service_pb2_grpc as notifier_grpc,
    )
    from ebb_client._generated.ebb.notifier.v1 import resources_pb2 as notifier_resources_pb2
    from ebb_client._generated.ebb.scheduler.v1 import scheduler_service_pb2 as scheduler_pb2
    from ebb_client._generated.ebb.scheduler.v1 import (
        scheduler_service_pb2_grpc as scheduler_grpc,
    )
except ImportError as e:  # pragma: no cover - only without generated code
    raise ImportError(
        "ebb_client's generated code is missing: run clients/python/generate.sh "
        f"(after pip install -r clients/python/requirements.txt): {e}"
    ) from e

__all__ = [
    "Ebb",
    "connect",
    "audit_pb2",
    "audit_grpc",
    "lifecycle_pb2",
    "lifecycle_grpc",
    "lifecycle_resources_pb2",
    "runner_pb2",
    "runner_grpc",
    "notifier_pb2",
    "notifier_grpc",
    "notifier_resources_pb2",
    "scheduler_pb2",
    "scheduler_grpc",
]


class _ClientCallDetails(
    collections.namedtuple(
        "_ClientCallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = list(details.metadata or [])
        metadata.append(self._header)
        return _ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


@dataclass
class Ebb:
    """One channel and a stub for each of Ebb's public services."""

    channel: grpc.Channel
    lifecycle: lifecycle_grpc.LifecycleServiceStub
    runner: runner_grpc.RunnerServiceStub
    scheduler: scheduler_grpc.SchedulerServiceStub
    audit: audit_grpc.AuditServiceStub
    notifier: notifier_grpc.NotifierServiceStub

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Ebb":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(
    target: str,
    token: Optional[str] = None,
    credentials: Optional[grpc.ChannelCredentials] = None,
) -> Ebb:
    """Connects to ``target`` (``host:port``).

    ``token``: sent as ``authorization: Bearer <token>`` on every call (``None`` or empty sends
    nothing). ``credentials``: TLS channel credentials; plaintext when ``None``.
    """
    if credentials is None:
        channel = grpc.insecure_channel(target)
    else:
        channel = grpc.secure_channel(target, credentials)
    if token:
        channel = grpc.intercept_channel(channel, _BearerToken(token))
    return Ebb(
        channel=channel,
        lifecycle=lifecycle_grpc.LifecycleServiceStub(channel),
        runner=runner_grpc.RunnerServiceStub(channel),
        scheduler=scheduler_grpc.SchedulerServiceStub(channel),
        audit=audit_grpc.AuditServiceStub(channel),
        notifier=notifier_grpc.NotifierServiceStub(channel),
    )
