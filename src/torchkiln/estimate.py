"""The estimate said before a build starts (time as a range, disk), and the timings it learns.

From published build times, and from what this machine's earlier builds recorded in
`.torchkiln/timings.json` (timings.py records them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torchkiln import gpu, runner, settings, timings
from torchkiln.errors import UserError
from torchkiln.extcompile import (
    ExtensionSources,
    archs_compiled,
    extension_seconds,
    extensions_seconds,
)

# --- The estimate, and what this machine's builds teach it ---------------------------------------
#
# Published figures for compiling PyTorch with CUDA (core-hours: wall hours x parallel jobs). They
# give a range, not a promise; this machine's own recorded builds (below) narrow it.
# - conda-forge/pytorch-cpu-feedstock#52 (2021): "almost exactly 2 hours ... using 10 cores",
#   1 h 20 min of it compiling, for the GPU of the machine plus PTX: about 13 core-hours before
#   FlashAttention, memory-efficient attention and the sm90 CUTLASS kernels were added.
# - pytorch/pytorch#126980 (2024): PyTorch's own CUDA nightly needs about 5 h of compiling.
# - pytorch/pytorch#58596: single CUDA objects take up to 12 min (PowKernel.cu): a serial tail.
# - pytorch/pytorch#133686: the extended-MMA CUTLASS kernels for sm90 and newer "add a bit to
#   compile time"; 9.0 and 10.0 builds also compile their 90a/100a kernels (row-wise scaled mm,
#   FlashAttention's Hopper/Blackwell paths), nearly another arch's worth of device code.
# - pytorch/pytorch#194502: FlashAttention's kernels are "the largest source tree under
#   third_party", and they compile per arch.
# Together (torchkiln issue 17): about 25-40 core-hours for the first arch, 8-15 for each further
# one (device code is compiled once per arch, host C++ once), 4-8 more for 9.0/10.0's a-kernels.
CORE_HOURS_FIRST_ARCH = (25.0, 40.0)


CORE_HOURS_MORE_ARCH = (8.0, 15.0)


CORE_HOURS_ARCH_SPECIFIC = (4.0, 8.0)


# A CPU-only torch compiles the host C++ alone: a fraction of the first arch's figure.
CORE_HOURS_CPU = (4.0, 8.0)


# What a build does besides compiling (torchkiln issue 28): a few fixed steps (apt's installs of
# the runtime and train stages, the user) and the wheels, installed into the train image and
# exported as its layers in proportion to their installed size. Measured on 2 cores:
# - scripts/measure_estimate.py, a first build (no step from the build cache) of BUILD_MODE=wheels
#   with the CPU torch 2.13.0 (about 1 GB installed) from a local wheelhouse: 75 s, 27 s of it
#   pip's install of the wheels, 12 + 8 + 6 s the apt steps (2026-12-06);
# - issue 28: BUILD_MODE=wheels with a CUDA torch (about 6 GB with NVIDIA's wheels) and
#   mamba-ssm took 9 min 51 s, 377 s of it the extension: 214 s for the rest.
# So about 45 s of fixed steps and 28 s a GB. The same CPU build took 194-236 s while four other
# builds shared the machine's 2 cores: an estimate is for a machine that builds one thing.
IMAGE_STEPS_SECONDS = 45


SECONDS_PER_IMAGE_GB = 28


# The installed size (GB) of the wheels a build puts into the train image: torch with NVIDIA's
# CUDA libraries (cuDNN, cuBLAS, NCCL … as wheels beside it) or the CPU torch.
WHEELS_GB = {"cuda": 6.0, "cpu": 1.0}


# CUDA_FROM=pypi also installs NVIDIA's toolkit wheels (about 3 GB) into the build stages, not
# into the train image nor its export: scripts/measure_estimate.py's first torch-wheel build on 2
# cores installed them in 36 s (2026-12-07), about 12 s a GB.
PYPI_TOOLKIT_GB = 3.0


SECONDS_PER_TOOLKIT_GB = 12


# torchvision's CUDA kernels, one arch, in core-hours (source and torch-wheel compile it).
VISION_CORE_HOURS = (0.5, 1.5)


# The range said around the central figure: narrower than the goal (within +-30 % of the
# measured time), so that its ends stay within it once rounded to minutes.
SPREAD = (0.85, 1.2)


# What does not parallelise: CMake's configure, the slowest objects, linking libtorch_cuda.
SERIAL_HOURS = (0.3, 0.6)


# Archs whose builds add arch-specific (a) CUTLASS kernels besides the plain ones.
ARCH_SPECIFIC_BASES = ("9.0", "10.0")


DISK_GB_PER_ARCH = (40, 4)


# One compile job per 6 GB of memory: one FlashAttention translation unit takes about 4.5 GB
# (pytorch/pytorch#124018); #108174 needed MAX_JOBS=2 on 16 GB. docker/scripts/build-wheel.sh
# applies the same rule.
GB_PER_JOB = 6


def disk_gb(values: Mapping[str, str]) -> int:
    """The free disk (GB) a build of these settings needs at the engine's root: the one figure
    invoke build's estimate and doctor's disk row both say. A source build of torch and vision
    with its sccache: DISK_GB_PER_ARCH; official wheels about 10 GB, 20 with NVIDIA's CUDA wheels
    from the Python index or torchvision compiled (torch-wheel)."""
    mode = values.get("BUILD_MODE", "source")
    cuda = settings.compiles_cuda(values)
    if mode == "source":
        try:
            archs = len(gpu.parse_cca(values.get("CCA", ""))) if cuda else 1
        except UserError:
            archs = 1
        return DISK_GB_PER_ARCH[0] + DISK_GB_PER_ARCH[1] * max(0, archs - 1)
    return 20 if mode == "torch-wheel" or values.get("CUDA_FROM") == "pypi" else 10


def parallel_jobs(values: Mapping[str, str], cpus: int, memory_bytes: int) -> int:
    """The compile jobs a build runs: MAX_JOBS, else the cores, at most one per GB_PER_JOB."""
    if values.get("MAX_JOBS"):
        return int(values["MAX_JOBS"])
    by_memory = max(1, memory_bytes // (GB_PER_JOB * 1024**3)) if memory_bytes else cpus
    return max(1, min(cpus or 1, by_memory))


def arch_units(cca: str, cuda: bool) -> tuple[float, float]:
    """The core-hours (low, high) of compiling torch for a CCA (or for the CPU)."""
    if not cuda:
        return CORE_HOURS_CPU
    items = gpu.parse_cca(cca)
    specific = sum(1 for item in items if item.base in ARCH_SPECIFIC_BASES)
    return tuple(  # type: ignore[return-value]
        first + more * (len(items) - 1) + extra * specific
        for first, more, extra in zip(
            CORE_HOURS_FIRST_ARCH, CORE_HOURS_MORE_ARCH, CORE_HOURS_ARCH_SPECIFIC, strict=True
        )
    )


def learned_torch_hours(
    history: Sequence[Mapping[str, object]], cca: str, cuda: bool, jobs: int
) -> tuple[float, str, timings.ColdCompile] | None:
    """This machine's last cold torch compile of the same kind and how it scales to this build's
    archs and jobs: (the scale, what it was, the record), or None when there is none."""
    record = timings.last_cold_compile(history, cuda)
    if record is None or not record.seconds:
        return None
    try:
        then_units = sum(arch_units(record.cca, cuda)) / 2
        now_units = sum(arch_units(cca, cuda)) / 2
    except UserError:
        return None
    then_jobs = record.jobs or jobs
    scale = now_units / then_units * then_jobs / jobs
    archs = f"for {record.cca}" if cuda else "for the CPU"
    what = (
        f"this machine compiled torch {archs} in {runner.format_duration(record.seconds)} with "
        f"{then_jobs} jobs on {record.date}"
    )
    return scale, what, record


def longest(*steps: tuple[float, float]) -> tuple[float, float]:
    """Steps that run at the same time (low, high seconds each): the longest sets the time."""
    return max(low for low, _ in steps), max(high for _, high in steps)


def recorded_around_torch(
    record: timings.ColdCompile,
    scale: float,
    values: Mapping[str, str],
    local_extensions: int,
    parts: tuple[tuple[float, float], tuple[float, float]],
) -> tuple[float, float] | None:
    """The steps around torch's compile (low, high seconds) from the build the record was part
    of: its total without its compiles, and its steps built against torch scaled as torch's
    compile is (the model's `parts`, vision and extensions, where it has none, or other
    extensions). None where its total is no longer kept or is shorter than its compiles."""
    ran = record.stages
    if record.total is None:
        return None
    rest = record.total - record.seconds - max(ran.values(), default=0.0)
    if rest < 0:
        return None

    def part(stage: str, model: tuple[float, float]) -> tuple[float, float]:
        return (ran[stage] * scale,) * 2 if stage in ran else model

    vision, extensions = parts
    same = record.extensions == timings.extensions_key(values, local_extensions)
    steps = [
        part("vision-build", vision),
        part("extensions-build", extensions) if same else extensions,
    ]
    if values.get("TORCHAUDIO_VERSION"):
        steps.append(part("audio-build", (0.0, 0.0)))
    low, high = longest(*steps)
    return rest + low, rest + high


def image_seconds(values: Mapping[str, str], compiles: bool) -> float:
    """What a build does besides compiling: the image's steps and the wheels it installs and
    exports (NVIDIA's toolkit wheels too where CUDA_FROM=pypi and something compiles)."""
    cuda = settings.compiles_cuda(values)
    seconds = IMAGE_STEPS_SECONDS + WHEELS_GB["cuda" if cuda else "cpu"] * SECONDS_PER_IMAGE_GB
    if values.get("CUDA_FROM") == "pypi" and compiles:
        seconds += PYPI_TOOLKIT_GB * SECONDS_PER_TOOLKIT_GB
    return seconds


def against_torch_parts(
    values: Mapping[str, str],
    jobs: int,
    extension_sources: Sequence[ExtensionSources],
    unread: int,
    vision: ExtensionSources | None,
) -> tuple[tuple[float, float], tuple[float, float], list[str]]:
    """torchvision's compile and the extensions' (each low, high seconds; torchvision's 0 where
    the mode compiles none) and what each extension is taken to be. They compile at the same
    time (torchaudio too, where asked), each with its share of the jobs (jobshare: steps that
    start together split MAX_JOBS), so the longest sets the time, not their sum."""
    any_extension = bool(extension_sources or values.get("EXTENSIONS", "").split() or unread)
    compiled = values["BUILD_MODE"] != "wheels"
    audio = compiled and bool(values.get("TORCHAUDIO_VERSION"))
    # torchaudio takes its share of the jobs; its own compile is not estimated (no figure).
    steps = int(compiled) + int(audio) + int(any_extension)
    share = max(1, jobs // max(1, steps))
    ext_low, ext_high, said = extensions_seconds(values, extension_sources, share, unread)
    if not compiled:
        return (0.0, 0.0), (ext_low, ext_high), said
    cuda = settings.compiles_cuda(values)
    if vision is not None and vision.cuda_sources is not None:
        # A torchvision folder of one's own: its CUDA sources x archs, as for an extension.
        both = extension_seconds(vision.cuda_sources, archs_compiled(values), share)
        return (both, both), (ext_low, ext_high), said
    # How much more device code than for one arch: torchvision scales as torch does.
    scale = sum(arch_units(values["CCA"], cuda)) / sum(arch_units("8.6", True)) if cuda else 1
    low, high = (hours * scale * 3600 / share for hours in VISION_CORE_HOURS)
    return (low, high), (ext_low, ext_high), said


def estimate(
    values: Mapping[str, str],
    cpus: int,
    memory_bytes: int,
    history: Sequence[Mapping[str, object]] = (),
    local_extensions: int = 0,
    extension_sources: Sequence[ExtensionSources] = (),
    vision: ExtensionSources | None = None,
) -> str:
    """Say, before a build starts, how long it will take (a range) and how much disk it needs,
    from published and measured build times and from what this machine's earlier builds
    recorded. `extension_sources`: what was read of the extensions before the build;
    `local_extensions`: local folders beyond those, not read; `vision`: a torchvision folder
    of one's own, read (source and torch-wheel compile it)."""
    mode = values["BUILD_MODE"]
    jobs = parallel_jobs(values, cpus, memory_bytes)
    cuda = settings.compiles_cuda(values)
    unread = max(0, local_extensions - len(extension_sources))
    parts = against_torch_parts(values, jobs, extension_sources, unread, vision)
    (low_s, high_s), ext_said = longest(*parts[:2]), parts[2]
    compiles = mode != "wheels" or bool(ext_said)
    seconds = [image_seconds(values, compiles) + low_s, image_seconds(values, compiles) + high_s]
    learned: list[str] = []
    last_extensions = _last(history, "extensions-build")
    if ext_said and last_extensions:
        took = runner.format_duration(timings.number(last_extensions, "seconds"))
        learned.append(f"this machine's last extension compile took {took}")
    jobs_text = f"{jobs} parallel job{'s' if jobs != 1 else ''}"
    memory = f"{memory_bytes / 1024**3:.0f} GB memory"
    why = "MAX_JOBS" if values.get("MAX_JOBS") else f"one job per {GB_PER_JOB} GB"
    extensions_text = f" ({'; '.join(ext_said)})" if ext_said else ""
    if mode != "source":
        low, high = seconds[0] * SPREAD[0] / 3600, seconds[1] * SPREAD[1] / 3600
        disk = disk_gb(values)
        last = _last(history, "build", mode)
        if last:
            took = runner.format_duration(timings.number(last, "seconds"))
            learned.insert(0, f"this machine's last BUILD_MODE={mode} build took {took}")
        compiling = f", compiling with {jobs_text} ({cpus} cores, {memory})" if compiles else ""
        text = (
            f"estimate: BUILD_MODE={mode}{compiling} takes {range_text(low, high)}{extensions_text}"
        )
        text += "".join(f"; {said}" for said in learned)
        return f"{text}; it needs about {disk} GB of disk (an estimate, not a promise)"
    items = gpu.parse_cca(values["CCA"]) if cuda else []
    low_core, high_core = arch_units(values["CCA"], cuda)
    low = SERIAL_HOURS[0] + seconds[0] / 3600 + low_core / jobs
    high = SERIAL_HOURS[1] + seconds[1] / 3600 + high_core / jobs
    disk = disk_gb(values)
    what = (
        f"{len(items)} arch{'s' if len(items) != 1 else ''} ({values['CCA']})"
        if cuda
        else ("the CPU")
    )
    basis = f"published figures: {_core_hours_text(cuda)}"
    torch = learned_torch_hours(history, values["CCA"], cuda, jobs)
    if torch:
        # This machine's own first compile, scaled to these archs and jobs, replaces the
        # published figures, and the rest of that build the guesses for the steps around it:
        # they hold this machine's cores, disk and network.
        scale, said, record = torch
        hours = record.seconds * scale / 3600
        around = recorded_around_torch(record, scale, values, local_extensions, parts[:2])
        low_around, high_around = around or (seconds[0], seconds[1])
        low = (hours + low_around / 3600) * SPREAD[0]
        high = (hours + high_around / 3600) * SPREAD[1]
        basis = "from this machine's record"
        learned.insert(0, f"{said}, so here about {runner.format_duration(hours * 3600)}")
    text = (
        f"estimate: a PyTorch source build for {what} with {jobs_text} ({cpus} cores, "
        f"{memory}: {why}) takes {range_text(low, high)} the first time ({basis})"
        f"{extensions_text}"
    )
    text += "".join(f"; {said}" for said in learned)
    return (
        f"{text}; it needs about {disk} GB of disk, and a rebuild reuses sccache (an estimate, "
        f"not a promise)"
    )


def _last(
    history: Sequence[Mapping[str, object]], stage: str, mode: str | None = None
) -> Mapping[str, object] | None:
    for entry in reversed(history):
        if entry.get("stage") == stage and (mode is None or entry.get("mode") == mode):
            return entry
    return None


def range_text(low_hours: float, high_hours: float) -> str:
    low, high = runner.format_duration(low_hours * 3600), runner.format_duration(high_hours * 3600)
    return f"about {low}" if low == high else f"{low} to {high}"


def _core_hours_text(cuda: bool) -> str:
    if not cuda:
        return f"{CORE_HOURS_CPU[0]:.0f}-{CORE_HOURS_CPU[1]:.0f} core-hours without CUDA"
    first, more, extra = CORE_HOURS_FIRST_ARCH, CORE_HOURS_MORE_ARCH, CORE_HOURS_ARCH_SPECIFIC
    return (
        f"{first[0]:.0f}-{first[1]:.0f} core-hours for the first arch, {more[0]:.0f}-"
        f"{more[1]:.0f} for each further one, {extra[0]:.0f}-{extra[1]:.0f} more for 9.0 and "
        f"10.0's arch-specific kernels"
    )
