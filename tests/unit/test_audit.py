"""Unit tests for the arch audit: grouping, verdicts and hints on real nvcc-built libraries laid
out as a site-packages folder, `python -m torchkiln.smoke --audit-only` as a process (exit
codes, one-line errors, JSON, no torch import) and the "arch audit" row of a smoke run."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
from test_smoke_cpu import run_module

from torchkiln.inimage import audit, links, report, smoke
from torchkiln.inimage.audit import Library, Target

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fatbin"
SRC = Path(smoke.__file__).resolve().parents[2]
H100 = Target((9, 0), "9.0", "NVIDIA H100 80GB HBM3")
A6000 = Target((8, 6), "8.6", "NVIDIA RTX A6000")
RTX5090 = Target((12, 0), "12.0", "NVIDIA GeForce RTX 5090")


def put(path: Path, fixture: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / fixture, path)
    return path


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site-packages folder with torch, an extension, torchvision's vendored libraries and
    two NVIDIA wheels, each library a real nvcc build."""
    root = tmp_path / "site-packages"
    put(root / "torch/lib/libtorch_cuda.so", "sm86_sm90.so")
    put(root / "torch/lib/libtorch_cuda_linalg.so", "sm86.so")
    put(root / "torch/lib/libc10.so", "nokernel_sm75.so")  # cubins without kernels only
    (root / "torch/lib/libshm.so").write_text("/* GNU ld script */\n")  # no ELF: skipped
    put(root / "torch_scatter/_scatter_cuda.cpython-311-x86_64-linux-gnu.so", "sm86.so")
    put(root / "torchvision.libs/libnvjpeg.so.13", "ptx120.so")
    put(root / "nvidia/cudnn/lib/libcudnn_ops.so.9", "compressed.so")
    put(root / "nvidia/cu13/lib/libcublas.so.13", "sm90a.so")
    record = root / "nvidia_cublas-13.1.1.3.dist-info/RECORD"
    record.parent.mkdir()
    record.write_text(
        "nvidia/cu13/lib/libcublas.so.13,sha256=abc,21416\n"
        "nvidia_cublas-13.1.1.3.dist-info/RECORD,,\n"
    )
    return root


def rows_by_name(rows: list[audit.PackageRow]) -> dict[str, audit.PackageRow]:
    return {row.package: row for row in rows}


# --- collecting -----------------------------------------------------------------------------


def test_files_are_grouped_by_package(site: Path) -> None:
    packages = audit.collect([site])
    assert sorted(packages) == [
        "nvidia.cudnn",
        "nvidia_cublas",
        "torch",
        "torch_scatter",
        "torchvision",
    ]
    torch_files = sorted(os.path.basename(lib.path) for lib in packages["torch"])
    assert torch_files == ["libtorch_cuda.so", "libtorch_cuda_linalg.so"]


def test_a_link_and_its_target_are_one_library(site: Path) -> None:
    lib = site / "torch/lib"
    (lib / "libtorch_cuda.so").rename(lib / "libtorch_cuda.so.2")
    (lib / "libtorch_cuda.so").symlink_to("libtorch_cuda.so.2")
    paths = [library.path for library in audit.collect([site])["torch"]]
    assert sorted(os.path.basename(path) for path in paths) == [
        "libtorch_cuda.so.2",
        "libtorch_cuda_linalg.so",
    ]


def test_a_package_folder_inside_site_packages_keeps_its_name(site: Path) -> None:
    assert list(audit.collect([site / "torch_scatter"])) == ["torch_scatter"]


def test_package_names() -> None:
    assert audit.package_name(Path("torch/lib/libtorch_cuda.so"), None) == "torch"
    assert audit.package_name(Path("nvidia/cudnn/lib/libcudnn.so.9"), None) == "nvidia.cudnn"
    assert audit.package_name(Path("torchvision.libs/libnvjpeg.so"), None) == "torchvision"
    assert audit.package_name(Path("_C.cpython-311-x86_64-linux-gnu.so"), None) == "_C"
    assert audit.package_name(Path("nvidia/cu13/lib/libcublas.so.13"), "nvidia_cublas") == (
        "nvidia_cublas"
    )


def test_shared_object_names() -> None:
    accepted = ["libx.so", "libcudnn.so.9", "libcupti.so.2025.1.1", "_C.cpython-311.so"]
    refused = ["libx.a", "x.py", "libx.so.bak~", "notes.sops"]
    assert [audit.is_shared_object(name) for name in accepted] == [True] * 4
    assert [audit.is_shared_object(name) for name in refused] == [False] * 4


# --- verdicts -------------------------------------------------------------------------------


def test_every_file_of_a_package_must_cover_the_gpu(site: Path) -> None:
    rows = rows_by_name(audit.audit([site], [H100]))
    assert rows["torch"].status == "fail"
    assert rows["torch"].detail == (
        "libtorch_cuda_linalg.so has sm_86 only; this GPU is 9.0 (NVIDIA H100 80GB HBM3); "
        "rebuild: invoke build --cca 9.0"
    )
    assert rows["torch"].sass == ["sm_86", "sm_90"]
    assert rows["torch_scatter"].detail == (
        "sm_86 only; this GPU is 9.0 (NVIDIA H100 80GB HBM3); rebuild: invoke build --cca 9.0"
    )
    assert rows["nvidia_cublas"].status == "pass"  # sm_90a runs on 9.0 itself
    assert rows["nvidia.cudnn"].status == "pass"
    assert rows["torchvision"].status == "fail"  # compute_120 does not JIT down to 9.0
    assert audit.overall(rows.values()) == "fail"


def test_the_same_build_passes_on_the_gpu_it_was_built_for(site: Path) -> None:
    rows = rows_by_name(audit.audit([site], [A6000]))
    assert rows["torch"].status == "pass"
    assert rows["torch"].detail == (
        "2 CUDA files; runs on 8.6 (NVIDIA RTX A6000) through SASS sm_86; holds sm_86 sm_90"
    )
    assert rows["nvidia_cublas"].status == "fail"  # sm_90a runs nowhere else
    assert "NVIDIA ships no code for 8.6 in nvidia_cublas" in rows["nvidia_cublas"].detail


def test_ptx_jit_warns_for_a_build_and_passes_for_nvidia_wheels(site: Path) -> None:
    rows = rows_by_name(audit.audit([site], [RTX5090]))
    assert rows["torchvision"].status == "warn"
    assert rows["torchvision"].detail == (
        "12.0 (NVIDIA GeForce RTX 5090) only by PTX JIT from compute_120 (slow first start); "
        "rebuild: invoke build --cca 12.0"
    )
    assert rows["nvidia.cudnn"].status == "pass"
    assert "only by PTX JIT from compute_90" in rows["nvidia.cudnn"].detail
    assert rows["torch"].status == "fail"


def test_several_gpus_are_named_and_the_rebuild_keeps_them_all(site: Path) -> None:
    rows = rows_by_name(audit.audit([site], [A6000, H100]))
    assert rows["torch_scatter"].detail == (
        "sm_86 only; nothing for 9.0 (NVIDIA H100 80GB HBM3); rebuild: invoke build --cca '8.6;9.0'"
    )
    per_target = {t["capability"]: t["status"] for t in rows["torch_scatter"].targets}
    assert per_target == {"8.6": "pass", "9.0": "fail"}


def test_the_detail_says_which_sass_serves_each_gpu() -> None:
    # Nine archs built, one of them serving the GPU: say which, not "SASS for 8.6: sm_75 ...".
    nine = ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_103", "sm_120", "sm_121"]
    row = audit.judge("causal_conv1d", [Library("/x/c.so", nine, [])], [A6000, H100])
    assert row.detail == (
        "1 CUDA file; runs on 8.6 (NVIDIA RTX A6000) through SASS sm_86, on 9.0 (NVIDIA H100 "
        "80GB HBM3) through SASS sm_90; holds " + " ".join(nine)
    )
    older = audit.judge("ext", [Library("/x/e.so", ["sm_75", "sm_80"], [])], [A6000])
    assert "runs on 8.6 (NVIDIA RTX A6000) through SASS sm_80;" in older.detail


def test_files_missing_different_targets_are_listed_apart() -> None:
    libraries = [Library("/x/liba.so", ["sm_86"], []), Library("/x/libb.so", ["sm_90"], [])]
    row = audit.judge("ext", libraries, [A6000, H100])
    assert row.detail == (
        "libb.so has sm_90 only; nothing for 8.6 (NVIDIA RTX A6000); "
        "liba.so has sm_86 only; nothing for 9.0 (NVIDIA H100 80GB HBM3); "
        "rebuild: invoke build --cca '8.6;9.0'"
    )


def test_an_unreadable_library_fails_its_package() -> None:
    broken = Library("/x/libtorch_cuda.so", [], [], error="/x/libtorch_cuda.so: truncated")
    row = audit.judge("torch", [broken], [H100])
    assert (row.status, row.detail) == ("fail", "cannot read /x/libtorch_cuda.so: truncated")


def test_expected_cca_items_are_targets() -> None:
    targets = audit.cca_targets("9.0a;8.6+PTX")
    assert targets == [Target((8, 6), "8.6"), Target((9, 0), "9.0a")]
    assert [str(t) for t in targets] == ["CCA 8.6", "CCA 9.0a"]
    merged = audit.merge_targets([H100], targets)
    assert merged == [Target((8, 6), "8.6"), H100]


def test_gpu_targets_from_smoke_devices() -> None:
    devices = [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "capability": "9.0"}]
    assert audit.gpu_targets(devices) == [H100]


# --- python -m torchkiln.smoke --audit-only -------------------------------------------------


def test_audit_only_table_and_exit_1(site: Path) -> None:
    result = run_module("torchkiln.smoke", "--audit-only", "--expect-cca", "9.0", str(site))
    assert result.returncode == 1, result.stderr
    arch, link = result.stdout.split("\n\n")
    lines = arch.splitlines()
    assert lines[0] == "arch audit for CCA 9.0"
    assert lines[1].split() == ["package", "status", "detail"]
    scatter = next(line for line in lines if line.startswith("torch_scatter"))
    assert scatter.split()[1] == "fail"
    assert scatter.endswith("sm_86 only; nothing for CCA 9.0; rebuild: invoke build --cca 9.0")
    nvidia = next(line for line in lines if line.startswith("nvidia ("))
    assert nvidia.split()[2] == "pass"
    assert lines[-1].startswith("FAILED: torch, torch_scatter, torchvision")
    # The fixtures are real nvcc builds: they need libc, libstdc++ and libcudart.so.13, which
    # only a machine with the CUDA toolkit in its ld.so.cache has.
    assert link.splitlines()[0].startswith(f"link audit of {site} (LD_LIBRARY_PATH=")
    verdict = "OK" if links.audit([str(site)]).ok else "FAILED: libcudart.so.13 (needed by "
    assert link.splitlines()[-1].startswith(verdict)
    assert result.stderr == ""


def test_audit_only_exit_0_when_both_audits_pass(site: Path) -> None:
    files = [str(site / "torch/lib/libtorch_cuda.so"), str(site / "nvidia")]
    result = run_module("torchkiln.smoke", "--audit-only", "--expect-cca", "9.0", *files)
    links_ok = json.loads(run_module("torchkiln.inimage.links", "--json", *files).stdout)["ok"]
    assert result.returncode == (0 if links_ok else 1), result.stdout + result.stderr
    arch = result.stdout.split("\n\n")[0]
    assert arch.splitlines()[-1].startswith("OK")


def test_audit_only_json(site: Path) -> None:
    result = run_module(
        "torchkiln.smoke", "--audit-only", "--json", "--expect-cca", "9.0", str(site)
    )
    assert result.returncode == 1
    both = json.loads(result.stdout)
    assert set(both) == {"ok", "arch", "links"}
    assert both["ok"] is False
    assert set(both["links"]) == {
        "ok", "warned", "files", "libraries", "ld_library_path", "packages", "seconds"
    }  # fmt: skip
    data = both["arch"]
    assert set(data) == {"ok", "targets", "packages", "seconds"}
    assert data["ok"] is False
    assert data["targets"] == [{"capability": "9.0", "cca": "9.0", "name": ""}]
    torch = next(p for p in data["packages"] if p["package"] == "torch")
    assert set(torch) == {
        "package",
        "status",
        "detail",
        "vendor",
        "sass",
        "ptx",
        "files",
        "targets",
    }
    assert torch["status"] == "fail" and torch["vendor"] is False
    assert {os.path.basename(f["path"]): f["sass"] for f in torch["files"]} == {
        "libtorch_cuda.so": ["sm_86", "sm_90"],
        "libtorch_cuda_linalg.so": ["sm_86"],
    }
    assert torch["files"][0]["sections"] == [".nv_fatbin"]
    (target,) = torch["targets"]
    assert [os.path.basename(path) for path in target["uncovered"]] == ["libtorch_cuda_linalg.so"]


def libcuda_loads() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--audit-only", "--expect-cca", "9.0", "/no/such/dir"], "path '/no/such/dir' does not"),
        (["--audit-only", "--expect-cca", "86"], "CCA '86' is not a compute capability"),
        (["--audit-only", "--expect-cca", "9.0", "PATH_TO_README"], "not an ELF file"),
        (["--expect-cca", "9.0", "/some/path"], "go with --audit-only only"),
        (["--audit-only", "--expect-torch", "2.14.1"], "--expect-torch needs torch"),
    ],
    ids=["missing path", "bad CCA", "named non-ELF", "paths without --audit-only", "torch flag"],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    readme = SRC.parent / "README.md"
    args = [str(readme) if arg == "PATH_TO_README" else arg for arg in args]
    result = run_module("torchkiln.smoke", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_no_gpu_and_no_expected_cca_skips_the_arch_audit_only(site: Path) -> None:
    if libcuda_loads():
        pytest.skip("this machine has a CUDA driver: the audit finds its GPUs")
    result = run_module("torchkiln.smoke", "--audit-only", str(site / "torch_scatter"))
    assert result.stderr == ""
    arch, link = result.stdout.split("\n\n")
    assert arch == (
        "arch audit skipped: no CUDA driver (libcuda.so.1 not found) and no --expect-cca; pass "
        "--expect-cca with the GPUs' compute capability, e.g. --expect-cca 8.6"
    )
    assert link.splitlines()[0].startswith("link audit of ")
    data = json.loads(run_module("torchkiln.smoke", "--audit-only", "--json", str(site)).stdout)
    assert data["arch"] == {"ok": True, "skipped": arch}
    assert result.returncode == (0 if data["links"]["ok"] else 1)


def test_audit_only_reads_a_wheel_and_names_it_from_its_dist_info(tmp_path: Path) -> None:
    wheel = tmp_path / "nerfacc-0.5.3-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(FIXTURES / "sm86.so", "nerfacc/csrc.cpython-311-x86_64-linux-gnu.so")
        archive.writestr("nerfacc/__init__.py", "")
        archive.writestr(
            "nerfacc-0.5.3.dist-info/RECORD", "nerfacc/csrc.cpython-311-x86_64-linux-gnu.so,,\n"
        )
    result = run_module(
        "torchkiln.smoke", "--audit-only", "--json", "--expect-cca", "9.0", str(wheel)
    )
    data = json.loads(result.stdout)
    (package,) = data["arch"]["packages"]
    assert package["package"] == "nerfacc"
    assert package["detail"].startswith("sm_86 only; nothing for CCA 9.0")
    assert package["files"][0]["path"] == f"{wheel}/nerfacc/csrc.cpython-311-x86_64-linux-gnu.so"
    assert "torchkiln-whl-" not in result.stdout
    assert result.returncode == 1


def test_a_path_outside_site_packages_is_named_by_its_top_package(tmp_path: Path) -> None:
    put(tmp_path / "build/lib/nerfacc/cuda/csrc.cpython-311-x86_64-linux-gnu.so", "sm86.so")
    (tmp_path / "build/lib/nerfacc/__init__.py").write_text("")
    (tmp_path / "build/lib/nerfacc/cuda/__init__.py").write_text("")
    named = tmp_path / "build/lib/nerfacc/cuda/csrc.cpython-311-x86_64-linux-gnu.so"
    assert list(audit.collect([named])) == ["nerfacc"]
    assert list(audit.collect([tmp_path / "build"])) == ["nerfacc"]
    (tmp_path / "build/lib/nerfacc/__init__.py").unlink()
    assert list(audit.collect([named])) == ["cuda"]  # the outermost package folder
    (tmp_path / "build/lib/nerfacc/cuda/__init__.py").unlink()
    assert list(audit.collect([named])) == ["csrc"]  # no package around it: the file's stem


def test_bad_input_under_json_is_json_with_an_error() -> None:
    result = run_module("torchkiln.smoke", "--audit-only", "--json", "--expect-cca", "86")
    assert result.returncode == 2
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert data["error"].startswith("CCA '86' is not a compute capability")
    assert len(result.stderr.splitlines()) == 1
    result = run_module("torchkiln.smoke", "--audit-only", "--json", "/no/such/path.whl")
    assert (result.returncode, json.loads(result.stdout)["ok"]) == (2, False)


def test_audit_only_never_imports_torch(site: Path, tmp_path: Path) -> None:
    marker = tmp_path / "torch-was-imported"
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise ImportError('torch must not be imported')\n"
    )
    result = run_module(
        "torchkiln.smoke", "--audit-only", "--expect-cca", "9.0", str(site), extra_path=fake.parent
    )
    assert result.returncode == 1, result.stderr
    assert not marker.exists()
    # The same fake is found by a plain smoke run, so the check above can fail.
    run_module("torchkiln.smoke", "--json", extra_path=fake.parent)
    assert marker.exists()


def test_smoke_flags_still_parse() -> None:
    args = smoke.parse_args(
        ["--json", "--allow-cpu", "--expect-torch", "2.14.1", "--expect-cca", "9.0"]
    )
    assert (args.json, args.allow_cpu, args.expect_torch, args.expect_cca) == (
        True,
        True,
        "2.14.1",
        "9.0",
    )
    assert (args.audit_only, args.paths) == (False, [])
    assert smoke.parse_args(["--audit-only", "a", "b"]).paths == ["a", "b"]


# --- the "arch audit" row of a smoke run ----------------------------------------------------


@pytest.fixture
def in_site(site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(audit, "site_packages", lambda: [site])
    return site


def test_smoke_row_fails_naming_the_package(in_site: Path) -> None:
    found = report.Report(devices=[{"index": 0, "name": H100.name, "capability": "9.0"}])
    with pytest.raises(report.CheckFailed, match=r"torch_scatter fail: sm_86 only; this GPU is"):
        smoke.check_arch_audit(found, None)
    assert {row["package"] for row in found.audit} >= {"torch", "torch_scatter"}
    assert json.loads(report.report_json(found))["audit"] == found.audit


def test_smoke_row_checks_expected_cca_without_gpu(in_site: Path) -> None:
    shutil.rmtree(in_site / "torchvision.libs")
    shutil.rmtree(in_site / "nvidia/cu13")
    found = report.Report()
    text = smoke.check_arch_audit(found, "8.6")
    assert text == "torch, torch_scatter and 1 NVIDIA wheel run on CCA 8.6"
    with pytest.raises(
        report.CheckFailed, match=r"^torch fail: libtorch_cuda_linalg\.so has sm_86"
    ):
        smoke.check_arch_audit(found, "9.0")


def test_smoke_row_skips_without_targets_or_cuda_code(in_site: Path, tmp_path: Path) -> None:
    with pytest.raises(report.CheckSkipped, match="no GPU and no --expect-cca"):
        smoke.check_arch_audit(report.Report(), None)
    shutil.rmtree(in_site)
    in_site.mkdir()
    with pytest.raises(report.CheckSkipped, match="no CUDA code in site-packages"):
        smoke.check_arch_audit(report.Report(), "9.0")


def test_background_read_gives_what_a_read_here_gives(site: Path) -> None:
    worker = audit.CollectInBackground([str(site)])
    try:
        assert worker.result() == audit.collect([site])
    finally:
        worker.stop()
    assert worker.proc is not None and worker.proc.returncode == 0
