"""GPU facts for the host tasks: the shared rules of torchkiln.inimage.archs as user errors
(one line, no traceback), and which torch, torchvision and torchaudio releases go together.

Every function here is pure: values in, values out, so the rules are unit-tested without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchkiln.errors import UserError
from torchkiln.inimage import archs
from torchkiln.inimage.archs import Arch

Version = archs.Version


class VersionError(UserError, ValueError):
    """A text that should be a version is not one (a user error: shown as one line)."""


def version_tuple(text: str) -> Version:
    """Parse the numeric part of '13.0.2', '2.14.1+cu130' or '580.65.06' into a tuple."""
    try:
        return archs.version_tuple(text)
    except ValueError as error:
        raise VersionError(str(error)) from None


def pypi_cuda_problem(cuda: str) -> str:
    """Say why CUDA_FROM=pypi cannot give CUDA_VERSION `cuda` ('' when it can)."""
    if version_tuple(cuda)[0] >= 13:
        return ""
    return (
        f"CUDA_FROM=pypi needs CUDA 13 or newer, not CUDA_VERSION {cuda} (NVIDIA's CUDA 12 wheels "
        f"have another layout)"
    )


# --- compute capabilities -------------------------------------------------------------------


def parse_cca(text: str) -> list[Arch]:
    """Parse a CCA in the one grammar (torchkiln.inimage.archs); refuse it as a user error."""
    try:
        return archs.parse_cca(text)
    except archs.CCAError as error:
        raise UserError(str(error)) from None


def check_cca_for_cuda(cca: str, cuda: str) -> list[Arch]:
    """Parse a CCA and refuse any item the CUDA version cannot build; return the items."""
    items = parse_cca(cca)
    version_tuple(cuda)  # a CUDA_VERSION that is no version is refused as a user error
    for item in items:
        problem = archs.cuda_problem(item, cuda)
        if problem:
            raise UserError(problem)
    return items


def cca_build_args(cca: str) -> dict[str, str]:
    """What the compile steps receive for a CCA: PyTorch's and CMake's arch lists, magma's floor."""
    items = archs.parse_cca(cca) if cca.strip() else []
    return {
        "TORCH_CUDA_ARCH_LIST": archs.torch_cuda_arch_list(items),
        "CUDA_ARCHITECTURES": archs.cmake_cuda_architectures(items),
        "MAGMA_CUDA_ARCH_MIN": archs.magma_arch_min(items),
    }


def detected_cca(nvidia_smi_csv: str) -> str:
    """Reduce `nvidia-smi --query-gpu=compute_cap --format=csv,noheader` output to a CCA."""
    return archs.normalize_cca(" ".join(nvidia_smi_csv.split()))


# --- drivers -------------------------------------------------------------------------------


def min_driver_for_cuda(cuda: str) -> str:
    """Return the oldest Linux driver that runs a CUDA version's applications."""
    version_tuple(cuda)  # a CUDA_VERSION that is no version is refused as a user error
    minimum = archs.min_driver(cuda)
    if minimum is None:
        raise UserError(
            f"CUDA_VERSION '{cuda}' is not one torchkiln knows; use one of the "
            f"{', '.join(f'{m}.x' for m in archs.MIN_DRIVER)} series"
        )
    return minimum


def driver_supports_cuda(driver: str, cuda: str) -> bool:
    """Tell whether an NVIDIA driver version is new enough for a CUDA version."""
    return version_tuple(driver) >= version_tuple(min_driver_for_cuda(cuda))


# --- torch / torchvision / torchaudio ---------------------------------------------------------

# Releases known to torchkiln, newest patch per minor. torchvision 0.(m+15) pairs with torch 2.m
# (source: pytorch/vision README compatibility table). torchaudio went into maintenance after
# 2.9 and its last release known here is 2.11.0, paired with torch 2.11 (same version number).
TORCHVISION_RELEASES: dict[int, list[int]] = {
    19: [0, 1],
    20: [0, 1],
    21: [0],
    22: [0, 1],
    23: [0],
    24: [0, 1],
    25: [0],
    26: [0],
    27: [0, 1],
    28: [0],
    29: [0, 1, 2],
}
TORCHAUDIO_LAST = "2.11.0"
TORCHVISION_OFFSET = 15


@dataclass(frozen=True)
class VersionSet:
    """The torch, torchvision and torchaudio versions one image is built with."""

    torch: str
    torchvision: str
    torchaudio: str


def _torch_minor(torch: str) -> tuple[int, int]:
    try:
        parts = version_tuple(torch)
    except VersionError:
        parts = ()
    if len(parts) != 3 or parts[0] != 2:
        raise UserError(f"PYTORCH_VERSION '{torch}' is not a torch 2.x release; write it as 2.14.1")
    return parts[1], parts[2]


def matching_torchvision(torch: str) -> str:
    """Name the torchvision release that pairs with a torch release."""
    minor, patch = _torch_minor(torch)
    vision_minor = minor + TORCHVISION_OFFSET
    patches = TORCHVISION_RELEASES.get(vision_minor)
    if not patches:
        known = max(TORCHVISION_RELEASES) - TORCHVISION_OFFSET
        raise UserError(
            f"torch {torch} has no torchvision release known to torchkiln (it would be "
            f"0.{vision_minor}.x); use torch 2.{known}.x, or set TORCHVISION_VERSION "
            f"to the 0.{vision_minor} release once it exists"
        )
    chosen = patch if patch in patches else max(patches)
    return f"0.{vision_minor}.{chosen}"


def resolve_versions(torch: str, torchvision: str = "", torchaudio: str = "") -> VersionSet:
    """Fill in and check torchvision/torchaudio for a torch version; refuse a forced mismatch."""
    minor, _ = _torch_minor(torch)
    vision = torchvision or matching_torchvision(torch)
    vision_parts = version_tuple(vision)
    if vision_parts[:2] != (0, minor + TORCHVISION_OFFSET):
        raise UserError(
            f"TORCHVISION_VERSION '{vision}' does not match torch {torch}; the matching pair is "
            f"torch {torch} with torchvision 0.{minor + TORCHVISION_OFFSET}.x "
            f"(leave TORCHVISION_VERSION empty to pick it)"
        )
    if torchaudio:
        audio_parts = version_tuple(torchaudio)
        if audio_parts[:2] != (2, minor):
            raise UserError(
                f"TORCHAUDIO_VERSION '{torchaudio}' does not match torch {torch}; torchaudio "
                f"versions equal torch's (2.{minor}.x), and the last release is {TORCHAUDIO_LAST}"
            )
        if audio_parts > version_tuple(TORCHAUDIO_LAST):
            raise UserError(
                f"TORCHAUDIO_VERSION '{torchaudio}' does not exist: torchaudio is in maintenance "
                f"and its last release is {TORCHAUDIO_LAST}; leave TORCHAUDIO_VERSION empty"
            )
    return VersionSet(torch=torch, torchvision=vision, torchaudio=torchaudio)


# The archs torch.utils.cpp_extension accepts in TORCH_CUDA_ARCH_LIST (its `supported_arches`, each
# also with +PTX), read from torch 2.14.1's torch/utils/cpp_extension.py. PyTorch's own CMake
# accepts more (8.8, family targets), so a CCA can pass the torch compile and fail torchvision and
# every extension right after it. The build checks again against the target torch itself.
CPP_EXTENSION_ARCHES = frozenset(
    [
        "3.5", "3.7", "5.0", "5.2", "5.3", "6.0", "6.1", "6.2", "7.0", "7.2", "7.5", "8.0", "8.6",
        "8.7", "8.9", "9.0", "9.0a", "10.0", "10.0a", "11.0", "11.0a", "10.3", "10.3a", "10.7",
        "10.7a", "12.0", "12.0a", "12.1", "12.1a",
    ]
)  # fmt: skip


def cpp_extension_problem(item: Arch) -> str | None:
    """Say why torch.utils.cpp_extension (torchvision, torchaudio, extensions) refuses a CCA item,
    None when it takes it."""
    if f"{item.base}{item.suffix}" in CPP_EXTENSION_ARCHES:
        return None
    if item.suffix == "f":
        return (
            f"CCA '{item}': torchvision, torchaudio and extensions build with "
            f"torch.utils.cpp_extension, which has no family-specific targets; write {item.base} "
            f"(or list each GPU of the family, e.g. '10.0;10.3')"
        )
    below = [
        arch
        for arch in CPP_EXTENSION_ARCHES
        if "a" not in arch
        and version_tuple(arch)[0] == item.major
        and version_tuple(arch) < (item.major, item.minor)
    ]
    hint = (
        f"write {max(below, key=version_tuple)} (its code runs on {item.base} GPUs)"
        if below
        else "drop it"
    )
    return (
        f"CCA '{item}': PyTorch's CMake builds it, but torch.utils.cpp_extension, which builds "
        f"torchvision, torchaudio and extensions, does not; {hint}, or use BUILD_MODE=wheels "
        f"without extensions"
    )
