"""Gateway mode: the REST gateway's core is a grpc.aio stub to a remote core, called with the caller's key.

A stub has the data plane's RPC-named methods, so handlers await either alike. Each HTTP request binds the
stub to its own ``Authorization`` header (``for_caller``), which travels as gRPC metadata: the core, not
the gateway, decides who may call it, and a gateway never upgrades a caller to its own credentials.
"""

from __future__ import annotations

import functools
from typing import Any

import grpc

from v2server._proto import grpc_service_pb2_grpc as pb_grpc

__all__ = ["RemoteCore", "connect"]


class RemoteCore:
    """The stub's RPC methods, each sending ``authorization`` (when given) as metadata."""

    def __init__(self, stub: pb_grpc.GRPCInferenceServiceStub, authorization: str | None = None) -> None:
        self._stub = stub
        self._metadata = (("authorization", authorization),) if authorization else None

    def for_caller(self, authorization: str | None) -> RemoteCore:
        """This core, calling on behalf of a request that sent ``authorization``."""
        return RemoteCore(self._stub, authorization)

    def __getattr__(self, rpc: str) -> Any:
        method = getattr(self._stub, rpc)  # AttributeError for what the remote protocol lacks (aliases)
        return method if self._metadata is None else functools.partial(method, metadata=self._metadata)


def connect(
    target: str, max_message_size: int, credentials: grpc.ChannelCredentials | None = None
) -> tuple[grpc.aio.Channel, RemoteCore]:
    """A channel to the core at ``target`` (TLS when ``credentials``) and the core over it."""
    options = [
        ("grpc.max_send_message_length", max_message_size),
        ("grpc.max_receive_message_length", max_message_size),
    ]
    if credentials is None:
        channel = grpc.aio.insecure_channel(target, options=options)
    else:
        channel = grpc.aio.secure_channel(target, credentials, options=options)
    return channel, RemoteCore(pb_grpc.GRPCInferenceServiceStub(channel))
