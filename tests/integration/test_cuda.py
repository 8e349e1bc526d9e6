"""Real CUDA through the product's own stages, on the real engine with no GPU: CUDA from NVIDIA's
wheels on the Python index (CUDA_FROM=pypi) on plain Debian, nvcc compiling the fixtures through
CMake's CUDA language and PyTorch's own CMake configs (the PyTorch stand-in, which links what
PyTorch links) and torch.utils.cpp_extension (the torchvision stand-in, against the official CUDA
torch wheel), the exported wheels holding exactly the SASS/PTX each CCA form asks for (read from
their fat binaries), a torch built here that imports with the official wheel's NVIDIA pins, and
the parity report.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
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

from torchkiln import buildlog
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
    """BUILD_MODE=source with CUDA_FROM=pypi: the stand-ins exported for each CCA form, and the
    train image of the 8.6 build."""
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
        started = time.monotonic()
        args = ("build", "--no-up", "--cca", "8.6", *fixture_sources(project))
        exports["train"] = (project.root, assert_ok(project.invoke(*args)))
        print(f"\nCUDA source train image: {time.monotonic() - started:.0f} s")
        yield project, exports
    finally:
        remove_project(project)


def run_in(image: str, script: str, *options: str) -> subprocess.CompletedProcess[str]:
    command = ["docker", "run", "--rm", *options, image, "bash", "-c", script]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def test_each_cca_form_compiles_to_exactly_its_sass_and_ptx(cuda_source, tmp_path) -> None:
    _, exports = cuda_source
    for cca, (sass, ptx) in EXPECTED.items():
        dest, _ = exports[cca]
        found = device_code(one_wheel(dest, "torch"), "libtorch_cuda.so", tmp_path)
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
    # What the official wheel links beyond them, found by PyTorch's own finders (cuSPARSELt,
    # cuDSS), NVSHMEM_HOME, and FindCUDAToolkit (cuFile, CUPTI): none is lost.
    assert [cmake[name] for name in ("cusparselt", "cudss", "nvshmem", "cufile", "cupti")] == [
        "ON"
    ] * 5
    # find_package(Torch) with the official wheel's CMake configs linked torch_cuda.
    assert env["torch_cmake"]["built"] is True
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
    assert jobs and "one job per 6 GB" in jobs[2], output[-2000:]
    assert env["MAX_JOBS"] == jobs[1]
    # 7. A compile cache big enough for PyTorch on the cache mount, entered once: sccache as the
    # launcher, not PATH links.
    assert env["SCCACHE_CACHE_SIZE"] == "40G" and env["SCCACHE_DIR"] == "/root/.cache/sccache"
    assert env["CMAKE_CUDA_COMPILER_LAUNCHER"] == "sccache"
    assert "ccache" not in env["PATH"]
    # 10. The Triton the tree pins, beside torch, for torch.compile.
    assert [path.name.split("-")[1] for path in dest.glob("triton-*.whl")] == ["3.8.0"]


def test_the_torch_wheel_is_checked_and_compared_with_the_official_one(cuda_source) -> None:
    _, exports = cuda_source
    _, output = exports["8.6"]
    assert "torchkiln-wheelcheck: CUDA 13.0, libtorch_cuda.so holds sm_86 (asked 8.6)" in output
    # The tests build with USE_NCCL=0: the one feature of the official wheel this build lacks,
    # named with what brings it back; every other one (cuSPARSELt, NVSHMEM, cuFile …) is there.
    assert re.findall(r"torchkiln-parity: (.+)", output) == [
        "lost USE_NCCL=OFF; the official wheel has it: install NCCL (nvidia-nccl-cu13) and "
        "USE_NCCL=1"
    ]
    assert "parity:      WARNING lost USE_NCCL=OFF" in output  # the export's summary


# The pins of the official torch 2.14.1 wheel (its Requires-Dist), which the build reads from its
# metadata, compiles against and declares.
OFFICIAL_PINS = (
    "nvidia-cudnn-cu13==9.24.0.43",
    "nvidia-nccl-cu13==2.30.7",
    "nvidia-cusparselt-cu13==0.8.1",
    "nvidia-nvshmem-cu13==3.4.5",
    "cuda-bindings<14,>=13.0.3",
)


def test_a_cuda_torch_built_here_imports_with_the_official_pins(cuda_source) -> None:
    project, exports = cuda_source
    dest, _ = exports["8.6"]
    with zipfile.ZipFile(one_wheel(dest, "torch")) as archive:
        metadata = archive.read("torch-2.14.1.dist-info/METADATA").decode()
    for pin in OFFICIAL_PINS:
        assert f"Requires-Dist: {pin};" in metadata, pin
    script = (
        "python -c 'import torch; print(\"cuda\", torch.version.cuda)' && "
        "pip list --format freeze 2>/dev/null | grep -E '^(nvidia-(cudnn|nccl|cusparselt|nvshmem)"
        "-cu13|cuda-bindings)==' && python -m torchkiln.inimage.links | tail -1 && "
        "echo stubs $(find / -xdev -name 'libcuda.so*' 2>/dev/null | wc -l)"
    )
    output = assert_ok(run_in(project.image("train"), script))
    assert "cuda 13.0" in output  # libtorch_cuda.so and all it links were loaded
    for pin in OFFICIAL_PINS[:4]:
        assert pin in output, output
    assert "\nOK  (" in output
    assert "stubs 0" in output  # the build's driver stub never reaches the runtime


def test_the_exported_cuda_torch_finds_nvidias_wheels_anywhere(cuda_source) -> None:
    """A plain Python with no CUDA on the system: pip brings NVIDIA's wheels (torch requires
    them), the repaired libraries find them through their rpaths, with no ldconfig."""
    _, exports = cuda_source
    dest, _ = exports["8.6"]
    script = (
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv "
        ">/dev/null && python3 -m venv /venv && "
        "/venv/bin/pip install --quiet --disable-pip-version-check /dist/torch-*.whl "
        "/dist/triton-*.whl && ldconfig -p | grep -c libcudart; "
        "/venv/bin/python -c 'import torch; print(\"imported\", torch.version.cuda)'"
    )
    options = ("--volume", f"{dest}:/dist:ro", "--volume", f"{CA_BUNDLE}:/ca.crt:ro")
    output = assert_ok(run_in(BASE, script, *options, "--env", "PIP_CERT=/ca.crt"))
    assert "imported 13.0" in output, output
    assert output.split("imported")[0].split()[-1] == "0"  # the system knows no CUDA library


# With the CUDA tree NVIDIA's wheels make, PyTorch's own CMake (find_package(Torch) with the
# official wheel's configs, caffe2::nvrtc, torch_cuda) links and compiles; without the driver stub,
# nvml.h or cuda_profiler_api.h it fails, as a real PyTorch build would, hours in.
PROBE = """
probe() { python /src/tools/official_torch.py "$@" >/tmp/out.log 2>&1; status=$?;
          grep -m2 -E "CUDA::cuda_driver|fatal error" /tmp/out.log; return $status; }
probe --version 2.14.1 --build /tmp/ok --archs 86; echo "with=$?"
stub=/usr/local/cuda/lib64/stubs/libcuda.so
mv $stub /tmp/stub.so; probe --torch /tmp/ok-torch/torch --build /tmp/b1 --archs 86
echo "without-stub=$?"; mv /tmp/stub.so $stub
for header in nvml.h cuda_profiler_api.h; do
  real=$(readlink -f /usr/local/cuda/include/$header); mv $real /tmp/$header
  probe --torch /tmp/ok-torch/torch --build /tmp/b2 --archs 86; echo "without-$header=$?"
  mv /tmp/$header $real
done
"""


def test_pytorchs_cmake_needs_the_driver_stub_and_the_toolkit_headers(cuda_source) -> None:
    project, _ = cuda_source
    tag = f"torchkiln-test/{project.name}-cuda-pypi:probe"
    build = [
        *("docker", "buildx", "build", "--quiet", "--load", "--target", "cuda-pypi"),
        *("--tag", tag, "--file", "docker/Dockerfile", "--build-arg", f"BUILD_IMAGE={BASE}"),
        *("--build-arg", "PYTHON_VERSION=3.11", "--build-arg", "CUDA_FROM=pypi"),
        *("--secret", f"id=ca_bundle,src={CA_BUNDLE}", "."),
    ]
    assert_ok(project.run(*build))
    try:
        fixture = project.root / "tests" / "fixtures" / "pytorch"
        options = ("--volume", f"{fixture}:/src:ro", "--volume", f"{CA_BUNDLE}:/ca.crt:ro")
        result = run_in(tag, PROBE, *options, "--env", "PIP_CERT=/ca.crt")
    finally:
        project.run("docker", "image", "rm", tag)
    output = result.stdout + result.stderr
    outcomes = dict(re.findall(r"^([\w.-]+)=(\d+)$", output, re.MULTILINE))
    assert outcomes == {
        "with": "0",
        "without-stub": "1",
        "without-nvml.h": "1",
        "without-cuda_profiler_api.h": "1",
    }, output
    assert "CUDA::cuda_driver" in output
    assert "nvml.h: No such file" in output and "cuda_profiler_api.h: No such file" in output


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
        assert buildlog.executed_steps(output) == []
    finally:
        remove_project(project)


# A real, published CUDA extension, compiled from its source distribution (torchsort: a .cpp and
# a .cu, built with ninja; torch-scatter compiles one file at a time, too slow for 2 cores).
EXTENSION = "torchsort==0.1.10"


def run_mark(folder: Path) -> Path:
    """A local extension no build has seen, with nothing to compile (a Python package). The
    extensions are one step, keyed by the specs and the folders: with this folder in it the step
    runs, so torchsort compiles beside the vision step (sccache may serve both), at the cost of
    a few seconds of pip."""
    (folder / "kiln_run_mark").mkdir(parents=True)
    (folder / "kiln_run_mark" / "__init__.py").write_text(f'MARK = "{uuid.uuid4().hex}"\n')
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "kiln-run-mark"\nversion = "0.1.0"\n'
    )
    return folder


@pytest.fixture(scope="module")
def cuda_wheel(tmp_path_factory: pytest.TempPathFactory):
    """BUILD_MODE=torch-wheel: the official CUDA torch wheel; torchvision and a published
    extension compiled for 8.6 against it."""
    # MAX_JOBS as test_extensions.py sets it: the budget is a build arg of the vision step, so
    # with the same one (and the session's mark on the stand-in) that module's builds find this
    # vision step cached. Here it compiles: no earlier session's cache holds a step of this
    # mark. The vision and the torchsort steps start together and split the budget: one job
    # each, said in the log.
    project = make_project(
        tmp_path_factory.mktemp("cuda"),
        "cudawheel",
        BUILD_MODE="torch-wheel",
        **{**CUDA, "MAX_JOBS": "2"},
    )
    vision = ["--source", f"vision={project.root / 'tests' / 'fixtures' / 'vision'}"]
    marked = run_mark(project.root / "kiln-run-mark")
    extensions = ["--extension", EXTENSION, "--extension", str(marked)]
    try:
        started = time.monotonic()
        args = ("build", "--cca", "8.6", *vision, *extensions)
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


def test_the_vision_and_extension_steps_share_one_job_budget(cuda_wheel) -> None:
    """Both steps compile at once, against the same torch: MAX_JOBS=2 is split between the
    vision step and the extension step's first compile (torchsort) while they run (never more
    than the budget plus one job), and the log says so."""
    _, output, _, _ = cuda_wheel
    jobs = dict(re.findall(r"torchkiln-jobs: (vision|torchsort) MAX_JOBS=(\d+ \(.+\))", output))
    assert set(jobs) == {"vision", "torchsort"}, output[-3000:]
    counts = [int(said.split()[0]) for said in jobs.values()]
    assert all(count >= 1 for count in counts) and sum(counts) <= 3, jobs
    assert any("shared by the 2 compile steps running at once" in said for said in jobs.values())


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
    audits = json.loads(failed.stdout)
    assert audits["links"]["ok"] is True  # every library resolves: only the archs fail
    rows = {row["package"]: row for row in audits["arch"]["packages"]}
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
    # The export runs the same vision step as `invoke build` (and no train image: re-installing
    # the CUDA wheels into a new layer costs minutes, and is no part of what is tested here).
    dest = project.root / "dist-edited"
    args = ("wheels", "--dest", str(dest), "--cca", "8.6", "--source", f"vision={edited}")
    output = assert_ok(project.invoke(*args))
    counts = re.search(r"torchkiln-sccache: vision hits=(\d+) misses=(\d+)", output)
    assert counts, output[-3000:]
    print(f"\nwarm rebuild after touching add_one.cu: sccache hits={counts[1]} misses={counts[2]}")
    # sccache counts an nvcc call and the steps it splits it into (host compile, cicc, ptxas …)
    # apiece: the one edited .cu misses in each (6 for one arch in the extension's measurement);
    # the other sources hit.
    assert 1 <= int(counts[2]) <= 6 and int(counts[1]) >= 2
    assert re.search(r"sccache: +\d+% \(\d+ hits, \d misses\)", output)


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


def test_the_runtime_image_holds_rdma_core_and_the_audit_names_it_when_gone(cuda_source) -> None:
    """NCCL opens libibverbs.so.1 at run time: the image has it, and a copy of the image without
    it is warned about by the link audit, naming what is lost and the Debian package."""
    project, _ = cuda_source
    probe = (
        "python -c 'import torch; from torchkiln.inimage import ncclnet; "
        'print("row:", ncclnet.check_nccl_network(torch, gpu=False))\''
    )
    script = (
        "ldconfig -p | grep -E 'lib(ibverbs|rdmacm)[.]so[.]1 ' | sort && "
        "ls /usr/lib/*/libibverbs/ | grep -c rdmav && "
        "python -m torchkiln.inimage.links --json > /tmp/a.json; echo audit=$?; "
        'python -c \'import json; print([r["package"] for r in json.load(open("/tmp/a.json"))'
        f'["packages"] if r["status"] != "pass"])\'; {probe}'
    )
    output = assert_ok(run_in(project.image("train"), script))
    assert "libibverbs.so.1 (libc6,x86-64)" in output and "librdmacm.so.1" in output, output
    assert "audit=0" in output and "(opened at run time)" not in output, output
    assert "row: NCCL not asked: no GPU; verbs: no RDMA device" in output, output
    # The copy without rdma-core: dpkg removes the verbs library as a user's slimmed image would.
    check = f"python -m torchkiln.inimage.links --json; echo audit=$?; {probe}"
    removed = (
        "dpkg --purge --force-depends ibverbs-providers libibverbs1 librdmacm1 >/dev/null && "
        'ldconfig && su -s /bin/bash -c "$CHECK" alice'
    )
    result = run_in(project.image("train"), removed, "--user", "0", "-e", f"CHECK={check}")
    output = result.stdout + result.stderr
    assert "audit=0" in output, output  # a warning, not a failure: NCCL still works on sockets
    report = json.loads(output[: output.index("audit=")])
    assert report["warned"] is True
    (row,) = [row for row in report["packages"] if row["package"] == "(opened at run time)"]
    assert row["status"] == "warn"
    assert "libibverbs.so.1 not found" in row["detail"], row
    assert (
        "NCCL: InfiniBand/RoCE unavailable, sockets only; apt-get install libibverbs1"
        in (row["detail"])
    )
    assert "apt-get install ibverbs-providers" in row["detail"]
    assert "row:" not in output  # smoke's row warns (CheckWarned), naming the package
    assert "InfiniBand/RoCE unavailable, sockets only; apt-get install libibverbs1" in output
