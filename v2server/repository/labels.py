"""Classification labels: the files an output's ``label_filename`` names, read once when a model loads.

A label file holds one label per line, the line's number being the class index (Triton's ``LabelProvider``).
Its name comes from ``config.pbtxt`` or from a client's config override, so it is a relative path checked
component by component (``complete_config``) and, once the links on the way are followed, still inside the
model's folder.
"""

from __future__ import annotations

from pathlib import Path

from v2server._proto import model_config_pb2 as mc
from v2server.errors import ModelLoadError

__all__ = ["MAX_LABELS_BYTES", "read_labels"]

#: the largest label file read (a million labels of a dozen characters fit)
MAX_LABELS_BYTES = 16 * 2**20


def read_labels(config: mc.ModelConfig, model_dir: Path) -> dict[str, tuple[str, ...]]:
    """Output name -> its labels, for every output with a ``label_filename`` (blocking: reads files).

    Raises:
        ModelLoadError: a label file is missing, too large, not UTF-8, or outside the model's folder.
    """
    labels: dict[str, tuple[str, ...]] = {}
    folder = model_dir.resolve()
    for output in config.output:
        if not output.label_filename:
            continue
        where = f"{model_dir / 'config.pbtxt'}: output '{output.name}': label_filename '{output.label_filename}'"
        path = folder.joinpath(*output.label_filename.split("/")).resolve()
        if not path.is_relative_to(folder):
            raise ModelLoadError(f"{where} leads outside the model's folder")
        try:
            if path.stat().st_size > MAX_LABELS_BYTES:
                raise ModelLoadError(f"{where} is larger than {MAX_LABELS_BYTES} bytes")
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ModelLoadError(f"{where} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{where} cannot be read: {exc}") from None
        lines = text.removesuffix("\n").split("\n") if text else []
        labels[output.name] = tuple(line.removesuffix("\r") for line in lines)
    return labels
