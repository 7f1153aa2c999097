"""TLS on every listener: gRPC (plain and mutual), HTTPS for REST and metrics (plain and mutual), a gateway
to a TLS core that forwards the caller's key, and start-up refusals that name the flag.

Certificates are made at test time with trustme: one CA issues the server's certificate (for ``localhost``
and ``127.0.0.1``) and a client certificate; a second, unrelated CA issues what must be refused.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import trustme
from tritonclient.utils import InferenceServerException

from tests.conftest import (
    BUNDLED_REPOSITORY,
    ROOT,
    RunningServer,
    cli_process,
    logged_port,
    loopback_settings,
)
from v2server.settings import Settings

KEY = "k"


@dataclass(frozen=True)
class Pki:
    """PEM files: the CA, the server's and a client's certificate and key, and an unrelated CA with a leaf."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_cert: Path
    other_key: Path


def _write_leaf(cert: trustme.LeafCert, folder: Path, name: str) -> tuple[Path, Path]:
    chain, key = folder / f"{name}.pem", folder / f"{name}.key"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    return chain, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    other.cert_pem.write_to_path(str(folder / "other-ca.pem"))
    server_cert, server_key = _write_leaf(ca.issue_cert("localhost", "127.0.0.1"), folder, "server")
    client_cert, client_key = _write_leaf(ca.issue_cert("client.example"), folder, "client")
    other_cert, other_key = _write_leaf(other.issue_cert("localhost", "127.0.0.1", "client.example"), folder, "other")
    return Pki(folder / "ca.pem", server_cert, server_key, client_cert, client_key,
               folder / "other-ca.pem", other_cert, other_key)


def _settings(**overrides: object) -> Settings:
    return loopback_settings(BUNDLED_REPOSITORY, model_control_mode="explicit", load_models=("simple",), **overrides)


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[RunningServer]:
    """gRPC over TLS, REST and metrics over HTTPS; no client certificates asked for."""
    running = RunningServer(_settings(
        grpc_use_ssl=True, grpc_server_cert=pki.server_cert, grpc_server_key=pki.server_key,
        http_ssl_cert=pki.server_cert, http_ssl_key=pki.server_key,
    ))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def mutual_server(pki: Pki) -> Iterator[RunningServer]:
    """Both transports require a client certificate from the CA."""
    running = RunningServer(_settings(
        grpc_use_ssl=True, grpc_use_ssl_mutual=True, grpc_server_cert=pki.server_cert,
        grpc_server_key=pki.server_key, grpc_root_cert=pki.ca,
        http_ssl_cert=pki.server_cert, http_ssl_key=pki.server_key, http_ssl_client_ca=pki.ca,
    ))
    yield running
    running.stop()


def _simple_inputs(module):  # type: ignore[no-untyped-def]
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs, a, b


def _check_simple(result, a: np.ndarray, b: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def _https_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _https_get(port: int, path: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _plain_get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# -- gRPC --------------------------------------------------------------------------------------------------


def test_grpc_tls_infers(tls_server: RunningServer, pki: Pki) -> None:
    inputs, a, b = _simple_inputs(grpcclient)
    with grpcclient.InferenceServerClient(tls_server.grpc_url, ssl=True, root_certificates=str(pki.ca)) as client:
        assert client.is_server_ready(client_timeout=30)
        _check_simple(client.infer("simple", inputs, client_timeout=30), a, b)


def test_grpc_tls_refuses_plaintext_and_untrusted_servers(tls_server: RunningServer, pki: Pki) -> None:
    with grpcclient.InferenceServerClient(tls_server.grpc_url) as client:  # no TLS: never a plaintext fallback
        with pytest.raises(InferenceServerException) as info:
            client.is_server_live(client_timeout=30)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
    with grpcclient.InferenceServerClient(tls_server.grpc_url, ssl=True, root_certificates=str(pki.other_ca)) as client:
        with pytest.raises(InferenceServerException) as info:
            client.is_server_live(client_timeout=30)
        assert info.value.status() == "StatusCode.UNAVAILABLE"


def test_grpc_mutual_tls_needs_a_client_certificate_from_the_ca(mutual_server: RunningServer, pki: Pki) -> None:
    inputs, a, b = _simple_inputs(grpcclient)
    with grpcclient.InferenceServerClient(
        mutual_server.grpc_url, ssl=True, root_certificates=str(pki.ca),
        private_key=str(pki.client_key), certificate_chain=str(pki.client_cert),
    ) as client:
        _check_simple(client.infer("simple", inputs, client_timeout=30), a, b)
    with grpcclient.InferenceServerClient(mutual_server.grpc_url, ssl=True, root_certificates=str(pki.ca)) as client:
        with pytest.raises(InferenceServerException) as info:
            client.is_server_live(client_timeout=30)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
    with grpcclient.InferenceServerClient(  # a certificate, but not from the CA the server trusts
        mutual_server.grpc_url, ssl=True, root_certificates=str(pki.ca),
        private_key=str(pki.other_key), certificate_chain=str(pki.other_cert),
    ) as client:
        with pytest.raises(InferenceServerException) as info:
            client.is_server_live(client_timeout=30)
        assert info.value.status() == "StatusCode.UNAVAILABLE"


# -- HTTPS -------------------------------------------------------------------------------------------------


def test_https_rest_infers_with_tritonclient(tls_server: RunningServer, pki: Pki) -> None:
    inputs, a, b = _simple_inputs(httpclient)
    client = httpclient.InferenceServerClient(tls_server.http_url, ssl=True, ssl_options={"ca_certs": str(pki.ca)})
    try:
        assert client.is_server_live() and client.is_model_ready("simple")
        _check_simple(client.infer("simple", inputs), a, b)
    finally:
        client.close()


def test_https_rest_and_metrics_with_the_standard_library(tls_server: RunningServer, pki: Pki) -> None:
    context = _https_context(pki.ca)
    assert _https_get(tls_server.server.http_port, "/v2/health/ready", context) == (200, b'{"ready":true}')
    status, body = _https_get(tls_server.server.metrics_port, "/metrics", context)
    assert status == 200 and b"# TYPE" in body


def test_https_refuses_plain_http_and_untrusted_servers(tls_server: RunningServer, pki: Pki) -> None:
    for port, path in ((tls_server.server.http_port, "/v2/health/live"), (tls_server.server.metrics_port, "/metrics")):
        with pytest.raises(ConnectionError):  # the listener speaks TLS only: the handshake fails, it hangs up
            _plain_get(port, path)
        with pytest.raises(ssl.SSLCertVerificationError):
            _https_get(port, path, _https_context(pki.other_ca))
    client = httpclient.InferenceServerClient(tls_server.http_url)  # tritonclient over http:// to the HTTPS port
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError)):  # geventhttpclient: "connection closed"
            client.is_server_live()
    finally:
        client.close()


def test_https_mutual_needs_a_client_certificate_from_the_ca(mutual_server: RunningServer, pki: Pki) -> None:
    port, metrics_port = mutual_server.server.http_port, mutual_server.server.metrics_port
    with_cert = _https_context(pki.ca, pki.client_cert, pki.client_key)
    assert _https_get(port, "/v2/health/ready", with_cert) == (200, b'{"ready":true}')
    assert _https_get(metrics_port, "/metrics", with_cert)[0] == 200
    inputs, a, b = _simple_inputs(httpclient)
    client = httpclient.InferenceServerClient(mutual_server.http_url, ssl=True, ssl_options={
        "ca_certs": str(pki.ca), "certfile": str(pki.client_cert), "keyfile": str(pki.client_key),
    })
    try:
        _check_simple(client.infer("simple", inputs), a, b)
    finally:
        client.close()
    # Without a certificate, or with one from another CA, the server ends the handshake: with TLS 1.3 the
    # client hears of it at its first read, as an alert or a reset.
    for context in (_https_context(pki.ca), _https_context(pki.ca, pki.other_cert, pki.other_key)):
        for target, path in ((port, "/v2/health/ready"), (metrics_port, "/metrics")):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                _https_get(target, path, context)


# -- gateway to a TLS core ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_core(pki: Pki) -> Iterator[RunningServer]:
    """A gRPC-only core over TLS that requires API key ``k``."""
    running = RunningServer(_settings(
        grpc_use_ssl=True, grpc_server_cert=pki.server_cert, grpc_server_key=pki.server_key,
        api_keys=(KEY,), allow_http=False, allow_metrics=False,
    ))
    yield running
    running.stop()


@contextlib.contextmanager
def _gateway(core: RunningServer, root_cert: Path) -> Iterator[httpclient.InferenceServerClient]:
    """``v2server gateway`` in front of ``core``, trusting ``root_cert``, and a REST client to it."""
    args = ["gateway", "--grpc-target", core.grpc_url, "--grpc-target-root-cert", str(root_cert),
            "--http-address", "127.0.0.1", "--http-port", "0"]
    with cli_process(args, until="REST gateway on") as (_, log):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{logged_port(log, 'REST gateway on')}")
        try:
            yield client
        finally:
            client.close()


def test_gateway_to_a_tls_core_forwards_the_callers_key(tls_core: RunningServer, pki: Pki) -> None:
    # The gateway has no --api-key of its own: every 401 here is the core's answer to the forwarded header.
    with _gateway(tls_core, pki.ca) as client:
        assert client.is_server_live()  # health is open on the core too
        inputs, a, b = _simple_inputs(httpclient)
        _check_simple(client.infer("simple", inputs, headers={"Authorization": f"Bearer {KEY}"}), a, b)
        with pytest.raises(InferenceServerException) as info:
            client.infer("simple", inputs)
        assert info.value.status() == "401" and "missing API key" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.infer("simple", inputs, headers={"Authorization": "Bearer wrong"})
        assert info.value.status() == "401" and info.value.message() == "invalid API key"


def test_gateway_does_not_trust_a_core_signed_by_another_ca(tls_core: RunningServer, pki: Pki) -> None:
    with _gateway(tls_core, pki.other_ca) as client:
        with pytest.raises(InferenceServerException) as info:
            client.get_server_metadata(headers={"Authorization": f"Bearer {KEY}"})
        assert info.value.status() == "503"


# -- start-up refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "flag"),
    [
        ("grpc key of another certificate", "--grpc-server-cert/--grpc-server-key"),
        ("grpc certificate missing", "--grpc-server-cert"),
        ("grpc client CA missing", "--grpc-root-cert"),
        ("https key of another certificate", "--http-ssl-cert/--http-ssl-key"),
        ("https certificate missing", "--http-ssl-cert"),
        ("https client CA missing", "--http-ssl-client-ca"),
    ],
)
def test_bad_tls_files_stop_the_server_naming_the_flag(pki: Pki, tmp_path: Path, case: str, flag: str) -> None:
    missing = str(tmp_path / "missing.pem")
    grpc_tls = ["--grpc-use-ssl=true", "--grpc-server-cert", str(pki.server_cert), "--grpc-server-key",
                str(pki.server_key)]
    https = ["--http-ssl-cert", str(pki.server_cert), "--http-ssl-key", str(pki.server_key)]
    extra = {
        "grpc key of another certificate": [*grpc_tls[:-1], str(pki.other_key)],
        "grpc certificate missing": [*grpc_tls[:2], missing, *grpc_tls[3:]],
        "grpc client CA missing": [*grpc_tls, "--grpc-use-ssl-mutual=true", "--grpc-root-cert", missing],
        "https key of another certificate": [*https[:-1], str(pki.other_key)],
        "https certificate missing": [https[0], missing, *https[2:]],
        "https client CA missing": [*https, "--http-ssl-client-ca", missing],
    }[case]
    result = subprocess.run(
        [sys.executable, "-m", "v2server", "--model-repository", str(BUNDLED_REPOSITORY),
         "--model-control-mode=explicit", "--grpc-address", "127.0.0.1", "--grpc-port", "0",
         "--http-address", "127.0.0.1", "--http-port", "0", "--metrics-address", "127.0.0.1",
         "--metrics-port", "0", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert flag in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "server ready" not in result.stderr  # refused before serving anything
