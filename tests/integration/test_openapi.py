"""``GET /openapi.json`` and ``GET /docs``: the document covers the route table, validates, and the server keeps it.

The schemathesis run drives every operation of the document against a real server (``python -m v2server``
on 127.0.0.1, explicit model control over a copy of three bundled models, so loads, unloads and alias writes
touch only the copy) with a few generated cases each, and checks that no answer is a 5xx and that each answer's
status, content type, headers and body are the ones the document declares. Left out: schemathesis's
``positive_data_acceptance`` and ``negative_data_rejection`` checks, because a body can match its schema and
still name a model that is not there (404) or be refused for a value the schema cannot express (a shape
against the model's dims: 400), and the server ignores body fields it does not know (as V2 and Modelbit do).
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import tornado.web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis import GenerationMode, checks

from tests.conftest import BUNDLED_REPOSITORY, RunningServer, cli_process, logged_port, loopback_settings
from v2server.rest_api import openapi
from v2server.rest_api.base import V2Handler
from v2server.rest_api.docs_handlers import ASSETS
from v2server.rest_api.schemas import SCHEMAS
from v2server.rest_api.simple_codec import V1Options


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    server = RunningServer(loopback_settings(
        BUNDLED_REPOSITORY, model_control_mode="explicit", load_models=("simple",), allow_grpc=False,
        allow_metrics=False, api_keys=("k",),
    ))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def document(running: RunningServer) -> dict[str, Any]:
    status, headers, body = _get(f"http://{running.http_url}/openapi.json")  # no key: the document is open
    assert status == 200 and headers["content-type"] == "application/json"
    return json.loads(body)  # type: ignore[no-any-return]


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document)  # openapi-spec-validator: the 3.1 schema and every $ref


def test_every_route_and_method_of_the_table_is_in_the_document(running: RunningServer,
                                                                 document: dict[str, Any]) -> None:
    app = running.server.rest_app
    assert app is not None
    expected = set()
    for rule in app.wildcard_router.rules:
        templates, _ = openapi.path_templates(rule.matcher.regex.pattern)
        for template in templates:
            for method in openapi.methods(rule.target, dict(rule.target_kwargs or {}), template):
                expected.add((template, method.lower()))
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == expected
    for family in ("/v2/health/ready", "/v2/models/{name}/infer", "/v1/{name}/{selector}", "/predict",
                   "/v1/jobs/{job}", "/v1/results/{result_id}", "/v2/repository/index",
                   "/v2/repository/models/{name}/{action}", "/openapi.json", "/docs"):
        assert family in document["paths"], family
    assert document["paths"]["/v2/repository/models/{name}/{action}"]["post"]["parameters"][1]["schema"] == {
        "type": "string", "enum": ["load", "unload"],
    }


class _Later(V2Handler):
    """A route added after the document was written."""

    async def post(self, thing: str) -> None:
        self.write_json({})


def test_a_route_without_an_explicit_entry_is_still_described() -> None:
    """A handler OPERATIONS does not know gets its docstring, its path parameters and any JSON."""
    app = tornado.web.Application([(r"/later/(?P<thing>[^/]+)/?", _Later)])
    later = openapi.document(app)["paths"]["/later/{thing}"]
    assert set(later) == {"post"}
    assert later["post"]["summary"] == "A route added after the document was written."
    assert later["post"]["parameters"][0]["name"] == "thing"
    assert later["post"]["requestBody"]["content"]["application/json"]["schema"] == {}
    assert later["post"]["security"] == [{"apiKey": []}, {}]
    validate(openapi.document(app))


def test_the_v1_body_schema_names_every_field_the_codec_reads() -> None:
    fields = set(V1Options.__dataclass_fields__)
    assert fields <= set(SCHEMAS["V1Request"]["properties"]), fields - set(SCHEMAS["V1Request"]["properties"])


def test_security_follows_each_handlers_needs_key(document: dict[str, Any]) -> None:
    open_paths = {path for path, item in document["paths"].items() for op in item.values() if op["security"] == []}
    assert open_paths == {
        "/v2/health/live", "/v2/health/ready", "/v2/models/{name}/ready", "/v2/models/{name}/versions/{version}/ready",
        "/v1/results/{result_id}", "/openapi.json", "/docs", "/docs/static/{asset}",
    }


def test_docs_serves_swagger_ui_from_this_server(running: RunningServer) -> None:
    status, headers, page = _get(f"http://{running.http_url}/docs")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/openapi.json" in page and b"SwaggerUIBundle" in page
    assert b"//" not in page.replace(b"http://www.w3.org", b"")  # every asset from this server: no CDN
    for asset, kind in ASSETS.items():
        status, headers, content = _get(f"http://{running.http_url}/docs/static/{asset}")
        assert status == 200 and headers["content-type"] == kind and content
    with pytest.raises(urllib.error.HTTPError) as caught:
        _get(f"http://{running.http_url}/docs/static/..%2Fcore.py")
    with caught.value:  # closes its connection
        assert caught.value.code == 404


# -- schemathesis against a real server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository = tmp_path_factory.mktemp("openapi_repository")
    for model in ("simple", "example_adder", "example_dict_doubler"):
        shutil.copytree(BUNDLED_REPOSITORY / model, repository / model)
    args = [
        "--model-repository", str(repository), "--model-control-mode", "explicit", "--load-model", "*",
        "--http-address", "127.0.0.1", "--http-port", "0", "--allow-grpc", "false", "--allow-metrics", "false",
        "--results-max-bytes", "1000000",
    ]
    with cli_process(args, until="server ready") as (_, log):
        yield f"http://127.0.0.1:{logged_port(log, 'HTTP server listening on')}"


CHECKS = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
#: generated cases per operation and generation mode (schemathesis's own pytest plugin does not run on this
#: pytest, so the operations are driven here, with hypothesis, one after another)
EXAMPLES = 5


def _server_error(case: Any, status: int) -> bool:
    """A 5xx that is not the answer the request asked for: 504 after a timeout the request set (``?timeout``,
    ``response_timeout``), 501 from a Triton route whose extension this server does not have (``generate``)."""
    if status < 500:
        return False
    if status == 501 and case.path.endswith(("/generate", "/generate_stream")):
        return False
    body = case.body if isinstance(case.body, dict) else {}
    asked_for_a_timeout = "timeout" in (case.query or {}) or "response_timeout" in body
    return not (status == 504 and asked_for_a_timeout)


def test_the_server_keeps_its_document(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        # negative cases where there is a body or a query to make invalid (a path parameter alone has little)
        negative = (GenerationMode.NEGATIVE,) if len(operation.body) or len(operation.query) else ()
        for mode in (GenerationMode.POSITIVE, *negative):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            def run(case: Any) -> None:
                response = case.call(base_url=api_url, timeout=30)
                assert not _server_error(case, response.status_code), (
                    f"{response.status_code} {response.text[:500]}\n{case.as_curl_command()}"
                )
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label  # nothing in it can be made invalid
            except (Exception, BaseExceptionGroup) as exc:  # the failure (or hypothesis's group) names the case
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert operations >= 40
    assert not failures, "\n\n".join(failures)


def test_the_schemathesis_server_worked_on_a_copy() -> None:
    """The run above loads, unloads and writes aliases only in the copy it was given."""
    assert not any((BUNDLED_REPOSITORY / model / "aliases.json").exists()
                   for model in ("simple", "example_adder", "example_dict_doubler"))
