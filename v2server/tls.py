"""TLS for both transports, built once from the settings at start-up.

gRPC takes Triton's flags (``--grpc-use-ssl``, ``--grpc-use-ssl-mutual``, ``--grpc-server-cert``,
``--grpc-server-key``, ``--grpc-root-cert``); HTTPS takes ours (``--http-ssl-cert``, ``--http-ssl-key``,
``--http-ssl-client-ca``), and every HTTP listener (REST and metrics) uses it. The gateway's connection to
a remote core takes ``--grpc-target-*``. A file that cannot be read or a key that does not match its
certificate stops the server at start, naming the flag: a server never falls back to plaintext.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from v2server.errors import V2Error
from v2server.settings import Settings

__all__ = ["grpc_channel_credentials", "grpc_server_credentials", "http_ssl_context"]


def _read(path: Path | None, flag: str) -> bytes:
    if path is None:
        raise V2Error(f"{flag} is required")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise V2Error(f"{flag} {path}: cannot read: {exc.strerror}") from None


def grpc_server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The gRPC listener's TLS credentials, or None for plaintext (``--grpc-use-ssl`` off)."""
    if not settings.grpc_use_ssl:
        return None
    certificate = _read(settings.grpc_server_cert, "--grpc-server-cert")
    key = _read(settings.grpc_server_key, "--grpc-server-key")
    root = _read(settings.grpc_root_cert, "--grpc-root-cert") if settings.grpc_use_ssl_mutual else None
    _check_pair(settings.grpc_server_cert, settings.grpc_server_key, "--grpc-server-cert/--grpc-server-key")
    return grpc.ssl_server_credentials(
        [(key, certificate)], root_certificates=root, require_client_auth=settings.grpc_use_ssl_mutual
    )


def http_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The HTTPS context of the REST and metrics listeners, or None for plain HTTP."""
    if settings.http_ssl_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _check_pair(settings.http_ssl_cert, settings.http_ssl_key, "--http-ssl-cert/--http-ssl-key", context)
    if settings.http_ssl_client_ca is not None:
        _read(settings.http_ssl_client_ca, "--http-ssl-client-ca")
        context.load_verify_locations(cafile=str(settings.http_ssl_client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def grpc_channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """Gateway mode: TLS to the remote core (``--grpc-target-ssl`` or any ``--grpc-target-*`` file)."""
    if not (settings.grpc_target_ssl or settings.grpc_target_root_cert or settings.grpc_target_client_cert):
        return None
    root = _read(settings.grpc_target_root_cert, "--grpc-target-root-cert") if settings.grpc_target_root_cert else None
    chain = key = None
    if settings.grpc_target_client_cert is not None or settings.grpc_target_client_key is not None:
        chain = _read(settings.grpc_target_client_cert, "--grpc-target-client-cert")
        key = _read(settings.grpc_target_client_key, "--grpc-target-client-key")
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)


def _check_pair(
    certificate: Path | None, key: Path | None, flags: str, context: ssl.SSLContext | None = None
) -> None:
    """Load a certificate and its key, so a wrong pair fails at start rather than at the first handshake."""
    if certificate is None or key is None:
        raise V2Error(f"{flags}: both a certificate and its key are required")
    context = context or ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(certificate), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise V2Error(f"{flags} ({certificate}, {key}): cannot load: {exc}") from None
