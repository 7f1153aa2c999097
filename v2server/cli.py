"""Command line -> ``Settings``, once; then ``server.run``. Flag names are Triton's."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from v2server.auth import read_keys
from v2server.errors import V2Error
from v2server.settings import DEFAULT_MAX_BODY_SIZE, DEFAULT_MAX_MESSAGE_SIZE, Settings
from v2server.statistics import DEFAULT_BUCKETS_US, parse_buckets

__all__ = ["main", "parse_settings", "triton_main"]

log = logging.getLogger("v2server")

#: Triton flags that tune what this server has no equivalent of (memory pools, thread counts, caches, log
#: levels): accepted so that Triton command lines keep working, with a warning. Never a TLS, auth, address
#: or API-restriction flag: those either work here or stop the server at start.
IGNORED_TRITON_FLAGS = (
    "backend-config",
    "backend-directory",
    "buffer-manager-thread-count",
    "cache-config",
    "cache-directory",
    "cuda-memory-pool-byte-size",
    "cuda-virtual-address-size",
    "grpc-infer-allocation-pool-size",
    "grpc-infer-response-compression-level",
    "grpc-max-response-pool-size",
    "host-policy",
    "http-thread-count",
    "log-error",
    "log-info",
    "log-warning",
    "metrics-interval-ms",
    "min-supported-compute-capability",
    "model-load-retry-count",
    "model-load-thread-count",
    "pinned-memory-pool-byte-size",
    "rate-limit",
    "rate-limit-resource",
    "repoagent-directory",
    "response-cache-byte-size",
)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="v2server",
        allow_abbrev=False,  # a prefix that happens to match another flag must not pass for it
        description="Serve TorchScript models over the KServe V2 / Open Inference Protocol (Triton-compatible). "
        "'v2server gateway --grpc-target HOST:PORT' runs only the REST gateway, forwarding to a remote core.",
    )
    flag = parser.add_argument
    flag("--model-repository", "--model-store", dest="model_repositories", action="append", type=Path,
         default=[], metavar="DIR", help="model repository folder (repeatable)")
    flag("--model-dir", type=Path, metavar="DIR",
         help="KServe style: one model folder (config.pbtxt, version folders) or a repository")
    flag("--model-name", metavar="NAME", help="with --model-dir on a single model folder: the name it is served as")
    flag("--server-name", default="v2server", help="name ServerMetadata reports ('triton' to pass for Triton)")
    flag("--http-address", default="0.0.0.0")
    flag("--http-port", type=int, default=8000)
    flag("--grpc-address", default="0.0.0.0")
    flag("--grpc-port", type=int, default=8001)
    flag("--metrics-address", default="0.0.0.0")
    flag("--metrics-port", type=int, default=8002)
    flag("--metrics-config", action="append", default=[], metavar="KEY=VALUE",
         help="histogram_latency_buckets=100,500,1000 (microseconds) sets the latency histograms' buckets")
    flag("--api-key", dest="api_keys", action="append", default=[], metavar="KEY",
         help="require this API key (repeatable; also V2SERVER_API_KEYS, comma-separated)")
    flag("--api-keys-file", type=Path, metavar="FILE", help="API keys, one per line ('#' comments)")
    flag("--cors-allow-origin", dest="cors_allow_origins", action="append", default=[], metavar="ORIGIN",
         help="allow browser calls from ORIGIN (repeatable, '*' for any)")
    flag("--log-requests", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
         help="write one access-log line per request")
    flag("--log-format", choices=("text", "json", "default", "ISO8601"), default="text",
         help="access log format (Triton's default/ISO8601 mean text)")
    for name in ("allow-http", "allow-grpc", "allow-metrics", "strict-readiness", "strict-model-config"):
        flag(f"--{name}", type=_bool, nargs="?", const=True, default=True, metavar="BOOL")
    flag("--exit-on-error", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
         help="exit when a model fails to load (default: serve the others)")
    flag("--model-control-mode", choices=("none", "poll", "explicit"), default="none")
    flag("--load-model", dest="load_models", action="append", default=[], metavar="NAME",
         help="with --model-control-mode=explicit: model to load at start (repeatable, '*' for all)")
    flag("--repository-poll-secs", type=float, default=15.0, metavar="SECONDS",
         help="with --model-control-mode=poll: seconds between repository scans")
    flag("--log-verbose", type=int, default=0, metavar="LEVEL")
    flag("--grpc-max-message-size", type=int, default=DEFAULT_MAX_MESSAGE_SIZE, metavar="BYTES")
    flag("--http-max-body-size", type=int, default=DEFAULT_MAX_BODY_SIZE, metavar="BYTES",
         help="largest REST request body; larger ones get 413")
    flag("--default-model", default="", metavar="NAME",
         help="the model POST /predict serves (default: the only model in the repository)")
    flag("--grpc-target", default="", metavar="HOST:PORT",
         help="gateway mode ('v2server gateway'): forward REST requests to this gRPC core")
    flag("--event-loop", choices=["auto", "uvloop", "asyncio"], default="auto",
         help="event loop: uvloop (auto: where installed) is faster than asyncio's own")
    flag("--exit-timeout-secs", type=float, default=30.0, metavar="SECONDS",
         help="on SIGTERM, how long in-flight requests get to finish")
    flag("--metrics-api-key-required", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
         help="/metrics needs an API key like every other route (default: open, as in Triton)")
    tls = parser.add_argument_group("TLS (gRPC flags are Triton's; --http-ssl-* are v2server's)")
    tls.add_argument("--grpc-use-ssl", type=_bool, nargs="?", const=True, default=False, metavar="BOOL")
    tls.add_argument("--grpc-use-ssl-mutual", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
                     help="require client certificates signed by --grpc-root-cert (implies --grpc-use-ssl)")
    tls.add_argument("--grpc-server-cert", type=Path, metavar="FILE")
    tls.add_argument("--grpc-server-key", type=Path, metavar="FILE")
    tls.add_argument("--grpc-root-cert", type=Path, metavar="FILE")
    tls.add_argument("--http-ssl-cert", type=Path, metavar="FILE", help="serve HTTPS (REST and metrics)")
    tls.add_argument("--http-ssl-key", type=Path, metavar="FILE")
    tls.add_argument("--http-ssl-client-ca", type=Path, metavar="FILE",
                     help="require HTTPS client certificates signed by this CA")
    tls.add_argument("--grpc-target-ssl", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
                     help="gateway mode: connect to the core over TLS")
    tls.add_argument("--grpc-target-root-cert", type=Path, metavar="FILE",
                     help="gateway mode: CA of the core's certificate (implies --grpc-target-ssl)")
    tls.add_argument("--grpc-target-client-cert", type=Path, metavar="FILE",
                     help="gateway mode: client certificate for a core that requires one")
    tls.add_argument("--grpc-target-client-key", type=Path, metavar="FILE")
    limits = parser.add_argument_group("connection limits (keepalive flags are Triton's, in milliseconds)")
    limits.add_argument("--http-idle-timeout-secs", "--http-header-timeout-secs", type=float, default=60.0,
                        metavar="SECONDS",
                        help="close a connection that has not sent a complete request head in this time "
                        "(Tornado's one timer for both the head and the keep-alive idle wait)")
    limits.add_argument("--http-body-timeout-secs", type=float, default=300.0, metavar="SECONDS",
                        help="close a connection whose request body has not fully arrived in this time")
    limits.add_argument("--grpc-max-concurrent-streams", type=int, default=128, metavar="N",
                        help="concurrent RPCs per gRPC connection (more wait for a free stream)")
    limits.add_argument("--grpc-keepalive-time", type=int, default=7_200_000, metavar="MS")
    limits.add_argument("--grpc-keepalive-timeout", type=int, default=20_000, metavar="MS")
    limits.add_argument("--grpc-keepalive-permit-without-calls", type=_bool, nargs="?", const=True,
                        default=False, metavar="BOOL")
    limits.add_argument("--grpc-http2-max-pings-without-data", type=int, default=2, metavar="N")
    limits.add_argument("--grpc-http2-min-recv-ping-interval-without-data", type=int, default=300_000,
                        metavar="MS", help="a client pinging more often than this gets a strike")
    limits.add_argument("--grpc-http2-max-ping-strikes", type=int, default=2, metavar="N",
                        help="strikes before the connection is closed (0: no limit)")
    ignored = parser.add_argument_group(
        "Triton tuning flags accepted as no-ops (a warning is logged); any other unknown flag is an error"
    )
    for name in IGNORED_TRITON_FLAGS:
        ignored.add_argument(f"--{name}", dest=f"ignored:{name}", action="append", nargs="?", const="",
                             metavar="VALUE", help=argparse.SUPPRESS)
    return parser


def _environment_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """``V2SERVER_<FLAG>`` (e.g. ``V2SERVER_HTTP_PORT=8080``) sets a flag's default; the command line wins.

    Repeatable flags take comma-separated values.
    """
    defaults: dict[str, Any] = {}
    for action in parser._actions:  # argparse keeps no public list of actions
        if not action.option_strings or action.dest == "help" or action.dest.startswith("ignored:"):
            continue
        name = "V2SERVER_" + action.dest.upper()
        if name not in environ:
            continue
        convert = action.type if callable(action.type) else str
        raw = environ[name]
        try:
            if isinstance(action, argparse._AppendAction):
                defaults[action.dest] = [convert(item.strip()) for item in raw.split(",") if item.strip()]
            else:
                defaults[action.dest] = convert(raw)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"{name}={raw!r}: {exc}")
    parser.set_defaults(**defaults)


def _looks_like_model(folder: Path) -> bool:
    return (folder / "config.pbtxt").is_file() or any(
        entry.is_dir() and entry.name.isdigit() for entry in folder.iterdir()
    )


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from a command line and ``V2SERVER_*`` variables; unknown Triton flags are reported, not fatal."""
    parser = _parser()
    _environment_defaults(parser, os.environ if environ is None else environ)
    argv = list(argv)
    gateway = argv[:1] == ["gateway"]
    args = parser.parse_args(argv[1:] if gateway else argv)  # an unknown flag is an error that names it
    for name in IGNORED_TRITON_FLAGS:
        if getattr(args, f"ignored:{name}") is not None:
            log.warning("ignoring Triton tuning flag --%s: it has no effect on this server", name)
    if gateway and not args.grpc_target:
        parser.error("gateway mode needs --grpc-target HOST:PORT")
    if not gateway and args.grpc_target:
        parser.error("--grpc-target is for gateway mode: v2server gateway --grpc-target HOST:PORT")
    single_models: tuple[tuple[str, Path], ...] = ()
    if args.model_dir is not None:
        if not args.model_dir.is_dir():
            parser.error(f"--model-dir {args.model_dir} is not a directory")
        if _looks_like_model(args.model_dir):
            single_models = ((args.model_name or args.model_dir.name, args.model_dir),)
        else:
            args.model_repositories.append(args.model_dir)
    elif args.model_name:
        parser.error("--model-name needs --model-dir")
    if not args.model_repositories and not single_models and not gateway:
        parser.error("--model-repository (or --model-dir) is required")
    if args.http_max_body_size <= 0:
        parser.error("--http-max-body-size must be positive")
    if args.repository_poll_secs <= 0:
        parser.error("--repository-poll-secs must be positive")
    if args.load_models and args.model_control_mode != "explicit":
        parser.error("--load-model needs --model-control-mode=explicit")
    if args.grpc_max_message_size <= 0 or args.grpc_max_message_size > DEFAULT_MAX_MESSAGE_SIZE:
        parser.error(f"--grpc-max-message-size must be in 1..{DEFAULT_MAX_MESSAGE_SIZE}")
    _check_tls(parser, args, gateway)
    for name in ("http_idle_timeout_secs", "http_body_timeout_secs", "grpc_max_concurrent_streams"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    buckets = DEFAULT_BUCKETS_US
    for item in args.metrics_config:
        key, _, value = item.partition("=")
        if key == "histogram_latency_buckets":
            try:
                buckets = parse_buckets(value)
            except ValueError as exc:
                parser.error(f"--metrics-config {item}: {exc}")
        else:
            log.warning("ignoring unsupported --metrics-config %s", item)
    try:
        api_keys = read_keys(args.api_keys, args.api_keys_file)
    except OSError as exc:
        parser.error(f"--api-keys-file: {exc}")
    return Settings(
        single_models=single_models,
        api_keys=api_keys,
        cors_allow_origins=tuple(args.cors_allow_origins),
        model_repositories=tuple(args.model_repositories),
        server_name=args.server_name,
        http_address=args.http_address,
        http_port=args.http_port,
        grpc_address=args.grpc_address,
        grpc_port=args.grpc_port,
        metrics_address=args.metrics_address,
        metrics_port=args.metrics_port,
        latency_buckets_us=buckets,
        log_requests=args.log_requests,
        log_format="json" if args.log_format == "json" else "text",
        allow_http=args.allow_http,
        allow_grpc=args.allow_grpc,
        allow_metrics=args.allow_metrics,
        model_control_mode=args.model_control_mode,
        load_models=tuple(args.load_models),
        repository_poll_seconds=args.repository_poll_secs,
        strict_model_config=args.strict_model_config,
        strict_readiness=args.strict_readiness,
        exit_on_error=args.exit_on_error,
        log_verbose=args.log_verbose,
        grpc_max_message_size=args.grpc_max_message_size,
        http_max_body_size=args.http_max_body_size,
        grpc_target=args.grpc_target,
        default_model=args.default_model,
        shutdown_grace_seconds=args.exit_timeout_secs,
        event_loop=args.event_loop,
        metrics_api_key_required=args.metrics_api_key_required,
        grpc_use_ssl=args.grpc_use_ssl or args.grpc_use_ssl_mutual,
        grpc_use_ssl_mutual=args.grpc_use_ssl_mutual,
        grpc_server_cert=args.grpc_server_cert,
        grpc_server_key=args.grpc_server_key,
        grpc_root_cert=args.grpc_root_cert,
        http_ssl_cert=args.http_ssl_cert,
        http_ssl_key=args.http_ssl_key,
        http_ssl_client_ca=args.http_ssl_client_ca,
        grpc_target_ssl=args.grpc_target_ssl,
        grpc_target_root_cert=args.grpc_target_root_cert,
        grpc_target_client_cert=args.grpc_target_client_cert,
        grpc_target_client_key=args.grpc_target_client_key,
        http_idle_timeout_seconds=args.http_idle_timeout_secs,
        http_body_timeout_seconds=args.http_body_timeout_secs,
        grpc_max_concurrent_streams=args.grpc_max_concurrent_streams,
        grpc_keepalive_time_ms=args.grpc_keepalive_time,
        grpc_keepalive_timeout_ms=args.grpc_keepalive_timeout,
        grpc_keepalive_permit_without_calls=args.grpc_keepalive_permit_without_calls,
        grpc_http2_max_pings_without_data=args.grpc_http2_max_pings_without_data,
        grpc_http2_min_recv_ping_interval_without_data_ms=args.grpc_http2_min_recv_ping_interval_without_data,
        grpc_http2_max_ping_strikes=args.grpc_http2_max_ping_strikes,
    )


def _check_tls(parser: argparse.ArgumentParser, args: argparse.Namespace, gateway: bool) -> None:
    """TLS flags that are half set stop the server: serving plaintext instead would be a silent downgrade."""
    if args.grpc_use_ssl or args.grpc_use_ssl_mutual:
        if gateway:
            parser.error("--grpc-use-ssl is for the core's listener; a gateway uses --grpc-target-ssl")
        if args.grpc_server_cert is None or args.grpc_server_key is None:
            parser.error("--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key")
    if args.grpc_use_ssl_mutual and args.grpc_root_cert is None:
        parser.error("--grpc-use-ssl-mutual needs --grpc-root-cert (the CA of the client certificates)")
    for given, flag in ((args.grpc_server_cert, "--grpc-server-cert"), (args.grpc_server_key, "--grpc-server-key"),
                        (args.grpc_root_cert, "--grpc-root-cert")):
        if given is not None and not (args.grpc_use_ssl or args.grpc_use_ssl_mutual):
            parser.error(f"{flag} is set but --grpc-use-ssl is not: say --grpc-use-ssl=true to serve TLS")
    if (args.http_ssl_cert is None) != (args.http_ssl_key is None):
        parser.error("--http-ssl-cert and --http-ssl-key go together")
    if args.http_ssl_client_ca is not None and args.http_ssl_cert is None:
        parser.error("--http-ssl-client-ca needs --http-ssl-cert and --http-ssl-key")
    if (args.grpc_target_client_cert is None) != (args.grpc_target_client_key is None):
        parser.error("--grpc-target-client-cert and --grpc-target-client-key go together")
    target_tls = args.grpc_target_ssl or args.grpc_target_root_cert or args.grpc_target_client_cert
    if target_tls and not gateway:
        parser.error("--grpc-target-* TLS flags are for gateway mode")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``v2server`` command."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    if settings.log_verbose > 0:
        logging.getLogger().setLevel(logging.DEBUG)
    else:
        # Tornado's own line per request costs more than the request itself; --log-requests is the access log.
        logging.getLogger("tornado.access").setLevel(logging.WARNING)

    from v2server.server import run  # imported late: torch takes a while, and --help should not wait

    try:
        run(settings)
    except V2Error as exc:
        log.error("%s", exc.message)
        return 1
    except OSError as exc:  # a port in use, an address that does not exist here
        log.error("%s", exc)
        return 1
    return 0


def triton_main() -> int:
    """``tritonserver``: the same server behind Triton's command name, so KServe's stock runtime runs it."""
    return main()
