"""The official wheel's requirements: markers, pins, features, and the parity report."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from torchkiln.inimage import torchreqs

# The Requires-Dist of the official torch 2.14.1 CUDA 13.0 wheel, as published.
REQUIRES = [
    "filelock",
    "typing-extensions>=4.10.0",
    "cuda-toolkit[cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,nvrtc,nvtx]"
    '==13.0.3; platform_system == "Linux"',
    'cuda-bindings<14,>=13.0.3; platform_system == "Linux" and python_version < "3.15"',
    'nvidia-cudnn-cu13==9.24.0.43; platform_system == "Linux"',
    'nvidia-cusparselt-cu13==0.8.1; platform_system == "Linux"',
    'nvidia-nccl-cu13==2.30.7; platform_system == "Linux"',
    'nvidia-nvshmem-cu13==3.4.5; platform_system == "Linux"',
    'triton~=3.8.0; platform_system == "Linux" and python_version < "3.15"',
    'optree>=0.13.0; extra == "optree"',
]
LINUX_312 = {**torchreqs.marker_environment((3, 12)), "platform_system": "Linux"}


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ('platform_system == "Linux"', True),
        ('platform_system == "Windows"', False),
        ('python_version < "3.15"', True),
        ('python_version >= "3.13"', False),
        ('platform_system == "Linux" and python_version < "3.15"', True),
        ('platform_system == "Darwin" or python_version == "3.12"', True),
        ('(platform_system == "Darwin" or python_version == "3.12") and extra == "x"', False),
        ('extra == "optree"', False),
        ("", True),
    ],
)
def test_markers(marker: str, expected: bool) -> None:
    assert torchreqs.evaluate_marker(marker, LINUX_312) is expected


def test_an_unknown_marker_name_is_refused() -> None:
    with pytest.raises(torchreqs.MarkerError):
        torchreqs.evaluate_marker('implementation_version == "3"', LINUX_312)


def test_requirement_parts() -> None:
    requirement = torchreqs.parse_requirement(REQUIRES[2])
    assert requirement.name == "cuda-toolkit"
    assert "cufile" in requirement.extras and "cupti" in requirement.extras
    assert requirement.spec.endswith("==13.0.3") and requirement.marker.startswith("platform")


def wheel_with(tmp_path: Path, requires: list[str]) -> Path:
    wheel = tmp_path / "torch-2.14.1-cp312-cp312-manylinux_2_28_x86_64.whl"
    metadata = "Metadata-Version: 2.1\nName: torch\nVersion: 2.14.1\n" + "".join(
        f"Requires-Dist: {line}\n" for line in requires
    )
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("torch-2.14.1.dist-info/METADATA", metadata)
    return wheel


def test_the_official_pins_features_and_declarations(tmp_path: Path) -> None:
    data = torchreqs.official(wheel_with(tmp_path, REQUIRES), python=(3, 12))
    assert data["version"] == "2.14.1"
    assert "nvidia-cudnn-cu13==9.24.0.43" in data["cuda"]
    assert "nvidia-nccl-cu13==2.30.7" in data["cuda"]
    assert not any(line.startswith(("filelock", "triton")) for line in data["cuda"])
    # The built torch declares the NVIDIA wheels and Triton, markers kept.
    assert any(line.startswith("triton~=3.8.0;") for line in data["declare"])
    assert all("filelock" not in line for line in data["declare"])
    assert set(data["features"]) >= {
        "USE_CUDNN", "USE_NCCL", "USE_CUSPARSELT", "USE_NVSHMEM", "USE_CUFILE", "USE_KINETO",
        "USE_FLASH_ATTENTION", "USE_MEM_EFF_ATTENTION",
    }  # fmt: skip


def test_a_cpu_wheel_has_no_cuda_features(tmp_path: Path) -> None:
    data = torchreqs.official(wheel_with(tmp_path, REQUIRES[:2]), python=(3, 12))
    assert data["cuda"] == [] and data["features"] == {}


def test_a_pip_report_is_read_like_the_wheel(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    metadata = {"name": "torch", "version": "2.14.1", "requires_dist": REQUIRES}
    report.write_text(json.dumps({"install": [{"metadata": metadata}]}))
    assert torchreqs.read_requires(report) == ("2.14.1", REQUIRES)


SUMMARY = """
-- ******** Summary ********
--   USE_CUDA              : ON
--     USE_CUDNN           : ON
--     USE_CUSPARSELT      : OFF
--     USE_CUFILE          : ON
--     USE_FLASH_ATTENTION : ON
--     USE_MEM_EFF_ATTENTION : ON
--   USE_KINETO            : ON
--   USE_NCCL              : ON
--   USE_DISTRIBUTED       : ON
"""


def test_parity_names_each_lost_feature_with_its_fix(tmp_path: Path) -> None:
    expected = torchreqs.official(wheel_with(tmp_path, REQUIRES), python=(3, 12))["features"]
    lost = {key: (value, fix) for key, value, fix in torchreqs.parity(SUMMARY, expected)}
    assert lost["USE_CUSPARSELT"] == ("OFF", "cuSPARSELt (nvidia-cusparselt-cu13)")
    assert lost["USE_NVSHMEM"][0] == "absent"
    assert set(lost) == {"USE_CUSPARSELT", "USE_NVSHMEM"}


def test_no_summary_no_verdict() -> None:
    assert torchreqs.parity("no cmake here", {"USE_CUDNN": "cuDNN"}) == []


def test_the_cli_prints_parity_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    official = tmp_path / "official.json"
    assert torchreqs.main(["official", str(wheel_with(tmp_path, REQUIRES)), str(official)]) == 0
    log = tmp_path / "build.log"
    log.write_text(SUMMARY)
    assert torchreqs.main(["parity", str(log), str(official)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "parity" in line]
    assert any("lost USE_CUSPARSELT=OFF" in line for line in lines)
