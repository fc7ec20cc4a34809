"""What an Ebb error says, decoded.

Ebb answers a refused call with a status code, a message and, for some codes, a
``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer whose details say more:
``google.rpc.BadRequest`` (INVALID_ARGUMENT: which fields are wrong and why),
``google.rpc.PreconditionFailure`` and ``google.rpc.ErrorInfo`` (FAILED_PRECONDITION: a
machine-readable reason such as ``CONFIRM_COUNT_REQUIRED`` and its metadata).
:func:`error_details` decodes them (with grpcio-status) from the error a sync or ``grpc.aio``
call raised:

    try:
        ebb.deprovision.TriggerAction(request)
    except grpc.RpcError as e:
        details = ebb_client.error_details(e)
        if details.reason == "CONFIRM_COUNT_REQUIRED":
            count = int(details.metadata["count"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = ["ErrorDetails", "error_details"]

# Every detail type of google/rpc/error_details.proto, by its full name.
_DETAIL_TYPES = {
    descriptor.full_name: getattr(error_details_pb2, name)
    for name, descriptor in error_details_pb2.DESCRIPTOR.message_types_by_name.items()
}


@dataclass(frozen=True)
class ErrorDetails:
    """A failed call's status code, message and decoded ``google.rpc`` details."""

    code: grpc.StatusCode
    message: str
    #: Every detail: a ``google.rpc`` message where the type is known, else the ``Any``.
    details: Tuple[Message, ...] = ()
    #: ``(field, description)`` of each ``google.rpc.BadRequest`` field violation.
    field_violations: Tuple[Tuple[str, str], ...] = ()
    #: The ``google.rpc.PreconditionFailure`` violations.
    precondition_violations: Tuple[error_details_pb2.PreconditionFailure.Violation, ...] = ()
    #: The ``google.rpc.ErrorInfo``, if the error carries one.
    error_info: Optional[error_details_pb2.ErrorInfo] = None
    metadata: Dict[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """``ErrorInfo.reason`` (such as ``CONFIRM_COUNT_REQUIRED``), or empty."""
        return self.error_info.reason if self.error_info is not None else ""

    def fields(self) -> List[str]:
        """The fields the ``BadRequest`` names, in order."""
        return [f for f, _ in self.field_violations]

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        for f, description in self.field_violations:
            text += f"\n  {f}: {description}"
        if self.reason:
            text += f"\n  reason {self.reason} {self.metadata}"
        return text


def _unpack(detail: any_pb2.Any) -> Message:
    name = detail.TypeName()
    cls = _DETAIL_TYPES.get(name)
    if cls is None:
        return detail
    decoded: Message = cls()
    if not detail.Unpack(decoded):
        return detail
    return decoded


def error_details(error: grpc.RpcError) -> ErrorDetails:
    """Decodes what ``error`` (raised by a sync or ``grpc.aio`` call) says.

    Raises ``TypeError`` for an ``RpcError`` that is no finished call (nothing to decode).
    """
    code = getattr(error, "code", None)
    if not callable(code):
        raise TypeError(f"ebb_client.error_details: {type(error).__name__} carries no status")
    status_code = code()
    text = error.details() if callable(getattr(error, "details", None)) else ""
    try:
        status: Optional[status_pb2.Status] = rpc_status.from_call(error)
    except ValueError:
        # The trailer disagrees with the status line: trust the status line alone.
        status = None
    if status is None:
        return ErrorDetails(code=status_code, message=text or "")
    details = tuple(_unpack(d) for d in status.details)
    field_violations: List[Tuple[str, str]] = []
    preconditions: List[error_details_pb2.PreconditionFailure.Violation] = []
    info: Optional[error_details_pb2.ErrorInfo] = None
    for d in details:
        if isinstance(d, error_details_pb2.BadRequest):
            field_violations.extend((v.field, v.description) for v in d.field_violations)
        elif isinstance(d, error_details_pb2.PreconditionFailure):
            preconditions.extend(d.violations)
        elif isinstance(d, error_details_pb2.ErrorInfo) and info is None:
            info = d
    return ErrorDetails(
        code=status_code,
        message=status.message or text or "",
        details=details,
        field_violations=tuple(field_violations),
        precondition_violations=tuple(preconditions),
        error_info=info,
        metadata=dict(info.metadata) if info is not None else {},
    )
