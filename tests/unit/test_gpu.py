"""Host GPU facts: detected CCA, driver minimums, torch/vision/audio matching (the CCA grammar
itself is in test_archs)."""

import pytest

from torchkiln import gpu
from torchkiln.errors import UserError


def test_detected_cca_unique_and_sorted():
    assert gpu.detected_cca("9.0\n8.6\n9.0\n\n") == "8.6;9.0"
    assert gpu.detected_cca("") == ""


@pytest.mark.parametrize(
    ("driver", "cuda", "ok"),
    [
        ("580.65.06", "13.0.2", True),
        ("580.159.04", "13.0.0", True),
        ("575.57.08", "13.0.0", False),
        ("535.104.05", "12.4.1", True),
        ("520.61.05", "12.0.0", False),
        ("450.80.02", "11.8.0", True),
    ],
)
def test_driver_minimums(driver, cuda, ok):
    assert gpu.driver_supports_cuda(driver, cuda) is ok


def test_unknown_cuda_major_is_refused():
    with pytest.raises(UserError, match=r"CUDA_VERSION '10\.2\.0'"):
        gpu.min_driver_for_cuda("10.2.0")


@pytest.mark.parametrize(
    ("torch", "vision", "audio"),
    [("2.14.1", "0.29.1", ""), ("2.11.0", "0.26.0", "2.11.0"), ("2.9.1", "0.24.1", "2.9.1")],
)
def test_matching_versions(torch, vision, audio):
    assert gpu.matching_torchvision(torch) == vision
    assert gpu.resolve_versions(torch).torchvision == vision
    if audio:  # torchaudio's releases equal torch's, up to its last one
        assert gpu.resolve_versions(torch, torchaudio=audio).torchaudio == audio


def test_torch_without_torchvision_release_is_refused():
    with pytest.raises(UserError, match=r"torch 2\.15\.0 has no torchvision.*0\.30"):
        gpu.resolve_versions("2.15.0")


def test_forced_mismatch_names_the_matching_pair():
    with pytest.raises(UserError, match=r"torch 2\.14\.1 with torchvision 0\.29"):
        gpu.resolve_versions("2.14.1", torchvision="0.28.0")


def test_torchaudio_past_its_last_release_is_refused():
    with pytest.raises(UserError, match="maintenance"):
        gpu.resolve_versions("2.14.1", torchaudio="2.14.1")
    with pytest.raises(UserError, match="does not match"):
        gpu.resolve_versions("2.11.0", torchaudio="2.10.0")


def test_newer_torchvision_patch_than_torch_patch():
    assert gpu.resolve_versions("2.14.0", torchvision="0.29.2").torchvision == "0.29.2"


@pytest.mark.parametrize("torch", ["latest", "2.14", "v3.0.0"])
def test_torch_that_is_no_release_is_one_line(torch):
    with pytest.raises(UserError, match=f"PYTORCH_VERSION '{torch}' is not a torch 2.x release"):
        gpu.resolve_versions(torch)


def test_version_error_is_a_user_error():
    with pytest.raises(UserError, match="'abc' is not a version"):
        gpu.version_tuple("abc")


@pytest.mark.parametrize(
    ("cca", "words"),
    [
        ("8.8", "write 8.7 (its code runs on 8.8 GPUs)"),
        ("10.0f", "no family-specific targets; write 10.0"),
    ],
)
def test_extensions_refuse_what_cpp_extension_cannot_build(cca: str, words: str) -> None:
    problem = gpu.cpp_extension_problem(gpu.parse_cca(cca)[0])
    assert problem and words in problem


@pytest.mark.parametrize("cca", ["8.6", "9.0a", "12.0+PTX", "10.3"])
def test_extensions_take_what_cpp_extension_builds(cca: str) -> None:
    assert gpu.cpp_extension_problem(gpu.parse_cca(cca)[0]) is None
