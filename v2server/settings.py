"""Every knob of the server, declared once: its type, default, flags, environment variable and help.

``cli.py`` generates the argument parser, the environment reader and the flag table of docs/configuration.md
from these declarations, so a flag, its default and its documentation cannot drift apart.
"""

# option() and derived() return dataclasses.field(...) objects, not defaults computed once
# ruff: noqa: RUF009

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from v2server.statistics import DEFAULT_BUCKETS_US

__all__ = [
    "DEFAULT_MAX_BODY_SIZE", "DEFAULT_MAX_MESSAGE_SIZE", "GROUPS", "OPTIONS", "TRACE_LEVELS", "ControlMode", "Option",
    "Settings", "TraceConfig", "TraceMode",
]

ControlMode = Literal["none", "poll", "explicit"]
TraceMode = Literal["triton", "opentelemetry"]
Kind = Literal["bool", "int", "float", "str", "path"]
_T = TypeVar("_T")

#: Triton lets gRPC messages grow to 2 GiB - 1 both ways; grpcio's 4 MiB default breaks real clients.
DEFAULT_MAX_MESSAGE_SIZE = 2**31 - 1
DEFAULT_MAX_BODY_SIZE = 256 * 2**20

#: sections of ``--help`` and of the flag table, by ``Option.group``
GROUPS = {
    "": "General",
    "tls": "TLS (gRPC flags are Triton's; --http-ssl-* are v2server's)",
    "limits": "Connection limits (keepalive flags are Triton's, in milliseconds)",
    "load": "Load limits: past them a request gets 413 or 503 instead of the server a stall",
    "jobs": "Asynchronous /v1 jobs, webhooks and state (docs/jobs.md)",
    "results": "Large /v1 answers as links (response_format \"links\", docs/results.md)",
}


@dataclass(frozen=True, slots=True)
class Option:
    """One command-line flag and its environment variable.

    ``dest`` is the ``Settings`` field the option sets (``direct``), or, for an input such as ``--model-dir``,
    the name a derived field is computed from in ``cli.py``.
    """

    #: the first is the primary name: it names the environment variable and the error messages
    flags: tuple[str, ...]
    help: str
    kind: Kind = "str"
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    #: accepted values that mean another one (Triton's log formats)
    synonyms: tuple[tuple[str, str], ...] = ()
    #: the flag may be given more than once; its environment variable holds the values joined by ``separator``
    repeatable: bool = False
    separator: str = ","
    #: older environment names, still read so that existing deployments keep working
    env_aliases: tuple[str, ...] = ()
    #: the environment's values add to the command line's instead of yielding to them (API keys)
    env_adds: bool = False
    group: str = ""
    #: checked once parsed: the value must be > 0 (and <= ``maximum``)
    positive: bool = False
    maximum: int | None = None
    #: the default as the flag table shows it, where the value alone would not say it
    default_text: str | None = None
    dest: str = ""
    default: Any = None
    direct: bool = False

    @property
    def env(self) -> str:
        """``V2SERVER_`` and the primary flag's name: ``--load-model`` reads ``V2SERVER_LOAD_MODEL``."""
        return "V2SERVER_" + self.flags[0].lstrip("-").upper().replace("-", "_")

    @property
    def env_names(self) -> tuple[str, ...]:
        return (self.env, *self.env_aliases)


def option(default: _T, *flags: str, help: str, inputs: tuple[Option, ...] = (), **details: Any) -> _T:
    """A ``Settings`` field that ``flags`` set; ``inputs`` are further flags a derived value is computed from."""
    return field(default=default, metadata={"options": (Option(flags, help, **details), *inputs)})


def derived(default: _T, *inputs: Option) -> _T:
    """A ``Settings`` field with no flag of its own: ``cli.py`` computes it from ``inputs``."""
    return field(default=default, metadata={"options": inputs})


#: Triton's trace levels beside OFF (which is none of them)
TRACE_LEVELS = ("TIMESTAMPS", "TENSORS")


@dataclass(frozen=True, slots=True)
class TraceConfig:
    """Request tracing as ``--trace-config`` sets it at start (Triton's defaults); the trace API changes the
    level, rate, count, file and log frequency while the server runs, never the mode or the exporter."""

    mode: TraceMode = "triton"
    #: a subset of ``TRACE_LEVELS``; empty is OFF
    level: tuple[str, ...] = ()
    #: trace every ``rate``-th request
    rate: int = 1000
    #: traces left to take; -1: no end
    count: int = -1
    #: triton mode: the JSON file the traces go to
    file: str = ""
    #: triton mode: 0 writes every trace to ``file``; N writes each N traces to ``file.0``, ``file.1``, ...
    log_frequency: int = 0
    #: opentelemetry mode: the OTLP/HTTP traces endpoint
    url: str = "http://localhost:4318/v1/traces"
    #: opentelemetry mode: resource attributes of the spans
    resource: tuple[tuple[str, str], ...] = ()


_BUCKETS_TEXT = (
    f"{len(DEFAULT_BUCKETS_US)} buckets, {min(DEFAULT_BUCKETS_US):g} µs to {max(DEFAULT_BUCKETS_US) / 1e6:g} s"
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Server settings; field names follow Triton's flags (``--http-port`` is ``http_port``)."""

    model_repositories: tuple[Path, ...] = option(
        (), "--model-repository", "--model-store", kind="path", repeatable=True, metavar="DIR",
        env_aliases=("V2SERVER_MODEL_REPOSITORIES",),
        help="model repository folder (repeatable); this or --model-dir is required outside gateway mode")
    #: single model folders served under a given name (``--model-dir`` with ``--model-name``, KServe style)
    single_models: tuple[tuple[str, Path], ...] = derived(
        (),
        Option(("--model-dir",), "KServe style: one model folder (config.pbtxt, version folders) or a repository",
               kind="path", metavar="DIR", dest="model_dir"),
        Option(("--model-name",), "with --model-dir on a single model folder: the name it is served as",
               metavar="NAME", dest="model_name", default_text="the folder's name"))
    server_name: str = option("v2server", "--server-name", metavar="NAME",
                              help="name ServerMetadata reports ('triton' for clients that check)")
    http_address: str = option("0.0.0.0", "--http-address", metavar="ADDRESS", help="REST listener address")
    http_port: int = option(8000, "--http-port", kind="int", metavar="PORT", help="REST listener port")
    grpc_address: str = option("0.0.0.0", "--grpc-address", metavar="ADDRESS", help="gRPC listener address")
    grpc_port: int = option(8001, "--grpc-port", kind="int", metavar="PORT",
                            help="gRPC listener port (0: any free port, logged)")
    metrics_address: str = option("0.0.0.0", "--metrics-address", metavar="ADDRESS",
                                  help="Prometheus /metrics listener address")
    metrics_port: int = option(8002, "--metrics-port", kind="int", metavar="PORT",
                               help="Prometheus /metrics listener port")
    #: upper bounds (microseconds) of the latency histograms' buckets
    latency_buckets_us: tuple[float, ...] = derived(
        DEFAULT_BUCKETS_US,
        Option(("--metrics-config",), "histogram_latency_buckets=100,500,1000 sets the latency histograms' bucket "
               "bounds (microseconds); other keys are ignored with a warning (repeatable)", metavar="KEY=VALUE",
               repeatable=True, separator=";", dest="metrics_config", default=(), default_text=_BUCKETS_TEXT))
    api_keys: tuple[str, ...] = option(
        (), "--api-key", repeatable=True, metavar="KEY", env_aliases=("V2SERVER_API_KEYS",), env_adds=True,
        help="require this API key on every route but health (repeatable; the environment's keys and "
        "--api-keys-file's add to these)",
        inputs=(Option(("--api-keys-file",), "API keys, one per line ('#' comments)", kind="path",
                       metavar="FILE", dest="api_keys_file"),))
    cors_allow_origins: tuple[str, ...] = option(
        (), "--cors-allow-origin", repeatable=True, metavar="ORIGIN", env_aliases=("V2SERVER_CORS_ALLOW_ORIGINS",),
        help="allow browser calls from ORIGIN: CORS headers and preflight answers (repeatable, '*' for any)")
    log_requests: bool = option(False, "--log-requests", kind="bool", help="write one access-log line per request")
    log_format: Literal["text", "json", "ISO8601"] = option(
        "text", "--log-format", choices=("text", "json", "default", "ISO8601"), synonyms=(("default", "text"),),
        help="text (Triton's default): log lines as they are; ISO8601: server log lines start with an ISO 8601 "
        "UTC time; json: access-log lines are JSON objects")
    log_info: bool = option(True, "--log-info", kind="bool", help="write INFO log lines (also live: POST /v2/logging)")
    log_warning: bool = option(True, "--log-warning", kind="bool", help="write WARNING log lines")
    log_error: bool = option(True, "--log-error", kind="bool", help="write ERROR log lines")
    log_file: Path | None = option(None, "--log-file", kind="path", metavar="FILE", default_text="standard error",
                                   help="write the server's log to FILE (appended) instead of standard error")
    #: request tracing: Triton's --trace-config settings
    trace: TraceConfig = derived(
        TraceConfig(),
        Option(("--trace-config",), "Triton's trace settings, [MODE,]SETTING=VALUE: level=OFF|TIMESTAMPS|TENSORS, "
               "rate=N (every Nth request), count=N (-1: no end), mode=triton|opentelemetry, "
               "triton,file=PATH, triton,log-frequency=N, opentelemetry,url=URL (OTLP/HTTP), "
               "opentelemetry,resource=KEY=VALUE (repeatable)", metavar="SETTING", repeatable=True,
               separator=";", dest="trace_config", default=(), default_text="level=OFF"))
    api_file_dir: Path | None = option(
        None, "--api-file-dir", kind="path", metavar="DIR", default_text="none: refused",
        help="log_file and trace_file set over the logging and trace APIs must lie in this folder (without it, "
        "the APIs cannot change the files the server writes)")
    allow_http: bool = option(True, "--allow-http", kind="bool", help="serve REST")
    allow_grpc: bool = option(True, "--allow-grpc", kind="bool", help="serve gRPC")
    allow_metrics: bool = option(True, "--allow-metrics", kind="bool", help="serve Prometheus /metrics")
    model_control_mode: ControlMode = option(
        "none", "--model-control-mode", choices=("none", "poll", "explicit"),
        help="none loads every model at start; poll also rescans the repositories (added, changed, removed "
        "models and versions); explicit loads the --load-model ones, then the repository API")
    load_models: tuple[str, ...] = option(
        (), "--load-model", repeatable=True, metavar="NAME", env_aliases=("V2SERVER_LOAD_MODELS",),
        help="with --model-control-mode=explicit: a model to load at start (repeatable, '*' for all)")
    repository_poll_seconds: float = option(
        15.0, "--repository-poll-secs", kind="float", metavar="SECONDS", positive=True,
        help="with --model-control-mode=poll: seconds between repository scans")
    strict_model_config: bool = option(
        True, "--strict-model-config", kind="bool",
        help="false completes missing inputs and outputs (and a missing config.pbtxt) from the TorchScript "
        "forward signature where its types say enough")
    strict_readiness: bool = option(True, "--strict-readiness", kind="bool",
                                    help="ready only when every model to serve is serving")
    exit_on_error: bool = option(False, "--exit-on-error", kind="bool",
                                 help="exit when a model fails to load (false: serve the others)")
    log_verbose: int = option(0, "--log-verbose", kind="int", metavar="LEVEL",
                              help="debug logging (and Tornado's line per request) when > 0")
    grpc_max_message_size: int = option(
        DEFAULT_MAX_MESSAGE_SIZE, "--grpc-max-message-size", kind="int", metavar="BYTES", positive=True,
        maximum=DEFAULT_MAX_MESSAGE_SIZE, help="gRPC send and receive limit (grpcio's 4 MiB breaks real clients)")
    http_max_body_size: int = option(
        DEFAULT_MAX_BODY_SIZE, "--http-max-body-size", kind="int", metavar="BYTES", positive=True,
        help="largest REST request body (also after decompression); larger ones get 413 before they are read")
    default_model: str = option("", "--default-model", metavar="NAME", default_text="the only model",
                                help="the model POST /predict serves")
    grpc_target: str = option("", "--grpc-target", metavar="HOST:PORT",
                              help="gateway mode ('v2server gateway'): forward REST requests to this gRPC core")
    shutdown_grace_seconds: float = option(30.0, "--exit-timeout-secs", kind="float", metavar="SECONDS",
                                           help="on SIGTERM, how long in-flight requests get to finish")
    event_loop: str = option("auto", "--event-loop", choices=("auto", "uvloop", "asyncio"),
                             help="uvloop (auto: where installed) is faster than asyncio's own loop")
    #: server processes (``--workers``; ``auto`` resolved by cli.py); 1 is one process and no supervisor
    workers: int = derived(
        1,
        Option(("--workers",), "server processes sharing the HTTP and gRPC ports (SO_REUSEPORT) under a "
               "supervisor that restarts them and serves their summed /metrics; auto: one per CPU this process may "
               "run on. Each worker holds its own copy of every model (memory x N): keep 1 on GPUs "
               "(docs/operations.md)", metavar="N|auto", dest="workers_text", default="1"))
    metrics_api_key_required: bool = option(
        False, "--metrics-api-key-required", kind="bool",
        help="/metrics needs an API key like every other route (false: open, as in Triton)")
    allow_client_shm: bool = option(
        True, "--allow-client-shm", kind="bool",
        help="clients may register shared-memory regions and send tensors through them (false: refused, 501)")
    # -- TLS (see tls.py) --
    grpc_use_ssl: bool = option(False, "--grpc-use-ssl", kind="bool", group="tls",
                                help="serve gRPC over TLS (needs --grpc-server-cert and --grpc-server-key)")
    grpc_use_ssl_mutual: bool = option(
        False, "--grpc-use-ssl-mutual", kind="bool", group="tls",
        help="require client certificates signed by --grpc-root-cert (implies --grpc-use-ssl)")
    grpc_server_cert: Path | None = option(None, "--grpc-server-cert", kind="path", metavar="FILE", group="tls",
                                           help="gRPC server certificate (PEM)")
    grpc_server_key: Path | None = option(None, "--grpc-server-key", kind="path", metavar="FILE", group="tls",
                                          help="gRPC server private key (PEM)")
    grpc_root_cert: Path | None = option(None, "--grpc-root-cert", kind="path", metavar="FILE", group="tls",
                                         help="CA that gRPC client certificates must chain to (mutual TLS)")
    http_ssl_cert: Path | None = option(None, "--http-ssl-cert", kind="path", metavar="FILE", group="tls",
                                        help="serve HTTPS (REST and metrics) with this certificate")
    http_ssl_key: Path | None = option(None, "--http-ssl-key", kind="path", metavar="FILE", group="tls",
                                       help="private key of --http-ssl-cert")
    http_ssl_client_ca: Path | None = option(None, "--http-ssl-client-ca", kind="path", metavar="FILE",
                                             group="tls", help="require HTTPS client certificates signed by this CA")
    grpc_target_ssl: bool = option(False, "--grpc-target-ssl", kind="bool", group="tls",
                                   help="gateway mode: connect to the core over TLS (the system's roots)")
    grpc_target_root_cert: Path | None = option(
        None, "--grpc-target-root-cert", kind="path", metavar="FILE", group="tls",
        help="gateway mode: CA of the core's certificate (implies --grpc-target-ssl)")
    grpc_target_client_cert: Path | None = option(
        None, "--grpc-target-client-cert", kind="path", metavar="FILE", group="tls",
        help="gateway mode: client certificate for a core that requires one")
    grpc_target_client_key: Path | None = option(None, "--grpc-target-client-key", kind="path", metavar="FILE",
                                                 group="tls", help="private key of --grpc-target-client-cert")
    # -- connection limits --
    http_idle_timeout_seconds: float = option(
        60.0, "--http-idle-timeout-secs", "--http-header-timeout-secs", kind="float", metavar="SECONDS",
        positive=True, group="limits",
        help="close a connection that has not sent a complete request head in this time (Tornado's one timer "
        "for both the head and the keep-alive idle wait)")
    http_body_timeout_seconds: float = option(
        300.0, "--http-body-timeout-secs", kind="float", metavar="SECONDS", positive=True, group="limits",
        help="close a connection whose request body has not fully arrived in this time")
    grpc_max_concurrent_streams: int = option(
        128, "--grpc-max-concurrent-streams", kind="int", metavar="N", positive=True, group="limits",
        help="concurrent RPCs per gRPC connection (more wait for a free stream)")
    grpc_keepalive_time_ms: int = option(7_200_000, "--grpc-keepalive-time", kind="int", metavar="MS",
                                         group="limits", help="interval of the server's keepalive pings")
    grpc_keepalive_timeout_ms: int = option(
        20_000, "--grpc-keepalive-timeout", kind="int", metavar="MS", group="limits",
        help="how long a keepalive ping may go unanswered before the connection is closed")
    grpc_keepalive_permit_without_calls: bool = option(
        False, "--grpc-keepalive-permit-without-calls", kind="bool", group="limits",
        help="keepalive pings are allowed on connections with no RPC in flight")
    grpc_http2_max_pings_without_data: int = option(
        2, "--grpc-http2-max-pings-without-data", kind="int", metavar="N", group="limits",
        help="pings the server sends before it must send data (0: no limit)")
    grpc_http2_min_recv_ping_interval_without_data_ms: int = option(
        300_000, "--grpc-http2-min-recv-ping-interval-without-data", kind="int", metavar="MS", group="limits",
        help="a client pinging more often than this gets a strike")
    grpc_http2_max_ping_strikes: int = option(2, "--grpc-http2-max-ping-strikes", kind="int", metavar="N",
                                              group="limits",
                                              help="strikes before the connection is closed (0: no limit)")
    max_batch_rows: int = option(
        10_000, "--max-batch-rows", kind="int", metavar="N", positive=True, group="load",
        help="rows a /v1 or /predict batch may hold; more get 413")
    max_inflight_bytes: int = option(
        1 << 30, "--max-inflight-bytes", kind="int", metavar="BYTES", positive=True, group="load",
        help="input bytes of all requests being served at once; a request past it gets 503")
    grpc_max_stream_pending: int = option(
        64, "--grpc-max-stream-pending", kind="int", metavar="N", positive=True, group="load",
        help="unanswered requests on one ModelStreamInfer stream before it stops reading (flow control slows "
        "the client)")
    max_shm_regions: int = option(
        1024, "--max-shm-regions", kind="int", metavar="N", positive=True, group="load",
        help="shared-memory regions (system and CUDA) registered at once; one more gets 503")
    # -- asynchronous /v1 jobs, webhooks, state outside the repository (v2server/jobs/, docs/jobs.md) --
    state_dir: Path | None = option(
        None, "--state-dir", kind="path", metavar="DIR", group="jobs", default_text="none",
        help="keep state here, not in the model repository: the jobs database (SQLite) and version aliases "
        "(aliases/<model>.json); without it jobs live in memory and aliases in <model>/aliases.json")
    max_pending_jobs: int = option(
        1000, "--max-pending-jobs", kind="int", metavar="N", positive=True, group="jobs",
        help="accepted jobs not yet delivered; one more gets 503")
    max_running_jobs: int = option(
        4, "--max-running-jobs", kind="int", metavar="N", positive=True, group="jobs",
        help="jobs whose inference runs at once (the others wait, queued)")
    max_response_timeout_seconds: float = option(
        600.0, "--max-response-timeout-secs", kind="float", metavar="SECONDS", positive=True, group="jobs",
        help="the longest a /v1 request or job may run: response_timeout and ?timeout are capped to it; a job "
        "with response_webhook_ignore_timeout is not held to it")
    webhook_allow: tuple[str, ...] = option(
        (), "--webhook-allow", repeatable=True, metavar="HOST|CIDR", group="jobs", default_text="public addresses",
        help="webhook targets allowed (repeatable): only these host names, addresses and networks; without it, "
        "public addresses only. Link-local and cloud metadata addresses are always refused")
    webhook_secret: str = option(
        "", "--webhook-secret", metavar="SECRET", group="jobs", default_text="none: unsigned",
        help="sign each webhook POST: X-V2Server-Signature: sha256=HMAC-SHA256(SECRET, TIMESTAMP + '.' + body) "
        "(prefer the environment variable to the command line)")
    webhook_attempts: int = option(
        8, "--webhook-attempts", kind="int", metavar="N", positive=True, group="jobs",
        help="delivery attempts of a job's result before it is delivery-failed")
    webhook_backoff_seconds: float = option(
        1.0, "--webhook-backoff-secs", kind="float", metavar="SECONDS", positive=True, group="jobs",
        help="wait after the first failed delivery; doubled after each, with jitter")
    webhook_backoff_max_seconds: float = option(
        300.0, "--webhook-backoff-max-secs", kind="float", metavar="SECONDS", positive=True, group="jobs",
        help="ceiling of the wait between delivery attempts")
    webhook_timeout_seconds: float = option(
        10.0, "--webhook-timeout-secs", kind="float", metavar="SECONDS", positive=True, group="jobs",
        help="a delivery attempt that has no answer in this time fails")
    job_result_ttl_seconds: float = option(
        3600.0, "--job-result-ttl-secs", kind="float", metavar="SECONDS", positive=True, group="jobs",
        help="how long GET /v1/jobs/ID shows a finished job's result (then the result is dropped)")
    job_record_ttl_seconds: float = option(
        86400.0, "--job-record-ttl-secs", kind="float", metavar="SECONDS", positive=True, group="jobs",
        help="how long a finished job's record is kept (then GET /v1/jobs/ID is 404)")
    # -- large /v1 answers as links: response_format "links" (v2server/results/, docs/results.md) --
    results_dir: Path | None = option(
        None, "--results-dir", kind="path", metavar="DIR", group="results",
        default_text="a private temporary folder (made by the first link), removed at exit",
        help="store the answers of response_format \"links\" requests here, as files named by random ids, "
        "served at signed URLs (/v1/results/ID) until --results-ttl")
    results_url: str = option(
        "", "--results-url", metavar="s3://BUCKET/PREFIX", group="results", default_text="none: --results-dir",
        help="store the answers in S3 (or an S3-compatible store: boto3's configuration and AWS_ENDPOINT_URL) "
        "and answer presigned GET URLs, for several replicas; needs the extra v2server[s3]")
    results_ttl_seconds: float = option(
        3600.0, "--results-ttl", kind="float", metavar="SECONDS", positive=True, group="results",
        help="how long a link works; after it a local link answers 410 and its file is swept")
    results_secret: str = option(
        "", "--results-secret", metavar="SECRET", group="results", default_text="random, per process",
        help="HMAC-SHA256 key of the local links' signatures; replicas sharing --results-dir need the same one "
        "(prefer the environment variable to the command line)")
    results_max_bytes: int = option(
        1 << 30, "--results-max-bytes", kind="int", metavar="BYTES", positive=True, group="results",
        help="bytes --results-dir may hold; an answer that would pass it gets 503 (not applied to S3: use a "
        "bucket quota and a lifecycle rule)")
    results_base_url: str = option(
        "", "--results-base-url", metavar="URL", group="results", default_text="the request's scheme and host",
        help="what local links start with (e.g. https://models.example.com behind a proxy)")


def _declared() -> tuple[Option, ...]:
    """Every option in field order, each field's own flag completed with the field's name and default."""
    found: list[Option] = []
    for setting in dataclasses.fields(Settings):
        for declared in setting.metadata["options"]:
            if not declared.dest:
                declared = dataclasses.replace(declared, dest=setting.name, default=setting.default, direct=True)
            found.append(declared)
    return tuple(found)


#: every flag the server reads, in the order of ``--help`` and of the flag table
OPTIONS = _declared()
