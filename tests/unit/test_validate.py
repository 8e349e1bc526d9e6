"""What invoke build refuses in seconds because a later stage of the build would fail on it."""

from __future__ import annotations

import pytest

from torchkiln import inputs, settings
from torchkiln.errors import UserError


def values(**changed: str) -> dict[str, str]:
    return settings.resolve(changed, {}, {})


@pytest.mark.parametrize("mode", ["source", "torch-wheel"])
def test_a_cca_that_only_pytorchs_cmake_takes_is_refused_before_the_build(mode: str) -> None:
    with pytest.raises(UserError, match=r"CCA '8.8'.*write 8.7"):
        inputs.validate("train", values(CCA="8.6;8.8", BUILD_MODE=mode))


def test_official_wheels_compile_nothing_and_take_any_cca_cuda_builds() -> None:
    inputs.validate("train", values(CCA="8.8", BUILD_MODE="wheels"))


def test_extensions_in_wheels_mode_are_held_to_the_same_rule() -> None:
    with pytest.raises(UserError, match=r"torch\.utils\.cpp_extension"):
        inputs.validate("train", values(CCA="8.8", BUILD_MODE="wheels"), extensions=True)
