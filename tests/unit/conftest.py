"""Unit-test fixtures: a Tornado application of ours on a loopback port, with a client to call it."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.netutil

Fetch = Callable[..., Any]


@pytest.fixture()
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """``await serve(app)`` starts it on a free loopback port; returns ``fetch(method, path, body, headers)``.

    Answers come as sent (not decompressed), and the client asks for no encoding unless the headers do.
    """
    servers: list[tornado.httpserver.HTTPServer] = []
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True)

    async def start(app: Any) -> Fetch:
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        servers.append(server)
        port = sockets[0].getsockname()[1]

        async def fetch(method: str, path: str, body: bytes | None = None,
                        headers: dict[str, str] | None = None) -> tornado.httpclient.HTTPResponse:
            if body is None and method in ("POST", "PUT"):
                body = b""
            return await client.fetch(f"http://127.0.0.1:{port}{path}", method=method, body=body,
                                      headers=headers, raise_error=False, decompress_response=False,
                                      allow_nonstandard_methods=True, request_timeout=60)

        return fetch

    yield start
    client.close()
    for server in servers:
        server.stop()
        await server.close_all_connections()
