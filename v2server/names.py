"""The one check of names and file names that come from clients (design rule 14: they are hostile).

A model name reaches log lines, status tables, aliases and (for uploads) nothing on disk; a file name from a
client or a config reaches the file system, so it must be one plain path component. Both checks run before
any other work on the request and name the rule that failed.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from v2server.errors import InvalidRequest

__all__ = ["MAX_NAME_BYTES", "check_client_file", "check_file_name", "check_model_name", "check_relative_path"]

#: Longest accepted name, in UTF-8 bytes (a file name's limit on common file systems).
MAX_NAME_BYTES = 255


def _problem(name: str) -> str | None:
    """What is wrong with ``name`` as one path component, or None."""
    if not name:
        return "must not be empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "must be valid UTF-8"
    if size > MAX_NAME_BYTES:
        return f"must be at most {MAX_NAME_BYTES} bytes long (got {size})"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if "/" in name or "\\" in name:
        return "must not contain '/' or '\\'"
    if any(unicodedata.category(char) == "Cc" for char in name):
        return "must not contain NUL or other control characters"
    return None


def _shown(name: str) -> str:
    """A bounded, printable rendering of a hostile name for an error message."""
    return repr(name[:64] + ("..." if len(name) > 64 else ""))


def check_model_name(name: str) -> str:
    """Return ``name`` if it can be a model name, else raise ``InvalidRequest`` naming the rule."""
    problem = _problem(name)
    if problem is not None:
        raise InvalidRequest(f"invalid model name {_shown(name)}: a model name {problem}")
    return name


def check_file_name(name: str, field: str) -> str:
    """Return ``name`` if it is one plain file name (no folder part), else raise ``InvalidRequest``.

    ``field`` names where the value came from (``default_model_filename``, ``file:1/model.pt``).
    """
    problem = _problem(name)
    if problem is not None:
        raise InvalidRequest(f"{field}: {_shown(name)} is not a plain file name: it {problem}")
    return name


def check_relative_path(path: str, field: str, max_parts: int = 8) -> tuple[str, ...]:
    """``a/b/c`` as its components, each a plain file name (so the path stays inside the folder it is
    joined to: no absolute path, no ``..``); ``InvalidRequest`` otherwise."""
    parts = tuple(path.split("/"))
    if len(parts) > max_parts:
        raise InvalidRequest(f"{field}: {_shown(path)} has more than {max_parts} path components")
    for part in parts:
        problem = _problem(part)
        if problem is not None:
            raise InvalidRequest(
                f"{field}: {_shown(path)} must be a relative path inside its folder; its component "
                f"{_shown(part)} {problem}"
            )
    return parts


def check_client_file(path: str, folder: Path | None, field: str, flag: str = "--api-file-dir") -> Path:
    """The file a client asks the server to write (a log or trace file over the settings APIs), resolved.

    Only inside ``folder``, the one the operator allowed with ``flag`` (None: no client may choose a file): a
    relative path is taken below it, component by component; an absolute one must lead into it once its links
    are followed. ``InvalidRequest`` otherwise, naming ``field``.
    """
    if folder is None:
        raise InvalidRequest(
            f"{field}: this server does not let clients choose the files it writes; its operator can allow a "
            f"folder for them with {flag}"
        )
    candidate = Path(path)
    if candidate.is_absolute():
        for part in candidate.parts[1:]:
            problem = _problem(part)
            if problem is not None:
                raise InvalidRequest(
                    f"{field}: {_shown(path)} is not a usable path: its component {_shown(part)} {problem}"
                )
    else:
        candidate = folder.joinpath(*check_relative_path(path, field, max_parts=16))
    allowed = folder.resolve()
    resolved = candidate.resolve()
    if resolved == allowed or not resolved.is_relative_to(allowed):
        raise InvalidRequest(f"{field}: {_shown(path)} is not a file inside the folder {flag} allows ({folder})")
    return resolved
