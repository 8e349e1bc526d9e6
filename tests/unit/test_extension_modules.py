"""Projects whose setup.py turns ninja off: told apart by reading setup.py, their modules built at
once through setuptools' own `build_ext --parallel` (DIST_EXTRA_CONFIG) and torchkiln's build
hook, nvcc given the budget of the compiles that really run at once, and the summary's words.
The hook runs for real on a three-module C project (tests/integration/test_extensions.py builds
the CUDA fixture with torch's BuildExtension and nvcc)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from torchkiln.inimage import modules
from torchkiln.inimage import nvcc as wrapper

SCATTER = """
setup(
    name='torch_scatter',
    cmdclass={
        'build_ext':
        BuildExtension.with_options(no_python_abi_suffix=True, use_ninja=False)
    },
)
"""


@pytest.mark.parametrize(
    ("text", "off"),
    [
        (SCATTER, True),
        ("cmdclass={'build_ext': BuildExtension.with_options(use_ninja = False)}", True),
        ("cmdclass={'build_ext': BuildExtension}", False),
        ("# use_ninja=False made builds slow\ncmdclass={'build_ext': BuildExtension}", False),
        ("BuildExtension.with_options(use_ninja=True)", False),
    ],
    ids=["torch-scatter", "spaced", "default", "a-comment", "ninja-on"],
)
def test_a_ninja_off_project_is_told_apart_by_its_setup_py(
    tmp_path: Path, text: str, off: bool
) -> None:
    (tmp_path / "setup.py").write_text(text)
    assert modules.ninja_off(tmp_path) is off


def test_a_tree_without_setup_py_is_not_ninja_off(tmp_path: Path) -> None:
    assert not modules.ninja_off(tmp_path)


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        ("", "[build_ext]\nparallel = 8\n"),
        (
            "[egg_info]\ntag_build = .dev\n",
            "[egg_info]\ntag_build = .dev\n\n[build_ext]\nparallel = 8\n",
        ),
        ("[build_ext]\ninplace = 1\n", "[build_ext]\nparallel = 8\ninplace = 1\n"),
        ("[build_ext]\nparallel = 2\n", "[build_ext]\nparallel = 2\n"),  # the user's own wins
    ],
    ids=["none", "another-section", "build-ext-without-parallel", "users-parallel"],
)
def test_the_extra_configuration_keeps_the_users_own(existing: str, expected: str) -> None:
    assert modules.extra_config(8, existing) == expected


def exported(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            found[name] = value.strip("'")
    return found


def test_env_lines_name_the_configuration_and_the_hook(tmp_path: Path) -> None:
    (tmp_path / "setup.py").write_text(SCATTER)
    lines = modules.env_lines(str(tmp_path), {"MAX_JOBS": "16", "PYTHONPATH": "/opt/src"})
    variables = exported(lines)
    config = Path(variables["DIST_EXTRA_CONFIG"])
    assert config.read_text() == "[build_ext]\nparallel = 16\n"
    assert variables["PYTHONPATH"] == f"{modules.HOOK_DIR}:/opt/src"
    assert (modules.HOOK_DIR / "sitecustomize.py").is_file()
    assert variables["TORCHKILN_MODULE_JOBS"] == "16"
    assert (
        "ninja off in its setup.py (use_ninja=False): its modules compile in parallel" in lines[-1]
    )
    config.unlink()


def test_serial_builds_one_module_at_a_time_and_off_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "setup.py").write_text(SCATTER)
    serial = exported(
        modules.env_lines(
            str(tmp_path), {"MAX_JOBS": "16", "TORCHKILN_EXTENSION_MODULES": "serial"}
        )
    )
    assert Path(serial["DIST_EXTRA_CONFIG"]).read_text() == "[build_ext]\nparallel = 1\n"
    Path(serial["DIST_EXTRA_CONFIG"]).unlink()
    assert modules.env_lines(str(tmp_path), {"TORCHKILN_EXTENSION_MODULES": "off"}) == []
    (tmp_path / "setup.py").write_text("cmdclass={'build_ext': BuildExtension}")
    assert modules.env_lines(str(tmp_path), {"MAX_JOBS": "16"}) == []


def test_a_bad_mode_is_one_line_naming_the_modes(tmp_path: Path) -> None:
    env = dict(os.environ, TORCHKILN_EXTENSION_MODULES="fast", PYTHONPATH=str(SRC))
    result = subprocess.run(
        [sys.executable, "-m", "torchkiln.inimage.modules", "env", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "ERROR: TORCHKILN_EXTENSION_MODULES='fast' is not a mode; write one of parallel, serial, "
        "off (parallel builds a ninja-off project's modules at once, the default)"
    ]


def test_a_ninja_off_build_gives_its_one_nvcc_call_the_whole_budget(tmp_path: Path) -> None:
    for index in range(4):
        (tmp_path / f"k{index}.cu").write_text("")
    (tmp_path / "setup.py").write_text("cmdclass={'build_ext': BuildExtension}")
    ninja = exported(wrapper.env_lines(str(tmp_path), {"MAX_JOBS": "16"}))
    assert ninja["TORCHKILN_NVCC_THREADS"] == "4"  # ninja runs the 4 files at once
    (tmp_path / "setup.py").write_text(SCATTER)
    off = exported(wrapper.env_lines(str(tmp_path), {"MAX_JOBS": "16"}))
    assert off["TORCHKILN_NVCC_THREADS"] == "16"  # one file at a time until the hook shares
    before = exported(
        wrapper.env_lines(str(tmp_path), {"MAX_JOBS": "16", "TORCHKILN_EXTENSION_MODULES": "off"})
    )
    assert before["TORCHKILN_NVCC_THREADS"] == "4"


@pytest.mark.parametrize(
    ("record", "words"),
    [
        (
            {"modules": 8, "at_once": 8, "serial": ""},
            "ninja off in its setup.py: 8 modules compiled in parallel (8 at once)",
        ),
        (
            {"modules": 1, "at_once": 1, "serial": ""},
            "ninja off in its setup.py, one module: nothing but ninja can speed it up",
        ),
        (
            {"modules": 3, "at_once": 1, "serial": "csrc/common.cpp is compiled into two modules"},
            "ninja off in its setup.py: 3 modules compiled one at a time (csrc/common.cpp is "
            "compiled into two modules)",
        ),
        (None, None),
    ],
    ids=["parallel", "one-module", "kept-serial", "ninja-on"],
)
def test_the_summary_says_how_the_modules_were_built(record, words) -> None:
    assert modules.describe(record) == words


# --- the hook, for real --------------------------------------------------------------------

SRC = Path(modules.__file__).resolve().parents[2]


def test_each_thread_keeps_its_own_compiler_so() -> None:
    sys.path.insert(0, str(modules.HOOK_DIR))
    try:
        import sitecustomize as hook  # the hook's module, imported here by path
    finally:
        sys.path.remove(str(modules.HOOK_DIR))
        sys.modules.pop("sitecustomize", None)

    class Compiler:
        def __init__(self) -> None:
            self.compiler_so = ["gcc", "-fPIC"]

        def set_executable(self, key: str, value: list[str]) -> None:
            setattr(self, key, value)

    compiler = Compiler()
    hook._per_thread_compiler(compiler)
    seen: list[list[str]] = []
    swapped = threading.Event()
    done = threading.Event()

    def cuda_file() -> None:  # BuildExtension's swap for a .cu, held while it compiles
        compiler.set_executable("compiler_so", ["nvcc"])
        swapped.set()
        done.wait(10)

    thread = threading.Thread(target=cuda_file)
    thread.start()
    swapped.wait(10)
    seen.append(list(compiler.compiler_so))  # a .c or .cpp meanwhile, in this thread
    done.set()
    thread.join(10)
    assert seen == [["gcc", "-fPIC"]]
    assert isinstance(compiler, Compiler)


PROJECT = """
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

class NinjaOff(build_ext):  # what BuildExtension.with_options(use_ninja=False) sets
    use_ninja = False

setup(
    name="kiln_three_modules",
    ext_modules=[Extension(f"kiln_three_modules.m{i}", SOURCES[i]) for i in range(3)],
    cmdclass={"build_ext": NinjaOff},  # use_ninja=False
)
"""


def build_three(tmp_path: Path, sources: list[list[str]], mode: str = "parallel") -> str:
    if not shutil.which("cc"):
        pytest.skip("no C compiler on this machine")
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in {source for group in sources for source in group}:
        stem = Path(name).stem
        (tree / name).write_text(f"int {stem}(void) {{ return 1; }}\n")
    (tree / "setup.py").write_text(f"SOURCES = {sources!r}\n" + PROJECT)
    env = dict(os.environ, MAX_JOBS="4", TORCHKILN_EXTENSION_MODULES=mode)
    env["PYTHONPATH"] = str(SRC)
    env["TORCHKILN_MODULES_LOG"] = str(tmp_path / "modules.log")
    lines = modules.env_lines(str(tree), env, scratch=str(tmp_path))
    env.update(exported(lines))
    result = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "-b", "out", "-t", "tmp"],
        cwd=tree, capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(list((tree / "out" / "kiln_three_modules").glob("m*.so"))) == 3
    return result.stdout


def test_the_hook_builds_the_modules_at_once_and_records_it(tmp_path: Path) -> None:
    output = build_three(tmp_path, [["a.c"], ["b.c"], ["c.c"]])
    record = {"modules": 3, "at_once": 3, "serial": ""}
    assert f"torchkiln-modules: {json.dumps(record)}" in output
    assert modules.read_record(tmp_path / "modules.log") == record


def test_a_source_shared_by_two_modules_keeps_the_build_serial(tmp_path: Path) -> None:
    output = build_three(tmp_path, [["a.c", "common.c"], ["b.c", "common.c"], ["c.c"]])
    assert "torchkiln: building the 3 modules one at a time: common.c is compiled into" in output
    assert modules.read_record(tmp_path / "modules.log")["at_once"] == 1


def test_serial_mode_records_one_at_a_time(tmp_path: Path) -> None:
    build_three(tmp_path, [["a.c"], ["b.c"], ["c.c"]], mode="serial")
    assert modules.read_record(tmp_path / "modules.log") == {
        "modules": 3,
        "at_once": 1,
        "serial": "parallel = 1",
    }
