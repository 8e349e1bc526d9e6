"""What each extension wheel holds, against the CCA it was built for.

build-extensions.sh runs `report` right after each extension's `pip wheel`: the SASS and PTX of
every shared object in the wheel (read with torchkiln.inimage.fatbin), what the build's nvcc calls
asked for (the nvcc wrapper's log), and the CCA. It prints one machine-readable line that
`invoke build`'s summary renders (`describe`), and fails the step when EXTENSION_ARCHS=cca built
something that cannot run on a GPU of the CCA. `invoke wheels` reads the same archs per wheel for
BUILD-INFO.json. Standard library only.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torchkiln.inimage import archs as arch_rules
from torchkiln.inimage import modules as module_rules
from torchkiln.inimage.fatbin import FatbinError, arch_sort_key, read_archs

REPORT_PREFIX = "torchkiln-extension: "
FAILED_PREFIX = "torchkiln-extension-failed: "
SHARED_OBJECT = re.compile(r"\.so(\.[\w.]*)?$")
POLICIES = ("cca", "as-is")


@dataclass
class WheelArchs:
    """The device code of one wheel: SASS and PTX over all its shared objects, and per file."""

    sass: list[str] = field(default_factory=list)
    ptx: list[str] = field(default_factory=list)
    files: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def wheel_archs(wheel: str | os.PathLike[str], scratch: str | None = None) -> WheelArchs:
    """Read the SASS/PTX of every shared object in a wheel (each unpacked alone, then deleted:
    the fatbin reader maps files, and a torch wheel's libraries are gigabytes)."""
    found = WheelArchs()
    sass: set[str] = set()
    ptx: set[str] = set()
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory(dir=scratch) as folder:
        for member in archive.infolist():
            if member.is_dir() or not SHARED_OBJECT.search(member.filename):
                continue
            target = Path(folder) / "library.so"
            with archive.open(member) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            try:
                read = read_archs(target)
            except FatbinError as error:  # a 32-bit or non-ELF file, or a corrupt fatbin
                if "not an ELF" not in str(error) and "64-bit" not in str(error):
                    found.errors.append(f"{member.filename}: {error}".replace(str(target), ""))
                continue
            finally:
                target.unlink(missing_ok=True)
            if read.sass or read.ptx:
                found.files[member.filename] = {"sass": read.sass, "ptx": read.ptx}
                sass.update(read.sass)
                ptx.update(read.ptx)
    found.sass = sorted(sass, key=arch_sort_key)
    found.ptx = sorted(ptx, key=arch_sort_key)
    return found


# --- the project's name, read from its source tree ------------------------------------------

_SETUP_NAME = re.compile(r"""\bname\s*=\s*['"]([A-Za-z0-9][A-Za-z0-9._-]*)['"]""")
_PACKAGE_NAME = re.compile(r"""^PACKAGE_NAME\s*=\s*['"]([A-Za-z0-9][A-Za-z0-9._-]*)['"]""", re.M)


def project_name(tree: str | os.PathLike[str]) -> str | None:
    """The distribution name a source tree declares (pyproject's [project] name, setup.cfg's
    [metadata] name, a literal name= in setup.py), None when it says none."""
    root = Path(tree)
    try:
        import tomllib

        with open(root / "pyproject.toml", "rb") as handle:
            name = tomllib.load(handle).get("project", {}).get("name")
        if isinstance(name, str) and name:
            return name
    except (OSError, ValueError, ModuleNotFoundError):
        pass
    config = configparser.ConfigParser(interpolation=None)
    try:
        config.read(root / "setup.cfg", encoding="utf-8")
        if config.get("metadata", "name", fallback=""):
            return config.get("metadata", "name")
    except configparser.Error:
        pass
    try:
        text = (root / "setup.py").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # flash-attn, mamba and causal-conv1d pass name=PACKAGE_NAME.
    match = _PACKAGE_NAME.search(text) or _SETUP_NAME.search(text)
    return match[1] if match else None


# --- the verdict ----------------------------------------------------------------------------


def nvcc_calls(log: str | os.PathLike[str] | None) -> list[dict[str, object]]:
    """Read the nvcc wrapper's log: one JSON object per call ([] when there is none)."""
    if not log:
        return []
    calls = []
    try:
        with open(log, encoding="utf-8") as handle:
            for line in handle:
                try:
                    calls.append(json.loads(line))
                except ValueError:
                    continue
    except OSError:
        return []
    return calls


def own_targets(calls: Iterable[dict[str, object]], cca_targets: Sequence[str]) -> list[str]:
    """The targets the build's nvcc calls asked for beyond the CCA's (the project's own flags);
    [] when every call asked for the CCA or for nothing."""
    expected = set(cca_targets)
    own: set[str] = set()
    for call in calls:
        asked = [str(target) for target in call.get("asked") or []]  # type: ignore[union-attr]
        if asked and set(asked) != expected:
            own.update(asked)
    return sorted(own, key=arch_sort_key)


def judge(
    *,
    name: str,
    source: str,
    wheel: str,
    size: int,
    sass: Sequence[str],
    ptx: Sequence[str],
    cca: str,
    policy: str,
    asked: Sequence[str],
    calls: int,
    build_file: str,
    seconds: float | None = None,
    modules: str | None = None,
) -> dict[str, object]:
    """Compare what a wheel holds with its CCA; the dict is the report line's content
    (`modules`: how a ninja-off project's modules were built, in words)."""
    items = arch_rules.parse_cca(cca) if cca.strip() else []
    expected = arch_rules.expected_binaries(items)
    held = [*sass, *ptx]
    served = {
        str(item): arch_rules.covers((item.major, item.minor), held) if held else None
        for item in items
    }
    return {
        "name": name,
        "source": source,
        "wheel": wheel,
        "bytes": size,
        "sass": list(sass),
        "ptx": list(ptx),
        "cca": arch_rules.normalize_cca(cca) if items else "",
        "policy": policy,
        "expected": expected,
        "extra": [binary for binary in held if binary not in expected],
        "missing": [binary for binary in expected if binary not in held],
        "served": served,
        "asked": list(asked),
        "nvcc_calls": calls,
        "build_file": build_file,
        "seconds": seconds,
        "modules": modules,
    }


def problem(report: dict[str, object]) -> str | None:
    """Why the build step must fail: under EXTENSION_ARCHS=cca, device code that leaves a GPU
    of the CCA without a kernel (the one thing cca promises). None otherwise."""
    if report["policy"] != "cca" or not (report["sass"] or report["ptx"]):
        return None
    served: dict[str, str | None] = report["served"]  # type: ignore[assignment]
    unserved = [item for item, how in served.items() if how is None]
    if not unserved:
        return None
    return (
        f"extension {report['name']} holds {_names(report)} and does not run on CCA "
        f"{' '.join(unserved)}, although EXTENSION_ARCHS=cca compiled every nvcc call it saw for "
        f"it: its binaries come from elsewhere (prebuilt, or a compiler call torchkiln does not "
        f"see): find them in its build, or set EXTENSION_ARCHS=as-is to take it unchecked"
    )


def _names(report: dict[str, object]) -> str:
    names = [*report["sass"], *report["ptx"]]  # type: ignore[misc]
    return " ".join(names) if names else "no CUDA code"


def _short(names: Sequence[str]) -> str:
    """sm_75 sm_80 … sm_121 for long lists (the first two and the last)."""
    if len(names) <= 4:
        return " ".join(names)
    return f"{names[0]} {names[1]} … {names[-1]}"


def _size(size: int) -> str:
    megabytes = size / 1e6
    return f"{megabytes:.1f} MB" if megabytes < 10 else f"{megabytes:.0f} MB"


def _why(report: dict[str, object]) -> str:
    asked: list[str] = report["asked"]  # type: ignore[assignment]
    build_file = report["build_file"] or "build"
    if asked:
        return f"its {build_file} sets its own -gencode flags"
    if not report["nvcc_calls"]:
        return "no nvcc call of its build went through torchkiln (prebuilt binaries?)"
    return "its build compiled them outside the nvcc calls torchkiln saw"


def describe(report: dict[str, object]) -> str:
    """One line for the summary: what the extension holds, against the CCA, and the fix.

    causal-conv1d: sm_75 sm_80 … sm_121 (9 archs) although CCA is 9.0 — its setup.py sets its
    own -gencode flags; 207 MB; EXTENSION_ARCHS=cca builds only 9.0
    """
    name, cca, policy = report["name"], report["cca"], report["policy"]
    sass: list[str] = report["sass"]  # type: ignore[assignment]
    ptx: list[str] = report["ptx"]  # type: ignore[assignment]
    size = _size(int(report["bytes"]))  # type: ignore[call-overload]
    if report.get("seconds") is not None:
        size += f", built in {float(report['seconds']):.0f} s"  # type: ignore[arg-type]
    if report.get("modules"):
        size += f"; {report['modules']}"
    if not sass and not ptx:
        return f"{name}: no CUDA code; {size}"
    held = _short(sass) + (f" + PTX {_short(ptx)}" if ptx else "")
    count = len({binary.split("_", 1)[1] for binary in [*sass, *ptx]})
    served: dict[str, str | None] = report["served"]  # type: ignore[assignment]
    if not report["extra"] and not report["missing"]:
        line = f"{name}: {held} (CCA {cca}); {size}"
        asked: list[str] = report["asked"]  # type: ignore[assignment]
        if policy == "cca" and asked:
            line += f"; its {report['build_file'] or 'build'} asked for {_short(asked)}, "
            line += "EXTENSION_ARCHS=cca compiled only the CCA"
        return line
    line = f"{name}: {held} ({count} arch{'s' if count != 1 else ''}) although CCA is {cca}"
    line += f" — {_why(report)}"
    unserved = [item for item, how in served.items() if how is None]
    # A GPU served by other code than its own SASS: say how ("runs on 8.6 through SASS sm_80").
    through = [
        f"runs on {item} through {how.split(' (')[0]}"
        for item, how in served.items()
        if how and how != f"SASS {arch_rules.parse_cca(item)[0].sass}"
    ]
    if unserved:
        line += f"; does NOT run on {' '.join(unserved)}"
    line += "".join(f"; {text}" for text in through)
    line += f"; {size}"
    if policy == "as-is":
        line += f"; EXTENSION_ARCHS=cca builds only {cca}"
    return line


def failure(name: str, source: str, step: str, hint: str, folder: int | None) -> str:
    """The machine-readable line of a failed extension, for invoke build's last line."""
    record = {"name": name, "source": source, "step": step, "hint": hint, "folder": folder}
    return FAILED_PREFIX + json.dumps(record)


# --- the command line ---------------------------------------------------------------------


def _report(options: argparse.Namespace) -> int:
    wheel = Path(options.wheel)
    held = wheel_archs(wheel, scratch=str(wheel.parent))
    calls = nvcc_calls(options.nvcc_log)
    items = arch_rules.parse_cca(options.cca) if options.cca.strip() else []
    tree = Path(options.tree) if options.tree else None
    build_file = next(
        (name for name in ("setup.py", "CMakeLists.txt") if tree and (tree / name).is_file()), ""
    )
    report = judge(
        name=options.name,
        source=options.source,
        wheel=wheel.name,
        size=wheel.stat().st_size,
        sass=held.sass,
        ptx=held.ptx,
        cca=options.cca,
        policy=options.policy,
        asked=own_targets(calls, arch_rules.expected_binaries(items)),
        calls=len(calls),
        build_file=build_file,
        seconds=options.seconds,
        modules=module_rules.describe(module_rules.read_record(options.modules_log)),
    )
    print(REPORT_PREFIX + json.dumps(report))
    print(f"torchkiln: extension {describe(report)}")
    for error in held.errors:
        print(f"torchkiln: warning: {error}")
    trouble = problem(report)
    if trouble:
        print(f"ERROR: {trouble}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`report …` after an extension's build; `name TREE`; `failed …` (the failure line)."""
    parser = argparse.ArgumentParser(prog="python -m torchkiln.inimage.extreport")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="what one extension wheel holds")
    report.add_argument("--name", required=True)
    report.add_argument("--source", required=True, help="its spec, or 'local folder N'")
    report.add_argument("--wheel", required=True)
    report.add_argument("--cca", default="", help="TORCH_CUDA_ARCH_LIST (the CCA)")
    report.add_argument("--policy", choices=POLICIES, default="cca")
    report.add_argument("--nvcc-log", default="")
    report.add_argument("--tree", default="", help="the source tree (names its build file)")
    report.add_argument("--modules-log", default="", help="the build hook's record (ninja off)")
    report.add_argument("--seconds", type=float, default=None, help="how long its build took")
    name = commands.add_parser("name", help="the project name a source tree declares")
    name.add_argument("tree")
    name.add_argument("--default", default="")
    failed = commands.add_parser("failed", help="the machine-readable line of a failure")
    failed.add_argument("--name", required=True)
    failed.add_argument("--source", required=True)
    failed.add_argument("--step", required=True)
    failed.add_argument("--hint", default="")
    failed.add_argument("--folder", type=int, default=None)
    options = parser.parse_args(argv)
    if options.command == "report":
        return _report(options)
    if options.command == "name":
        print(project_name(options.tree) or options.default)
        return 0
    print(failure(options.name, options.source, options.step, options.hint, options.folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
