"""One API-key matrix over every REST route and every gRPC method, derived from the server itself.

The REST rows come from the running server's Tornado route tables (REST and metrics): each rule's regex is
expanded into concrete paths, and each HTTP method its handler class defines is called. The gRPC rows come
from the service descriptors (``inference.GRPCInferenceService`` and ``grpc.health.v1.Health``). A route or
RPC added later is therefore in the matrix without anyone editing this file; only the few that are open on
purpose (probes) are named here. Each row is called without a key, with a wrong key and with the good key.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import tornado.web
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import BUNDLED_REPOSITORY, RunningServer, loopback_settings
from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import grpc_service_pb2_grpc as pb_grpc
from v2server.rest_api.openapi import group_end

KEY = "k"
#: what each row is called with: no Authorization, a wrong key, the good key
CALLERS: tuple[tuple[str, str | None], ...] = (("none", None), ("wrong", "Bearer wrong"), ("good", f"Bearer {KEY}"))

#: the REST paths open to probes, each with the RPC that answers the same question on gRPC
OPEN_REST = {
    "/v2/health/live": "ServerLive",
    "/v2/health/ready": "ServerReady",
    "/v2/models/simple/ready": "ModelReady",
    "/v2/models/simple/versions/1/ready": "ModelReady",
}
#: REST paths open on purpose that are not probes (docs/security.md), each with what every caller gets: the
#: OpenAPI document and Swagger UI reveal no more than the docs do; a stored answer's signed link is its own
#: credential, so without a signature every caller gets 403, whatever the key
OPEN_BY_DESIGN = {
    "/openapi.json": 200,
    "/docs": 200,
    "/docs/static/swagger-ui.css": 200,
    f"/v1/results/{'0' * 32}": 403,
}
#: the gRPC methods open to probes
OPEN_GRPC = {
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
}

#: values for the regex groups of the route table (a group without one fails the expansion, naming it)
SAMPLES: Mapping[str, Sequence[str]] = {
    "name": ("simple",),
    "version": ("1",),
    "action": ("load", "unload"),
    "repository": ("repo",),
    "alias": ("a",),
    "selector": ("latest",),
    "job": ("no-such-job",),
    "result_id": ("0" * 32,),
    "asset": ("swagger-ui.css",),
}
#: load/unload name a model that does not exist: the good key must not take "simple" away from other rows
REPOSITORY_ACTION_SAMPLES: Mapping[str, Sequence[str]] = {**SAMPLES, "name": ("no_such_model",)}


# -- route table -> concrete requests ----------------------------------------------------------------------


def expand(pattern: str, samples: Mapping[str, Sequence[str]]) -> list[str]:
    """Every concrete path a route regex describes: optional parts with and without, each alternative,
    named groups filled from ``samples``. Only what route tables use is understood; anything else fails."""

    def sequence(i: int, end: int) -> list[str]:
        alternatives: list[str] = []
        current = [""]
        while i < end:
            char = pattern[i]
            if char == "|":
                alternatives += current
                current, i = [""], i + 1
                continue
            if char == "(":
                close = group_end(pattern, i)
                if pattern.startswith("(?P<", i):
                    name = pattern[i + 4:pattern.index(">", i)]
                    assert name in samples, f"route pattern {pattern!r}: no sample value for group {name!r}"
                    atom = list(samples[name])
                elif pattern.startswith("(?:", i):
                    atom = sequence(i + 3, close)
                else:
                    atom = sequence(i + 1, close)
                i = close + 1
            elif char == "\\":
                atom, i = [pattern[i + 1]], i + 2
            elif char == "$" and i == len(pattern) - 1:
                atom, i = [""], i + 1
            else:
                assert char not in "[]{}.*+^$?", f"route pattern {pattern!r}: cannot expand {char!r} at {i}"
                atom, i = [char], i + 1
            if i < end and pattern[i] == "?":
                atom, i = ["", *atom], i + 1
            current = [head + tail for head in current for tail in atom]
        return alternatives + current

    return list(dict.fromkeys(sequence(0, len(pattern))))


def handler_methods(handler: type[tornado.web.RequestHandler], default: bool = False) -> list[str]:
    """The HTTP methods a handler class (or one of its own bases, above Tornado's) really defines; for the
    default handler of unknown paths, every method (it answers them all from ``prepare``)."""
    if default:
        return list(tornado.web.RequestHandler.SUPPORTED_METHODS)
    own = [cls for cls in handler.__mro__ if issubclass(cls, tornado.web.RequestHandler)
           and cls is not tornado.web.RequestHandler]
    return [m for m in tornado.web.RequestHandler.SUPPORTED_METHODS if any(m.lower() in c.__dict__ for c in own)]


@dataclass(frozen=True)
class Route:
    listener: str  # "rest" or "metrics"
    index: int  # the rule's position in its table (-1: the default handler of unknown paths)
    handler: type[tornado.web.RequestHandler]
    pattern: str

    @property
    def methods(self) -> list[str]:
        return handler_methods(self.handler, default=self.index == -1)


@dataclass(frozen=True)
class Row:
    route: Route
    method: str
    path: str
    statuses: dict[str, int]  # caller -> HTTP status


def routes_of(app: tornado.web.Application, listener: str) -> list[tuple[Route, str]]:
    """(route, path) for every rule of ``app``, each path one the router really sends to that rule."""
    rules = app.wildcard_router.rules
    found: list[tuple[Route, str]] = []
    for index, rule in enumerate(rules):
        pattern = rule.matcher.regex.pattern
        route = Route(listener, index, rule.target, pattern)
        samples = REPOSITORY_ACTION_SAMPLES if "(?P<action>" in pattern else SAMPLES
        for path in expand(pattern, samples):
            assert rule.matcher.regex.match(path), (pattern, path)
            first = next(r for r in rules if r.matcher.regex.match(path))  # Tornado routes to the first match
            if first is rule:
                found.append((route, path))
    default = app.settings.get("default_handler_class")
    if default is not None:
        found.append((Route(listener, -1, default, "(no route)"), "/v2/no/such/route"))
    return found


def call(port: int, method: str, path: str, authorization: str | None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": authorization} if authorization else {}
        body = b"" if method in ("POST", "PUT", "PATCH") else None
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def rest_matrix(running: RunningServer) -> list[Row]:
    """Every (route, method, path) of the server's REST and metrics listeners, called by every caller.

    Rows are sent route by route in table order; load/unload name a model that does not exist."""
    listeners = {"rest": (running.server.rest_app, running.server.http_port),
                 "metrics": (running.server.metrics_app, running.server.metrics_port)}
    rows = []
    for listener, (app, port) in listeners.items():
        assert app is not None and port is not None
        for route, path in routes_of(app, listener):
            for method in route.methods:
                statuses = {caller: call(port, method, path, header) for caller, header in CALLERS}
                rows.append(Row(route, method, path, statuses))
    return rows


# -- servers -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured() -> Iterator[RunningServer]:
    running = RunningServer(loopback_settings(
        BUNDLED_REPOSITORY, api_keys=(KEY,), model_control_mode="explicit", load_models=("simple",),
        metrics_api_key_required=True,
    ))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def rest_rows(secured: RunningServer) -> list[Row]:
    return rest_matrix(secured)


# -- REST --------------------------------------------------------------------------------------------------


def test_expand_understands_the_route_table_syntax() -> None:
    assert expand(r"/v2/health/(live|ready)$", SAMPLES) == ["/v2/health/live", "/v2/health/ready"]
    assert expand(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[0-9]+))?/ready$", SAMPLES) == [
        "/v2/models/simple/ready", "/v2/models/simple/versions/1/ready",
    ]
    assert expand(r"/predict/?$", SAMPLES) == ["/predict", "/predict/"]
    with pytest.raises(AssertionError, match="no sample value for group 'tenant'"):
        expand(r"/t/(?P<tenant>[^/]+)$", SAMPLES)
    with pytest.raises(AssertionError, match="cannot expand"):
        expand(r"/files/.*$", SAMPLES)


def test_rest_matrix_covers_every_route_and_method(secured: RunningServer, rest_rows: list[Row]) -> None:
    for listener, app in (("rest", secured.server.rest_app), ("metrics", secured.server.metrics_app)):
        assert app is not None
        rules = app.wildcard_router.rules
        expected = {(i, m) for i, rule in enumerate(rules) for m in handler_methods(rule.target)}
        if app.settings.get("default_handler_class") is not None:
            expected |= {(-1, m) for m in handler_methods(app.settings["default_handler_class"], True)}
        tested = {(row.route.index, row.method) for row in rest_rows if row.route.listener == listener}
        assert tested == expected and len(rules) > 0
    assert len({row.route for row in rest_rows if row.route.listener == "rest"}) >= 14  # today's table, at least
    assert any(row.path == "/metrics" for row in rest_rows)


def test_rest_needs_the_key_everywhere_but_the_probes(rest_rows: list[Row]) -> None:
    wrong = []
    for row in rest_rows:
        if row.method == "OPTIONS":
            # CORS preflight: browsers send it without credentials; it answers headers only (404: no route).
            ok = all(status == (404 if row.route.index == -1 else 204) for status in row.statuses.values())
        elif row.route.listener == "rest" and row.path in OPEN_REST:
            ok = all(status == 200 for status in row.statuses.values())
        elif row.route.listener == "rest" and row.path.rstrip("/") in OPEN_BY_DESIGN:
            ok = all(status == OPEN_BY_DESIGN[row.path.rstrip("/")] for status in row.statuses.values())
        else:
            ok = row.statuses["none"] == 401 and row.statuses["wrong"] == 401 and row.statuses["good"] != 401
        if not ok:
            wrong.append(f"{row.method} {row.path} ({row.route.handler.__name__}): {row.statuses}")
    assert not wrong, "\n".join(wrong)


def test_metrics_need_the_key_when_required(rest_rows: list[Row]) -> None:
    [row] = [row for row in rest_rows if row.route.listener == "metrics"]
    assert (row.method, row.path, row.statuses) == ("GET", "/metrics", {"none": 401, "wrong": 401, "good": 200})


def test_metrics_are_open_without_metrics_api_key_required() -> None:
    running = RunningServer(loopback_settings(
        BUNDLED_REPOSITORY, api_keys=(KEY,), model_control_mode="explicit", allow_grpc=False,
    ))
    try:
        metrics = [row for row in rest_matrix(running) if row.route.listener == "metrics"]
        assert [(row.path, row.statuses) for row in metrics] == [("/metrics", {"none": 200, "wrong": 200, "good": 200})]
        assert call(running.server.http_port, "GET", "/v2", None) == 401  # the REST routes keep their keys
    finally:
        running.stop()


# -- gRPC --------------------------------------------------------------------------------------------------

SERVICES: tuple[tuple[Any, Callable[[grpc.Channel], Any]], ...] = (
    (pb.DESCRIPTOR.services_by_name["GRPCInferenceService"], pb_grpc.GRPCInferenceServiceStub),
    (health_pb2.DESCRIPTOR.services_by_name["Health"], health_pb2_grpc.HealthStub),
)


def grpc_call(stub: Any, method: Any, metadata: tuple[tuple[str, str], ...] | None) -> grpc.StatusCode:
    """One call of ``method`` with a default request (streams: one request, first answer); its status."""
    callable_ = getattr(stub, method.name)  # the generated stub must have every method the descriptor lists
    request = message_factory.GetMessageClass(method.input_type)()
    argument = iter([request]) if method.client_streaming else request
    try:
        if method.server_streaming:
            responses = callable_(argument, metadata=metadata, timeout=30)
            try:
                next(responses)  # the first answer (or the refusal); a stream like Watch goes on, so stop there
            finally:
                responses.cancel()
        else:
            callable_(argument, metadata=metadata, timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def grpc_rows(secured: RunningServer) -> dict[str, dict[str, grpc.StatusCode]]:
    """Full method path -> caller -> status code, for every method of every service the server offers."""
    rows: dict[str, dict[str, grpc.StatusCode]] = {}
    with grpc.insecure_channel(secured.grpc_url) as channel:
        for service, stub_class in SERVICES:
            stub = stub_class(channel)
            for method in service.methods:
                rows[f"/{service.full_name}/{method.name}"] = {
                    caller: grpc_call(stub, method, (("authorization", header),) if header else None)
                    for caller, header in CALLERS
                }
    return rows


def test_grpc_matrix_covers_every_method(grpc_rows: dict[str, dict[str, grpc.StatusCode]]) -> None:
    expected = {f"/{service.full_name}/{m.name}" for service, _ in SERVICES for m in service.methods}
    assert set(grpc_rows) == expected and OPEN_GRPC < expected
    assert len(expected) >= 22  # 20 inference RPCs and the health service's two, today


def test_grpc_needs_the_key_everywhere_but_the_probes(grpc_rows: dict[str, dict[str, grpc.StatusCode]]) -> None:
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    wrong = []
    for name, codes in grpc_rows.items():
        if name in OPEN_GRPC:
            # a default request may be invalid (ModelReady of model ""): open means the key changes nothing
            ok = unauthenticated not in codes.values() and len(set(codes.values())) == 1
        else:
            ok = codes["none"] == unauthenticated and codes["wrong"] == unauthenticated and codes["good"] != unauthenticated
        if not ok:
            wrong.append(f"{name}: { {caller: code.name for caller, code in codes.items()} }")
    assert not wrong, "\n".join(wrong)


def test_rest_and_grpc_open_the_same_probes(rest_rows: list[Row],
                                            grpc_rows: dict[str, dict[str, grpc.StatusCode]]) -> None:
    rest_open = {row.path for row in rest_rows
                 if row.route.listener == "rest" and row.method != "OPTIONS" and row.statuses["none"] != 401
                 and row.path.rstrip("/") not in OPEN_BY_DESIGN}
    grpc_open = {name.rsplit("/", 1)[1] for name, codes in grpc_rows.items()
                 if name.startswith("/inference.") and codes["none"] != grpc.StatusCode.UNAUTHENTICATED}
    assert rest_open == set(OPEN_REST)
    assert {OPEN_REST[path] for path in rest_open} == grpc_open == {"ServerLive", "ServerReady", "ModelReady"}
    health_open = {name for name, codes in grpc_rows.items()
                   if name.startswith("/grpc.health.") and codes["none"] != grpc.StatusCode.UNAUTHENTICATED}
    assert health_open == {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"}
