"""A CUDA build is a CUDA build: check a freshly built torch wheel in seconds, in its build step.

PyTorch's CMake turns CUDA off with a warning when it does not find it (unless USE_CUDA was set
explicitly), and the arch list can silently differ from the one asked for; either is otherwise
found out hours later. This reads the wheel itself: torch/version.py's `cuda`, and the SASS/PTX in
torch/lib/libtorch_cuda.so (the fatbin reader) against TORCH_CUDA_ARCH_LIST. Extra code for a
listed arch (9.0's sm_90a CUTLASS kernels) is fine; a missing arch is not. Standard library only.

`python -m torchkiln.inimage.wheelcheck WHEEL` reads USE_CUDA and TORCH_CUDA_ARCH_LIST from the
environment; exit 0 with one `torchkiln-wheelcheck:` line, or 1 with one ERROR line.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path

from torchkiln.inimage import archs
from torchkiln.inimage.fatbin import read_archs

CUDA_LIBRARY = "torch/lib/libtorch_cuda.so"
_CUDA_LINE = re.compile(r"^cuda\s*(?::[^=]*)?=\s*['\"]?([^'\"\s]*)", re.MULTILINE)


class WheelProblem(ValueError):
    """What makes the wheel not what was asked for; the message is the one line shown."""


def wheel_cuda(archive: zipfile.ZipFile) -> str | None:
    """torch/version.py's `cuda` ('13.0'), None for a CPU build."""
    try:
        text = archive.read("torch/version.py").decode(errors="replace")
    except KeyError:
        raise WheelProblem("the wheel has no torch/version.py: not a torch wheel") from None
    match = _CUDA_LINE.search(text)
    value = match[1] if match else ""
    return None if value in ("", "None") else value


def check(wheel: Path, use_cuda: bool, arch_list: str) -> str:
    """Say what the wheel holds, or raise WheelProblem naming what is not as asked."""
    with zipfile.ZipFile(wheel) as archive:
        cuda = wheel_cuda(archive)
        if not use_cuda:
            if cuda:
                raise WheelProblem(f"a CUDA {cuda} torch although USE_CUDA=0")
            return "CPU build, as asked (USE_CUDA=0)"
        if cuda is None:
            raise WheelProblem(
                "a CPU-only torch although USE_CUDA=1: its CMake found no usable CUDA (see the "
                "configure output above: nvcc, CUDA_HOME, the driver stub)"
            )
        if CUDA_LIBRARY not in archive.namelist():
            raise WheelProblem(f"CUDA {cuda} torch without {CUDA_LIBRARY}")
        with tempfile.TemporaryDirectory() as scratch:
            library = Path(archive.extract(CUDA_LIBRARY, scratch))
            found = read_archs(library)
    held = found.sass + found.ptx
    wanted = archs.expected_binaries(archs.parse_cca(arch_list)) if arch_list else []
    missing = [name for name in wanted if name not in held]
    if missing:
        raise WheelProblem(
            f"libtorch_cuda.so lacks {' '.join(missing)} asked for by TORCH_CUDA_ARCH_LIST="
            f"{arch_list}; it holds {' '.join(held) or 'no device code'}"
        )
    return f"CUDA {cuda}, libtorch_cuda.so holds {' '.join(held)} (asked {arch_list})"


_SUPPORTED = re.compile(r"supported_arches\s*=\s*\[([^\]]*)\]")


def cpp_extension_refuses(arch_list: str) -> list[str]:
    """The items of TORCH_CUDA_ARCH_LIST that the installed torch's torch.utils.cpp_extension does
    not accept (its `supported_arches`, read from its source without importing torch); [] when
    it takes them all or there is no such torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return []
    source = Path(next(iter(spec.submodule_search_locations)), "utils", "cpp_extension.py")
    try:
        match = _SUPPORTED.search(source.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return []
    if not match:
        return []
    supported = set(re.findall(r"['\"]([^'\"]+)['\"]", match[1]))
    items = [item.strip() for item in re.split(r"[;\s]+", arch_list) if item.strip()]
    return [item for item in items if item.removesuffix("+PTX") not in supported]


def main(argv: list[str]) -> int:
    """Check the wheel named on the command line against the environment's settings; with
    --cpp-extension, check TORCH_CUDA_ARCH_LIST against the installed torch's extension builder."""
    if argv == ["--cpp-extension"]:
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
        refused = cpp_extension_refuses(arch_list)
        if refused:
            print(
                f"ERROR: TORCH_CUDA_ARCH_LIST={arch_list}: this torch's torch.utils.cpp_extension "
                f"does not build {' '.join(refused)}; choose a CCA it accepts (invoke build says "
                f"which before building)",
                file=sys.stderr,
            )
            return 1
        return 0
    if len(argv) != 1:
        print(
            "usage: python -m torchkiln.inimage.wheelcheck WHEEL | --cpp-extension", file=sys.stderr
        )
        return 2
    use_cuda = os.environ.get("USE_CUDA", "1") != "0"
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    try:
        print(f"torchkiln-wheelcheck: {check(Path(argv[0]), use_cuda, arch_list)}")
    except (WheelProblem, archs.CCAError, OSError, zipfile.BadZipFile) as problem:
        print(f"ERROR: torch wheel {Path(argv[0]).name}: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
