"""The server's log: Triton's logging extension (``LogSettings``, ``/v2/logging``) and its ``--log-*`` flags.

Six settings, as Triton names them: ``log_info``, ``log_warning``, ``log_error`` (whether lines of that
severity are written), ``log_verbose_level`` (above 0: debug lines too, Tornado's line per request among
them), ``log_format`` (``default``, or ``ISO8601``: lines begin with an ISO 8601 UTC time) and ``log_file``
(where the lines go; empty: standard error). A change applies at once, to every logger of the process.

The command (``cli.main``) hands the process's log to this module (``configure_logging``): one handler, on
standard error or ``--log-file``, with the format and a severity gate that follow the settings. A server run
inside another program (the tests) has no such handler; there a change sets the levels (and opens a file
handler when ``log_file`` is set) without touching the host program's handlers.

A ``log_file`` from a client must lie in ``--api-file-dir`` (``names.check_client_file``); without that flag
the API cannot move the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from v2server._proto import grpc_service_pb2 as pb
from v2server.errors import InvalidRequest
from v2server.names import check_client_file
from v2server.settings import Settings

__all__ = ["LOG_SETTINGS", "LogControl", "LogState", "configure_logging", "log_changes", "log_response"]

LogFormat = Literal["default", "ISO8601"]

#: each setting and the ``LogSettingsRequest.SettingValue`` field that carries it
LOG_SETTINGS: dict[str, str] = {
    "log_file": "string_param",
    "log_info": "bool_param",
    "log_warning": "bool_param",
    "log_error": "bool_param",
    "log_verbose_level": "uint32_param",
    "log_format": "string_param",
}

_FORMATS: dict[str, tuple[str, str | None]] = {
    "default": ("%(asctime)s %(levelname)s %(name)s: %(message)s", None),
    "ISO8601": ("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ"),
}


@dataclass(frozen=True, slots=True)
class LogState:
    """The log settings in force."""

    file: str = ""
    info: bool = True
    warning: bool = True
    error: bool = True
    verbose: int = 0
    format: LogFormat = "default"

    @classmethod
    def from_settings(cls, settings: Settings) -> LogState:
        return cls(
            file=str(settings.log_file) if settings.log_file is not None else "",
            info=settings.log_info,
            warning=settings.log_warning,
            error=settings.log_error,
            verbose=max(settings.log_verbose, 0),
            format="ISO8601" if settings.log_format == "ISO8601" else "default",
        )

    def lowest_level(self) -> int:
        """The lowest severity written (above CRITICAL when none is)."""
        for level, on in ((logging.DEBUG, self.verbose > 0), (logging.INFO, self.info),
                          (logging.WARNING, self.warning), (logging.ERROR, self.error)):
            if on:
                return level
        return logging.CRITICAL + 1


class _Gate(logging.Filter):
    """Drops the lines of a severity that is off (levels alone cannot say "errors but not warnings")."""

    state = LogState()

    def filter(self, record: logging.LogRecord) -> bool:
        level = record.levelno
        if level < logging.INFO:
            return self.state.verbose > 0
        if level < logging.WARNING:
            return self.state.info
        if level < logging.ERROR:
            return self.state.warning
        return self.state.error


class _Output:
    """The process's log handlers that this module owns (logging itself is process-wide)."""

    def __init__(self) -> None:
        self.gate = _Gate()
        #: standard error, once ``configure_logging`` took the process's log over
        self.console: logging.Handler | None = None
        self.file: logging.FileHandler | None = None

    def apply(self, state: LogState, opened: logging.FileHandler | None = None) -> None:
        """Make ``state`` the log's; ``opened`` is the handler of a new ``state.file``."""
        root = logging.getLogger()
        root.setLevel(state.lowest_level())
        logging.getLogger("tornado.access").setLevel(logging.NOTSET if state.verbose > 0 else logging.WARNING)
        self.gate.state = state
        if not state.file or opened is not None:
            if self.file is not None:
                root.removeHandler(self.file)
                self.file.close()
            self.file = opened
        if self.console is not None:
            if self.file is None and self.console not in root.handlers:
                root.addHandler(self.console)
            elif self.file is not None:
                root.removeHandler(self.console)
        fmt, datefmt = _FORMATS[state.format]
        formatter = logging.Formatter(fmt, datefmt)
        if datefmt is not None:
            formatter.converter = time.gmtime
        for handler in (self.console, self.file):
            if handler is not None:
                handler.setFormatter(formatter)
                if self.gate not in handler.filters:
                    handler.addFilter(self.gate)
        if self.file is not None and self.file not in root.handlers:
            root.addHandler(self.file)


_OUTPUT = _Output()


def configure_logging(settings: Settings) -> None:
    """Take the process's log over (the ``v2server`` command): one handler, on standard error or
    ``--log-file``, following the log settings from now on.

    Raises:
        OSError: ``--log-file`` cannot be opened.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    _OUTPUT.console = logging.StreamHandler()
    state = LogState.from_settings(settings)
    _OUTPUT.apply(state, _open(Path(state.file)) if state.file else None)


def _open(path: Path) -> logging.FileHandler:
    return logging.FileHandler(path, encoding="utf-8")


class LogControl:
    """The log settings of a server: read and changed through the logging API."""

    def __init__(self, state: LogState = LogState(), file_dir: Path | None = None) -> None:  # noqa: B008
        """``state``: the settings the process's log was configured with; ``file_dir``: where clients may put
        the log (``--api-file-dir``)."""
        self._state = state
        self._file_dir = file_dir

    @property
    def state(self) -> LogState:
        return self._state

    def update(self, changes: Mapping[str, Any]) -> LogState:
        """Apply ``changes`` (setting -> its new value, already of its kind: ``log_changes``) at once.

        Raises:
            InvalidRequest: a value that is not valid, naming the setting; nothing changes then.
        """
        state = self._state
        opened: logging.FileHandler | None = None
        for name, value in changes.items():
            if name == "log_format":
                if value not in _FORMATS:
                    raise InvalidRequest(f"log_format: expected 'default' or 'ISO8601', got '{str(value)[:64]}'")
                state = replace(state, format=value)
            elif name == "log_verbose_level":
                state = replace(state, verbose=value)
            elif name in ("log_info", "log_warning", "log_error"):
                state = replace(state, **{name.removeprefix("log_"): value})
        if "log_file" in changes and changes["log_file"] != self._state.file:
            text = changes["log_file"]
            if text:
                path = check_client_file(text, self._file_dir, "log_file")
                try:
                    opened = _open(path)
                except OSError as exc:
                    raise InvalidRequest(f"log_file: cannot open '{text[:256]}': {exc.strerror}") from None
                state = replace(state, file=str(path))
            else:
                state = replace(state, file="")
        _OUTPUT.apply(state, opened)
        self._state = state
        return state


def log_changes(request: pb.LogSettingsRequest) -> dict[str, Any]:
    """The changes a ``LogSettingsRequest`` asks for, each checked for its kind; a setting with no value is
    left as it is (tritonclient sends one for a setting given as None)."""
    changes: dict[str, Any] = {}
    for name, setting in request.settings.items():
        kind = LOG_SETTINGS.get(name)
        if kind is None:
            raise InvalidRequest(f"unknown log setting '{name}' (known: {', '.join(LOG_SETTINGS)})")
        given = setting.WhichOneof("parameter_choice")
        if given is None:
            continue
        if given != kind:
            wanted = {"string_param": "a string", "bool_param": "a boolean", "uint32_param": "an unsigned integer"}
            raise InvalidRequest(f"{name}: expected {wanted[kind]}, got {given.removesuffix('_param')}")
        changes[name] = getattr(setting, given)
    return changes


def log_response(state: LogState) -> pb.LogSettingsResponse:
    """``state`` as the ``LogSettingsResponse`` both transports answer."""
    response = pb.LogSettingsResponse()
    response.settings["log_file"].string_param = state.file
    response.settings["log_info"].bool_param = state.info
    response.settings["log_warning"].bool_param = state.warning
    response.settings["log_error"].bool_param = state.error
    response.settings["log_verbose_level"].uint32_param = state.verbose
    response.settings["log_format"].string_param = state.format
    return response
