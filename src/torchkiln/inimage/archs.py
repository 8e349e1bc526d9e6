"""GPU facts shared by the host tasks and the in-image checks: version numbers, which archs each
CUDA release builds, driver minimums, the one CCA grammar and what each CCA form compiles to,
and which compiled code runs on which GPU. Standard library only (it runs inside the images).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

Version = tuple[int, ...]


def version_tuple(text: str) -> Version:
    """Parse the numeric part of '13.0.2', '2.14.1+cu130' or '580.65.06' into a tuple."""
    match = re.match(r"^\s*v?(\d+(?:\.\d+)*)", text)
    if not match:
        raise ValueError(f"'{text}' is not a version; write numbers and dots, e.g. 2.14.1")
    return tuple(int(part) for part in match.group(1).split("."))


# --- which CUDA builds which arch -------------------------------------------------------------

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

# Suffixes: 'a' (arch-specific: wgmma, tcgen05 … for one exact chip) from Hopper on, since
# CUDA 12.0; 'f' (family-specific: runs on the same major with an equal or higher minor) from
# Blackwell on, since CUDA 12.9. Source: CUDA C++ Programming Guide, "Feature Availability".
SUFFIX_RULES: dict[str, tuple[Version, Version, str]] = {
    # suffix: (first arch, first CUDA, meaning)
    "a": ((9, 0), (12, 0), "arch-specific"),
    "f": ((10, 0), (12, 9), "family-specific"),
}

# Minimum Linux x86_64 driver for each CUDA major under minor-version compatibility.
# Source: NVIDIA "CUDA Compatibility" guide, table "CUDA Toolkit and Minimum Required Driver
# Version for CUDA Minor Version Compatibility".
MIN_DRIVER: dict[int, str] = {
    11: "450.80.02",
    12: "525.60.13",
    13: "580.65.06",
}


def supported_archs(cuda: str) -> list[str]:
    """List the architectures a CUDA version's nvcc can compile for."""
    version = version_tuple(cuda)[:2]
    return [
        arch
        for arch, (first, gone) in ARCH_SUPPORT.items()
        if first <= version and (gone is None or version < gone)
    ]


def min_driver(cuda: str) -> str | None:
    """Return the oldest Linux driver that runs a CUDA version, None for an unknown major."""
    return MIN_DRIVER.get(version_tuple(cuda)[0])


def driver_too_old(driver: str, cuda: str) -> bool:
    """Tell whether a driver is older than a CUDA version needs (unknown major: not old)."""
    needed = min_driver(cuda)
    return needed is not None and version_tuple(driver) < version_tuple(needed)


# --- the CCA grammar ------------------------------------------------------------------------


class CCAError(ValueError):
    """A CCA text that is not in the grammar; the message names the item and the fix."""


HOW_TO_WRITE = (
    "write it as 8.6, or several as '8.6;9.0' (see nvidia-smi --query-gpu=compute_cap --format=csv)"
)
_ITEM = re.compile(r"(?P<major>\d{1,2})\.(?P<minor>\d)(?P<suffix>[af]?)(?P<ptx>\+ptx)?", re.I)


@dataclass(frozen=True, order=True)
class Arch:
    """One CCA item: a compute capability, an optional a/f suffix, and whether PTX is kept."""

    major: int
    minor: int
    suffix: str = ""
    ptx: bool = False

    @property
    def base(self) -> str:
        """The capability without suffixes: '9.0'."""
        return f"{self.major}.{self.minor}"

    @property
    def number(self) -> str:
        """nvcc's arch number with its suffix: '90a'."""
        return f"{self.major}{self.minor}{self.suffix}"

    @property
    def sass(self) -> str:
        """The machine-code name nvcc and torch use: 'sm_90a'."""
        return f"sm_{self.number}"

    @property
    def ptx_name(self) -> str:
        """The PTX name: 'compute_90a'."""
        return f"compute_{self.number}"

    def __str__(self) -> str:
        return f"{self.base}{self.suffix}{'+PTX' if self.ptx else ''}"


def parse_cca(text: str) -> list[Arch]:
    """Parse a CCA such as '8.6;9.0', '8.6 9.0', '8.6,9.0a' or '12.0+PTX'.

    Items are separated by ';', ',' or spaces; empty items (a trailing ';') are dropped. The
    result is sorted and free of repeats; '8.6' with '8.6+PTX' is one item with PTX.
    """
    items = [item for item in re.split(r"[;,\s]+", text.strip()) if item]
    if not items:
        raise CCAError(
            "CCA is empty (no GPU was detected); pass --cca 8.6 or set CCA in .env to the "
            "compute capability of the GPU you build for (nvidia-smi --query-gpu=compute_cap "
            "--format=csv)"
        )
    found: dict[tuple[int, int, str], bool] = {}
    for item in items:
        match = _ITEM.fullmatch(item)
        if not match:
            raise CCAError(f"CCA '{item}' is not a compute capability; {HOW_TO_WRITE}")
        major, minor, suffix = int(match["major"]), int(match["minor"]), match["suffix"].lower()
        if suffix:
            first, _, meaning = SUFFIX_RULES[suffix]
            if (major, minor) < first:
                raise CCAError(
                    f"CCA '{item}': the '{suffix}' ({meaning}) suffix exists only from "
                    f"{first[0]}.{first[1]} on; write {major}.{minor} instead"
                )
        key = (major, minor, suffix)
        found[key] = found.get(key, False) or bool(match["ptx"])
    return [Arch(*key, ptx=ptx) for key, ptx in sorted(found.items())]


def normalize_cca(text: str) -> str:
    """The one canonical spelling of a CCA ('' stays ''): '9.0, 8.6;' -> '8.6;9.0'."""
    if not text.strip():
        return ""
    return ";".join(str(arch) for arch in parse_cca(text))


def cuda_problem(arch: Arch, cuda: str) -> str | None:
    """Say why a CUDA version cannot compile one CCA item, with the fix; None when it can."""
    supported = supported_archs(cuda)
    if arch.base not in supported:
        return (
            f"CCA '{arch}' cannot be built with CUDA {cuda}, which supports {supported[0]} to "
            f"{supported[-1]}; {_arch_fix(arch)}"
        )
    if arch.suffix:
        _, first_cuda, meaning = SUFFIX_RULES[arch.suffix]
        if version_tuple(cuda)[:2] < first_cuda:
            return (
                f"CCA '{arch}': {meaning} targets need CUDA {first_cuda[0]}.{first_cuda[1]} or "
                f"newer, not {cuda}; write {arch.base} instead"
            )
    return None


def _arch_fix(arch: Arch) -> str:
    if arch.base not in ARCH_SUPPORT:
        return (
            f"{arch.base} is no NVIDIA GPU architecture; check nvidia-smi --query-gpu=compute_cap"
        )
    first, gone = ARCH_SUPPORT[arch.base]
    if gone is not None:
        last = f"{gone[0] - 1}.x" if gone[1] == 0 else f"older than {gone[0]}.{gone[1]}"
        return f"set CUDA_VERSION to CUDA {last} (full service) or drop {arch} from CCA"
    return f"set CUDA_VERSION to {first[0]}.{first[1]} or newer (full service)"


# --- what each consumer of CCA receives -----------------------------------------------------


def torch_cuda_arch_list(archs: Iterable[Arch]) -> str:
    """PyTorch's TORCH_CUDA_ARCH_LIST: '8.6;9.0a;12.0+PTX' (its CMake and cpp_extension)."""
    return ";".join(str(arch) for arch in archs)


def cmake_cuda_architectures(archs: Iterable[Arch]) -> str:
    """CMAKE_CUDA_ARCHITECTURES: SASS only ('86-real') unless +PTX asks for PTX too ('90')."""
    return ";".join(arch.number if arch.ptx else f"{arch.number}-real" for arch in archs)


def magma_arch_min(archs: Iterable[Arch]) -> str:
    """magma's MAGMA_CUDA_ARCH_MIN ('860' for 8.6;9.0): with it, magma takes its archs from
    CMAKE_CUDA_ARCHITECTURES instead of its own GPU_TARGET names, which would drop -real/PTX."""
    found = [arch.major * 100 + arch.minor * 10 for arch in archs]
    return str(min(found)) if found else ""


def expected_binaries(archs: Iterable[Arch]) -> list[str]:
    """The SASS/PTX names a build for these archs must contain: sm_86, sm_90, compute_90 …"""
    names: list[str] = []
    for arch in archs:
        names.append(arch.sass)
        if arch.ptx:
            names.append(arch.ptx_name)
    return names


# --- which compiled code runs on which GPU --------------------------------------------------

_BINARY = re.compile(r"(?P<kind>sm|compute)_(?P<number>\d+)(?P<suffix>[af]?)")


def covers(capability: tuple[int, int], binaries: Iterable[str]) -> str | None:
    """Say how a GPU of this capability runs code compiled for `binaries`, None when it cannot.

    SASS sm_XY runs on X.Z for Z >= Y (same major); sm_XYf likewise (its family); sm_XYa only on
    X.Y itself. PTX compute_XY is JIT-compiled by the driver on any GPU of X.Y or newer;
    compute_XYf within its family; compute_XYa only on X.Y.
    """
    major, minor = capability
    gpu = major * 10 + minor
    sass: list[tuple[int, str]] = []
    ptx: list[tuple[int, str]] = []
    for name in binaries:
        match = _BINARY.fullmatch(name)
        if not match:
            continue
        number, suffix = int(match["number"]), match["suffix"]
        if suffix == "a":
            runs = number == gpu
        elif suffix == "f" or match["kind"] == "sm":
            runs = number // 10 == major and number <= gpu
        else:
            runs = number <= gpu
        if runs:
            (sass if match["kind"] == "sm" else ptx).append((number, name))
    if sass:
        number, name = max(sass)
        if number == gpu:
            return f"SASS {name}"
        return f"SASS {name} (binary-compatible with {major}.{minor})"
    if ptx:
        return f"PTX JIT from {max(ptx)[1]}"
    return None
