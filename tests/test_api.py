"""The public API: every name ``torchshrink`` exports resolves (its submodules load lazily)."""

from __future__ import annotations

import pytest

import torchshrink as ts


@pytest.mark.parametrize("name", ts.__all__)
def test_every_public_name_resolves(name):
    assert getattr(ts, name) is not None


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'transforms'"):
        ts.transforms  # noqa: B018 - the old module name must not linger
