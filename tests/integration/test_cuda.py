"""Real CUDA through the product's own stages, on the real engine with no GPU: CUDA from NVIDIA's
wheels on the Python index (CUDA_FROM=pypi) on plain Debian, nvcc compiling the fixtures through
CMake's CUDA language (the PyTorch stand-in) and torch.utils.cpp_extension (the torchvision
stand-in, against the official CUDA torch wheel), and the exported wheels holding exactly the
SASS/PTX each CCA form asks for (read from their fat binaries).
"""

from __future__ import annotations

import json
import re
import shutil
import time
import zipfile
from pathlib import Path

import pytest
from projects import (
    BASE,
    CA_BUNDLE,
    assert_ok,
    fixture_sources,
    make_project,
    remove_project,
)

from torchkiln import build as builder
from torchkiln.inimage import fatbin

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

# What each CCA form must compile to: the table, checked on every exported wheel.
EXPECTED = {
    "8.6": (["sm_86"], []),
    "8.6;9.0": (["sm_86", "sm_90"], []),
    "9.0+PTX": (["sm_90"], ["compute_90"]),
    "9.0a": (["sm_90a"], []),
}
# CUDA from the index, and the memory-aware default of MAX_JOBS (not the tests' fixed 2).
CUDA = {"CUDA_FROM": "pypi", "MAX_JOBS": ""}


def device_code(wheel: Path, fragment: str, tmp: Path) -> fatbin.FatbinArchs:
    """Read the SASS/PTX of the one shared object in a wheel whose name holds a fragment."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (member,) = [name for name in names if fragment in name and name.endswith(".so")]
        target = tmp / Path(member).name
        target.write_bytes(archive.read(member))
    return fatbin.read_archs(target)


def one_wheel(dest: Path, name: str) -> Path:
    (wheel,) = dest.glob(f"{name}-*.whl")
    return wheel


@pytest.fixture(scope="module")
def cuda_source(tmp_path_factory: pytest.TempPathFactory):
    """BUILD_MODE=source with CUDA_FROM=pypi: the stand-ins exported for each CCA form."""
    project = make_project(tmp_path_factory.mktemp("cuda"), "cudasrc", **CUDA)
    exports: dict[str, tuple[Path, str]] = {}
    try:
        for index, cca in enumerate(EXPECTED):
            dest = project.root / f"dist-{index}"
            started = time.monotonic()
            args = ("wheels", "--dest", str(dest), "--cca", cca, *fixture_sources(project))
            output = assert_ok(project.invoke(*args))
            print(f"\nCUDA source export for CCA {cca}: {time.monotonic() - started:.0f} s")
            exports[cca] = (dest, output)
        yield project, exports
    finally:
        remove_project(project)


def test_each_cca_form_compiles_to_exactly_its_sass_and_ptx(cuda_source, tmp_path) -> None:
    _, exports = cuda_source
    for cca, (sass, ptx) in EXPECTED.items():
        dest, _ = exports[cca]
        found = device_code(one_wheel(dest, "torch"), "libtorchkiln_fixture_cuda.so", tmp_path)
        print(f"CCA {cca}: SASS {' '.join(found.sass)}; PTX {' '.join(found.ptx) or '-'}")
        assert (found.sass, found.ptx) == (sass, ptx), cca


def test_the_cuda_tree_from_the_index_serves_cmake_like_pytorchs(cuda_source) -> None:
    _, exports = cuda_source
    dest, _ = exports["8.6;9.0"]
    with zipfile.ZipFile(one_wheel(dest, "torch")) as archive:
        env = json.loads(archive.read("torch/build_env.json"))
        version = archive.read("torch/version.py").decode()
    cmake = env["cmake"]
    assert cmake["cuda_version"].startswith("13.0")
    assert cmake["nvcc"] == "/usr/local/cuda/bin/nvcc"
    assert cmake["cuda_architectures"] == "86-real;90-real" == env["CUDA_ARCHITECTURES"]
    assert env["TORCH_CUDA_ARCH_LIST"] == "8.6;9.0"
    # cuDNN and NCCL found where PyTorch's CMake looks, in the CUDA tree from the wheels.
    assert cmake["cudnn_include"] == cmake["nccl_include"] == "/usr/local/cuda/include"
    assert cmake["cudnn_library"].endswith("libcudnn.so")
    assert cmake["nccl_library"].endswith("libnccl.so")
    assert version == "cuda = '13.0'\n"
    info = json.loads((dest / "BUILD-INFO.json").read_text())
    assert info["cuda_version"] == "13.0" and info["cca"] == "8.6;9.0"
    assert info["torch_cuda_arch_list"] == "8.6;9.0"


def test_the_real_build_defects_are_fixed_in_the_build_environment(cuda_source) -> None:
    """What a PyTorch build needs, as the torch stand-in saw it (one test per defect below)."""
    _, exports = cuda_source
    dest, output = exports["8.6"]
    with zipfile.ZipFile(one_wheel(dest, "torch")) as archive:
        env = json.loads(archive.read("torch/build_env.json"))
    with zipfile.ZipFile(one_wheel(dest, "torchvision")) as archive:
        vision = json.loads(archive.read("torchvision/build_env.json"))
    # 1. torchvision's CUDA sources are forced on (no GPU in docker build) and its image
    #    decoders find libpng, libjpeg and libwebp.
    assert vision["FORCE_CUDA"] == "1"
    assert vision["image_libraries"] == {"png": True, "jpeg": True, "webp": True}
    # 2. A BLAS with LAPACK, named for PyTorch's CMake.
    assert env["BLAS"] == "OpenBLAS" and env["tools"]["lapack_in_blas"] is True
    # 3. The tree's requirements-build.txt and pyproject build requirements were installed.
    assert env["tools"]["yaml"] is True and env["tools"]["six"] is True
    # 4. NCCL from the system (no clone during the build), found in the CUDA tree.
    assert env["USE_SYSTEM_NCCL"] == "1" and env["cmake"]["nccl_library"]
    # 5. No C++ tests.
    assert env["BUILD_TEST"] == "0"
    # 6. MAX_JOBS by cores and memory when unset, and said in the log.
    jobs = re.search(r"torchkiln-jobs: pytorch MAX_JOBS=(\d+) \((.+)\)", output)
    assert jobs and "one job per 4 GB" in jobs[2], output[-2000:]
    assert env["MAX_JOBS"] == jobs[1]
    # 7. A compile cache big enough for PyTorch, entered once: the launcher, not PATH links.
    assert env["CCACHE_MAXSIZE"] == "40G"
    assert env["CMAKE_CUDA_COMPILER_LAUNCHER"] == "ccache"
    assert "/usr/lib/ccache" not in env["PATH"]
    # 10. The Triton the tree pins, beside torch, for torch.compile.
    assert [path.name.split("-")[1] for path in dest.glob("triton-*.whl")] == ["3.8.0"]


def test_editing_a_build_script_does_not_refetch_the_sources(tmp_path: Path) -> None:
    """Defect 8: the clone stages depend on git and fetch-source.sh only."""
    project = make_project(tmp_path, "clone")
    try:
        command = [
            *("docker", "buildx", "build", "--progress", "plain", "--target", "vision-clone"),
            *("--file", "docker/Dockerfile", "--build-arg", f"BUILD_IMAGE={BASE}"),
            *("--build-arg", "PYTHON_VERSION=3.11", "--build-arg", "TORCHVISION_VERSION="),
            *("--secret", f"id=ca_bundle,src={CA_BUNDLE}", "."),
        ]
        assert_ok(project.run(*command))
        for script in ("build-wheel.sh", "install-cuda-pypi.sh", "build-magma.sh"):
            path = project.root / "docker" / "scripts" / script
            path.write_text(path.read_text() + f"\n# edited {time.time()}\n")
        requirements = project.root / "docker" / "requirements-build.txt"
        requirements.write_text(requirements.read_text() + "# edited\n")
        output = assert_ok(project.run(*command))
        assert builder.executed_steps(output) == []
    finally:
        remove_project(project)


# A real, published CUDA extension, compiled from its source distribution (torchsort: a .cpp and
# a .cu, built with ninja; torch-scatter compiles one file at a time, too slow for 2 cores).
EXTENSION = "torchsort==0.1.10"


@pytest.fixture(scope="module")
def cuda_wheel(tmp_path_factory: pytest.TempPathFactory):
    """BUILD_MODE=torch-wheel: the official CUDA torch wheel; torchvision and a published
    extension compiled for 8.6 against it."""
    project = make_project(
        tmp_path_factory.mktemp("cuda"), "cudawheel", BUILD_MODE="torch-wheel", **CUDA
    )
    vision = ["--source", f"vision={project.root / 'tests' / 'fixtures' / 'vision'}"]
    try:
        started = time.monotonic()
        args = ("build", "--cca", "8.6", *vision, "--extension", EXTENSION)
        output = assert_ok(project.invoke(*args))
        print(f"\ntorch-wheel build with CUDA from the index: {time.monotonic() - started:.0f} s")
        dest = project.root / "dist"
        assert_ok(project.invoke("wheels", "--dest", str(dest)))
        yield project, output, dest, vision
    finally:
        remove_project(project)


def test_torchvision_is_compiled_for_the_cca_against_the_official_torch(
    cuda_wheel, tmp_path
) -> None:
    project, _, dest, _ = cuda_wheel
    found = device_code(one_wheel(dest, "torchvision"), ".so", tmp_path)
    assert (found.sass, found.ptx) == (["sm_86"], [])
    info = json.loads((dest / "BUILD-INFO.json").read_text())
    assert info["build_mode"] == "torch-wheel" and info["cca"] == "8.6"
    assert info["versions"]["torch"] == "2.14.1" and info["cuda_version"] == "13.0"
    script = (
        "python -c 'import torch, torchvision._C, torchvision; "
        'print(torch.version.cuda, torch._C.has_lapack, torchvision.build_env["cuda_kernels"])\''
    )
    assert assert_ok(project.exec("train", script)).split() == ["13.0", "True", "True"]


def test_the_extension_is_built_for_the_cca_installed_and_listed(cuda_wheel, tmp_path) -> None:
    project, _, dest, _ = cuda_wheel
    found = device_code(one_wheel(dest, "torchsort"), "isotonic_cuda", tmp_path)
    assert (found.sass, found.ptx) == (["sm_86"], [])
    info = json.loads((dest / "BUILD-INFO.json").read_text())
    assert info["versions"]["torchsort"] == "0.1.10"
    script = "python -c 'import torchsort.isotonic_cuda, torchsort; print(\"ok\")'"
    assert assert_ok(project.exec("train", script)).strip() == "ok"


def test_the_audit_passes_the_cca_built_and_names_the_rebuild_for_another(cuda_wheel) -> None:
    project, _, _, _ = cuda_wheel
    passed = project.exec("train", "python -m torchkiln.smoke --audit-only --expect-cca 8.6")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "torchsort" in passed.stdout
    failed = project.exec("train", "python -m torchkiln.smoke --audit-only --expect-cca 9.0 --json")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    rows = {row["package"]: row for row in json.loads(failed.stdout)["packages"]}
    for package in ("torchsort", "torchvision"):
        assert rows[package]["status"] == "fail", rows[package]
        assert "invoke build --cca 9.0" in rows[package]["detail"], rows[package]
    assert rows["torch"]["status"] == "pass"  # the official wheel covers 9.0


def test_a_warm_rebuild_after_touching_one_cu_recompiles_only_that_file(cuda_wheel) -> None:
    project, _, _, _ = cuda_wheel
    edited = project.root / "vision-edited"
    shutil.copytree(project.root / "tests" / "fixtures" / "vision", edited)
    kernel = edited / "csrc" / "add_one.cu"
    # A change the compiler sees (a comment would be a preprocessed-mode hit, rightly).
    stamp = int(time.time() * 1000)
    kernel.write_text(kernel.read_text() + f"\nstatic const long torchkiln_touched = {stamp}L;\n")
    output = assert_ok(
        project.invoke("build", "--no-up", "--cca", "8.6", "--source", f"vision={edited}")
    )
    counts = re.search(r"torchkiln-ccache: vision hits=(\d+) misses=(\d+)", output)
    assert counts, output[-3000:]
    print(f"\nwarm rebuild after touching add_one.cu: ccache hits={counts[1]} misses={counts[2]}")
    assert int(counts[2]) == 1 and int(counts[1]) >= 2
    assert re.search(r"ccache: +\d+% \(\d+ hits, 1 misses\)", output)


def test_pypi_cuda_needs_cuda_13(tmp_path: Path) -> None:
    project = make_project(tmp_path, "cuda12", CUDA_FROM="pypi", CUDA_VERSION="12.8.1")
    try:
        result = project.invoke("--dry", "build", "--service", "full")
        assert result.returncode != 0
        assert result.stderr.strip().splitlines() == [
            "error: CUDA_FROM=pypi needs CUDA 13 or newer, not CUDA_VERSION 12.8.1 (NVIDIA's "
            "CUDA 12 wheels have another layout); use CUDA_FROM=image for CUDA 12"
        ]
    finally:
        remove_project(project)
