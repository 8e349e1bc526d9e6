"""How long compiling a CUDA extension takes: its CUDA sources times the archs compiled (pure;
the estimate before a build says it, `extsources` reads the sources it counts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torchkiln import gpu, settings
from torchkiln.errors import UserError
from torchkiln.inimage import nvcc

# CUDA extensions (torchkiln issue 28): nvcc compiles each CUDA source once per arch (cicc and
# ptxas run per arch, the host C++ once), so an extension's compile is its CUDA sources times the
# archs compiled, spread over the build's jobs; a few sources on many cores wait for the
# longest one instead. Measured:
# - issue 28: mamba-ssm 2.3.2.post1 (9 CUDA sources) for 8.6 alone, 2 jobs: 377 s, so
#   (377 - 30) x 2 / 9 = 77 core-seconds a source and arch on a loaded core;
# - docs/gpu-results.md run 9: causal-conv1d 1.7.0 (3 sources) for 9.0 with 16 jobs: 223 s,
#   197 s of them one source (causal_conv1d_bwd.cu): the longest source is about 2.2 times the
#   mean, and bounds a build of few sources on many cores;
# - docs/gpu-results.md run 7: torchsort 0.1.10 (1 source) for 9.0 and for 8.6 with 16 jobs:
#   104 s and 103 s.
# Not met: run 9's EXTENSION_ARCHS=as-is build of causal-conv1d (its nine archs) took 730 s, and
# this rule says 382 s: its one heavy source took 187-211 s of cicc per arch with 15 threads busy,
# against 108 s for one arch alone (the 16 cores' own contention).
SOURCE_ARCH_SECONDS = 80.0


LONGEST_SOURCE = 2.2


# Per extension, besides its CUDA sources: pip's isolated build environment, its host C++
# files, the link, the arch report.
EXTENSION_STEP_SECONDS = 30.0


# An extension whose sources cannot be read before the build (a spec's source distribution
# not fetched): from a small one (causal-conv1d, 3) to a large one (flash-attn's dozens).
UNKNOWN_CUDA_SOURCES = (3, 60)


@dataclass(frozen=True)
class ExtensionSources:
    """What is known of one extension before its build: its CUDA sources (None: not read) and
    the archs its own build files name (used under EXTENSION_ARCHS=as-is; 0: none named)."""

    name: str
    cuda_sources: int | None
    own_archs: int = 0


def archs_compiled(values: Mapping[str, str], own_archs: int = 0) -> int:
    """The archs nvcc compiles an extension for: the CCA's (PTX and SASS of one arch are one
    compile), or under EXTENSION_ARCHS=as-is those its build names (else the CCA's, which
    torch.utils.cpp_extension takes from TORCH_CUDA_ARCH_LIST)."""
    if not settings.compiles_cuda(values):
        return 0
    if values.get("EXTENSION_ARCHS") == "as-is" and own_archs:
        return own_archs
    try:
        return len({item.base for item in gpu.parse_cca(values["CCA"])})
    except UserError:
        return 1


def extension_seconds(cuda_sources: int, archs: int, jobs: int) -> float:
    """One extension's build: its CUDA sources times its archs over the jobs, or the longest
    source's archs, a call's threads at a time (nvcc's --threads), whichever is longer."""
    if cuda_sources < 1 or archs < 1:
        return EXTENSION_STEP_SECONDS
    jobs = max(1, jobs)
    spread = cuda_sources * archs * SOURCE_ARCH_SECONDS / jobs
    threads = nvcc.nvcc_threads(jobs, cuda_sources)
    longest = min(LONGEST_SOURCE, cuda_sources) * SOURCE_ARCH_SECONDS * -(-archs // threads)
    return EXTENSION_STEP_SECONDS + max(spread, longest)


def extensions_seconds(
    values: Mapping[str, str], known: Sequence[ExtensionSources], jobs: int, unread: int = 0
) -> tuple[float, float, list[str]]:
    """The extensions' compile (low, high seconds) and what each is taken to be; an extension
    whose sources were not read counts as UNKNOWN_CUDA_SOURCES (a range)."""
    named = {item.name for item in known}
    items = [*known]
    items += [
        ExtensionSources(spec.split("==", 1)[0], None)
        for spec in values.get("EXTENSIONS", "").split()
        if spec.split("==", 1)[0] not in named and spec not in named
    ]
    items += [ExtensionSources(f"local folder {n + 1}", None) for n in range(unread)]
    low = high = 0.0
    said: list[str] = []
    for item in items:
        archs = archs_compiled(values, item.own_archs)
        if item.cuda_sources is None:
            low += extension_seconds(UNKNOWN_CUDA_SOURCES[0], archs, jobs)
            high += extension_seconds(UNKNOWN_CUDA_SOURCES[1], archs, jobs)
            said.append(f"{item.name}: CUDA sources not read, {UNKNOWN_CUDA_SOURCES[0]}-"
                        f"{UNKNOWN_CUDA_SOURCES[1]} taken")  # fmt: skip
            continue
        seconds = extension_seconds(item.cuda_sources, archs, jobs)
        low, high = low + seconds, high + seconds
        plural = "s" if archs != 1 else ""
        said.append(f"{item.name}: {item.cuda_sources} CUDA sources x {archs} arch{plural}")
    return low, high, said
