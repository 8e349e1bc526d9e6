"""The nvcc wrapper's decisions: which targets a call compiles for under EXTENSION_ARCHS, how
many threads it may use, what a failure under cca says; and the wrapper run for real on a stand-in
nvcc that records its arguments (tests/integration/test_extensions.py runs the real one)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from torchkiln.inimage import archs
from torchkiln.inimage import nvcc as wrapper

CAUSAL_CONV1D = [  # what causal-conv1d 1.7.0's setup.py and cpp_extension's ninja file pass
    "--generate-dependencies-with-compile",
    "--dependency-output",
    "/b/fwd.o.d",
    "-I/src/csrc",
    "-c",
    "/src/csrc/causal_conv1d_fwd.cu",
    "-o",
    "/b/fwd.o",
    "-O3",
    "--use_fast_math",
    "-lineinfo",
    "-gencode",
    "arch=compute_75,code=sm_75",
    "-gencode",
    "arch=compute_80,code=sm_80",
    "-gencode",
    "arch=compute_90,code=sm_90",
    "-gencode",
    "arch=compute_120,code=sm_120",
    "--threads",
    "4",
]


A90 = "compute_90a"


def cca(text: str) -> list[archs.Arch]:
    return archs.parse_cca(text)


def targets_in(args: list[str]) -> list[str]:
    return wrapper.split_targets(args).targets


@pytest.mark.parametrize(
    ("given", "targets"),
    [
        (["-gencode", "arch=compute_80,code=sm_80"], ["sm_80"]),
        (["-gencode=arch=compute_80,code=sm_80"], ["sm_80"]),
        (["--generate-code=arch=compute_80,code=[sm_80,compute_80]"], ["sm_80", "compute_80"]),
        (
            ["--generate-code", 'arch=compute_90a,code="sm_90a,compute_90a"'],
            ["sm_90a", "compute_90a"],
        ),
        (["-gencode arch=compute_86,code=sm_86"], ["sm_86"]),  # one argument, no ninja
        (["-arch=sm_80"], ["sm_80", "compute_80"]),
        (["-arch", "compute_80"], ["compute_80"]),
        (["--gpu-architecture=compute_80", "--gpu-code=sm_86,compute_80"], ["sm_86", "compute_80"]),
        (["-arch=sm_90", "-gencode=arch=compute_80,code=sm_80"], ["sm_80", "sm_90", "compute_90"]),
        (["-arch=native"], ["native"]),
        (["-O3", "-c", "x.cu"], []),
    ],
    ids=[
        "gencode-split",
        "gencode-joined",
        "generate-code-list",
        "quoted-arch-specific",
        "one-argument",
        "arch-sm",
        "arch-compute",
        "arch-and-code",
        "gencode-plus-arch",
        "native",
        "none",
    ],
)
def test_the_targets_a_call_asks_for_are_nvccs(given: list[str], targets: list[str]) -> None:
    assert targets_in(given) == targets


def test_cca_replaces_the_projects_nine_archs_with_exactly_its_own() -> None:
    call = wrapper.rewrite(CAUSAL_CONV1D, cca("9.0"), threads=8)
    assert call.given == ["sm_90"]
    assert call.asked == ["sm_75", "sm_80", "sm_90", "sm_120"]
    assert [a for a in call.args if "arch" in a or "code" in a] == [
        "-gencode=arch=compute_90,code=sm_90"
    ]
    # One arch: the project's --threads 4 would gain nothing.
    assert not any(a.startswith(("--threads", "-t")) for a in call.args)
    assert call.source == "/src/csrc/causal_conv1d_fwd.cu"


@pytest.mark.parametrize(
    ("text", "flags"),
    [
        ("8.6", ["-gencode=arch=compute_86,code=sm_86"]),
        (
            "8.6;9.0",
            ["-gencode=arch=compute_86,code=sm_86", "-gencode=arch=compute_90,code=sm_90"],
        ),
        (
            "9.0+PTX",
            ["-gencode=arch=compute_90,code=sm_90", "-gencode=arch=compute_90,code=compute_90"],
        ),
        ("9.0a", ["-gencode=arch=compute_90a,code=sm_90a"]),
        ("12.0f", ["-gencode=arch=compute_120f,code=sm_120f"]),
    ],
    ids=["one", "two", "ptx-only-with-plus-ptx", "a-where-asked", "f-where-asked"],
)
def test_the_cca_forms_become_exactly_their_targets(text: str, flags: list[str]) -> None:
    call = wrapper.rewrite(["-gencode=arch=compute_90a,code=sm_90a", "-c", "x.cu"], cca(text))
    assert [a for a in call.args if a.startswith("-gencode")] == flags
    assert call.given == archs.expected_binaries(cca(text))


def test_as_is_keeps_the_projects_targets_spelled_for_ccache() -> None:
    call = wrapper.rewrite(CAUSAL_CONV1D, None, threads=3)
    assert call.given == call.asked == ["sm_75", "sm_80", "sm_90", "sm_120"]
    assert call.args[:5] == [
        "-gencode=arch=compute_75,code=sm_75",
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_120,code=sm_120",
        "--threads=3",
    ]
    # nvcc's long dependency options, which ccache 4.7 reads as a second source file.
    assert call.args[5:8] == ["-MD", "-MF", "/b/fwd.o.d"]
    assert "--generate-dependencies-with-compile" not in call.args
    assert "4" not in call.args  # the project's own --threads 4 is gone with its value


def test_as_is_keeps_nvccs_own_lists_and_its_default() -> None:
    assert wrapper.rewrite(["-arch", "native", "-c", "x.cu"], None).args[0] == "-arch=native"
    default = wrapper.rewrite(["-c", "x.cu"], None, threads=8)
    assert (default.args, default.given) == (["-c", "x.cu"], [wrapper.NVCC_DEFAULT])


@pytest.mark.parametrize(
    ("threads", "text", "used"),
    [(8, "8.6", 1), (8, "8.6;9.0;12.0", 3), (2, "8.6;9.0;12.0", 2), (8, "9.0+PTX", 1)],
    ids=["one-arch", "all-archs", "budget", "ptx-of-one-arch-is-one-compile"],
)
def test_threads_are_spent_across_archs_within_the_budget(threads, text, used) -> None:
    call = wrapper.rewrite(["-c", "x.cu"], cca(text), threads=threads)
    assert call.threads == used
    assert (f"--threads={used}" in call.args) == (used > 1)


@pytest.mark.parametrize(
    ("threads", "text", "used", "split"),
    [(5, "9.0", 1, 5), (5, "8.6;9.0", 2, 2), (5, "7.5;8.0;8.6;9.0;12.0", 5, 1), (1, "9.0", 1, 1)],
    ids=["one-arch-takes-the-share", "two-archs-halves", "as-many-archs-as-threads", "no-share"],
)
def test_what_threads_leave_over_goes_to_split_compile(threads, text, used, split) -> None:
    call = wrapper.rewrite(CAUSAL_CONV1D, cca(text), threads=threads, split_compile=True)
    assert (call.threads, call.split) == (used, split)
    assert (f"--split-compile={split}" in call.args) == (split > 1)
    # threads x split never exceeds the call's share of MAX_JOBS.
    assert call.threads * call.split <= threads


def test_split_compile_only_where_nvcc_has_it_and_the_call_sets_none() -> None:
    assert not any("split" in a for a in wrapper.rewrite(["-c", "x.cu"], cca("9.0"), 8).args)
    own = ["--split-compile", "2", "-c", "x.cu"]
    call = wrapper.rewrite(own, cca("9.0"), threads=8, split_compile=True)
    assert call.split == 1 and call.args.count("--split-compile") == 1
    assert not any(a.startswith("--split-compile=") for a in call.args)


@pytest.mark.parametrize(
    ("max_jobs", "sources", "threads"),
    [(16, 3, 5), (16, 500, 1), (2, 3, 1), (1, 1, 1), (16, 0, 1), (8, 1, 8)],
    ids=["few-files-many-jobs", "many-files", "small-machine", "one", "no-cu", "one-file"],
)
def test_nvcc_threads_keep_device_compiles_within_max_jobs(max_jobs, sources, threads) -> None:
    assert wrapper.nvcc_threads(max_jobs, sources) == threads
    assert min(max_jobs, max(1, sources)) * threads <= max(1, max_jobs)


def test_projects_own_arch_variables_come_from_the_cca() -> None:
    assert wrapper.project_variables(cca("8.6;9.0a")) == {
        "FLASH_ATTN_CUDA_ARCHS": "86;90",
        "TCNN_CUDA_ARCHITECTURES": "86;90",
        "CUDAARCHS": "86-real;90a-real",
    }


def test_a_failure_under_cca_names_the_arch_specific_target_and_both_fixes() -> None:
    call = wrapper.rewrite(["-gencode=arch=compute_90a,code=sm_90a", "-c", "h.cu"], cca("9.0"))
    hint = wrapper.failure_hint(call, "9.0")
    assert hint and "sm_90a" in hint and "CCA to 9.0a" in hint and "EXTENSION_ARCHS=as-is" in hint
    plain = wrapper.rewrite(["-arch=sm_80", "-c", "b.cu"], cca("7.5"))
    assert "EXTENSION_ARCHS=as-is" in (wrapper.failure_hint(plain, "7.5") or "")
    # A call that asked for the CCA itself lost nothing to the rewrite: no hint.
    own = wrapper.rewrite(["-gencode=arch=compute_90,code=sm_90", "-c", "x.cu"], cca("9.0"))
    assert wrapper.failure_hint(own, "9.0") is None


def test_env_lines_give_the_budget_and_under_cca_the_variables(tmp_path: Path) -> None:
    for name in ("a.cu", "b.cu", "sub/c.cu", "d.cpp"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    environ = {"MAX_JOBS": "12", "TORCH_CUDA_ARCH_LIST": "9.0", "TORCHKILN_EXTENSION_ARCHS": "cca"}
    lines = wrapper.env_lines(str(tmp_path), environ)
    assert "export TORCHKILN_NVCC_THREADS=4" in lines
    assert not any("TORCHKILN_NVCC_SPLIT" in line for line in lines)  # no nvcc named
    old = tmp_path / "old-nvcc"
    old.write_text("#!/bin/sh\necho '--threads <number>  (-t)'\n")
    new = tmp_path / "new-nvcc"
    new.write_text("#!/bin/sh\necho '--split-compile <number>  (-split-compile)'\n")
    for program in (old, new):
        program.chmod(0o755)
    with_old = wrapper.env_lines(str(tmp_path), {**environ, "TORCHKILN_REAL_NVCC": str(old)})
    assert not any("TORCHKILN_NVCC_SPLIT" in line for line in with_old)
    with_new = wrapper.env_lines(str(tmp_path), {**environ, "TORCHKILN_REAL_NVCC": str(new)})
    assert "export TORCHKILN_NVCC_SPLIT=1" in with_new
    assert "export FLASH_ATTN_CUDA_ARCHS=90" in lines
    as_is = wrapper.env_lines(str(tmp_path), {**environ, "TORCHKILN_EXTENSION_ARCHS": "as-is"})
    assert not any("FLASH_ATTN" in line for line in as_is)


def stand_in_nvcc(tmp_path: Path, status: int = 0) -> Path:
    """A program in nvcc's place that records its arguments and exits with `status`."""
    program = tmp_path / "nvcc"
    program.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "args"}\necho "PATH=$PATH" '
        f">> {tmp_path / 'args'}\nexit {status}\n"
    )
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return program


def test_the_wrapper_runs_the_rewritten_call_logs_it_and_hides_the_launcher_compilers(
    tmp_path: Path,
) -> None:
    log = tmp_path / "calls.jsonl"
    environ = {
        "PATH": f"/tmp/launcher-bin{os.pathsep}/usr/bin",
        "TORCHKILN_REAL_NVCC": str(stand_in_nvcc(tmp_path)),
        "TORCHKILN_EXTENSION_ARCHS": "cca",
        "TORCH_CUDA_ARCH_LIST": "8.6",
        "TORCHKILN_NVCC_LOG": str(log),
        "TORCHKILN_LAUNCHER_BIN": "/tmp/launcher-bin",
    }
    assert wrapper.wrap(CAUSAL_CONV1D, environ) == 0
    ran = (tmp_path / "args").read_text().splitlines()
    assert ran[0] == "-gencode=arch=compute_86,code=sm_86"
    assert ran[-1] == "PATH=/usr/bin"
    assert json.loads(log.read_text()) == {
        "source": "/src/csrc/causal_conv1d_fwd.cu",
        "asked": ["sm_75", "sm_80", "sm_90", "sm_120"],
        "given": ["sm_86"],
        "threads": 1,
        "split": 1,
    }


def test_the_wrapper_passes_queries_through_and_says_what_a_failure_owes_to_cca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = {
        "PATH": "/usr/bin",
        "TORCHKILN_REAL_NVCC": str(stand_in_nvcc(tmp_path, status=1)),
        "TORCHKILN_EXTENSION_ARCHS": "cca",
        "TORCH_CUDA_ARCH_LIST": "9.0",
    }
    assert wrapper.wrap(["--version"], environ) == 1
    assert (tmp_path / "args").read_text().splitlines()[0] == "--version"
    assert "torchkiln-nvcc-hint" not in capsys.readouterr().err
    call = ["-gencode=arch=compute_90a,code=sm_90a", "-c", "hopper.cu"]
    assert wrapper.wrap(call, environ) == 1
    err = capsys.readouterr().err
    assert err.startswith(wrapper.HINT_PREFIX) and "hopper.cu" in err and "9.0a" in err


def test_nvccs_flag_variables_are_rewritten_with_the_call(tmp_path: Path) -> None:
    """A -gencode in NVCC_APPEND_FLAGS would escape the rewrite: it joins the call instead."""
    program = tmp_path / "nvcc"
    program.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "args"}\n'
        f'echo "APPEND=$NVCC_APPEND_FLAGS PREPEND=$NVCC_PREPEND_FLAGS" >> {tmp_path / "args"}\n'
    )
    program.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    environ = {
        "PATH": "/usr/bin",
        "TORCHKILN_REAL_NVCC": str(program),
        "TORCHKILN_EXTENSION_ARCHS": "cca",
        "TORCH_CUDA_ARCH_LIST": "8.6",
        "TORCHKILN_NVCC_LOG": str(log),
        "NVCC_PREPEND_FLAGS": "-O3 -gencode arch=compute_80,code=sm_80",
        "NVCC_APPEND_FLAGS": "-gencode=arch=compute_120,code=sm_120 --threads 4 -lineinfo",
    }
    assert wrapper.wrap(["-c", "/src/k.cu", "-o", "k.o"], environ) == 0
    ran = (tmp_path / "args").read_text().splitlines()
    assert [arg for arg in ran if "arch=" in arg] == ["-gencode=arch=compute_86,code=sm_86"]
    assert ran[-1] == "APPEND= PREPEND="
    assert ran.index("-O3") < ran.index("-c") < ran.index("-lineinfo")
    assert "--threads" not in ran and "4" not in ran
    assert json.loads(log.read_text())["asked"] == ["sm_80", "sm_120"]
    # As-is keeps them, now visible to the report.
    environ["TORCHKILN_EXTENSION_ARCHS"] = "as-is"
    log.unlink()
    assert wrapper.wrap(["-c", "/src/k.cu"], environ) == 0
    ran = (tmp_path / "args").read_text().splitlines()
    assert [arg for arg in ran if "arch=" in arg] == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_120,code=sm_120",
    ]
    assert json.loads(log.read_text())["given"] == ["sm_80", "sm_120"]
