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
import time
from collections.abc import Iterable, Sequence
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


def owners(root: Path) -> dict[str, str]:
    """Map the shared objects wheels installed under a site-packages folder to their wheel's
    name as its dist-info spells it (nvidia_cublas, torch_scatter)."""
    found: dict[str, str] = {}
    for record in root.glob("*.dist-info/RECORD"):
        name = record.parent.name.split("-", 1)[0]
        with contextlib.suppress(OSError, csv.Error), open(record, newline="") as handle:
            for row in csv.reader(handle):
                if row and is_shared_object(row[0]):
                    found[os.path.normpath(root / row[0])] = name
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


def collect(paths: Sequence[str | os.PathLike[str]]) -> dict[str, list[Library]]:
    """Read the shared objects under `paths` (site-packages when empty), by package, keeping
    only files with device code; raises AuditInputError for a path that does not exist or a
    named file that is no ELF."""
    roots = [path.resolve() for path in site_packages()]
    given = [Path(path) for path in paths]
    for path in given:
        if not path.exists():
            raise AuditInputError(f"path '{path}' does not exist; name files or folders to audit")
    packages: dict[str, list[Library]] = {}
    seen: set[Path] = set()
    record_owners: dict[Path, dict[str, str]] = {}
    for start in [path.resolve() for path in given] or roots:
        root = root_of(start, roots) or (start if start.is_dir() else start.parent)
        for found in walk(start):
            real = Path(os.path.realpath(found))
            if real in seen:
                continue  # libx.so and libx.so.1 are one library
            seen.add(real)
            # A link names its target's package, unless it points out of the root.
            file = real if real.is_relative_to(root) else found
            library = read_library(file, named=found == start)
            if library is None:
                continue
            if root not in record_owners:
                record_owners[root] = owners(root)
            owner = record_owners[root].get(str(file))
            package = package_name(file.relative_to(root), owner)
            packages.setdefault(package, []).append(library)
    return packages


def walk(start: Path) -> Iterable[Path]:
    """Yield the shared objects in a folder tree, or the file itself."""
    if start.is_file():
        yield start
        return
    for folder, dirs, files in os.walk(start):
        dirs.sort()
        for name in sorted(files):
            if is_shared_object(name):
                path = Path(folder) / name
                if path.is_file():  # not a dangling link
                    yield path


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
        on = ", ".join(str(t) for t in targets if t not in {t for t, _ in jitting})
        row.detail = f"{count} CUDA file{'s' if count != 1 else ''}"
        if on:
            row.detail += f", SASS for {on}"
        if jitting:
            row.detail += "; " + jit_text(libraries, jitting) + " (NVIDIA's PTX for newer GPUs)"
        row.detail += ": " + " ".join(sass + ptx)
    return row


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


def run_audit_only(paths: Sequence[str], expect_cca: str | None, as_json: bool) -> int:
    """`smoke --audit-only`: print the audit, return 0 (all covered), 1 (some package fails)
    or 2 (bad input, one line on stderr). Never imports torch."""
    start = time.perf_counter()
    try:
        expected = cca_targets(expect_cca) if expect_cca else []
        gpus, why = visible_gpus()
        targets = merge_targets(gpus, expected)
        if not targets:
            raise AuditInputError(
                f"nothing to audit against: {why} and no --expect-cca; pass --expect-cca with "
                "the GPUs' compute capability, e.g. --expect-cca 8.6"
            )
        rows = audit(paths, targets)
    except (AuditInputError, arch_rules.CCAError) as exc:
        print(f"smoke --audit-only: {exc}", file=sys.stderr, flush=True)
        return 2
    seconds = time.perf_counter() - start
    out = audit_json(rows, targets, seconds) if as_json else render_table(rows, targets, seconds)
    print(out, flush=True)
    return 1 if overall(rows) == FAIL else 0


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
