"""The arch audit: can each package's CUDA code run on each GPU?

Reads the fat binaries of every shared object (*.so, *.so.*) under the given paths, or under
site-packages, with torchkiln.inimage.fatbin (no cuobjdump, no torch), groups the files into
packages and judges each package per target with archs.covers(): a package passes only when
every one of its CUDA files holds code for the target, since one library without it is enough
to fail at run time.

Targets are the visible GPUs plus, with --expect-cca, each CCA item as a GPU of that capability
(its a/f suffix and +PTX are not asked of the build here: the smoke check "expected CCA" does
that against torch's arch list). Standard library only.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import json
import os
import re
import shlex
import site
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torchkiln.inimage import archs as arch_rules
from torchkiln.inimage.fatbin import FatbinError, NotELF, arch_sort_key, read_archs
from torchkiln.inimage.report import FAIL, PASS, WARN
from torchkiln.inimage.workers import ModuleInBackground

SHARED_OBJECT = re.compile(r"\.so(\.[\w.]*)?$")
VENDOR = "nvidia"  # NVIDIA's wheels: rebuilt by NVIDIA, not by torchkiln
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
# How long the background read of site-packages may take before it is redone in this process.
COLLECT_TIMEOUT_S = 60


class AuditInputError(ValueError):
    """A path or CCA the audit cannot use; the message is the one line shown."""


@dataclass(frozen=True)
class Target:
    """A GPU the packages must run on: a visible one, or an item of --expect-cca."""

    capability: tuple[int, int]
    cca: str  # how a rebuild asks for it: '9.0', or the item as given: '9.0a'
    name: str = ""  # the GPU's name; '' for an --expect-cca item

    def __str__(self) -> str:
        if self.name:
            return f"{self.capability[0]}.{self.capability[1]} ({self.name})"
        return f"CCA {self.cca}"


@dataclass
class Library:
    """One shared object with device code."""

    path: str
    sass: list[str]
    ptx: list[str]
    sections: list[str] = field(default_factory=list)  # where its fatbins are
    error: str = ""  # why it could not be read (a truncated or corrupt file)

    @property
    def binaries(self) -> list[str]:
        """SASS then PTX names."""
        return self.sass + self.ptx


@dataclass
class PackageRow:
    """The audit's verdict on one package, with the per-file and per-target detail."""

    package: str
    status: str
    detail: str
    vendor: bool
    sass: list[str] = field(default_factory=list)
    ptx: list[str] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)


# --- where the targets come from ------------------------------------------------------------


def gpu_targets(devices: Iterable[dict[str, Any]]) -> list[Target]:
    """Targets from smoke's device list ({'name': ..., 'capability': '9.0'})."""
    targets = []
    for device in devices:
        major, minor = (int(part) for part in str(device["capability"]).split("."))
        targets.append(Target((major, minor), f"{major}.{minor}", str(device["name"])))
    return targets


def cca_targets(text: str) -> list[Target]:
    """Targets from an --expect-cca text; raises archs.CCAError for a bad one."""
    return [
        Target((arch.major, arch.minor), f"{arch.base}{arch.suffix}")
        for arch in arch_rules.parse_cca(text)
    ]


def merge_targets(*groups: Iterable[Target]) -> list[Target]:
    """Join target lists, keeping the first target of each capability (a GPU before a CCA)."""
    merged: dict[tuple[int, int], Target] = {}
    for group in groups:
        for target in group:
            merged.setdefault(target.capability, target)
    return sorted(merged.values(), key=lambda target: target.capability)


def visible_gpus() -> tuple[list[Target], str]:
    """Ask the CUDA driver (libcuda through ctypes, never torch) for the GPUs this process
    sees; the text says why there are none."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return [], "no CUDA driver (libcuda.so.1 not found)"
    status = cuda.cuInit(0)
    if status != 0:
        return [], f"the CUDA driver found no usable GPU (cuInit error {status})"
    count = ctypes.c_int(0)
    cuda.cuDeviceGetCount(ctypes.byref(count))
    targets = []
    for index in range(count.value):
        device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        name = ctypes.create_string_buffer(256)
        cuda.cuDeviceGet(ctypes.byref(device), index)
        cuda.cuDeviceGetAttribute(
            ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device
        )
        cuda.cuDeviceGetAttribute(
            ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device
        )
        cuda.cuDeviceGetName(name, len(name), device)
        label = name.value.decode(errors="replace") or f"GPU {index}"
        targets.append(Target((major.value, minor.value), f"{major.value}.{minor.value}", label))
    return targets, "" if targets else "the CUDA driver sees no GPU"


# --- which files, which packages ------------------------------------------------------------


def site_packages() -> list[Path]:
    """The folders this interpreter imports installed packages from."""
    found: list[Path] = []
    candidates = [sysconfig.get_paths()[key] for key in ("purelib", "platlib")]
    with contextlib.suppress(AttributeError):  # site in some virtualenvs lacks these
        candidates += site.getsitepackages()
        if site.ENABLE_USER_SITE:
            candidates.append(site.getusersitepackages())
    for candidate in candidates:
        path = Path(candidate)
        if path.is_dir() and path.resolve() not in [p.resolve() for p in found]:
            found.append(path)
    return found


def is_shared_object(name: str) -> bool:
    """Tell whether a file name is a shared object's: libx.so, _C.cpython-311-x86_64.so, x.so.9."""
    return bool(SHARED_OBJECT.search(name))


# RECORD rows that are never an ELF file: not kept, so a large site-packages reads fast.
NOT_ELF_SUFFIXES = (".py", ".pyc", ".pyi", ".h", ".hpp", ".cuh", ".txt", ".json", ".md", ".typed")


def owners(root: str | os.PathLike[str]) -> dict[str, str]:
    """Map the files wheels installed under a folder to their wheel's name as its dist-info
    spells it (nvidia_cublas, torch_scatter); source and text files are left out."""
    found: dict[str, str] = {}
    folder = os.fspath(root)
    try:
        with os.scandir(folder) as listing:
            infos = sorted(e.name for e in listing if e.name.endswith(".dist-info"))
    except OSError:
        return found
    for info in infos:
        name = info.split("-", 1)[0]
        record = os.path.join(folder, info, "RECORD")
        with (
            contextlib.suppress(OSError, csv.Error, UnicodeDecodeError, StopIteration),
            open(record, newline="") as handle,
        ):
            for line in handle:
                # Plain rows split at the first comma; csv only for quoted ones.
                path = line.split(",", 1)[0] if '"' not in line else next(csv.reader([line]))[0]
                if path and not path.endswith(NOT_ELF_SUFFIXES):
                    found[os.path.normpath(os.path.join(folder, path))] = name
    return found


def package_name(relative: Path, owner: str | None) -> str:
    """Name the package a file belongs to: its wheel, else its top folder under the root."""
    if owner:
        return owner
    parts = relative.parts
    if len(parts) == 1:
        return parts[0].split(".", 1)[0]  # a top-level extension module: _cffi_backend
    if parts[0].endswith(".libs"):
        return parts[0].removesuffix(".libs")  # auditwheel's vendored libraries
    if parts[0] == VENDOR and len(parts) > 2:
        return f"{VENDOR}.{parts[1]}"  # a namespace package: nvidia/cudnn/lib
    return parts[0]


def root_of(path: Path, roots: Sequence[Path]) -> Path | None:
    """The site-packages folder a path lies in, or None."""
    for root in roots:
        with contextlib.suppress(ValueError):
            path.relative_to(root)
            return root
    for parent in path.parents:
        if parent.name in ("site-packages", "dist-packages"):
            return parent
    return None


@dataclass(frozen=True)
class PackageFile:
    """A file found under the audited paths, with the project it belongs to."""

    path: Path  # the file to read: a link's target when that stays inside the root
    root: Path  # the folder its relative path and package are counted from
    package: str
    named: bool  # the user named this very file

    @property
    def relative(self) -> str:
        """The path under its root, as tables show it: torch/lib/libtorch_cpu.so."""
        return self.path.relative_to(self.root).as_posix()


class ProjectNames:
    """Name the project a file belongs to: the nearest *.dist-info RECORD that lists it, else
    the top package folder (under site-packages, or the outermost folder with __init__.py:
    nerfacc for nerfacc/csrc.so, not csrc), else the file's own stem."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = [str(root) for root in roots]
        self.records: dict[str, dict[str, str]] = {}

    def recorded(self, folder: str) -> dict[str, str]:
        if folder not in self.records:
            self.records[folder] = owners(folder)
        return self.records[folder]

    def name(self, file: str, root: str) -> str:
        for folder in ancestors(file):
            owner = self.recorded(folder).get(file)
            if owner:
                return owner
        relative = Path(os.path.relpath(file, root))
        if root in self.roots or os.path.basename(root) in ("site-packages", "dist-packages"):
            return package_name(relative, None)
        top = None
        for folder in ancestors(file):
            if not os.path.isfile(os.path.join(folder, "__init__.py")):
                break
            top = folder
        return os.path.basename(top) if top else package_name(relative, None)


def ancestors(path: str) -> Iterator[str]:
    """The folders above a path, nearest first, up to the file system's root."""
    folder = os.path.dirname(path)
    while True:
        yield folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return
        folder = parent


def package_files(
    paths: Sequence[str | os.PathLike[str]],
    wanted: Callable[[os.DirEntry[str]], bool] | None = None,
) -> Iterator[PackageFile]:
    """Yield the files under `paths` (site-packages when empty) that `wanted` accepts (shared
    objects by name when None), each real file once, with its project; raises AuditInputError
    for a path that does not exist."""
    roots = [path.resolve() for path in site_packages()]
    given = [Path(path) for path in paths]
    for path in given:
        if not path.exists():
            raise AuditInputError(f"path '{path}' does not exist; name files or folders to audit")
    names = ProjectNames(roots)
    seen: set[str] = set()
    for start in [path.resolve() for path in given] or roots:
        root = root_of(start, roots) or (start if start.is_dir() else start.parent)
        top = str(root)
        for found in walk(start, wanted):
            path = str(found)
            # The walk starts from a resolved folder and follows no folder link: only a file
            # that is a link can have another real path.
            real = os.path.realpath(path) if os.path.islink(path) else path
            if real in seen:
                continue  # libx.so and libx.so.1 are one library
            seen.add(real)
            # A link names its target's package, unless it points out of the root.
            file = real if real.startswith(top + os.sep) else path
            yield PackageFile(Path(file), root, names.name(file, top), found == start)


def collect(paths: Sequence[str | os.PathLike[str]]) -> dict[str, list[Library]]:
    """Read the shared objects under `paths` (site-packages when empty), by package, keeping
    only files with device code; raises AuditInputError for a path that does not exist or a
    named file that is no ELF."""
    packages: dict[str, list[Library]] = {}
    for found in package_files(paths):
        library = read_library(found.path, named=found.named)
        if library is not None:
            packages.setdefault(found.package, []).append(library)
    return packages


def shared_object_entry(entry: os.DirEntry[str]) -> bool:
    """Tell whether a folder entry is a shared object by its name (the arch audit's files)."""
    return is_shared_object(entry.name)


def walk(start: Path, wanted: Callable[[os.DirEntry[str]], bool] | None = None) -> Iterator[Path]:
    """Yield the files of a folder tree that `wanted` accepts (shared objects by name when
    None), folder by folder in name order, or the file itself."""
    if start.is_file():
        yield start
        return
    yield from walk_folder(str(start), wanted or shared_object_entry)


def walk_folder(folder: str, wanted: Callable[[os.DirEntry[str]], bool]) -> Iterator[Path]:
    """Walk one folder: its files first, then its subfolders (links to folders not followed)."""
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError:
        return
    subfolders = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            subfolders.append(entry.path)
        elif entry.is_file() and wanted(entry):  # is_file: not a dangling link
            yield Path(entry.path)
    for subfolder in subfolders:
        yield from walk_folder(subfolder, wanted)


@contextlib.contextmanager
def unpacked_wheels(paths: Sequence[str]) -> Iterator[tuple[list[str], dict[str, str]]]:
    """Stand each .whl among `paths` in for the folder it unpacks to (removed on exit), so the
    audits read a wheel as they read site-packages: its projects named from its dist-info.
    Yields the paths to audit and, per temporary folder, the wheel it holds (for display)."""
    local: list[str] = []
    shown: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for path in paths:
            if not path.endswith(".whl") or not os.path.isfile(path):
                local.append(path)
                continue
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="torchkiln-whl-"))
            unpack_wheel(path, folder)
            local.append(folder)
            shown[folder] = path
        yield local, shown


def unpack_wheel(wheel: str, folder: str) -> None:
    """Unpack a wheel, keeping its files' permission bits (zipfile drops them)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                target = archive.extract(info, folder)
                mode = (info.external_attr >> 16) & 0o777
                if mode and not info.is_dir():
                    os.chmod(target, mode)
    except (zipfile.BadZipFile, OSError) as exc:
        raise AuditInputError(
            f"wheel '{wheel}' cannot be unpacked ({exc}); name a .whl file that pip installs, "
            "a shared object or a folder"
        ) from None


def shown_paths(text: str, shown: dict[str, str]) -> str:
    """Write the wheels' names where their temporary folders appear in the audits' output."""
    for folder, wheel in shown.items():
        text = text.replace(folder, wheel)
    return text


def read_library(path: Path, named: bool) -> Library | None:
    """Read one file's archs; None without device code or when it is no 64-bit ELF (a linker
    script named .so), unless the user named that file."""
    try:
        found = read_archs(path)
    except NotELF as exc:
        if named:
            raise AuditInputError(str(exc)) from None
        return None
    except (FatbinError, OSError) as exc:
        return Library(str(path), [], [], error=str(exc))
    if not found.binaries:
        return None
    return Library(str(path), found.sass, found.ptx, found.sections)


# --- verdicts -------------------------------------------------------------------------------


def audit(paths: Sequence[str | os.PathLike[str]], gpus: Sequence[Target]) -> list[PackageRow]:
    """Judge every package with CUDA code under `paths` (site-packages when empty) on `gpus`."""
    return judge_all(collect(paths), gpus)


def judge_all(packages: dict[str, list[Library]], targets: Sequence[Target]) -> list[PackageRow]:
    """Judge collected packages, in name order."""
    return [judge(name, packages[name], targets) for name in sorted(packages, key=str.lower)]


def union(names: Iterable[list[str]]) -> list[str]:
    """Merge arch lists into one, in arch order."""
    return sorted({name for group in names for name in group}, key=arch_sort_key)


def judge(package: str, libraries: list[Library], targets: Sequence[Target]) -> PackageRow:
    """Give one package its status and detail: fail when some file has no code for a target,
    warn when a target runs only by PTX JIT, pass otherwise. NVIDIA's wheels pass with PTX JIT:
    they ship PTX for GPUs newer than their SASS on purpose, and no rebuild here changes that."""
    vendor = package.startswith(VENDOR)
    sass = union(lib.sass for lib in libraries)
    ptx = union(lib.ptx for lib in libraries)
    slow = PASS if vendor else WARN
    per_target = []
    failing: list[tuple[Target, list[Library]]] = []
    jitting: list[tuple[Target, list[Library]]] = []
    for target in targets:
        hows = {lib.path: arch_rules.covers(target.capability, lib.binaries) for lib in libraries}
        uncovered = [lib for lib in libraries if hows[lib.path] is None]
        jit = [lib for lib in libraries if (hows[lib.path] or "").startswith("PTX")]
        if uncovered:
            failing.append((target, uncovered))
        elif jit:
            jitting.append((target, jit))
        per_target.append(
            {
                "capability": f"{target.capability[0]}.{target.capability[1]}",
                "cca": target.cca,
                "name": target.name,
                "status": FAIL if uncovered else slow if jit else PASS,
                "uncovered": [lib.path for lib in uncovered],
                "jit": [lib.path for lib in jit],
                "how": hows,
            }
        )
    files = [asdict(lib) for lib in libraries]
    row = PackageRow(package, PASS, "", vendor, sass, ptx, files, per_target)
    broken = [lib for lib in libraries if lib.error]
    if broken:
        row.status = FAIL
        row.detail = "; ".join(f"cannot read {lib.error}" for lib in broken)
    elif failing:
        row.status = FAIL
        row.detail = fail_detail(package, libraries, failing, targets)
    elif jitting and not vendor:
        row.status = WARN
        row.detail = (
            jit_text(libraries, jitting)
            + " (slow first start); "
            + fix_hint(package, targets, [t for t, _ in jitting])
        )
    else:
        count = len(libraries)
        jit_targets = {t for t, _ in jitting}
        served = served_text(
            [
                (t, per["how"])
                for t, per in zip(targets, per_target, strict=True)
                if t not in jit_targets
            ]
        )
        row.detail = f"{count} CUDA file{'s' if count != 1 else ''}"
        if served:
            row.detail += f"; {served}"
        if jitting:
            row.detail += "; " + jit_text(libraries, jitting) + " (NVIDIA's PTX for newer GPUs)"
        row.detail += "; holds " + " ".join(sass + ptx)
    return row


def served_text(served: Sequence[tuple[Target, dict[str, str | None]]]) -> str:
    """Say through which SASS each target runs: 'runs on 8.6 (NVIDIA RTX A6000) through SASS
    sm_80', so an older arch serving a GPU is not read as code built for it."""
    clauses = []
    for target, hows in served:
        names = union([re.findall(r"SASS (\S+)", how or "") for how in hows.values()])
        clauses.append(f"{target} through SASS {' '.join(names)}")
    return "runs on " + ", on ".join(clauses) if clauses else ""


def by_files(
    found: list[tuple[Target, list[Library]]],
) -> list[tuple[list[Target], list[Library]]]:
    """Group targets that the same files let down, so each set of files is named once."""
    groups: dict[tuple[str, ...], tuple[list[Target], list[Library]]] = {}
    for target, libraries in found:
        key = tuple(lib.path for lib in libraries)
        groups.setdefault(key, ([], libraries))[0].append(target)
    return list(groups.values())


def fail_detail(
    package: str,
    libraries: list[Library],
    failing: list[tuple[Target, list[Library]]],
    targets: Sequence[Target],
) -> str:
    """Say which files lack code for which targets, and the fix: 'sm_86 only; this GPU is 9.0
    (NVIDIA H100); rebuild: invoke build --cca 9.0'."""
    clauses = []
    for missed, uncovered in by_files(failing):
        have = union(lib.sass for lib in uncovered) + union(lib.ptx for lib in uncovered)
        where = ""
        if len(libraries) > 1:
            verb = " has " if len(uncovered) == 1 else " have "
            where = ", ".join(os.path.basename(lib.path) for lib in uncovered) + verb
        if len(targets) == 1 and missed[0].name:
            whom = f"this GPU is {missed[0]}"
        else:
            whom = "nothing for " + ", ".join(str(t) for t in missed)
        clauses.append(f"{where}{' '.join(have)} only; {whom}")
    return "; ".join(clauses) + "; " + fix_hint(package, targets, [t for t, _ in failing])


def jit_text(libraries: list[Library], jitting: list[tuple[Target, list[Library]]]) -> str:
    """Say which targets run only by PTX JIT, from which PTX, in which files."""
    clauses = []
    for slow, jit in by_files(jitting):
        ptx = union(lib.ptx for lib in jit)
        where = ""
        if len(libraries) > 1:
            where = " in " + ", ".join(os.path.basename(lib.path) for lib in jit)
        on = ", ".join(str(t) for t in slow)
        clauses.append(f"{on} only by PTX JIT from {' '.join(ptx)}{where}")
    return "; ".join(clauses)


def fix_hint(package: str, targets: Sequence[Target], missing: Sequence[Target]) -> str:
    """The fix: rebuild for every target (not only the missing ones, which would drop the
    others), or for NVIDIA's wheels, a CUDA version whose wheel has the code."""
    if package.startswith(VENDOR):
        wanted = ";".join(t.cca for t in missing)
        return f"NVIDIA ships no code for {wanted} in {package}: try another CUDA_VERSION"
    cca = arch_rules.normalize_cca(";".join(t.cca for t in targets))
    return f"rebuild: invoke build --cca {shlex.quote(cca)}"


def overall(rows: Sequence[PackageRow]) -> str:
    """The worst status of all rows (pass without rows)."""
    statuses = {row.status for row in rows}
    return FAIL if FAIL in statuses else WARN if WARN in statuses else PASS


def summary(rows: Sequence[PackageRow], targets: Sequence[Target]) -> str:
    """One line for smoke's "arch audit" row: the packages that fail or warn, else those that
    pass."""
    bad = [row for row in rows if row.status != PASS]
    if bad:
        return "; ".join(f"{row.package} {row.status}: {row.detail}" for row in bad)
    on = ", ".join(str(t) for t in targets)
    names = ", ".join(row.package for row in rows if not row.vendor)
    vendor = sum(row.vendor for row in rows)
    also = f" and {vendor} NVIDIA wheel{'s' if vendor != 1 else ''}" if vendor else ""
    return f"{names or 'no package'}{also} run on {on}"


# --- output ---------------------------------------------------------------------------------


def render_table(rows: Sequence[PackageRow], targets: Sequence[Target], seconds: float) -> str:
    """Lay the rows out as a table; passing NVIDIA wheels share one row."""
    shown = [(row.package, row.status, row.detail) for row in rows if not row.vendor]
    vendor = [row for row in rows if row.vendor]
    for row in vendor:
        if row.status != PASS:
            shown.append((row.package, row.status, row.detail))
    passed = [row.package for row in vendor if row.status == PASS]
    if passed:
        every = "NVIDIA wheels with code for every target: " + ", ".join(passed)
        shown.append((f"{VENDOR} ({len(passed)})", PASS, every))
    table = [("package", "status", "detail"), *shown]
    width0 = max(len(r[0]) for r in table)
    width1 = max(len(r[1]) for r in table)
    lines = ["arch audit for " + ", ".join(str(t) for t in targets)]
    for index, (name, status, detail) in enumerate(table):
        lines.append(f"{name:<{width0}}  {status:<{width1}}  {detail}".rstrip())
        if index == 0:
            lines.append(f"{'-' * width0}  {'-' * width1}  {'-' * 6}")
    if not rows:
        lines.append("(no shared object with CUDA code)")
    failed = [row.package for row in rows if row.status == FAIL]
    verdict = "FAILED: " + ", ".join(failed) if failed else "OK"
    lines.append(f"{verdict}  ({seconds:.1f} s)")
    return "\n".join(lines)


def audit_json(rows: Sequence[PackageRow], targets: Sequence[Target], seconds: float) -> str:
    """Serialise the audit: ok, targets, one object per package, seconds."""
    return json.dumps(
        {
            "ok": overall(rows) != FAIL,
            "targets": [
                {"capability": f"{t.capability[0]}.{t.capability[1]}", "cca": t.cca, "name": t.name}
                for t in targets
            ],
            "packages": [asdict(row) for row in rows],
            "seconds": round(seconds, 3),
        },
        indent=2,
    )


# --- smoke's background read ----------------------------------------------------------------


class CollectInBackground(ModuleInBackground):
    """Read site-packages' shared objects in a second process, started before smoke imports
    torch: a cold read takes seconds (2.4 s for torch 2.14.1 and its NVIDIA wheels), which then
    overlap torch's import instead of adding to it."""

    def __init__(self, paths: Sequence[str] = ()) -> None:
        self.paths = list(paths)
        super().__init__(
            "torchkiln.inimage.audit", "collect", *self.paths, timeout=COLLECT_TIMEOUT_S
        )

    def result(self) -> dict[str, list[Library]]:
        """The worker's packages, or a read in this process when it has none."""
        found = self._collect()
        return found if found is not None else collect(self.paths)

    def _collect(self) -> dict[str, list[Library]] | None:
        out = self.output()
        if out is None:
            return None
        try:
            data = json.loads(out)
            return {name: [Library(**lib) for lib in libs] for name, libs in data.items()}
        except (ValueError, TypeError):
            return None


def collect_worker(paths: Sequence[str]) -> int:
    """Read site-packages (or `paths`) and print the packages' libraries as one JSON object."""
    packages = collect(paths)
    data = {name: [asdict(lib) for lib in libs] for name, libs in packages.items()}
    print(json.dumps(data), flush=True)
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["collect"]:
    sys.exit(collect_worker(sys.argv[2:]))
