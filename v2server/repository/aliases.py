"""Version aliases on disk: ``<model>/aliases.json`` maps alias names to version numbers.

The file is replaced atomically (a temporary file in the same folder, then ``os.replace``), so a reader or a
crash sees the old mapping or the new one, never half of one. It is not part of the model: polling ignores it.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import orjson

from v2server.errors import InvalidRequest

__all__ = ["ALIASES_FILENAME", "check_alias_name", "read_aliases", "write_aliases"]

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


def read_aliases(model_dir: Path) -> dict[str, int]:
    """The aliases saved in ``model_dir`` (none when there is no file; a bad file is logged and ignored)."""
    path = model_dir / ALIASES_FILENAME
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
    path = model_dir / ALIASES_FILENAME
    if not aliases:
        path.unlink(missing_ok=True)
        return
    descriptor, temporary = tempfile.mkstemp(prefix=".aliases-", suffix=".json", dir=model_dir)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(orjson.dumps(dict(sorted(aliases.items())), option=orjson.OPT_INDENT_2) + b"\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
