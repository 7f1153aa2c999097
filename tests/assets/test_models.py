"""TorchScript models that exercise the server's edges, built into a temporary repository per test session.

Built, not committed: scripting them takes a second and keeps binaries out of the repository.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Every V2 datatype that travels as a tensor (BYTES is covered by the bundled simple_identity model).
NUMERIC_DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BF16",
)


class Identity(torch.nn.Module):
    def forward(self, INPUT0: torch.Tensor) -> torch.Tensor:
        return INPUT0


class Failing(torch.nn.Module):
    """Raises for negative input, as a model with a bug or a guard would."""

    def forward(self, INPUT0: torch.Tensor) -> torch.Tensor:
        if bool((INPUT0 < 0).any()):
            raise RuntimeError("negative input is not allowed")
        return INPUT0 * 2


class Scaled(torch.nn.Module):
    """Multiplies by its version number, so tests can tell versions apart."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, INPUT0: torch.Tensor) -> torch.Tensor:
        return INPUT0 * self.factor


class DictOutput(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sum": a + b, "product": a * b}


class DictInput(torch.nn.Module):
    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return inputs["x"] - inputs["y"], inputs["x"] + inputs["y"]


class Positional(torch.nn.Module):
    """Argument names unrelated to the config: INPUT__<i> binds by index; OUTPUT__<i> maps tuple positions."""

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return first - second, first + second


class Reshaping(torch.nn.Module):
    """Sees [batch, 2, 2] for a [batch, 4] input and answers [batch, 2, 2] for a [batch, 4] output."""

    def forward(self, INPUT0: torch.Tensor) -> torch.Tensor:
        assert INPUT0.dim() == 3
        return INPUT0.transpose(1, 2).contiguous()


class StringLength(torch.nn.Module):
    def forward(self, INPUT0: list[str]) -> torch.Tensor:
        return torch.tensor([len(s) for s in INPUT0], dtype=torch.int64)


def _config(name: str, body: str) -> str:
    return f'name: "{name}"\nplatform: "pytorch_libtorch"\n{body}\ninstance_group [{{ kind: KIND_CPU }}]\n'


def _tensor(kind: str, name: str, data_type: str, dims: str, extra: str = "") -> str:
    return f'{kind} [{{ name: "{name}" data_type: {data_type} dims: {dims} {extra} }}]'


def _save(repo: Path, name: str, module: torch.nn.Module | None, config: str, version: int = 1) -> None:
    (repo / name / str(version)).mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)
    if module is not None:
        torch.jit.script(module).save(str(repo / name / str(version) / "model.pt"))


def build(repo: Path) -> Path:
    """Write every test model under ``repo``; return it."""
    for datatype in NUMERIC_DATATYPES:
        name = f"identity_{datatype.lower()}"
        body = "max_batch_size: 8\n" + "\n".join(
            [_tensor("input", "INPUT0", f"TYPE_{datatype}", "[ -1 ]"), _tensor("output", "OUTPUT0", f"TYPE_{datatype}", "[ -1 ]")]
        )
        _save(repo, name, Identity(), _config(name, body))
    fp32 = "max_batch_size: 8\n" + _tensor("input", "INPUT0", "TYPE_FP32", "[ -1 ]")
    _save(repo, "failing", Failing(), _config("failing", fp32 + "\n" + _tensor("output", "OUTPUT0", "TYPE_FP32", "[ -1 ]")))
    versions = _config(
        "versioned",
        "max_batch_size: 0\nversion_policy: { all { } }\n"
        + _tensor("input", "INPUT0", "TYPE_INT32", "[ 4 ]") + "\n" + _tensor("output", "OUTPUT0", "TYPE_INT32", "[ 4 ]"),
    )
    for version in (1, 2, 3):
        _save(repo, "versioned", Scaled(version), versions, version)
    latest_two = versions.replace('"versioned"', '"latest_two"').replace("all { }", "latest { num_versions: 2 }")
    for version in (1, 2, 3):
        _save(repo, "latest_two", Scaled(version), latest_two, version)
    ints = lambda kind, name: _tensor(kind, name, "TYPE_INT32", "[ 3 ]")  # noqa: E731
    _save(repo, "dict_output", DictOutput(), _config(
        "dict_output", "max_batch_size: 4\n" + "\n".join(
            [ints("input", "a"), ints("input", "b"), ints("output", "product"), ints("output", "sum")]
        )))
    _save(repo, "dict_input", DictInput(), _config(
        "dict_input", "max_batch_size: 4\n" + "\n".join(
            [ints("input", "x"), ints("input", "y"), ints("output", "OUTPUT__0"), ints("output", "OUTPUT__1")]
        )))
    _save(repo, "positional", Positional(), _config(
        "positional", "max_batch_size: 4\n" + "\n".join(
            [ints("input", "INPUT__0"), ints("input", "INPUT__1"), ints("output", "OUTPUT__1"),
             ints("output", "OUTPUT__0")]
        )))
    _save(repo, "reshaping", Reshaping(), _config(
        "reshaping", "max_batch_size: 4\n"
        + _tensor("input", "INPUT0", "TYPE_FP32", "[ 4 ]", "reshape: { shape: [ 2, 2 ] }") + "\n"
        + _tensor("output", "OUTPUT0", "TYPE_FP32", "[ 4 ]", "reshape: { shape: [ 2, 2 ] }")))
    _save(repo, "string_length", StringLength(), _config(
        "string_length", "max_batch_size: 0\n" + _tensor("input", "INPUT0", "TYPE_STRING", "[ -1 ]") + "\n"
        + _tensor("output", "OUTPUT0", "TYPE_INT64", "[ -1 ]")))
    return repo


def build_broken(repo: Path) -> Path:
    """Models that cannot load: the server must report them and keep serving the rest."""
    fp32 = "max_batch_size: 8\n" + _tensor("input", "INPUT0", "TYPE_FP32", "[ -1 ]")
    _save(repo, "healthy", Identity(), _config("healthy", fp32 + "\n" + _tensor("output", "OUTPUT0", "TYPE_FP32", "[ -1 ]")))
    _save(repo, "broken_config", None, 'name: "broken_config"\nmax_batch_size: "eight"\n')
    _save(repo, "missing_file", None, _config("missing_file", fp32 + "\n" + _tensor("output", "OUTPUT0", "TYPE_FP32", "[ -1 ]")))
    return repo


def save_queued_model(repository: Path, delay_us: int = 1_500_000) -> Path:
    """``queued``: ``Scaled(2)`` behind a dynamic batcher that holds a lone request ``delay_us`` for a preferred
    batch of 8, so a test can time a request out while it is queued, without a slow model."""
    model = repository / "queued"
    (model / "1").mkdir(parents=True)
    torch.jit.script(Scaled(2)).save(str(model / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    (model / "config.pbtxt").write_text(
        'name: "queued"\nplatform: "pytorch_libtorch"\nmax_batch_size: 8\n'
        'input [{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 1 ] }]\n'
        f"dynamic_batching {{ preferred_batch_size: [ 8 ] max_queue_delay_microseconds: {delay_us} }}\n"
        "instance_group [{ kind: KIND_CPU }]\n"
    )
    return model
