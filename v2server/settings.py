"""Every knob of the server, typed and frozen, with its default; ``cli.py`` fills it once from argv."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from v2server.statistics import DEFAULT_BUCKETS_US

__all__ = ["DEFAULT_MAX_BODY_SIZE", "DEFAULT_MAX_MESSAGE_SIZE", "ControlMode", "Settings"]

ControlMode = Literal["none", "poll", "explicit"]

#: Triton lets gRPC messages grow to 2 GiB - 1 both ways; grpcio's 4 MiB default breaks real clients.
DEFAULT_MAX_MESSAGE_SIZE = 2**31 - 1
DEFAULT_MAX_BODY_SIZE = 256 * 2**20


@dataclass(frozen=True, slots=True)
class Settings:
    """Server settings; field names follow Triton's flags (``--http-port`` is ``http_port``)."""

    model_repositories: tuple[Path, ...] = ()
    #: single model folders served under a given name (``--model-dir`` with ``--model-name``, KServe style)
    single_models: tuple[tuple[str, Path], ...] = ()
    server_name: str = "v2server"
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    grpc_address: str = "0.0.0.0"
    grpc_port: int = 8001
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 8002
    #: upper bounds (microseconds) of the latency histograms' buckets
    latency_buckets_us: tuple[float, ...] = DEFAULT_BUCKETS_US
    #: write one access-log line per request
    #: API keys; when any is set, every route but health needs one
    api_keys: tuple[str, ...] = ()
    #: origins allowed by CORS ("*" for any); empty: CORS off
    cors_allow_origins: tuple[str, ...] = ()
    log_requests: bool = False
    log_format: Literal["text", "json"] = "text"
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    model_control_mode: ControlMode = "none"
    load_models: tuple[str, ...] = ()
    #: poll mode: seconds between repository scans
    repository_poll_seconds: float = 15.0
    strict_model_config: bool = True
    strict_readiness: bool = True
    exit_on_error: bool = False
    log_verbose: int = 0
    grpc_max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: largest REST request body; bigger ones get 413 before they are read
    http_max_body_size: int = DEFAULT_MAX_BODY_SIZE
    #: the model ``POST /predict`` serves ("" : the only model in the repository)
    default_model: str = ""
    #: gateway mode: the REST gateway forwards to the gRPC core at this HOST:PORT instead of serving models
    grpc_target: str = ""
    #: seconds in-flight requests get to finish on SIGTERM before the server stops anyway
    shutdown_grace_seconds: float = 30.0
    #: "uvloop" where installed (``auto``), else asyncio's own loop
    event_loop: str = "auto"
    #: ``/metrics`` needs an API key too (off: Triton's metrics are open)
    metrics_api_key_required: bool = False
    # -- TLS (see tls.py) --
    grpc_use_ssl: bool = False
    grpc_use_ssl_mutual: bool = False
    grpc_server_cert: Path | None = None
    grpc_server_key: Path | None = None
    #: CA that client certificates must chain to (``--grpc-use-ssl-mutual``)
    grpc_root_cert: Path | None = None
    http_ssl_cert: Path | None = None
    http_ssl_key: Path | None = None
    #: CA that client certificates must chain to; set: HTTPS requires a client certificate
    http_ssl_client_ca: Path | None = None
    #: gateway mode: TLS to the core (with the system's roots unless ``grpc_target_root_cert``)
    grpc_target_ssl: bool = False
    grpc_target_root_cert: Path | None = None
    grpc_target_client_cert: Path | None = None
    grpc_target_client_key: Path | None = None
    # -- connection limits --
    #: seconds a connection gets to send a complete request head (also the keep-alive idle limit)
    http_idle_timeout_seconds: float = 60.0
    #: seconds a request gets to send its whole body once its head is in
    http_body_timeout_seconds: float = 300.0
    #: concurrent RPCs on one gRPC connection; more wait for a free stream
    grpc_max_concurrent_streams: int = 128
    #: Triton's gRPC keepalive flags, in milliseconds, with Triton's defaults
    grpc_keepalive_time_ms: int = 7_200_000
    grpc_keepalive_timeout_ms: int = 20_000
    grpc_keepalive_permit_without_calls: bool = False
    grpc_http2_max_pings_without_data: int = 2
    grpc_http2_min_recv_ping_interval_without_data_ms: int = 300_000
    grpc_http2_max_ping_strikes: int = 2
