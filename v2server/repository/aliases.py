"""Version aliases on disk: a JSON object mapping alias names to version numbers.

Where the file lives is :class:`AliasFiles`' one decision: ``<model>/aliases.json`` by default, or
``<state-dir>/aliases/<model>.json`` with ``--state-dir``, so that a read-only repository (a Kubernetes volume)
keeps its aliases elsewhere. A write that cannot happen raises ``NotWritable`` (409), naming the way out.

The file is replaced atomically (a temporary file in the same folder, then ``os.replace``), so a reader or a
crash sees the old mapping or the new one, never half of one. It is not part of the model: polling ignores it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from v2server.errors import InvalidRequest, NotWritable

__all__ = ["ALIASES_FILENAME", "AliasFiles", "check_alias_name", "read_aliases", "write_aliases"]

log = logging.getLogger(__name__)

ALIASES_FILENAME = "aliases.json"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")
_RESERVED = frozenset({"latest", "aliases"})


def check_alias_name(alias: str) -> None:
    """An alias must not read as a version number or a reserved selector."""
    if not _NAME.fullmatch(alias) or alias in _RESERVED:
        raise InvalidRequest(
            f"'{alias}' cannot be an alias: use a letter or '_' first, then letters, digits, '_', '.' or '-' "
            f"(not {' or '.join(sorted(_RESERVED))})"
        )


@dataclass(frozen=True, slots=True)
class AliasFiles:
    """Where each model's aliases are kept: in its folder, or, with ``state_dir``, in
    ``<state_dir>/aliases/<model>.json`` (the model name percent-encoded; a very long one hashed)."""

    state_dir: Path | None = None

    def path(self, name: str, model_dir: Path) -> Path:
        if self.state_dir is None:
            return model_dir / ALIASES_FILENAME
        encoded = urllib.parse.quote(name, safe="")
        if len(encoded) > 200:
            encoded = "sha256-" + hashlib.sha256(name.encode()).hexdigest()
        return self.state_dir / "aliases" / f"{encoded}.json"

    def read(self, name: str, model_dir: Path) -> dict[str, int]:
        """The aliases saved for model ``name`` loaded from ``model_dir`` (none when there is no file)."""
        return _read(self.path(name, model_dir))

    def write(self, name: str, model_dir: Path, aliases: Mapping[str, int]) -> None:
        """Save ``aliases`` of model ``name``; ``NotWritable`` when the file system refuses (nothing changed)."""
        path = self.path(name, model_dir)
        try:
            if self.state_dir is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            _write(path, aliases)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if self.state_dir is None:
                raise NotWritable(
                    f"cannot save the aliases of model '{name}' in {model_dir}: {reason} (a read-only model "
                    "repository needs --state-dir to keep aliases elsewhere)"
                ) from None
            raise NotWritable(
                f"cannot save the aliases of model '{name}' in the state folder {self.state_dir}: {reason}"
            ) from None


def read_aliases(model_dir: Path) -> dict[str, int]:
    """The aliases saved in ``model_dir`` (none when there is no file; a bad file is logged and ignored)."""
    return _read(model_dir / ALIASES_FILENAME)


def _read(path: Path) -> dict[str, int]:
    try:
        value = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    if not isinstance(value, dict):
        log.warning("ignoring %s: not a JSON object", path)
        return {}
    aliases = {}
    for alias, version in value.items():
        if type(version) is int and version > 0 and _NAME.fullmatch(alias) and alias not in _RESERVED:
            aliases[alias] = version
        else:
            log.warning("ignoring alias %r -> %r in %s", alias, version, path)
    return aliases


def write_aliases(model_dir: Path, aliases: Mapping[str, int]) -> None:
    """Replace ``model_dir/aliases.json`` atomically (the file is removed when there are no aliases)."""
    _write(model_dir / ALIASES_FILENAME, aliases)


def _write(path: Path, aliases: Mapping[str, int]) -> None:
    if not aliases:
        path.unlink(missing_ok=True)
        return
    descriptor, temporary = tempfile.mkstemp(prefix=".aliases-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(orjson.dumps(dict(sorted(aliases.items())), option=orjson.OPT_INDENT_2) + b"\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
