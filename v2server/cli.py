"""Command line -> ``Settings``, once; then ``server.run``. Flag names are Triton's.

The parser, the ``V2SERVER_*`` environment reader and the flag table of docs/configuration.md are all generated
from the declarations in ``settings.py``; only the checks across flags and the derived fields are written here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from v2server.auth import read_keys
from v2server.errors import V2Error
from v2server.settings import GROUPS, OPTIONS, TRACE_LEVELS, Option, Settings, TraceConfig
from v2server.statistics import DEFAULT_BUCKETS_US, parse_buckets

__all__ = ["FLAG_TABLE_BEGIN", "FLAG_TABLE_END", "flag_table_markdown", "main", "option_values", "parse_settings",
           "triton_main", "with_flag_table"]

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

FLAG_TABLE_BEGIN = "<!-- flags:begin -->"
FLAG_TABLE_END = "<!-- flags:end -->"


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


_CONVERT: dict[str, Callable[[str], Any]] = {"bool": _bool, "int": int, "float": float, "str": str, "path": Path}


def _default_text(option: Option, code: str = "") -> str:
    """The default as people write it (``true``, ``15``), between ``code`` marks; empty where there is none."""
    if option.default_text is not None:
        return option.default_text
    text = _literal(option.default)
    return f"{code}{text}{code}" if text else ""


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value in (None, "", ()) else str(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="v2server",
        allow_abbrev=False,  # a prefix that happens to match another flag must not pass for it
        description="Serve TorchScript models over the KServe V2 / Open Inference Protocol (Triton-compatible). "
        "'v2server gateway --grpc-target HOST:PORT' runs only the REST gateway, forwarding to a remote core. "
        "Every flag also reads the environment variable named after it; the command line wins.",
    )
    add: dict[str, Callable[..., argparse.Action]] = {"": parser.add_argument}
    for key, title in GROUPS.items():
        if key:
            add[key] = parser.add_argument_group(title).add_argument
    for option in OPTIONS:
        default = _default_text(option)
        notes = ([f"default: {default}"] if default else []) + [f"env {' or '.join(option.env_names)}"]
        # Absent flags stay absent (SUPPRESS): the environment and then the declared default fill them in.
        kwargs: dict[str, Any] = {"dest": option.dest, "default": argparse.SUPPRESS,
                                  "help": f"{option.help} ({'; '.join(notes)})".replace("%", "%%")}
        if option.kind == "bool":
            kwargs.update(type=_bool, nargs="?", const=True, metavar="BOOL")
        else:
            kwargs.update(type=_CONVERT[option.kind], metavar=option.metavar, choices=option.choices or None)
        if option.repeatable:
            kwargs["action"] = "append"
        add[option.group](*option.flags, **kwargs)
    ignored = parser.add_argument_group(
        "Triton tuning flags accepted as no-ops (a warning is logged); any other unknown flag is an error"
    )
    for name in IGNORED_TRITON_FLAGS:
        ignored.add_argument(f"--{name}", dest=f"ignored:{name}", action="append", nargs="?", const="",
                             default=argparse.SUPPRESS, metavar="VALUE", help=argparse.SUPPRESS)
    return parser


def _convert(option: Option, text: str) -> Any:
    value = _CONVERT[option.kind](text.strip())
    if option.choices and value not in option.choices:
        raise ValueError(f"invalid choice: {value!r} (choose from {', '.join(option.choices)})")
    return value


def _from_environment(parser: argparse.ArgumentParser, option: Option, environ: Mapping[str, str]) -> Any:
    """The option's value from ``V2SERVER_<FLAG>`` (or an older name); None when no variable is set."""
    present = [name for name in option.env_names if name in environ]
    if not present:
        return None
    if len({environ[name] for name in present}) > 1:
        parser.error(f"{' and '.join(present)} are both set, differently: keep {option.env}")
    name = present[0]
    raw = environ[name]
    try:
        if option.repeatable:
            return [_convert(option, item) for item in raw.split(option.separator) if item.strip()]
        return _convert(option, raw)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        parser.error(f"{name}={raw!r}: {exc}")


def option_values(
    argv: Sequence[str], environ: Mapping[str, str], parser: argparse.ArgumentParser | None = None
) -> dict[str, Any]:
    """Each option's value by ``dest``: the command line's, else the environment's, else the declared default."""
    parser = parser or _parser()
    given = vars(parser.parse_args(argv))  # an unknown flag is an error that names it
    for name in IGNORED_TRITON_FLAGS:
        if f"ignored:{name}" in given:
            log.warning("ignoring Triton tuning flag --%s: it has no effect on this server", name)
    values: dict[str, Any] = {}
    for option in OPTIONS:
        from_env = _from_environment(parser, option, environ)
        if option.dest in given:
            value = given[option.dest]
            if option.env_adds and from_env is not None:
                value = [*value, *from_env]
        else:
            value = option.default if from_env is None else from_env
        if option.repeatable:
            value = tuple(value)
        values[option.dest] = dict(option.synonyms).get(value, value)
    return values


def _looks_like_model(folder: Path) -> bool:
    return (folder / "config.pbtxt").is_file() or any(
        entry.is_dir() and entry.name.isdigit() for entry in folder.iterdir()
    )


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from a command line and ``V2SERVER_*`` variables; unknown Triton flags are reported, not fatal."""
    parser = _parser()
    argv = list(argv)
    gateway = argv[:1] == ["gateway"]
    values = option_values(argv[1:] if gateway else argv, os.environ if environ is None else environ, parser)
    if gateway and not values["grpc_target"]:
        parser.error("gateway mode needs --grpc-target HOST:PORT")
    if not gateway and values["grpc_target"]:
        parser.error("--grpc-target is for gateway mode: v2server gateway --grpc-target HOST:PORT")
    repositories: tuple[Path, ...] = values["model_repositories"]
    single_models: tuple[tuple[str, Path], ...] = ()
    model_dir: Path | None = values["model_dir"]
    if model_dir is not None:
        if not model_dir.is_dir():
            parser.error(f"--model-dir {model_dir} is not a directory")
        if _looks_like_model(model_dir):
            single_models = ((values["model_name"] or model_dir.name, model_dir),)
        else:
            repositories = (*repositories, model_dir)
    elif values["model_name"]:
        parser.error("--model-name needs --model-dir")
    if not repositories and not single_models and not gateway:
        parser.error("--model-repository (or --model-dir) is required")
    try:
        # the environment's keys are in values already: read_keys must not read them again
        api_keys = read_keys(values["api_keys"], values["api_keys_file"], {})
    except OSError as exc:
        parser.error(f"--api-keys-file: {exc}")
    settings = Settings(**{
        **{option.dest: values[option.dest] for option in OPTIONS if option.direct},
        # the fields that no one flag sets
        "model_repositories": repositories,
        "single_models": single_models,
        "latency_buckets_us": _buckets(parser, values["metrics_config"]),
        "trace": _trace_config(parser, values["trace_config"]),
        "api_keys": api_keys,
        "grpc_use_ssl": values["grpc_use_ssl"] or values["grpc_use_ssl_mutual"],
        "workers": _workers(parser, values["workers_text"]),
    })
    for option in (option for option in OPTIONS if option.positive):
        value = getattr(settings, option.dest)
        if option.maximum is not None and not 0 < value <= option.maximum:
            parser.error(f"{option.flags[0]} must be in 1..{option.maximum}")
        if value <= 0:
            parser.error(f"{option.flags[0]} must be positive")
    if gateway and settings.workers > 1:
        parser.error("--workers is for the core; a gateway forwards to one (run more gateways for more processes)")
    if settings.load_models and settings.model_control_mode != "explicit":
        parser.error("--load-model needs --model-control-mode=explicit")
    _check_tls(parser, settings, gateway)
    return settings


def _workers(parser: argparse.ArgumentParser, text: str) -> int:
    """``--workers``: a positive count, or ``auto``: the CPUs this process may run on (its affinity, which a
    container's cpuset narrows, not the machine's count)."""
    if text.strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        parser.error(f"--workers must be a positive number or auto, got {text!r}")
    return count


def _buckets(parser: argparse.ArgumentParser, metrics_config: Sequence[str]) -> tuple[float, ...]:
    buckets = DEFAULT_BUCKETS_US
    for item in metrics_config:
        key, _, value = item.partition("=")
        if key == "histogram_latency_buckets":
            try:
                buckets = parse_buckets(value)
            except ValueError as exc:
                parser.error(f"--metrics-config {item}: {exc}")
        else:
            log.warning("ignoring unsupported --metrics-config %s", item)
    return buckets


def _trace_config(parser: argparse.ArgumentParser, items: Sequence[str]) -> TraceConfig:
    """Triton's ``--trace-config [MODE,]SETTING=VALUE`` flags as one ``TraceConfig``; a bad one stops the start."""
    fields: dict[str, Any] = {}
    levels: list[str] = []
    resource: list[tuple[str, str]] = []
    for item in items:
        def fail(why: str, item: str = item) -> None:
            parser.error(f"--trace-config {item}: {why}")

        mode, _, setting = item.partition(",") if "," in item else ("", "", item)
        key, equals, value = setting.partition("=")
        key, value = key.strip(), value.strip()
        if not equals:
            fail("expected [MODE,]SETTING=VALUE")
        if mode not in ("", "triton", "opentelemetry"):
            fail(f"unknown trace mode '{mode}' (triton, opentelemetry)")
        known = {"": ("rate", "level", "count", "mode"), "triton": ("file", "log-frequency"),
                 "opentelemetry": ("url", "resource")}[mode]
        if key not in known:
            if mode == "opentelemetry" and key.startswith("bsp_"):
                log.warning("ignoring --trace-config %s: the batch span processor keeps its defaults", item)
                continue
            fail(f"unknown setting '{key}' ({', '.join(known)})")
        if key == "level":
            if value.upper() == "OFF":
                levels.clear()
            elif value.upper() in TRACE_LEVELS:
                levels.append(value.upper())
            else:
                fail("level must be OFF, TIMESTAMPS or TENSORS")
        elif key == "mode":
            if value not in ("triton", "opentelemetry"):
                fail("mode must be triton or opentelemetry")
            fields["mode"] = value
        elif key in ("rate", "count", "log-frequency"):
            lowest = {"rate": 1, "count": -1, "log-frequency": 0}[key]
            try:
                number = int(value)
            except ValueError:
                number = lowest - 1
            if not lowest <= number <= 2**31 - 1:
                fail(f"{key} must be an integer >= {lowest}")
            fields[key.replace("-", "_")] = number
        elif key == "resource":
            name, has_value, attribute = value.partition("=")
            if not name or not has_value:
                fail("resource must be KEY=VALUE")
            resource.append((name, attribute))
        else:  # file, url
            fields[key] = value
    config = TraceConfig(level=tuple(dict.fromkeys(levels)), resource=tuple(resource), **fields)
    if config.level and config.mode == "triton" and not config.file:
        parser.error("--trace-config level=... in triton mode needs --trace-config triton,file=PATH")
    return config


def _check_tls(parser: argparse.ArgumentParser, settings: Settings, gateway: bool) -> None:
    """TLS flags that are half set stop the server: serving plaintext instead would be a silent downgrade."""
    if settings.grpc_use_ssl:
        if gateway:
            parser.error("--grpc-use-ssl is for the core's listener; a gateway uses --grpc-target-ssl")
        if settings.grpc_server_cert is None or settings.grpc_server_key is None:
            parser.error("--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key")
    if settings.grpc_use_ssl_mutual and settings.grpc_root_cert is None:
        parser.error("--grpc-use-ssl-mutual needs --grpc-root-cert (the CA of the client certificates)")
    for given, flag in ((settings.grpc_server_cert, "--grpc-server-cert"),
                        (settings.grpc_server_key, "--grpc-server-key"), (settings.grpc_root_cert, "--grpc-root-cert")):
        if given is not None and not settings.grpc_use_ssl:
            parser.error(f"{flag} is set but --grpc-use-ssl is not: say --grpc-use-ssl=true to serve TLS")
    if (settings.http_ssl_cert is None) != (settings.http_ssl_key is None):
        parser.error("--http-ssl-cert and --http-ssl-key go together")
    if settings.http_ssl_client_ca is not None and settings.http_ssl_cert is None:
        parser.error("--http-ssl-client-ca needs --http-ssl-cert and --http-ssl-key")
    if (settings.grpc_target_client_cert is None) != (settings.grpc_target_client_key is None):
        parser.error("--grpc-target-client-cert and --grpc-target-client-key go together")
    target_tls = settings.grpc_target_ssl or settings.grpc_target_root_cert or settings.grpc_target_client_cert
    if target_tls and not gateway:
        parser.error("--grpc-target-* TLS flags are for gateway mode")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _flag_cell(option: Option) -> str:
    if option.kind == "bool":
        usage = "[=BOOL]"
    elif option.choices:
        usage = " " + "|".join(option.choices)
    else:
        usage = f" {option.metavar}"
    return ", ".join(_cell(f"`{flag}{usage}`") for flag in option.flags)


def _env_cell(option: Option) -> str:
    text = f"`{option.env}`"
    if option.repeatable:
        text += f" (`{option.separator}`-separated)"
    if option.env_aliases:
        text += "; also " + ", ".join(f"`{name}`" for name in option.env_aliases)
    return text


def flag_table_markdown() -> str:
    """The flag tables of docs/configuration.md, one per group, and the no-op Triton flags."""
    lines: list[str] = []
    for key, title in GROUPS.items():
        lines += [f"### {title}", "", "| flag | default | environment | meaning |", "|---|---|---|---|"]
        for option in OPTIONS:
            if option.group == key:
                lines.append(f"| {_flag_cell(option)} | {_cell(_default_text(option, '`'))} | "
                             f"{_env_cell(option)} | {_cell(option.help)} |")
        lines.append("")
    names = ", ".join(f"`--{name}`" for name in IGNORED_TRITON_FLAGS)
    lines.append(f"Triton tuning flags accepted as no-ops, each with a warning: {names}.")
    return "\n".join(lines) + "\n"


def with_flag_table(document: str) -> str:
    """``document`` with the text between ``FLAG_TABLE_BEGIN`` and ``FLAG_TABLE_END`` regenerated."""
    head, begin, rest = document.partition(FLAG_TABLE_BEGIN)
    _, end, tail = rest.partition(FLAG_TABLE_END)
    if not begin or not end:
        raise ValueError(f"no {FLAG_TABLE_BEGIN} ... {FLAG_TABLE_END} markers")
    return f"{head}{begin}\n{flag_table_markdown()}{end}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``v2server`` command."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    settings = parse_settings(args)
    # The log settings from here on (levels, format, --log-file); Tornado's own line per request (it costs more
    # than the request itself) only at --log-verbose > 0: --log-requests is the access log.
    from v2server.log_settings import configure_logging

    try:
        configure_logging(settings)
    except OSError as exc:
        log.error("--log-file %s: %s", settings.log_file, exc.strerror)
        return 1

    if settings.workers > 1:
        from v2server.workers import is_worker, supervise  # no torch: the supervisor loads no model

        if not is_worker(os.environ):
            try:
                return supervise(settings, args)
            except OSError as exc:  # the metrics port in use
                log.error("%s", exc)
                return 1

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


def triton_main(argv: Sequence[str] | None = None) -> int:
    """``tritonserver``: the same server behind Triton's command name, so KServe's stock runtime runs it.

    It also answers ServerMetadata as ``triton`` unless ``--server-name`` says otherwise: Triton's own
    example clients check that name (docs/protocol.md#interoperability).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    named = any(arg == "--server-name" or arg.startswith("--server-name=") for arg in args)
    option = next(option for option in OPTIONS if option.dest == "server_name")
    if not named and not any(name in os.environ for name in option.env_names):
        args = ["--server-name", "triton", *args]
    return main(args)
