"""GPU facts as data: compute capabilities, CUDA arch support, driver minimums, version matching.

Every function here is pure: values in, values out, so the rules are unit-tested without a GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torchkiln.errors import UserError

Version = tuple[int, ...]


class VersionError(UserError, ValueError):
    """A text that should be a version is not one (a user error: shown as one line)."""


def version_tuple(text: str) -> Version:
    """Parse the numeric part of '13.0.2', '2.14.1+cu130' or '580.65.06' into a tuple."""
    match = re.match(r"^\s*v?(\d+(?:\.\d+)*)", text)
    if not match:
        raise VersionError(f"'{text}' is not a version; write numbers and dots, e.g. 2.14.1")
    return tuple(int(part) for part in match.group(1).split("."))


# --- compute capabilities -------------------------------------------------------------------

# When each architecture entered nvcc and the first CUDA release without it (None: still there).
# Source: CUDA Toolkit release notes ("CUDA Compiler" / deprecated architectures) for 11.0–13.0
# and `nvcc --list-gpu-code` of CUDA 13.0 (sm_75 … sm_121; 10.1 was renamed 11.0 in 13.0).
ARCH_SUPPORT: dict[str, tuple[Version, Version | None]] = {
    "3.5": ((11, 0), (12, 0)),
    "3.7": ((11, 0), (12, 0)),
    "5.0": ((11, 0), (13, 0)),
    "5.2": ((11, 0), (13, 0)),
    "5.3": ((11, 0), (13, 0)),
    "6.0": ((11, 0), (13, 0)),
    "6.1": ((11, 0), (13, 0)),
    "6.2": ((11, 0), (13, 0)),
    "7.0": ((11, 0), (13, 0)),
    "7.2": ((11, 0), (13, 0)),
    "7.5": ((11, 0), None),
    "8.0": ((11, 0), None),
    "8.6": ((11, 1), None),
    "8.7": ((11, 4), None),
    "8.8": ((13, 0), None),
    "8.9": ((11, 8), None),
    "9.0": ((11, 8), None),
    "10.0": ((12, 8), None),
    "10.1": ((12, 8), (13, 0)),
    "10.3": ((12, 9), None),
    "11.0": ((13, 0), None),
    "12.0": ((12, 8), None),
    "12.1": ((12, 9), None),
}

# 'a' (arch-specific features such as wgmma) exists from Hopper on, since CUDA 12.0.
ARCH_SPECIFIC_MIN = (9, 0)

_CCA_ITEM = re.compile(r"^(?P<major>\d{1,2})\.(?P<minor>\d)(?P<suffix>a?)(?P<ptx>\+PTX)?$")


def cca_example_hint() -> str:
    """Say how a CCA is written, for error messages."""
    return (
        "write it as 8.6, or several as '8.6;9.0' (see nvidia-smi --query-gpu=compute_cap "
        "--format=csv)"
    )


def parse_cca(text: str) -> list[str]:
    """Split a CCA such as '8.6;9.0', '8.6 9.0' or '12.0+PTX' into normalised items."""
    items = [item for item in re.split(r"[;,\s]+", text.strip()) if item]
    if not items:
        raise UserError(
            "CCA is empty (no GPU was detected); pass --cca 8.6 or set CCA in .env to the "
            "compute capability of the GPU you build for (nvidia-smi --query-gpu=compute_cap "
            "--format=csv)"
        )
    normalised: list[str] = []
    for item in items:
        match = _CCA_ITEM.match(item)
        if not match:
            raise UserError(f"CCA '{item}' is not a compute capability; {cca_example_hint()}")
        arch = f"{match['major']}.{match['minor']}"
        if match["suffix"] and version_tuple(arch) < ARCH_SPECIFIC_MIN:
            raise UserError(
                f"CCA '{item}': the 'a' suffix exists only from 9.0 on; write {arch} instead"
            )
        value = f"{arch}{match['suffix']}{match['ptx'] or ''}"
        if value not in normalised:
            normalised.append(value)
    return normalised


def torch_cuda_arch_list(text: str) -> str:
    """Turn a CCA setting into PyTorch's TORCH_CUDA_ARCH_LIST form ('8.6;9.0+PTX')."""
    return ";".join(parse_cca(text))


def supported_archs(cuda: str) -> list[str]:
    """List the architectures a CUDA version's nvcc can compile for."""
    version = version_tuple(cuda)[:2]
    return [
        arch
        for arch, (first, gone) in ARCH_SUPPORT.items()
        if first <= version and (gone is None or version < gone)
    ]


def check_cca_for_cuda(cca: str, cuda: str) -> list[str]:
    """Parse a CCA and refuse any item the CUDA version cannot build; return the items."""
    items = parse_cca(cca)
    supported = supported_archs(cuda)
    for item in items:
        arch = item.removesuffix("+PTX").removesuffix("a")
        if arch not in supported:
            raise UserError(
                f"CCA '{item}' cannot be built with CUDA {cuda}, which supports "
                f"{supported[0]} to {supported[-1]}; {_arch_fix(arch, item)}"
            )
        if item.removesuffix("+PTX").endswith("a") and version_tuple(cuda) < (12, 0):
            raise UserError(f"CCA '{item}' needs CUDA 12.0 or newer; write {arch} instead")
    return items


def _arch_fix(arch: str, item: str) -> str:
    if arch not in ARCH_SUPPORT:
        return f"{arch} is no NVIDIA GPU architecture; check nvidia-smi --query-gpu=compute_cap"
    first, gone = ARCH_SUPPORT[arch]
    if gone is not None:
        last = f"{gone[0] - 1}.x" if gone[1] == 0 else f"older than {gone[0]}.{gone[1]}"
        return f"set CUDA_VERSION to CUDA {last} (full service) or drop {item} from CCA"
    return f"set CUDA_VERSION to {first[0]}.{first[1]} or newer (full service)"


def detected_cca(nvidia_smi_csv: str) -> str:
    """Reduce `nvidia-smi --query-gpu=compute_cap --format=csv,noheader` output to a CCA."""
    seen: list[str] = []
    for line in nvidia_smi_csv.splitlines():
        value = line.strip()
        if value and value not in seen:
            seen.append(value)
    seen.sort(key=version_tuple)
    return ";".join(seen)


# --- drivers -------------------------------------------------------------------------------

# Minimum Linux driver for each CUDA major under minor-version compatibility.
# Source: NVIDIA "CUDA Compatibility" guide, table "CUDA Toolkit and Minimum Required Driver
# Version for CUDA Minor Version Compatibility" (Linux x86_64 column).
MIN_DRIVER: dict[int, str] = {
    11: "450.80.02",
    12: "525.60.13",
    13: "580.65.06",
}


def min_driver_for_cuda(cuda: str) -> str:
    """Return the oldest Linux driver that runs a CUDA version's applications."""
    major = version_tuple(cuda)[0]
    if major not in MIN_DRIVER:
        raise UserError(
            f"CUDA_VERSION '{cuda}' is not one torchkiln knows; use one of the "
            f"{', '.join(f'{m}.x' for m in MIN_DRIVER)} series"
        )
    return MIN_DRIVER[major]


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


def matching_torchaudio(torch: str) -> str:
    """Name the torchaudio release that pairs with a torch release ('' when none exists)."""
    minor, patch = _torch_minor(torch)
    last = version_tuple(TORCHAUDIO_LAST)
    return f"2.{minor}.{patch}" if (2, minor, patch) <= last else ""


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
