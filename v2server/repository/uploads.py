"""Model files sent with a load request, written into a private folder whose path we choose.

The folder's path never depends on the model name or any other client value: ``mkdtemp`` makes the root and
the model folder inside it is always ``model``. Each ``<version>/<file>`` path is checked component by
component, files are created with ``O_EXCL | O_NOFOLLOW`` (nothing that already exists, no link, is ever
written through), and cleanup removes exactly the recorded root.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from v2server.errors import InvalidRequest
from v2server.names import check_relative_path

__all__ = ["MAX_UPLOAD_DEPTH", "MAX_UPLOAD_FILES", "Upload", "check_upload_paths", "write_upload"]

#: More files than this in one load request is refused before anything is written.
MAX_UPLOAD_FILES = 1024
#: ``<version>/<folder>/.../<file>``: at most this many components.
MAX_UPLOAD_DEPTH = 8
_PREFIX = "v2server-upload-"


@dataclass(frozen=True, slots=True)
class Upload:
    """A written upload: ``root`` is ours to delete; ``model_dir`` is the model folder inside it."""

    root: Path
    model_dir: Path

    def remove(self) -> None:
        """Delete the upload (exactly the root we created; links inside are removed, never followed)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def scrub(self, message: str) -> str:
        """``message`` without the private folder's path (a client has no business knowing it)."""
        return message.replace(str(self.model_dir), "<uploaded model>").replace(str(self.root), "<upload>")


def check_upload_paths(paths: list[str]) -> list[tuple[str, ...]]:
    """Each ``<version>/<file>`` path as its checked components; ``InvalidRequest`` names the first bad one."""
    if len(paths) > MAX_UPLOAD_FILES:
        raise InvalidRequest(f"a load request may carry at most {MAX_UPLOAD_FILES} files, got {len(paths)}")
    checked = []
    for relative in paths:
        field = f"file override 'file:{relative[:80]}'"
        parts = check_relative_path(relative, field, MAX_UPLOAD_DEPTH)
        if len(parts) < 2:
            raise InvalidRequest(f"{field}: must be a relative '<version>/<file>' path")
        if not (parts[0].isascii() and parts[0].isdigit() and int(parts[0]) > 0):
            raise InvalidRequest(f"{field}: must start with a version folder (a positive integer such as '1/')")
        checked.append(parts)
    return checked


def write_upload(files: Mapping[str, bytes]) -> Upload:
    """Write ``files`` (``<version>/<file>`` -> contents) into a fresh private folder; blocking file I/O."""
    components = check_upload_paths(list(files))
    root = Path(tempfile.mkdtemp(prefix=_PREFIX))
    upload = Upload(root, root / "model")
    try:
        upload.model_dir.mkdir(mode=0o700)
        for parts, content in zip(components, files.values(), strict=True):
            target = upload.model_dir.joinpath(*parts)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(content)
    except OSError as exc:  # '1/a' and '1/a/b' in one request: a file where a folder must go
        upload.remove()
        raise InvalidRequest(f"file overrides conflict: {exc.strerror} ({upload.scrub(str(exc.filename))})") from None
    except BaseException:
        upload.remove()
        raise
    return upload
