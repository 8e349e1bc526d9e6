"""nvcc for the builds that name no compiler launcher (torch.utils.cpp_extension, an extension's
own setup.py or CMake): each call goes through sccache, compiles for exactly the CCA's targets
under EXTENSION_ARCHS=cca, and runs its per-arch work on nvcc's threads within the memory budget.

docker/scripts/extension-env.sh puts a two-line `nvcc` that calls `wrap` where every build looks
for nvcc: `$CUDA_HOME/bin/nvcc` (cpp_extension's absolute path, through a CUDA_HOME whose bin/
holds it), PYTORCH_NVCC, CUDACXX (CMake's CMAKE_CUDA_COMPILER) and PATH. The decisions
(`rewrite`, `nvcc_threads`, `project_variables`, `failure_hint`) are pure functions; `wrap` and
`main` are the edge. Standard library only: it runs in the build stages and on a bare GPU host.

What a call compiles for, in nvcc's own terms (checked against nvcc 13.0 with the fatbin reader):
`-gencode arch=compute_X,code=C` gives the codes C; `-arch=sm_X` gives sm_X and compute_X,
`-arch=compute_X` compute_X alone, `-arch=A -code=C` the codes C; -gencode and -arch add up; no
target flag at all means nvcc's default (sm_75 and compute_75 in CUDA 13).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torchkiln.inimage import archs as arch_rules
from torchkiln.inimage import modules

# Target options as nvcc spells them, each taking one value (`-o v` or `-o=v`).
GENCODE = ("-gencode", "--generate-code")
ARCH = ("-arch", "--gpu-architecture")
CODE = ("-code", "--gpu-code")
THREADS = ("-t", "--threads")
SPLIT_COMPILE = ("-split-compile", "--split-compile")
# Options nvcc itself reads from the environment, before and after the command line's.
FLAG_VARIABLES = ("NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS")
# nvcc's long dependency options (the ninja files of many torch.utils.cpp_extension releases use
# them), which a compiler cache may misread (ccache 4.7 took the file after --dependency-output
# for a second source and compiled uncached, "multiple source files"). Their short forms are safe.
DEPENDENCY_ALIASES = {
    "--generate-dependencies-with-compile": "-MD",
    "--generate-nonsystem-dependencies-with-compile": "-MMD",
}
DEPENDENCY_VALUE_ALIASES = {"--dependency-output": "-MF", "--dependency-target-name": "-MT"}
# Calls that ask nvcc about itself: passed through untouched, uncached.
QUERIES = frozenset(
    {
        "--version",
        "-V",
        "--help",
        "-h",
        "--list-gpu-code",
        "-code-ls",
        "--list-gpu-arch",
        "-arch-ls",
    }
)
SOURCE_SUFFIXES = (".cu", ".cpp", ".cc", ".cxx", ".c", ".ptx", ".cubin", ".fatbin")
NVCC_DEFAULT = "nvcc-default"  # a call without target flags: nvcc picks (sm_75 in CUDA 13)
HINT_PREFIX = "torchkiln-nvcc-hint: "
# One device compile (cicc and ptxas for one arch of one translation unit) is what a MAX_JOBS
# slot pays for; nvcc's --threads runs several of them inside one job.
DEFAULT_THREADS = 1


@dataclass
class NvccCall:
    """One nvcc call as the build made it and as it runs."""

    args: list[str]
    asked: list[str] = field(default_factory=list)  # what the build asked for
    given: list[str] = field(default_factory=list)  # what it compiles for
    source: str = ""
    threads: int = 1
    split: int = 1  # --split-compile: threads inside one arch's cicc and ptxas


def _option_value(args: Sequence[str], index: int, names: Iterable[str]) -> tuple[str, int] | None:
    """Match args[index] against options taking a value: (value, args consumed), else None."""
    arg = args[index]
    for name in names:
        if arg == name and index + 1 < len(args):
            return args[index + 1], 2
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :], 1
        # `-gencode arch=…` passed as one argument (a setup.py without ninja keeps it whole).
        if arg.startswith(name + " "):
            return arg[len(name) + 1 :].strip(), 1
    return None


def _codes(gencode: str) -> list[str]:
    """The codes of one -gencode value: 'arch=compute_80,code=[sm_80,compute_80]' -> both."""
    _, _, codes = gencode.partition("code=")
    return [code for code in codes.strip("[]\"' ").replace("]", "").split(",") if code]


def _arch_targets(arch: str) -> list[str]:
    if arch.startswith("sm_"):
        return [arch, "compute_" + arch[3:]]
    return [arch]  # compute_X, or native / all / all-major (nvcc's own lists)


def _order(names: Iterable[str]) -> list[str]:
    def key(name: str) -> tuple[int, int, str]:
        number = name.split("_", 1)[-1]
        digits = number.rstrip("af")
        return (0 if name.startswith("sm_") else 1, int(digits) if digits.isdigit() else 0, name)

    return sorted(dict.fromkeys(names), key=key)


@dataclass
class SplitCall:
    """A call taken apart: the arguments without target and thread options, the targets those
    options ask for ([] when none: nvcc's default), the options themselves spelled joined
    (`-gencode=…`, read as one option by the compiler cache), the --threads asked for, and whether
    the call sets its own --split-compile (kept in `rest`)."""

    rest: list[str]
    targets: list[str]
    target_options: list[str]
    threads: int | None
    own_split: bool = False


def split_targets(args: Sequence[str]) -> SplitCall:
    """Take a call apart (see SplitCall); nvcc's long dependency options become short ones."""
    split = SplitCall([], [], [], None)
    gencodes: list[str] = []
    arch_values: list[str] = []
    code_values: list[str] = []
    index = 0
    while index < len(args):
        for names, sink in ((GENCODE, gencodes), (ARCH, arch_values), (CODE, code_values)):
            matched = _option_value(args, index, names)
            if matched:
                sink.append(matched[0])
                split.target_options.append(f"{names[0]}={matched[0]}")
                index += matched[1]
                break
        else:
            matched = _option_value(args, index, THREADS)
            if matched:
                split.threads = int(matched[0]) if matched[0].isdigit() else split.threads
                index += matched[1]
                continue
            split.own_split = split.own_split or any(
                args[index] == name or args[index].startswith(name + "=") for name in SPLIT_COMPILE
            )
            matched = _option_value(args, index, DEPENDENCY_VALUE_ALIASES)
            if matched:
                name = next(n for n in DEPENDENCY_VALUE_ALIASES if args[index].startswith(n))
                split.rest += [DEPENDENCY_VALUE_ALIASES[name], matched[0]]
                index += matched[1]
                continue
            split.rest.append(DEPENDENCY_ALIASES.get(args[index], args[index]))
            index += 1
    targets = [code for gencode in gencodes for code in _codes(gencode)]
    if code_values:
        targets += [code for value in code_values for code in value.split(",") if code]
    else:
        targets += [t for value in arch_values for a in value.split(",") for t in _arch_targets(a)]
    split.targets = _order(targets)
    return split


def target_flags(items: Iterable[arch_rules.Arch]) -> list[str]:
    """nvcc flags for exactly a CCA: SASS for each item (a/f as written), PTX only with +PTX."""
    flags: list[str] = []
    for item in items:
        flags.append(f"-gencode=arch={item.ptx_name},code={item.sass}")
        if item.ptx:
            flags.append(f"-gencode=arch={item.ptx_name},code={item.ptx_name}")
    return flags


def _source(args: Sequence[str]) -> str:
    return next((arg for arg in args if arg.endswith(SOURCE_SUFFIXES) and arg[:1] != "-"), "")


def rewrite(
    args: Sequence[str],
    cca: Sequence[arch_rules.Arch] | None,
    threads: int = DEFAULT_THREADS,
    split_compile: bool = False,
) -> NvccCall:
    """Decide how one nvcc call runs.

    cca given (EXTENSION_ARCHS=cca): every target option is replaced by exactly the CCA's
    targets. None (as-is): the build's own targets stay, spelled as joined options. Either way
    the build's --threads gives way to `threads` (the share of the memory budget one nvcc call
    may use), and only where the call compiles for several targets; the long dependency options
    become their short forms for the compiler cache.

    With `split_compile` (an nvcc that has the option), what `threads` leaves over after one
    thread per arch goes to --split-compile, which runs the optimizer of cicc and ptxas on
    several threads within one arch ("minimal (if any) impact on performance of the compiled
    binary", nvcc --help): one arch under cca no longer leaves the call's share of the cores
    idle. A call's own --split-compile stays as it is.
    """
    split = split_targets(args)
    asked = split.targets
    if cca is not None:
        given, flags = arch_rules.expected_binaries(cca), target_flags(cca)
    else:
        given, flags = (asked or [NVCC_DEFAULT]), split.target_options
    # PTX and SASS of one arch are one compile; --threads helps across archs only.
    arch_count = len({name.split("_", 1)[-1] for name in given})
    used = max(1, min(threads, arch_count))
    thread_flags = [f"--threads={used}"] if used > 1 else []
    spare = max(1, threads) // used if split_compile and not split.own_split else 1
    if spare > 1:
        thread_flags.append(f"--split-compile={spare}")
    return NvccCall(
        args=[*flags, *thread_flags, *split.rest],
        asked=asked,
        given=given,
        source=_source(args),
        threads=used,
        split=spare,
    )


def nvcc_threads(max_jobs: int, cuda_sources: int) -> int:
    """How many of its archs one nvcc call may compile at once.

    MAX_JOBS is the number of device compiles the memory allows at once (the build scripts
    derive it from the memory and the cores). At most min(MAX_JOBS, CUDA sources) nvcc calls run
    together, so each may run MAX_JOBS divided by that many: a 4-file extension on a 16-job
    machine compiles 4 archs per file at once; a 500-file one gets 1 thread and all the jobs.
    """
    jobs = max(1, max_jobs)
    if cuda_sources < 1:  # sources made during the build: as many calls as jobs may run
        return 1
    return max(1, jobs // min(jobs, cuda_sources))


def project_variables(cca: Sequence[arch_rules.Arch]) -> dict[str, str]:
    """The arch variables of projects that read their own, set from the CCA.

    FLASH_ATTN_CUDA_ARCHS (flash-attn's setup.py, `80;90`: it adds -gencode for the numbers it
    knows), TCNN_CUDA_ARCHITECTURES (tiny-cuda-nn's bindings/torch/setup.py, `86;90`, else it
    asks the GPU), CUDAARCHS (CMake >= 3.20 initialises CMAKE_CUDA_ARCHITECTURES from it).
    """
    numbers = ";".join(dict.fromkeys(f"{item.major}{item.minor}" for item in cca))
    return {
        "FLASH_ATTN_CUDA_ARCHS": numbers,
        "TCNN_CUDA_ARCHITECTURES": numbers,
        "CUDAARCHS": arch_rules.cmake_cuda_architectures(cca),
    }


def failure_hint(call: NvccCall, cca_text: str) -> str | None:
    """Say, for a call that failed under EXTENSION_ARCHS=cca, what the rewrite took away."""
    own = [target for target in call.asked if target not in call.given]
    if not own:
        return None
    where = call.source or "a source"
    specific = [target for target in own if target[-1:] in ("a", "f")]
    if specific:
        items = " or ".join(dict.fromkeys(cca_item(target) for target in specific))
        return (
            f"nvcc failed on {where} under EXTENSION_ARCHS=cca: the project compiles it for "
            f"{' '.join(specific)}, arch-specific code that CCA {cca_text} does not ask for; set "
            f"CCA to {items}, or EXTENSION_ARCHS=as-is to build with the project's own flags"
        )
    return (
        f"nvcc failed on {where} under EXTENSION_ARCHS=cca, which compiled it for "
        f"{' '.join(call.given)} instead of the project's own {' '.join(call.asked)}; if the "
        f"errors above are about an arch feature, EXTENSION_ARCHS=as-is builds with the "
        f"project's own flags"
    )


def cca_item(target: str) -> str:
    """The CCA item a target belongs to: 'sm_90a' -> '9.0a', 'compute_120f' -> '12.0f'."""
    number = target.split("_", 1)[-1]
    digits, suffix = number.rstrip("af"), number[len(number.rstrip("af")) :]
    return f"{digits[:-1]}.{digits[-1:]}{suffix}"


def _without(path: str, directory: str) -> str:
    return os.pathsep.join(item for item in path.split(os.pathsep) if item and item != directory)


def with_flag_variables(argv: Sequence[str], env: dict[str, str]) -> list[str]:
    """nvcc's own NVCC_PREPEND_FLAGS and NVCC_APPEND_FLAGS, taken into the call (and out of
    `env`) where nvcc would put them, so that their target and thread options are rewritten
    too: a -gencode there would otherwise escape EXTENSION_ARCHS=cca. A value that does not
    split like a command line stays where it is."""
    parts: dict[str, list[str]] = {}
    for name in FLAG_VARIABLES:
        try:
            parts[name] = shlex.split(env.get(name, ""))
        except ValueError:
            parts[name] = []
            continue
        env.pop(name, None)
    return [*parts["NVCC_PREPEND_FLAGS"], *argv, *parts["NVCC_APPEND_FLAGS"]]


def wrap(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Run one nvcc call as `rewrite` decides, through sccache; log it; say what a failure
    under EXTENSION_ARCHS=cca may owe to the rewrite."""
    env = dict(os.environ if environ is None else environ)
    real = env.get("TORCHKILN_REAL_NVCC", "")
    if not real:
        print(
            "torchkiln-nvcc: TORCHKILN_REAL_NVCC is not set; source extension-env.sh",
            file=sys.stderr,
        )
        return 2
    if QUERIES.intersection(argv):
        return subprocess.call([real, *argv])
    argv = with_flag_variables(argv, env)
    cca_text = env.get("TORCH_CUDA_ARCH_LIST", "")
    policy = env.get("TORCHKILN_EXTENSION_ARCHS", "as-is")
    cca = arch_rules.parse_cca(cca_text) if policy == "cca" and cca_text.strip() else None
    threads = int(env.get("TORCHKILN_NVCC_THREADS") or DEFAULT_THREADS)
    call = rewrite(argv, cca, threads, env.get("TORCHKILN_NVCC_SPLIT") == "1")
    log = env.get("TORCHKILN_NVCC_LOG")
    if log:
        record = {"source": call.source, "asked": call.asked, "given": call.given}
        record.update(threads=call.threads, split=call.split)
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    launcher = env.get("TORCHKILN_LAUNCHER", "")
    # nvcc's own host-compiler calls must not meet the launcher's compilers a second time.
    if env.get("TORCHKILN_LAUNCHER_BIN"):
        env["PATH"] = _without(env.get("PATH", ""), env["TORCHKILN_LAUNCHER_BIN"])
    command = [*([launcher] if launcher else []), real, *call.args]
    if env.get("TORCHKILN_NVCC_TRACE"):
        print(f"torchkiln-nvcc: {shlex.join(command)}", file=sys.stderr)
    status = subprocess.call(command, env=env)
    if status != 0 and cca is not None:
        hint = failure_hint(call, arch_rules.normalize_cca(cca_text))
        if hint:
            print(HINT_PREFIX + hint, file=sys.stderr)
    return status


def count_cuda_sources(tree: str) -> int:
    """Count the .cu files of a source tree (what nvcc will be called for)."""
    return sum(1 for _ in Path(tree).rglob("*.cu"))


def has_split_compile(nvcc: str) -> bool:
    """Tell whether an nvcc knows --split-compile (its --help lists it; older ones do not)."""
    if not nvcc:
        return False
    try:
        shown = subprocess.run([nvcc, "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--split-compile " in shown.stdout


def env_lines(tree: str, environ: Mapping[str, str]) -> list[str]:
    """Shell lines extension-env.sh evaluates: the thread budget, and under EXTENSION_ARCHS=cca
    the projects' own arch variables."""
    max_jobs = int(environ.get("MAX_JOBS") or 1)
    sources = count_cuda_sources(tree)
    threads = nvcc_threads(max_jobs, sources)
    # Without ninja one file compiles at a time: the build hook shares the budget once it knows
    # how many modules compile at once (torchkiln.inimage.modules).
    if environ.get("TORCHKILN_EXTENSION_MODULES") != "off" and modules.ninja_off(tree):
        threads = max(1, max_jobs)
    variables = {"TORCHKILN_NVCC_THREADS": str(threads), "NVCC_THREADS": str(threads)}
    if threads > 1 and has_split_compile(environ.get("TORCHKILN_REAL_NVCC", "")):
        variables["TORCHKILN_NVCC_SPLIT"] = "1"
    policy = environ.get("TORCHKILN_EXTENSION_ARCHS", "as-is")
    cca_text = environ.get("TORCH_CUDA_ARCH_LIST", "")
    if policy == "cca" and cca_text.strip():
        variables.update(project_variables(arch_rules.parse_cca(cca_text)))
    lines = [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]
    said = " ".join(
        f"{name}={value}" for name, value in variables.items() if name != "NVCC_THREADS"
    )
    lines.append(
        shlex.join(
            [
                "echo",
                f"torchkiln: nvcc through sccache, EXTENSION_ARCHS={policy}; {said} "
                f"(MAX_JOBS={max_jobs}, {sources} CUDA sources)",
            ]
        )
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """`env TREE`: print extension-env.sh's variables; `run ARGS…`: what the nvcc shim calls."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["env"] and len(args) == 2:
        print("\n".join(env_lines(args[1], os.environ)))
        return 0
    if args[:1] == ["run"]:
        return wrap(args[1:])
    print("usage: python -m torchkiln.inimage.nvcc env TREE | run NVCC-ARGS…", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
