"""The runtime closure and the repair's exclusions and rpaths (pure parts, and patchelf on a real
library)."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from torchkiln.inimage import closure


@pytest.mark.parametrize(
    ("soname", "nvidia"),
    [
        ("libcudart.so.13", True),
        ("libcusparseLt.so.0", True),
        ("libnvshmem_host.so.3", True),
        ("libcuda.so.1", True),
        ("libnvidia-ml.so.1", True),
        ("libcudnn_graph.so.9", True),
        ("libopenblas.so.0", False),
        ("libgomp.so.1", False),
        ("libc10.so", False),
    ],
)
def test_nvidia_libraries_are_left_to_nvidias_wheels(soname: str, nvidia: bool) -> None:
    assert closure.is_nvidia(soname) is nvidia


def test_only_wheels_built_here_are_repaired() -> None:
    assert closure.compiled_here("torch-2.14.1-cp311-cp311-linux_x86_64.whl")
    assert not closure.compiled_here("torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl")
    assert not closure.compiled_here("triton-3.8.0-py3-none-any.whl")


def make_wheel(path: Path, members: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for member in members:
            archive.writestr(member, b"")
    return path


def test_what_another_wheel_ships_is_excluded(tmp_path: Path) -> None:
    torch = make_wheel(tmp_path / "torch-1-cp311-cp311-linux_x86_64.whl", ["torch/lib/libc10.so"])
    vision = make_wheel(tmp_path / "torchvision-1-cp311-cp311-linux_x86_64.whl", ["tv/_C.so"])
    patterns = closure.excludes(vision, [torch, vision])
    assert "libc10.so" in patterns and "libcudart.so*" in patterns
    assert "_C.so" not in closure.excludes(torch, [torch, vision])


def test_the_closure_maps_system_libraries_to_their_packages() -> None:
    needs = {
        "libopenblas.so.0": "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
        "libcudart.so.13": "/opt/venv/nvidia/cu13/lib/libcudart.so.13",
        "libmystery.so.1": "",
    }
    owners = {"/usr/lib/x86_64-linux-gnu/libopenblas.so.0": "libopenblas0-pthread"}
    packages, orphans = closure.closure(needs, owners.get)
    assert packages == {"libopenblas.so.0": "libopenblas0-pthread"}
    assert orphans == ["libmystery.so.1"]


def test_needs_are_read_from_the_link_audits_output() -> None:
    text = "libgomp.so.1\t/usr/lib/x86_64-linux-gnu/libgomp.so.1\nlibx.so.2\t\n"
    assert closure.parse_needs(text) == {
        "libgomp.so.1": "/usr/lib/x86_64-linux-gnu/libgomp.so.1",
        "libx.so.2": "",
    }


@pytest.mark.skipif(not shutil.which("dpkg"), reason="dpkg is Debian's")
def test_dpkg_owner_follows_links_to_the_runtime_package() -> None:
    libc = subprocess.run(
        ["python3", "-c", "import ctypes.util; print(ctypes.util.find_library('c'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    path = next(Path(p) / libc for p in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"))
    assert closure.dpkg_owner(str(path)) == "libc6"
    assert closure.dpkg_owner("/nonexistent/libnothing.so.1") is None


def test_rpath_entries_lead_from_each_library_into_nvidias_wheels() -> None:
    dirs = {"libcudnn.so.9": "nvidia/cudnn/lib", "libcudart.so.13": "nvidia/cu13/lib"}
    needed = ["libc10.so", "libcudart.so.13", "libcudnn.so.9", "libcudart.so.13"]
    assert closure.rpath_entries("torch/lib/libtorch_cuda.so", needed, dirs) == [
        "$ORIGIN/../../nvidia/cu13/lib",
        "$ORIGIN/../../nvidia/cudnn/lib",
    ]
    assert (
        closure.rpath_entries("torchvision/_C.so", needed, dirs)[0] == "$ORIGIN/../nvidia/cu13/lib"
    )


def test_nvidia_library_dirs_are_read_from_site_packages(tmp_path: Path) -> None:
    lib = tmp_path / "nvidia" / "cusparselt" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcusparseLt.so.0").write_bytes(b"")
    # The CUDA tree from the wheels (nvidia/cu13) links the other wheels' libraries in.
    tree = tmp_path / "nvidia" / "cu13" / "lib"
    tree.mkdir(parents=True)
    (tree / "libcusparseLt.so.0").symlink_to(lib / "libcusparseLt.so.0")
    (tree / "libcudart.so.13").write_bytes(b"")
    assert closure.nvidia_library_dirs(tmp_path) == {
        "libcudart.so.13": "nvidia/cu13/lib",
        "libcusparseLt.so.0": "nvidia/cusparselt/lib",
    }


@pytest.mark.skipif(not shutil.which("patchelf") or not shutil.which("gcc"), reason="patchelf, gcc")
def test_a_repaired_wheel_gets_rpaths_and_a_true_record(tmp_path: Path) -> None:
    nvidia = tmp_path / "site" / "nvidia" / "cux" / "lib"
    nvidia.mkdir(parents=True)
    source = tmp_path / "x.c"
    source.write_text("int x(void) { return 1; }\n")
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", nvidia / "libcudart.so.13",
         "-Wl,-soname,libcudart.so.13", source], check=True,
    )  # fmt: skip
    library = tmp_path / "libuser.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", library, source, "-Wl,--no-as-needed",
         nvidia / "libcudart.so.13"], check=True,
    )  # fmt: skip
    wheel = tmp_path / "demo-1-cp311-cp311-manylinux_2_36_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(library, "demo/lib/libuser.so")
        archive.writestr("demo-1.dist-info/RECORD", "")
    changed = closure.add_nvidia_rpaths(wheel, closure.nvidia_library_dirs(tmp_path / "site"))
    assert changed == ["demo/lib/libuser.so"]
    with zipfile.ZipFile(wheel) as archive:
        (tmp_path / "out.so").write_bytes(archive.read("demo/lib/libuser.so"))
        record = archive.read("demo-1.dist-info/RECORD").decode()
    rpath = subprocess.run(
        ["patchelf", "--print-rpath", tmp_path / "out.so"], capture_output=True, text=True
    ).stdout.strip()
    assert rpath == "$ORIGIN/../../nvidia/cux/lib"
    assert "demo/lib/libuser.so,sha256=" in record
