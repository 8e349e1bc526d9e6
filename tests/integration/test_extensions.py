"""Extensions compiled for exactly the CCA, on the real engine with CUDA from the index: the
fixture tests/fixtures/extension hard-codes two -gencode flags in its setup.py (as causal-conv1d
does nine). Built with EXTENSION_ARCHS=as-is the summary names the project's archs; with cca the
exported wheel holds exactly the CCA's SASS, read with the fatbin reader and with NVIDIA's
cuobjdump (from its wheel on the index). A one-line change in one .cu rebuilds that file alone:
sccache serves the others. Bad extension inputs are refused in seconds, before any build.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from projects import REPO, Project, assert_ok, make_project, remove_project

from torchkiln.inimage import extreport, fatbin

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

FIXTURE = REPO / "tests" / "fixtures" / "extension"
NAME = "kiln_gencode_ops"
CCA = "8.6"
# CUDA from the index, torch the official wheel (torchvision's stand-in compiled against it, as
# test_cuda.py's cuda_wheel builds it, with the same MAX_JOBS: the same steps, so BuildKit shares
# them). MAX_JOBS is the budget of the compile steps that run at once: the vision step, cached
# here, takes none of it, and each extension build gets both jobs.
CUDA = {"CUDA_FROM": "pypi", "MAX_JOBS": "2", "BUILD_MODE": "torch-wheel"}


def fixture_copy(where: Path, change: str = "", fixture: Path = FIXTURE) -> Path:
    """A copy of the fixture that BuildKit has not seen (a new file outside the compile), so the
    extension step runs and reports; `change` is a line appended to shift.cu."""
    target = where / f"ext-{uuid.uuid4().hex[:8]}"
    shutil.copytree(fixture, target)
    (target / "BUILD-STAMP").write_text(uuid.uuid4().hex)
    if change:
        kernel = target / "csrc" / "shift.cu"
        kernel.write_text(kernel.read_text() + change + "\n")
    return target


@pytest.fixture(scope="module")
def extension_project(tmp_path_factory: pytest.TempPathFactory):
    project = make_project(tmp_path_factory.mktemp("ext"), "ext", **CUDA)
    try:
        yield project
    finally:
        remove_project(project)


@pytest.fixture(scope="module")
def inputs_project(tmp_path_factory: pytest.TempPathFactory):
    """A CPU project: the input checks run before anything builds, whatever the image."""
    project = make_project(tmp_path_factory.mktemp("extinputs"), "extinputs")
    try:
        yield project
    finally:
        remove_project(project)


def run_task(project: Project, task: str, folder: Path, policy: str | None, *args: str) -> str:
    """Run `invoke build` or `invoke wheels` for CCA with the vision stand-in and the folder."""
    vision = f"vision={project.root / 'tests' / 'fixtures' / 'vision'}"
    env = dict(project.env, **({"EXTENSION_ARCHS": policy} if policy else {}))
    started = time.monotonic()
    result = replace(project, env=env).invoke(
        task, *args, "--cca", CCA, "--source", vision, "--extension", str(folder)
    )
    output = assert_ok(result)
    print(
        f"\n{task} with EXTENSION_ARCHS={policy or 'default'}: {time.monotonic() - started:.0f} s"
    )
    return output


def export(
    project: Project, folder: Path, policy: str | None = None, name: str = NAME
) -> tuple[str, Path, dict]:
    """`invoke wheels` of the stages alone (no train image: each costs gigabytes of disk); its
    output, the fixture's wheel and its BUILD-INFO entry."""
    dest = project.root / f"dist-{uuid.uuid4().hex[:6]}"
    output = run_task(project, "wheels", folder, policy, "--dest", str(dest))
    (wheel,) = dest.glob(f"{name}-*.whl")
    info = json.loads((dest / "BUILD-INFO.json").read_text())
    (entry,) = [entry for entry in info["wheels"] if entry["name"] == name]
    return output, wheel, entry


def extension_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("extension:")]


@pytest.fixture(scope="module")
def cuobjdump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """NVIDIA's cuobjdump, from its wheel on the index (the toolkit wheels the images install
    have no cuobjdump)."""
    folder = tmp_path_factory.mktemp("cuobjdump")
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    subprocess.run(
        [*download, "--only-binary", ":all:", "--dest", str(folder), "nvidia-cuda-cuobjdump"],
        check=True,
        timeout=300,
    )
    (wheel,) = folder.glob("nvidia_cuda_cuobjdump-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (member,) = [name for name in archive.namelist() if name.endswith("bin/cuobjdump")]
        program = folder / "cuobjdump"
        program.write_bytes(archive.read(member))
    program.chmod(0o755)
    return program


def device_code(wheel: Path, tmp: Path, cuobjdump: Path) -> tuple[list[str], list[str], str]:
    """The extension library's SASS and PTX by the fatbin reader, and cuobjdump's listing."""
    with zipfile.ZipFile(wheel) as archive:
        (member,) = [name for name in archive.namelist() if name.endswith(".so")]
        library = tmp / Path(member).name
        library.write_bytes(archive.read(member))
    found = fatbin.read_archs(library)
    listing = subprocess.run(
        [str(cuobjdump), "--list-elf", "--list-ptx", str(library)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return found.sass, found.ptx, listing.stdout + listing.stderr


def cuobjdump_archs(listing: str) -> tuple[list[str], list[str]]:
    """SASS and PTX names in `cuobjdump --list-elf --list-ptx` output (`x.sm_86.cubin`)."""
    sass = sorted(set(re.findall(r"ELF file\s+\d+: \S*?\.(sm_\d+[af]?)\.cubin", listing)))
    ptx = sorted(set(re.findall(r"PTX file\s+\d+: \S*?\.sm_(\d+[af]?)\.ptx", listing)))
    return sass, [f"compute_{number}" for number in ptx]


def test_as_is_keeps_the_projects_archs_and_the_summary_names_them(
    extension_project: Project, cuobjdump: Path, tmp_path: Path
) -> None:
    # The export's summary: the same report as `invoke build`'s, without a train image.
    output, wheel, entry = export(extension_project, fixture_copy(tmp_path), "as-is")
    (line,) = extension_lines(output)
    assert re.fullmatch(
        rf"extension: +{NAME}: sm_75 sm_80 \(2 archs\) although CCA is 8\.6 — its setup\.py "
        r"sets its own -gencode flags; runs on 8\.6 through SASS sm_80; [\d.]+ MB, built in "
        r"\d+ s; "
        r"EXTENSION_ARCHS=cca builds only 8\.6",
        line,
    ), line
    sass, ptx, listing = device_code(wheel, tmp_path, cuobjdump)
    assert (sass, ptx) == (["sm_75", "sm_80"], [])
    assert cuobjdump_archs(listing) == (["sm_75", "sm_80"], []), listing
    assert (entry["sass"], entry["ptx"]) == (["sm_75", "sm_80"], [])


@pytest.fixture(scope="module")
def cca_export(extension_project: Project, tmp_path_factory: pytest.TempPathFactory):
    """The fixture exported with the default policy (cca): the build the one-line change starts
    from, as well as the one the cca test reads."""
    return export(extension_project, fixture_copy(tmp_path_factory.mktemp("cca")))


def test_cca_builds_exactly_the_cca_whatever_the_setup_py_says(
    cca_export, cuobjdump: Path, tmp_path: Path
) -> None:
    output, wheel, entry = cca_export
    (line,) = extension_lines(output)
    assert re.fullmatch(
        rf"extension: +{NAME}: sm_86 \(CCA 8\.6\); [\d.]+ MB, built in \d+ s; its setup\.py "
        r"asked for sm_75 "
        r"sm_80, EXTENSION_ARCHS=cca compiled only the CCA",
        line,
    ), line
    assert "FLASH_ATTN_CUDA_ARCHS=86" in output  # the projects' own variables, from the CCA
    sass, ptx, listing = device_code(wheel, tmp_path, cuobjdump)
    assert (sass, ptx) == (["sm_86"], [])
    assert cuobjdump_archs(listing) == (["sm_86"], []), listing
    assert (entry["sass"], entry["ptx"]) == (["sm_86"], [])
    report = next(
        json.loads(text.split(extreport.REPORT_PREFIX, 1)[1])
        for text in output.splitlines()
        if extreport.REPORT_PREFIX in text
    )
    assert report["asked"] == ["sm_75", "sm_80"] and report["policy"] == "cca"


def test_a_one_line_change_in_one_cu_recompiles_that_file_alone(
    extension_project: Project, cca_export, tmp_path: Path
) -> None:
    # cca_export compiled the same fixture unchanged, with the same settings, just before.
    # A change the compiler sees (a comment would be a preprocessed-mode hit, rightly).
    change = f"static const long torchkiln_touched = {int(time.time() * 1000)}L;"
    output, _, _ = export(extension_project, fixture_copy(tmp_path, change))
    counts = re.search(rf"torchkiln-sccache: {NAME} hits=(\d+) misses=(\d+)", output)
    assert counts, output[-3000:]
    print(f"\nafter a one-line change in shift.cu: sccache hits={counts[1]} misses={counts[2]}")
    # ops.cpp and scale.cu from the cache, shift.cu compiled: sccache counts an nvcc call and
    # the steps it splits it into (host compile, cicc, ptxas …) apiece, so the one edited .cu
    # misses several times (scripts/measure_extension_cache.py saw 3 hits and 6 misses).
    assert int(counts[1]) >= 2 and 1 <= int(counts[2]) <= 6, counts[0]
    assert re.search(r"^sccache: +\d+% \(\d+ hits, \d misses\)", output, re.MULTILINE)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--extension", ""], ["--extension '' is empty"]),
        (["--extension", "six>=1.16"], ["'six>=1.16' is not one pinned release"]),
        (
            ["--extension", "six==1.16.0", "--extension", "six==1.17.0"],
            ["six==1.16.0", "six==1.17.0", "one project twice"],
        ),
        (["--extension", "six==99.0.0"], ["six 99.0.0 has no source distribution", "1.17.0"]),
        (["--extension", "."], ["this torchkiln checkout itself"]),
    ],
    ids=["empty", "range", "two-versions", "not-on-the-index", "the-checkout"],
)
def test_bad_extension_inputs_are_refused_before_anything_runs(
    inputs_project: Project, args: list[str], words: list[str]
) -> None:
    started = time.monotonic()
    result = inputs_project.invoke("--dry", "build", "--cca", CCA, *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert "docker compose" not in result.stdout  # no build command was even printed
    assert time.monotonic() - started < 60


def test_a_configured_extension_list_is_joined_and_said(inputs_project: Project) -> None:
    env = dict(inputs_project.env, EXTENSIONS="torchsort==0.1.10")
    result = replace(inputs_project, env=env).invoke(
        "--dry", "build", "--cca", CCA, "--extension", "six==1.17.0"
    )
    output = assert_ok(result)
    assert (
        "note: building EXTENSIONS from the environment (torchsort==0.1.10) as well as "
        "--extension" in output
    )
    assert '"EXTENSIONS": "torchsort==0.1.10 six==1.17.0"' in output


def test_a_failing_local_extension_is_named_by_project_path_and_step(
    tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path
) -> None:
    """The build's last line names the project, the folder as given and the step, with the
    first error its build printed (not "docker compose build train failed")."""
    where = tmp_path_factory.mktemp("extfail")
    broken = where / "broken_ops"
    broken.mkdir()
    (broken / "setup.py").write_text(
        "from setuptools import setup\n"
        "raise RuntimeError('kiln_broken_ops cannot build here')\n"
        "setup(name='kiln_broken_ops')\n"
    )
    project = make_project(where, "extfail", BUILD_MODE="wheels")
    try:
        result = project.invoke(
            "build", "--no-up", "--torch", "2.13.0", "--wheelhouse", str(wheelhouse),
            "--extension", str(broken),
        )  # fmt: skip
        assert result.returncode != 0, result.stdout[-3000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last == (
            f"error: extension kiln_broken_ops ({broken}) failed at compile (pip wheel "
            f"--no-build-isolation): its build said: RuntimeError: kiln_broken_ops cannot build "
            f"here (the whole output is in .torchkiln/build-train.log)"
        ), last
    finally:
        remove_project(project)


def test_arch_specific_code_the_cca_drops_fails_naming_the_target_and_both_fixes(
    extension_project: Project, tmp_path: Path
) -> None:
    """A project that compiles Hopper-only code under its own sm_90a flag, built for CCA 9.0:
    the compile fails, and the last line says which target was dropped and what fixes it."""
    folder = tmp_path / "hopper_ops"
    (folder / "csrc").mkdir(parents=True)
    (folder / "csrc" / "wgmma.cu").write_text(
        "// Code for sm_90a's arch-specific features (wgmma, setmaxnreg), as FlashAttention-3's.\n"
        "#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)\n"
        '#error "this kernel needs sm_90a"\n'
        "#endif\n"
        "__global__ void kernel(float* x) { x[threadIdx.x] += 1.0f; }\n"
    )
    (folder / "setup.py").write_text(
        "from setuptools import setup\n"
        "from torch.utils.cpp_extension import BuildExtension, CUDAExtension\n\n"
        "flags = ['-gencode', 'arch=compute_90a,code=sm_90a']\n"
        "setup(\n"
        "    name='hopper_ops',\n"
        "    ext_modules=[CUDAExtension('hopper_ops._C', ['csrc/wgmma.cu'],\n"
        "                               extra_compile_args={'cxx': [], 'nvcc': flags})],\n"
        "    cmdclass={'build_ext': BuildExtension},\n"
        ")\n"
    )
    vision = f"vision={extension_project.root / 'tests' / 'fixtures' / 'vision'}"
    dest = extension_project.root / "dist-hopper"
    result = extension_project.invoke(
        "wheels", "--dest", str(dest), "--cca", "9.0", "--source", vision,
        "--extension", str(folder),
    )  # fmt: skip
    assert result.returncode != 0, result.stdout[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: extension hopper_ops ({folder}) failed at compile"), last
    for words in ("wgmma.cu", "sm_90a", "CCA to 9.0a", "EXTENSION_ARCHS=as-is"):
        assert words in last, last


NINJA_OFF = REPO / "tests" / "fixtures" / "ninja_off_extension"


def test_a_ninja_off_project_builds_its_modules_within_the_budget_and_says_so(
    extension_project: Project, cuobjdump: Path, tmp_path: Path
) -> None:
    """torch-scatter's kind (use_ninja=False, several modules): told apart before the compile,
    its modules built by setuptools' build_ext within MAX_JOBS through the build hook, each
    module compiled for the CCA by the real nvcc, and the summary says how."""
    folder = fixture_copy(tmp_path, fixture=NINJA_OFF)
    output, wheel, entry = export(extension_project, folder, name="kiln_ninja_off")
    # Said before the compile, in parallel mode (not serial).
    said = "torchkiln: ninja off in its setup.py (use_ninja=False): its modules compile in parallel"
    assert said in output, output[-3000:]
    (line,) = extension_lines(output)
    # The whole budget (see CUDA): the cached vision step beside it takes no share, so the
    # modules build 2 at once (before the budget was shared at run time: 1, one at a time).
    assert "torchkiln-jobs: kiln_ninja_off MAX_JOBS=2 (MAX_JOBS)" in output, output[-3000:]
    assert re.fullmatch(
        r"extension: +kiln_ninja_off: sm_86 \(CCA 8\.6\); [\d.]+ MB, built in \d+ s; ninja off "
        r"in its setup\.py: 3 modules compiled in parallel \(2 at once\)",
        line,
    ), line
    with zipfile.ZipFile(wheel) as archive:
        libraries = sorted(n for n in archive.namelist() if n.endswith(".so"))
    assert libraries == [f"kiln_ninja_off/_{m}.so" for m in ("cumsum", "rowmax", "rowsum")]
    assert (entry["sass"], entry["ptx"]) == (["sm_86"], [])
