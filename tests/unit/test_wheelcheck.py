"""A freshly built torch wheel is checked in its build step: a CUDA build, with the archs asked."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from torchkiln.inimage import wheelcheck

FATBINS = Path(__file__).resolve().parents[1] / "fixtures" / "fatbin"


def torch_wheel(tmp_path: Path, cuda: str | None, library: str | None) -> Path:
    wheel = tmp_path / "torch-2.14.1-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("torch/version.py", f"__version__ = '2.14.1'\ncuda = {cuda!r}\n")
        if library:
            archive.write(FATBINS / library, "torch/lib/libtorch_cuda.so")
    return wheel


def test_the_archs_asked_for_pass(tmp_path: Path) -> None:
    text = wheelcheck.check(torch_wheel(tmp_path, "13.0", "sm86_sm90.so"), True, "8.6;9.0")
    assert text.startswith("CUDA 13.0, libtorch_cuda.so holds sm_86 sm_90")


def test_more_than_asked_passes(tmp_path: Path) -> None:
    assert wheelcheck.check(torch_wheel(tmp_path, "13.0", "sm86_sm90.so"), True, "9.0")


@pytest.mark.parametrize(
    ("cuda", "library", "archs", "words"),
    [
        (None, None, "8.6", "a CPU-only torch although USE_CUDA=1"),
        ("13.0", "sm86.so", "8.6;9.0", "lacks sm_90"),
        ("13.0", "sm90_ptx90.so", "9.0a", "lacks sm_90a"),
        ("13.0", None, "8.6", "without torch/lib/libtorch_cuda.so"),
    ],
)
def test_what_was_not_asked_for_fails_in_one_line(
    tmp_path: Path, cuda: str | None, library: str | None, archs: str, words: str
) -> None:
    with pytest.raises(wheelcheck.WheelProblem, match=words):
        wheelcheck.check(torch_wheel(tmp_path, cuda, library), True, archs)


def test_a_cpu_build_must_be_one(tmp_path: Path) -> None:
    assert wheelcheck.check(torch_wheel(tmp_path, None, None), False, "").startswith("CPU build")
    with pytest.raises(wheelcheck.WheelProblem, match="although USE_CUDA=0"):
        wheelcheck.check(torch_wheel(tmp_path, "13.0", "sm86.so"), False, "")


def test_the_cli_ends_with_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("USE_CUDA", "1")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert wheelcheck.main([str(torch_wheel(tmp_path, "13.0", "sm86.so"))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR: torch wheel torch-2.14.1")


def test_cpp_extension_archs_are_read_from_the_installed_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    utils = tmp_path / "torch" / "utils"
    utils.mkdir(parents=True)
    (tmp_path / "torch" / "__init__.py").write_text("")
    (utils / "cpp_extension.py").write_text(
        "supported_arches = ['8.0', '8.6', '8.7', '8.9',\n    '9.0', '9.0a']\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert wheelcheck.cpp_extension_refuses("8.6;9.0a+PTX") == []
    assert wheelcheck.cpp_extension_refuses("8.6;8.8") == ["8.8"]
