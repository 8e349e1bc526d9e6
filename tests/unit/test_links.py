"""Unit tests for the link audit on tiny shared objects that gcc builds here: the ELF reader,
resolution as glibc's ld.so does it (RPATH before LD_LIBRARY_PATH, RUNPATH after it, $ORIGIN,
the machine check, ld.so.cache), what `import torch` loads, driver and optional libraries, the
verdicts, and `python -m torchkiln.inimage.links` as a process (exit codes, --needs-from-system).

The libraries are built with -nostdlib, so they need nothing but what a test links them with,
and in-process audits see an empty ld.so.cache and no system directories: the machine's own
libraries cannot make a test pass or fail."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from test_smoke_cpu import run_module

from torchkiln.inimage import audit as arch_audit
from torchkiln.inimage import links

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


def build(
    out: Path,
    soname: str | None = None,
    needs: Sequence[Path] = (),
    rpath: str | None = None,
    new_dtags: bool = True,
    source: str = "int torchkiln_probe(void) { return 1; }\n",
    flags: Sequence[str] = (),
) -> Path:
    """Build a shared object with gcc that needs exactly the libraries in `needs`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    code = out.parent / f".{out.name}.c"
    code.write_text(source)
    command = ["gcc", "-shared", "-fPIC", "-nostdlib", "-o", str(out), str(code)]
    if soname:
        command.append(f"-Wl,-soname,{soname}")
    if rpath is not None:
        dtags = "--enable-new-dtags" if new_dtags else "--disable-new-dtags"
        command += [f"-Wl,-rpath,{rpath}", f"-Wl,{dtags}"]
    command += ["-Wl,--no-as-needed", *[str(lib) for lib in needs], *flags]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)
    code.unlink()
    return out


@pytest.fixture
def hermetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ld.so.cache, no system directories, no LD_LIBRARY_PATH, no installed torch."""
    monkeypatch.setattr(links, "ld_so_cache", lambda path=links.LD_SO_CACHE: {})
    monkeypatch.setattr(links, "system_dirs", lambda triplet: [])
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    monkeypatch.setattr(arch_audit, "site_packages", lambda: [])
    monkeypatch.setattr(links, "torch_folder", torch_in_trees)


def torch_in_trees(roots: Sequence[str]) -> str | None:
    """The torch of the audited trees only, never this interpreter's."""
    found = [Path(root, "torch") for root in roots if Path(root, "torch/__init__.py").is_file()]
    return str(found[0]) if found else None


def by_file(result: links.LinkAudit) -> dict[str, dict[str, links.Resolved]]:
    return {file.relative: file.needs for file in result.files}


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    """A folder outside every audited tree and search path: what links against it and is
    audited without it misses that library."""
    return tmp_path / "stubs"


def absent(stubs: Path, soname: str) -> Path:
    """A library to link against that the audited trees will not hold."""
    return build(stubs / soname, soname=soname)


# --- reading --------------------------------------------------------------------------------


def test_dynamic_section_is_read(tmp_path: Path) -> None:
    base = build(tmp_path / "lib/libbase.so.1", soname="libbase.so.1")
    user = build(
        tmp_path / "pkg/libuser.so",
        needs=[base],
        rpath="$ORIGIN/../lib:${ORIGIN}/x",
        new_dtags=True,
    )
    old = build(tmp_path / "pkg/libold.so", needs=[base], rpath="$ORIGIN/../lib", new_dtags=False)
    assert links.read_dynamic(base).soname == "libbase.so.1"
    dynamic = links.read_dynamic(user)
    assert (dynamic.soname, dynamic.needed) == ("", ["libbase.so.1"])
    assert (dynamic.rpath, dynamic.runpath) == ([], ["$ORIGIN/../lib", "${ORIGIN}/x"])
    dynamic = links.read_dynamic(old)
    assert (dynamic.rpath, dynamic.runpath) == (["$ORIGIN/../lib"], [])
    nodeflib = build(tmp_path / "libnd.so", flags=["-Wl,-z,nodefaultlib"])
    assert links.read_dynamic(nodeflib).nodeflib
    assert not dynamic.nodeflib


def test_non_elf_and_foreign_files_are_told_apart(tmp_path: Path) -> None:
    script = tmp_path / "libshm.so"
    script.write_text("/* GNU ld script */\n")
    with pytest.raises(links.NotELF, match="not an ELF file"):
        links.read_dynamic(script)
    original = build(tmp_path / "lib.so").read_bytes()
    (tmp_path / "lib32.so").write_bytes(original[:4] + b"\x01" + original[5:])  # ELFCLASS32
    with pytest.raises(links.OtherELF, match="32-bit"):
        links.read_dynamic(tmp_path / "lib32.so")
    for size, where in ((40, "ELF header"), (100, "program headers")):
        (tmp_path / "cut.so").write_bytes(original[:size])
        with pytest.raises(links.ElfError, match=f"truncated.*{where}|{where}.*truncated"):
            links.read_dynamic(tmp_path / "cut.so")


# --- resolving ------------------------------------------------------------------------------


def test_origin_rpath_resolves_into_the_tree(tmp_path: Path, hermetic: None) -> None:
    site = tmp_path / "site"
    base = build(site / "lib/libbase.so.1", soname="libbase.so.1")
    build(site / "pkg/sub/librun.so", needs=[base], rpath="$ORIGIN/../../lib")
    build(site / "pkg/sub/librpath.so", needs=[base], rpath="$ORIGIN/../../lib", new_dtags=False)
    result = links.audit([str(site)])
    needs = by_file(result)
    assert needs["pkg/sub/librun.so"]["libbase.so.1"] == links.Resolved("runpath", str(base))
    assert needs["pkg/sub/librpath.so"]["libbase.so.1"] == links.Resolved("rpath", str(base))
    assert result.ok
    assert links.verdict(result).startswith("OK  (3 files, 1 libraries needed, ")


def test_rpath_comes_before_ld_library_path_and_runpath_after_it(
    tmp_path: Path, hermetic: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    base = build(site / "lib/libbase.so.1", soname="libbase.so.1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(base, elsewhere / "libbase.so.1")
    build(site / "pkg/librun.so", needs=[base], rpath="$ORIGIN/../lib")
    build(site / "pkg/librpath.so", needs=[base], rpath="$ORIGIN/../lib", new_dtags=False)
    monkeypatch.setenv("LD_LIBRARY_PATH", str(elsewhere))
    needs = by_file(links.audit([str(site)]))
    assert needs["pkg/librpath.so"]["libbase.so.1"].path == str(base)
    assert needs["pkg/librun.so"]["libbase.so.1"] == links.Resolved(
        "LD_LIBRARY_PATH", str(elsewhere / "libbase.so.1")
    )


def test_rpath_is_ignored_when_runpath_is_there(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    lib = build(tmp_path / "a/libx.so.1", soname="libx.so.1")
    linker = links.Linker()
    wanted = links.identity_of(str(lib))
    both = links.Dynamic(needed=["libx.so.1"], rpath=["$ORIGIN/a"], runpath=["$ORIGIN/b"])
    only = links.Dynamic(needed=["libx.so.1"], rpath=["$ORIGIN/a"])
    user = str(tmp_path / "libuser.so")
    assert linker.resolve("libx.so.1", user, both, wanted).how == links.MISSING
    assert linker.resolve("libx.so.1", user, only, wanted) == links.Resolved("rpath", str(lib))


def test_ld_library_path_alone_resolves(
    tmp_path: Path, hermetic: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = build(tmp_path / "outside/libbase.so.1", soname="libbase.so.1")
    build(tmp_path / "site/pkg/libbare.so", needs=[base])
    assert not links.audit([str(tmp_path / "site")]).ok
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/no/such/dir:{base.parent}")
    result = links.audit([str(tmp_path / "site")])
    assert result.ok
    assert by_file(result)["pkg/libbare.so"]["libbase.so.1"].how == "LD_LIBRARY_PATH"


def test_a_candidate_of_another_class_or_machine_is_passed_over(
    tmp_path: Path, hermetic: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = build(tmp_path / "good/libbase.so.1", soname="libbase.so.1")
    data = bytearray(base.read_bytes())
    (tmp_path / "bad32").mkdir()
    (tmp_path / "bad32/libbase.so.1").write_bytes(bytes(data[:4]) + b"\x01" + bytes(data[5:]))
    arm = bytearray(data)
    arm[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
    (tmp_path / "arm").mkdir()
    (tmp_path / "arm/libbase.so.1").write_bytes(bytes(arm))
    build(tmp_path / "site/libuser.so", needs=[base])
    search = [tmp_path / "bad32", tmp_path / "arm", tmp_path / "good"]
    monkeypatch.setenv("LD_LIBRARY_PATH", ":".join(str(path) for path in search))
    found = by_file(links.audit([str(tmp_path / "site")]))["libuser.so"]["libbase.so.1"]
    assert found.path == str(base)


def test_ld_so_cache_and_system_dirs_come_last_and_nodeflib_skips_them(tmp_path: Path) -> None:
    lib = build(tmp_path / "sys/libx.so.1", soname="libx.so.1")
    wanted = links.identity_of(str(lib))
    cached = links.Linker(cache={"libx.so.1": [str(lib)]})
    plain = links.Dynamic(needed=["libx.so.1"])
    assert cached.resolve("libx.so.1", "/p/liba.so", plain, wanted).how == "ld.so.cache"
    system = links.Linker(system=[str(tmp_path / "sys")])
    assert system.resolve("libx.so.1", "/p/liba.so", plain, wanted).how == "system dir"
    nodeflib = links.Dynamic(needed=["libx.so.1"], nodeflib=True)
    assert cached.resolve("libx.so.1", "/p/liba.so", nodeflib, wanted).how == links.MISSING
    assert system.resolve("libx.so.1", "/p/liba.so", nodeflib, wanted).how == links.MISSING


def test_dynamic_string_tokens() -> None:
    linker = links.Linker(lib="lib/x86_64-linux-gnu", platform="x86_64")
    assert linker.expand("$ORIGIN/../lib", "/s/torch/lib") == "/s/torch/lib/../lib"
    assert linker.expand("${ORIGIN}/x", "/o") == "/o/x"
    assert linker.expand("/opt/$LIB/$PLATFORM", "/o") == "/opt/lib/x86_64-linux-gnu/x86_64"
    assert linker.expand("/opt/${PLATFORM}", "/o") == "/opt/x86_64"
    assert linker.expand("$ORIGINAL", "/o").endswith("$ORIGINAL")  # not a token: kept
    assert linker.expand("", "/o") == os.getcwd() + os.sep  # an empty entry: the working dir


def test_a_needed_path_with_a_slash_is_taken_as_it_is(tmp_path: Path) -> None:
    lib = build(tmp_path / "libx.so.1", soname="libx.so.1")
    wanted = links.identity_of(str(lib))
    linker = links.Linker()
    assert linker.resolve(str(lib), "/p/a.so", links.Dynamic(), wanted).path == str(lib)
    assert linker.resolve("/no/libx.so.1", "/p/a.so", links.Dynamic(), wanted).how == "missing"


# --- ld.so.cache ----------------------------------------------------------------------------


@pytest.mark.skipif(
    not (shutil.which("ldconfig") or os.path.exists("/sbin/ldconfig"))
    or not os.path.exists(links.LD_SO_CACHE),
    reason="no ldconfig or no /etc/ld.so.cache here",
)
def test_ld_so_cache_parser_agrees_with_ldconfig() -> None:
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    listed = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=30).stdout
    expected = set(re.findall(r"^\t(\S+) \(.*\) => (\S+)$", listed, re.M))
    parsed = {(name, path) for name, paths in links.ld_so_cache().items() for path in paths}
    assert expected
    assert parsed == expected


def cache_bytes(entries: list[tuple[str, str]], old: bool, new: bool) -> bytes:
    """An ld.so.cache in the old format, the new one, or the old table before the new one."""
    strings, offsets = b"", []
    for name, path in entries:
        offsets.append((len(strings), len(strings) + len(name) + 1))
        strings += name.encode() + b"\0" + path.encode() + b"\0"
    new_part = b""
    if new:
        head = links.CACHE_NEW_HEADER.size + len(entries) * links.CACHE_NEW_ENTRY.size
        table = b"".join(
            links.CACHE_NEW_ENTRY.pack(0x0303, head + key, head + value, 0, 0)
            for key, value in offsets
        )
        header = links.CACHE_NEW_HEADER.pack(links.CACHE_NEW, len(entries), len(strings), 2, 0)
        new_part = header + table + strings
    if not old:
        return new_part
    old_table = b"".join(links.CACHE_OLD_ENTRY.pack(0x0303, key, value) for key, value in offsets)
    old_part = links.CACHE_OLD_HEADER.pack(links.CACHE_OLD, len(entries)) + old_table
    if not new:
        return old_part + strings
    return old_part + b"\0" * ((-len(old_part)) % 8) + new_part


@pytest.mark.parametrize(
    ("old", "new"), [(False, True), (True, True), (True, False)], ids=["new", "both", "old"]
)
def test_ld_so_cache_formats(old: bool, new: bool) -> None:
    entries = [("libz.so.1", "/lib/libz.so.1"), ("libz.so.1", "/lib32/libz.so.1")]
    parsed = links.parse_ld_so_cache(cache_bytes(entries, old, new))
    assert parsed == {"libz.so.1": ["/lib/libz.so.1", "/lib32/libz.so.1"]}


def test_an_unknown_or_missing_cache_is_empty(tmp_path: Path) -> None:
    assert links.parse_ld_so_cache(b"garbage") == {}
    assert links.parse_ld_so_cache(links.CACHE_NEW + b"\x05") == {}
    assert links.ld_so_cache(str(tmp_path / "none")) == {}


# --- what is loaded already -----------------------------------------------------------------

TORCH_INIT = """
def _preload_cuda_deps(err=None, required=True):
    cuda_libs = [
        ("cublas", "libcublas.so.*[0-9]"),
    ]
"""


@pytest.fixture
def torch_site(tmp_path: Path, stubs: Path) -> Path:
    """A site-packages with a CUDA torch as the official wheel lays it out, NVIDIA's wheels,
    and extensions that link torch's libraries without an rpath."""
    site = tmp_path / "site-packages"
    cu = site / "nvidia/cu13/lib"
    cudart = build(cu / "libcudart.so.13", soname="libcudart.so.13")
    cublas = build(cu / "libcublas.so.13", soname="libcublas.so.13")
    lib = site / "torch/lib"
    c10 = build(lib / "libc10.so", soname="libc10.so")
    build(
        lib / "libtorch_global_deps.so",
        soname="libtorch_global_deps.so",
        needs=[cudart],
        rpath="$ORIGIN/../../nvidia/cu13/lib:$ORIGIN",
        new_dtags=False,
    )
    build(site / "torch/_C.cpython-311-x86_64-linux-gnu.so", needs=[c10], rpath="$ORIGIN/lib")
    (site / "torch/__init__.py").write_text(TORCH_INIT)
    (site / "torch/version.py").write_text("cuda = '13.0'\n")
    build(site / "ext/_ops.cpython-311-x86_64-linux-gnu.so", needs=[c10, cudart, cublas])
    build(site / "plain/lib/libfast.so", needs=[cublas])
    return site


def test_what_import_torch_loads_resolves_an_extension(torch_site: Path, hermetic: None) -> None:
    result = links.audit([str(torch_site)])
    ext = by_file(result)["ext/_ops.cpython-311-x86_64-linux-gnu.so"]
    assert {name: found.how for name, found in ext.items()} == {
        "libc10.so": "loaded",
        "libcudart.so.13": "loaded",
        "libcublas.so.13": "loaded",  # by torch's _preload_cuda_deps
    }
    assert ext["libc10.so"].by == "import torch"
    assert ext["libcublas.so.13"].path == str(torch_site / "nvidia/cu13/lib/libcublas.so.13")
    rows = {row.package: row for row in result.rows}
    assert rows["ext"].status == "pass"
    assert rows["ext"].detail == "1 file, 3 libraries: all resolve (3 loaded by import torch)"
    # An object that links nothing of torch's loads without torch: nothing is lent to it.
    assert rows["plain"].status == "fail"
    assert rows["plain"].detail == (
        "missing libcublas.so.13 (needed by plain/lib/libfast.so; "
        "pip install 'cuda-toolkit[cublas]')"
    )


def test_only_what_torch_really_preloads_counts(torch_site: Path, hermetic: None) -> None:
    (torch_site / "torch/__init__.py").write_text("# no _preload_cuda_deps in this torch\n")
    ext = by_file(links.audit([str(torch_site)]))["ext/_ops.cpython-311-x86_64-linux-gnu.so"]
    assert ext["libcudart.so.13"].how == "loaded"  # libtorch_global_deps.so needs it
    assert ext["libcublas.so.13"].how == "missing"


def test_a_library_linking_an_extension_module_loads_after_it(
    tmp_path: Path, hermetic: None
) -> None:
    site = tmp_path / "site-packages"
    module = build(
        site / "tri/_C/libtri.so",
        soname="libtri.so",
        source="void PyInit_libtri(void) {}\n",
    )
    build(site / "tri/plugins/libplug.so", needs=[module])
    found = by_file(links.audit([str(site)]))["tri/plugins/libplug.so"]["libtri.so"]
    assert (found.how, found.by) == ("loaded", "import tri")
    build(site / "tri/_C/libtri.so", soname="libtri.so")  # no PyInit_libtri: no module
    assert not links.audit([str(site)]).ok


# --- driver and optional libraries, failures ------------------------------------------------


def test_missing_library_is_named_with_its_files_and_package(
    tmp_path: Path, stubs: Path, hermetic: None
) -> None:
    openblas = absent(stubs, "libopenblas.so.0")
    gomp = absent(stubs, "libgomp.so.1")
    site = tmp_path / "site-packages"
    build(site / "torch/lib/libtorch_cpu.so", needs=[openblas, gomp])
    build(site / "torch/lib/libshm.so", needs=[gomp])
    result = links.audit([str(site)])
    (row,) = result.rows
    assert row.status == "fail"
    assert row.missing == [
        {
            "library": "libgomp.so.1",
            "needed_by": ["torch/lib/libshm.so", "torch/lib/libtorch_cpu.so"],
            "hint": "apt-get install libgomp1",
        },
        {
            "library": "libopenblas.so.0",
            "needed_by": ["torch/lib/libtorch_cpu.so"],
            "hint": "apt-get install libopenblas0",
        },
    ]
    assert links.verdict(result).startswith(
        "FAILED: libgomp.so.1 (needed by torch/lib/libshm.so, torch/lib/libtorch_cpu.so; "
        "apt-get install libgomp1), libopenblas.so.0 (needed by torch/lib/libtorch_cpu.so; "
        "apt-get install libopenblas0)  (2 files, 2 libraries needed, "
    )


def test_driver_libraries_are_not_failures(tmp_path: Path, stubs: Path, hermetic: None) -> None:
    cuda = absent(stubs, "libcuda.so.1")
    nvml = absent(stubs, "libnvidia-ml.so.1")
    build(tmp_path / "site/torch/lib/libtorch_cuda.so", needs=[cuda, nvml])
    result = links.audit([str(tmp_path / "site")])
    assert result.ok
    (row,) = result.rows
    assert row.driver == ["libcuda.so.1", "libnvidia-ml.so.1"]
    assert "libcuda.so.1 libnvidia-ml.so.1 from the NVIDIA driver at run time" in row.detail
    assert [links.is_driver_library(n) for n in ("libcuda.so.1", "libnvcuvid.so.1")] == [True] * 2
    assert not links.is_driver_library("libcudart.so.13")


def test_nvidia_plugins_nothing_links_are_optional(
    tmp_path: Path, stubs: Path, hermetic: None
) -> None:
    ucx = absent(stubs, "libucp.so.0")
    verbs = absent(stubs, "libibverbs.so.1")
    site = tmp_path / "site-packages"
    lib = site / "nvidia/nvshmem/lib"
    host = build(lib / "libnvshmem_host.so.3", soname="libnvshmem_host.so.3", rpath="$ORIGIN")
    build(lib / "nvshmem_transport_ucx.so.3", needs=[ucx], rpath="$ORIGIN")
    build(
        site / "torch/lib/libtorch_nvshmem.so",
        needs=[host],
        rpath="$ORIGIN/../../nvidia/nvshmem/lib",
    )
    result = links.audit([str(site)])
    assert result.ok
    rows = {row.package: row for row in result.rows}
    assert rows["nvidia.nvshmem"].optional == [
        {"file": "nvidia/nvshmem/lib/nvshmem_transport_ucx.so.3", "libraries": ["libucp.so.0"]}
    ]
    assert "optional plugins, loaded only when used, lack: nvshmem_transport_ucx.so.3" in (
        links.render_table(result)
    )
    # The same library missing for one that torch links is a failure.
    build(lib / "libnvshmem_host.so.3", soname="libnvshmem_host.so.3", needs=[verbs])
    result = links.audit([str(site)])
    assert not result.ok
    assert rows_of(result)["nvidia.nvshmem"].missing[0]["library"] == "libibverbs.so.1"


def test_a_module_other_packages_may_skip_warns_but_torchs_fail(
    tmp_path: Path, stubs: Path, hermetic: None
) -> None:
    tbb = absent(stubs, "libtbb.so.12")
    site = tmp_path / "site-packages"
    build(site / "numba/np/ufunc/tbbpool.cpython-311-x86_64-linux-gnu.so", needs=[tbb])
    result = links.audit([str(site)])
    assert result.ok and result.warned
    (row,) = result.rows
    assert (row.status, row.detail) == (
        "warn",
        "missing libtbb.so.12 (needed by numba/np/ufunc/tbbpool.cpython-311-x86_64-linux-gnu.so): "
        "that module cannot be imported (fine if numba does without it)",
    )
    assert links.verdict(result).endswith(
        "; warn: libtbb.so.12 (needed by numba/np/ufunc/tbbpool.cpython-311-x86_64-linux-gnu.so)"
    )
    # The same in torchvision, or in a module something links, is a failure.
    build(site / "torchvision/image.cpython-311-x86_64-linux-gnu.so", needs=[tbb])
    build(
        site / "numba/_helper.cpython-311-x86_64-linux-gnu.so", soname="libhelper.so", needs=[tbb]
    )
    helper = site / "numba/_helper.cpython-311-x86_64-linux-gnu.so"
    build(
        site / "numba/np/ufunc/tbbpool.cpython-311-x86_64-linux-gnu.so",
        needs=[helper],
        rpath="$ORIGIN/../..",
    )
    rows = rows_of(links.audit([str(site)]))
    assert rows["torchvision"].status == "fail"
    assert rows["numba"].status == "fail"


def rows_of(result: links.LinkAudit) -> dict[str, links.PackageRow]:
    return {row.package: row for row in result.rows}


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("libopenblas.so.0", "apt-get install libopenblas0"),
        ("libjpeg.so.8", "apt-get install libjpeg-turbo8 (Ubuntu; Debian's is libjpeg.so.62)"),
        ("libpng16.so.16", "apt-get install libpng16-16 (libpng16-16t64 on Ubuntu 24.04)"),
        ("libwebp.so.7", "apt-get install libwebp7"),
        ("libpython3.12.so.1.0", "apt-get install libpython3.12"),
        ("libcusparseLt.so.0", "pip install nvidia-cusparselt-cu13"),
        ("libnvshmem_host.so.3", "pip install nvidia-nvshmem-cu13"),
        ("libcudnn.so.9", "pip install nvidia-cudnn-cu13"),
        ("libcufile.so.0", "pip install 'cuda-toolkit[cufile]'"),
        ("libc10.so", "pip install torch; import torch loads it"),
        ("libsomething.so.3", ""),
    ],
)
def test_package_hints(name: str, hint: str) -> None:
    assert links.package_hint(name) == hint


def test_hints_follow_torchs_cuda_version() -> None:
    assert links.package_hint("libcudnn.so.9", "12") == "pip install nvidia-cudnn-cu12"


# --- folders, wheels, the command line ------------------------------------------------------


def test_executables_and_suffixless_files_are_audited(
    tmp_path: Path, stubs: Path, hermetic: None
) -> None:
    missing = absent(stubs, "libtkabsent.so.1")
    site = tmp_path / "site-packages"
    build(site / "torch/bin/torch_shm_manager", needs=[missing])
    (site / "torch/bin/README").write_text("not an ELF\n")
    result = links.audit([str(site)])
    assert [file.relative for file in result.files] == ["torch/bin/torch_shm_manager"]
    assert not result.ok


def test_the_project_is_named_from_its_dist_info(tmp_path: Path, hermetic: None) -> None:
    root = tmp_path / "unpacked"
    build(root / "csrc/_C.cpython-311-x86_64-linux-gnu.so")
    record = root / "nerfacc-0.5.3.dist-info/RECORD"
    record.parent.mkdir()
    record.write_text("csrc/_C.cpython-311-x86_64-linux-gnu.so,,\n")
    (row,) = links.audit([str(root)]).rows
    assert row.package == "nerfacc"


def make_wheel(wheel: Path, tree: Path) -> Path:
    with zipfile.ZipFile(wheel, "w") as archive:
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo(path.relative_to(tree).as_posix())
                info.external_attr = (path.stat().st_mode & 0o777) << 16
                archive.writestr(info, path.read_bytes())
    return wheel


def test_cli_exit_codes_table_and_json(tmp_path: Path, stubs: Path) -> None:
    missing = absent(stubs, "libtkabsent_blas.so.0")
    site = tmp_path / "site-packages"
    base = build(site / "lib/libbase.so.1", soname="libbase.so.1")
    build(site / "pkg/libok.so", needs=[base], rpath="$ORIGIN/../lib")
    result = run_module("torchkiln.inimage.links", str(site))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"link audit of {site} (LD_LIBRARY_PATH=")
    assert lines[1].split() == ["package", "status", "detail"]
    assert re.fullmatch(r"OK  \(2 files, 1 libraries needed, \d+\.\d s\)", lines[-1])

    build(site / "pkg/libbroken.so", needs=[missing])
    result = run_module("torchkiln.inimage.links", str(site))
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1].startswith(
        "FAILED: libtkabsent_blas.so.0 (needed by pkg/libbroken.so)  (3 files,"
    )
    data = json.loads(run_module("torchkiln.inimage.links", "--json", str(site)).stdout)
    assert data["ok"] is False
    (pkg,) = (p for p in data["packages"] if p["package"] == "pkg")
    assert pkg["missing"] == [
        {"library": "libtkabsent_blas.so.0", "needed_by": ["pkg/libbroken.so"], "hint": ""}
    ]


def test_cli_audits_a_wheel_as_installed(tmp_path: Path, stubs: Path) -> None:
    tree = tmp_path / "tree"
    base = build(tree / "mypkg/lib/libbase.so.1", soname="libbase.so.1")
    build(tree / "mypkg/_C.cpython-311-x86_64-linux-gnu.so", needs=[base], rpath="$ORIGIN/lib")
    (tree / "my_pkg-1.0.dist-info").mkdir()
    (tree / "my_pkg-1.0.dist-info/RECORD").write_text(
        "mypkg/_C.cpython-311-x86_64-linux-gnu.so,,\nmypkg/lib/libbase.so.1,,\n"
    )
    wheel = make_wheel(tmp_path / "my_pkg-1.0-cp311-cp311-linux_x86_64.whl", tree)
    result = run_module("torchkiln.inimage.links", str(wheel))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^my_pkg\s+pass\s+2 files, 1 libraries: all resolve$", result.stdout, re.M)
    assert "torchkiln-whl-" not in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/dir"], "path '/no/such/dir' does not exist"),
        (["NOT_ELF"], "not an ELF file"),
        (["BAD_WHEEL"], "cannot be unpacked"),
        (["--needs-from-system"], "--needs-from-system needs the PATHs"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
    ids=["missing path", "named non-ELF", "bad wheel", "needs without paths", "bad flag"],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "notes.so").write_text("text\n")
    (tmp_path / "bad.whl").write_text("not a zip\n")
    named = {"NOT_ELF": str(tmp_path / "notes.so"), "BAD_WHEEL": str(tmp_path / "bad.whl")}
    result = run_module("torchkiln.inimage.links", *[named.get(arg, arg) for arg in args])
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr
    result = run_module("torchkiln.inimage.links", "--json", *[named.get(a, a) for a in args])
    if "--frobnicate" not in args and "--needs-from-system" not in args:
        assert json.loads(result.stdout) == {
            "ok": False,
            "error": result.stderr.split(": ", 1)[1].strip(),
        }


def test_needs_from_system(tmp_path: Path, stubs: Path) -> None:
    system_path = (links.ld_so_cache().get("libm.so.6") or [""])[0]
    missing = absent(stubs, "libtkabsent_sys.so.1")
    cuda = absent(stubs, "libcuda.so.1")
    missing_tool = absent(stubs, "libtkabsent_tool.so.1")
    trees = tmp_path / "unpacked"
    c10 = build(trees / "torch-2.14.1/torch/lib/libc10.so", soname="libc10.so")
    base = build(trees / "torch-2.14.1/torch/lib/libbase.so.1", soname="libbase.so.1")
    build(
        trees / "torch-2.14.1/torch/lib/libtorch_cpu.so",
        needs=[base, missing, cuda],
        rpath="$ORIGIN",
        flags=["-lm"],
    )
    build(trees / "vision-0.29.1/torchvision/_C.so", needs=[c10], flags=["-lm"])
    # An executable unzipped without its mode bits still counts (python -m zipfile -e).
    tool = build(trees / "torch-2.14.1/torch/bin/torch_shm_manager", needs=[missing_tool])
    tool.chmod(0o644)
    result = run_module("torchkiln.inimage.links", "--needs-from-system", str(trees))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [
        "libm.so.6",
        "libtkabsent_sys.so.1",
        "libtkabsent_tool.so.1",
    ]
    assert lines[1:] == ["libtkabsent_sys.so.1\t", "libtkabsent_tool.so.1\t"]
    resolved = lines[0].split("\t")[1]
    assert os.path.isabs(resolved) and resolved.endswith("/libm.so.6")
    if system_path:
        assert resolved == system_path
