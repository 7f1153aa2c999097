"""Where models live on disk: model directories in one or more repositories, and their version folders."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from v2server._proto import model_config_pb2 as mc
from v2server.errors import ModelLoadError

__all__ = ["available_versions", "discover_models", "fingerprint", "select_versions"]


def discover_models(repositories: Iterable[Path]) -> dict[str, Path]:
    """Every model directory (a folder directly under a repository) by name.

    A name found in two repositories is an error, as in Triton: which one to serve would be a guess.
    """
    models: dict[str, Path] = {}
    for repository in repositories:
        if not repository.is_dir():
            raise ModelLoadError(f"model repository '{repository}' is not a directory")
        for entry in sorted(repository.iterdir()):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            if entry.name in models:
                raise ModelLoadError(f"model '{entry.name}' is in two repositories: {models[entry.name]} and {entry}")
            models[entry.name] = entry
    return models


def available_versions(model_dir: Path) -> list[int]:
    """Numeric version folders of a model, ascending; other folders are ignored as Triton does."""
    return sorted(
        int(entry.name) for entry in model_dir.iterdir() if entry.is_dir() and entry.name.isascii() and entry.name.isdigit()
    )


def select_versions(model_dir: Path, policy: mc.ModelVersionPolicy) -> list[int]:
    """The versions ``version_policy`` asks to serve, ascending."""
    versions = available_versions(model_dir)
    if policy.HasField("all"):
        chosen = versions
    elif policy.HasField("specific"):
        missing = [v for v in policy.specific.versions if v not in versions]
        if missing:
            raise ModelLoadError(f"{model_dir}: version_policy.specific lists versions {missing} with no folder")
        chosen = sorted(set(policy.specific.versions))
    else:
        count = policy.latest.num_versions or 1
        chosen = versions[-count:]
    if not chosen:
        raise ModelLoadError(f"{model_dir}: no version folder (a positive integer such as '1/') to serve")
    return chosen


def fingerprint(model_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """What polling compares between scans: every file's relative path, size and modification time.

    Version aliases (``aliases.json`` and its temporary files) are not part of the model and are left out.
    """
    entries = []
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and not (path.parent == model_dir and path.name.endswith(".json") and "aliases" in path.name):
            stat = path.stat()
            entries.append((str(path.relative_to(model_dir)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)
