"""The token interceptors (sync and ``grpc.aio``) and the parsing of targets."""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterable, Tuple

import grpc
import grpc.aio


def channel_target(target: str) -> Tuple[str, bool]:
    """``(host:port, tls)`` of ``host:port``, ``http://host:port`` or ``https://host:port``."""
    for scheme, tls in (("https://", True), ("http://", False)):
        if target.startswith(scheme):
            address = target[len(scheme) :].rstrip("/")
            if not address or "/" in address:
                raise ValueError(
                    f"ebb_client: {target!r} is not a server address (scheme://host:port)"
                )
            return address, tls
    if not target or "://" in target:
        raise ValueError(f"ebb_client: {target!r} is not a server address (host:port)")
    return target, False


def _header(token: str) -> Tuple[str, str]:
    if not token or any(c in token for c in "\r\n"):
        raise ValueError("ebb_client: a token must be non-empty text on one line")
    return ("authorization", f"Bearer {token}")


class _ClientCallDetails(
    collections.namedtuple(
        "_ClientCallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call of a sync channel."""

    def __init__(self, token: str) -> None:
        self._header = _header(token)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
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

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Iterable[Any]
    ) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Iterable[Any]
    ) -> Any:
        return continuation(self._details(details), request_iterator)


class AioBearerToken(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call of a ``grpc.aio`` channel."""

    def __init__(self, token: str) -> None:
        self._header = _header(token)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(tuple(details.metadata or ())))
        metadata.add(*self._header)
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
        )

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details), request_iterator)

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details), request_iterator)
