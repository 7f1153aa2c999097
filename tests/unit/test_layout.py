"""Model directories across repositories, numeric version folders and version policies."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from v2server._proto import model_config_pb2 as mc
from v2server.errors import ModelLoadError
from v2server.repository.layout import available_versions, discover_models, select_versions


def _model(root: Path, *entries: str) -> Path:
    """A model directory with version (or other) folders; names ending in '.file' are files."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        if entry.endswith(".file"):
            (root / entry.removesuffix(".file")).write_text("")
        else:
            (root / entry).mkdir()
    return root


def _policy(text: str) -> mc.ModelVersionPolicy:
    return text_format.Parse(text, mc.ModelVersionPolicy())


def test_only_numeric_folders_are_versions(tmp_path: Path) -> None:
    model = _model(tmp_path / "m", "10", "2", "1", "latest", "v3", "1.5", "-4", ".7", "5.file", "config.pbtxt.file")
    assert available_versions(model) == [1, 2, 10]


def test_folder_of_unicode_digits_is_not_a_version(tmp_path: Path) -> None:
    model = _model(tmp_path / "m", "1", "1²")
    assert available_versions(model) == [1]


@pytest.mark.parametrize(
    ("policy", "chosen"),
    [
        ("", [10]),
        ("latest { num_versions: 1 }", [10]),
        ("latest { num_versions: 2 }", [3, 10]),
        ("latest { num_versions: 9 }", [1, 3, 10]),
        ("all { }", [1, 3, 10]),
        ("specific { versions: [ 3 ] }", [3]),
        ("specific { versions: [ 10, 1, 10 ] }", [1, 10]),
    ],
    ids=["default", "latest-1", "latest-2", "latest-more-than-there-are", "all", "specific", "specific-unordered"],
)
def test_version_policies(tmp_path: Path, policy: str, chosen: list[int]) -> None:
    assert select_versions(_model(tmp_path / "m", "1", "3", "10", "notes"), _policy(policy)) == chosen


def test_specific_version_without_a_folder(tmp_path: Path) -> None:
    model = _model(tmp_path / "m", "1", "3")
    with pytest.raises(ModelLoadError) as caught:
        select_versions(model, _policy("specific { versions: [ 1, 2, 4 ] }"))
    assert caught.value.message == f"{model}: version_policy.specific lists versions [2, 4] with no folder"


@pytest.mark.parametrize("policy", ["", "all { }", "latest { num_versions: 3 }"])
def test_no_version_folder(tmp_path: Path, policy: str) -> None:
    model = _model(tmp_path / "m", "best", "1.file")
    with pytest.raises(ModelLoadError, match="no version folder .* to serve"):
        select_versions(model, _policy(policy))


def test_discover_models_across_repositories(tmp_path: Path) -> None:
    first = _model(tmp_path / "a", "alpha", "beta", ".hidden", "README.md.file")
    second = _model(tmp_path / "b", "gamma")
    assert discover_models([first, second]) == {
        "alpha": first / "alpha",
        "beta": first / "beta",
        "gamma": second / "gamma",
    }


def test_model_in_two_repositories_is_an_error(tmp_path: Path) -> None:
    first = _model(tmp_path / "a", "alpha", "shared")
    second = _model(tmp_path / "b", "shared")
    with pytest.raises(ModelLoadError) as caught:
        discover_models([first, second])
    assert caught.value.message == f"model 'shared' is in two repositories: {first / 'shared'} and {second / 'shared'}"


def test_repository_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=f"model repository '{tmp_path / 'nowhere'}' is not a directory"):
        discover_models([tmp_path / "nowhere"])
