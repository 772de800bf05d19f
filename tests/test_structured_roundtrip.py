"""A pruned model whose modules check their state-dict version on load (torchvision's MNASNet
does) round-trips through a .tsk file: the versions travel in the header as plain JSON."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import resign
from torchshrink.format import load, read_tsk, save
from torchshrink.format.errors import TskFormatError
from torchshrink.prune.filters import filter_prune


class Versioned(nn.Module):
    """Like MNASNet: ``_version = 2`` and a loader that refuses any other version."""

    _version = 2

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.fc = nn.Conv2d(8, 6, 3), nn.Linear(6, 3)
        self.loaded_versions: list[object] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return self.fc(x.mean((2, 3)))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args) -> None:  # noqa: ANN001
        self.loaded_versions.append(local_metadata.get("version"))
        if local_metadata.get("version") != 2:
            raise ValueError(f"version should be 2, not {local_metadata.get('version')}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


def test_module_versions_are_stored_and_passed_back(tmp_path) -> None:
    torch.manual_seed(0)
    model = filter_prune(Versioned(), (1, 6, 6), {"conv1": 0.5})
    save(model, tmp_path / "m.tsk")
    f = read_tsk(tmp_path / "m.tsk")
    assert f.versions == {"": 2, "bn": 2}  # the versions that are not nn.Module's default 1
    fresh = filter_prune(Versioned(), (1, 6, 6), {"conv1": 0.5})
    loaded = load(f, model=fresh, dense=True)
    assert loaded.loaded_versions == [2]
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_files_without_versions_load_and_bad_versions_are_refused(tmp_path) -> None:
    torch.manual_seed(0)
    save(Versioned(), tmp_path / "m.tsk")
    resign(tmp_path / "m.tsk", lambda doc, blobs: doc["architecture"].pop("versions"))  # a file from before
    assert read_tsk(tmp_path / "m.tsk").versions is None
    assert load(tmp_path / "m.tsk", model=Versioned(), dense=True).loaded_versions == [2]  # the model's own
    resign(tmp_path / "m.tsk", lambda doc, blobs: doc["architecture"].update(versions={"bn": "2"}))
    with pytest.raises(TskFormatError, match="'versions' must map module names to integers"):
        read_tsk(tmp_path / "m.tsk")
