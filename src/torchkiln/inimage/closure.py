"""What the wheels compiled here need from the system, and wheels that travel without it.

Two build steps use this module (standard library only; the build image's dpkg and patchelf):

- the runtime closure: the NEEDED entries of the compiled wheels that resolve to the build
  image's own files (`torchkiln.inimage.links --needs-from-system`), each mapped to the Debian
  package that owns the file the linker found (dpkg -S on its real path, so an unversioned
  -dev link leads to the runtime package). The train image installs those its base lacks.
- wheels that travel: `auditwheel repair` bundles what the wheels link from the system; NVIDIA's
  libraries (and the driver's) are excluded, since torch's metadata requires NVIDIA's wheels, and
  so are the libraries other wheels of the set provide (torch's, for torchvision). auditwheel
  drops rpaths that point outside a wheel, so the compiled libraries get the rpaths into NVIDIA's
  wheels (`$ORIGIN/../../nvidia/cudnn/lib`, as the official wheel has) afterwards.
"""

from __future__ import annotations

import base64
import csv
import fnmatch
import hashlib
import io
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath

# Sonames of NVIDIA's CUDA libraries and of the driver: never bundled, never apt-installed here.
NVIDIA_SONAMES = (
    "libcuda.so*", "libnvidia-*.so*", "libcudadebugger.so*", "libnvcuvid.so*",
    "libcudart.so*", "libcublas.so*", "libcublasLt.so*", "libcudnn*.so*", "libnccl.so*",
    "libcufft.so*", "libcufftw.so*", "libcurand.so*", "libcusolver.so*", "libcusolverMg.so*",
    "libcusparse.so*", "libcusparseLt.so*", "libnvrtc.so*", "libnvrtc-builtins.so*",
    "libnvJitLink.so*", "libcupti.so*", "libnvperf_*.so*", "libnvToolsExt.so*",
    "libcufile.so*", "libcufile_rdma.so*", "libnvshmem*.so*", "nvshmem_*.so*", "libcudss*.so*",
    "libnvfatbin.so*", "libcheckpoint.so*",
)  # fmt: skip
SHARED_OBJECT = re.compile(r"\.so(\.[\w.]*)?$")
COMPILED_HERE = re.compile(r"-linux_[a-z0-9_]+\.whl$")


def is_nvidia(soname: str) -> bool:
    """A library NVIDIA's wheels or the driver provide."""
    return any(fnmatch.fnmatchcase(soname, pattern) for pattern in NVIDIA_SONAMES)


def compiled_here(wheel: str | os.PathLike[str]) -> bool:
    """A wheel built in this build (platform tag linux_*), not one from an index."""
    return bool(COMPILED_HERE.search(os.fspath(wheel)))


def shared_objects(names: Iterable[str]) -> list[str]:
    """The base names of the libraries (lib*.so*, what others link) among a wheel's members."""
    found = {PurePosixPath(name).name for name in names if SHARED_OBJECT.search(name)}
    return sorted(name for name in found if name.startswith("lib"))


def excludes(wheel: Path, others: Iterable[Path]) -> list[str]:
    """auditwheel's --exclude patterns for one wheel: NVIDIA's libraries, and every shared
    object that another wheel of the set ships (torch's libc10.so for torchvision)."""
    provided: set[str] = set()
    for other in others:
        if other != wheel:
            with zipfile.ZipFile(other) as archive:
                provided.update(shared_objects(archive.namelist()))
    return [*NVIDIA_SONAMES, *sorted(provided)]


# --- the runtime closure --------------------------------------------------------------------


def parse_needs(text: str) -> dict[str, str]:
    """Read `links --needs-from-system` output: 'soname<TAB>path' lines."""
    needs = {}
    for line in text.splitlines():
        if line.strip():
            soname, _, path = line.partition("\t")
            needs[soname.strip()] = path.strip()
    return needs


def dpkg_owner(path: str) -> str | None:
    """The Debian package that owns a file (its real path first: alternatives and -dev links
    point at the runtime package's file), or None."""
    for candidate in dict.fromkeys((os.path.realpath(path), path)):
        result = subprocess.run(
            ["dpkg", "-S", candidate], capture_output=True, text=True, check=False
        )
        if result.returncode == 0 and result.stdout:
            package = result.stdout.split(":", 1)[0].split(",")[0].strip()
            return package or None
    return None


def closure(
    needs: Mapping[str, str], owner: Callable[[str], str | None]
) -> tuple[dict[str, str], list[str]]:
    """Map each system library the wheels need to its package; also list those that no package
    owns (unresolved, or a file put there by hand). NVIDIA's libraries are left to NVIDIA's
    wheels and the driver."""
    packages: dict[str, str] = {}
    orphans: list[str] = []
    for soname, path in sorted(needs.items()):
        if is_nvidia(soname):
            continue
        package = owner(path) if path else None
        if package:
            packages[soname] = package
        else:
            orphans.append(soname)
    return packages, orphans


# --- rpaths into NVIDIA's wheels ------------------------------------------------------------


def nvidia_library_dirs(site: Path) -> dict[str, str]:
    """Map each soname in NVIDIA's wheels under a site-packages folder to its folder, relative
    to site-packages ('libcudnn.so.9' -> 'nvidia/cudnn/lib')."""
    found: dict[str, str] = {}
    root = site / "nvidia"
    if not root.is_dir():
        return found
    site = site.resolve()
    for folder in sorted(root.glob("*/lib")):
        for path in sorted(folder.iterdir()):
            # A link into another wheel's folder (the CUDA tree links cuDNN in) names that one.
            real = path.resolve()
            if SHARED_OBJECT.search(path.name) and real.is_relative_to(site):
                found.setdefault(path.name, real.parent.relative_to(site).as_posix())
    return found


def rpath_entries(member: str, needed: Iterable[str], dirs: Mapping[str, str]) -> list[str]:
    """The $ORIGIN-relative rpaths a library at `member` (its path inside the wheel, which is
    its path under site-packages) needs to find its NVIDIA libraries in NVIDIA's wheels."""
    depth = len(PurePosixPath(member).parent.parts)
    up = "/".join([".."] * depth)
    entries = []
    for soname in needed:
        folder = dirs.get(soname)
        if folder:
            entry = f"$ORIGIN/{up}/{folder}" if up else f"$ORIGIN/{folder}"
            if entry not in entries:
                entries.append(entry)
    return entries


def elf_needed(path: Path) -> list[str]:
    """A library's DT_NEEDED entries, through patchelf (present wherever auditwheel is)."""
    result = subprocess.run(
        ["patchelf", "--print-needed", str(path)], capture_output=True, text=True, check=False
    )
    return result.stdout.split() if result.returncode == 0 else []


def record_line(name: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={digest}", str(len(data))]


def add_nvidia_rpaths(wheel: Path, dirs: Mapping[str, str]) -> list[str]:
    """Give the wheel's libraries rpaths into NVIDIA's wheels where they need NVIDIA libraries;
    rewrite the wheel in place (RECORD updated). Returns the members changed."""
    changed: list[str] = []
    with tempfile.TemporaryDirectory() as scratch, zipfile.ZipFile(wheel) as archive:
        members = archive.infolist()
        contents = {info.filename: archive.read(info) for info in members}
        for name in list(contents):
            if not SHARED_OBJECT.search(name):
                continue
            path = Path(scratch, PurePosixPath(name).name)
            path.write_bytes(contents[name])
            entries = rpath_entries(name, elf_needed(path), dirs)
            if not entries:
                continue
            subprocess.run(["patchelf", "--add-rpath", ":".join(entries), str(path)], check=True)
            contents[name] = path.read_bytes()
            changed.append(name)
    if not changed:
        return changed
    record = next(name for name in contents if name.endswith(".dist-info/RECORD"))
    rows = [record_line(name, data) for name, data in contents.items() if name != record]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([*rows, [record, "", ""]])
    contents[record] = text.getvalue().encode()
    temporary = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as out:
        for info in members:
            out.writestr(info, contents[info.filename])
    temporary.replace(wheel)
    return changed


def main(argv: list[str]) -> int:
    """CLI for the build scripts: excludes WHEEL OTHER…, closure NEEDS_FILE, rpaths SITE WHEEL."""
    if argv[:1] == ["excludes"] and len(argv) >= 2:
        for pattern in excludes(Path(argv[1]), [Path(other) for other in argv[2:]]):
            print(pattern)
        return 0
    if argv[:1] == ["closure"] and len(argv) == 2:
        packages, orphans = closure(parse_needs(Path(argv[1]).read_text()), dpkg_owner)
        for soname, package in packages.items():
            print(f"{soname}\t{package}")
        for soname in orphans:
            print(f"torchkiln: {soname} is needed but no package owns it here", file=sys.stderr)
        return 0
    if argv[:1] == ["rpaths"] and len(argv) == 3:
        for name in add_nvidia_rpaths(Path(argv[2]), nvidia_library_dirs(Path(argv[1]))):
            print(f"torchkiln: rpath into NVIDIA's wheels: {name}")
        return 0
    print(
        "usage: closure excludes WHEEL [OTHER…] | closure NEEDS | rpaths SITE WHEEL",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
