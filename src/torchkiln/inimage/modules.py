"""Extension modules built at once, for projects whose setup.py turns ninja off.

torch.utils.cpp_extension's BuildExtension compiles an extension's sources with ninja, MAX_JOBS at
a time. A project that passes `use_ninja=False` (torch-scatter, torch-sparse, torch-cluster,
torch-spline-conv: `BuildExtension.with_options(use_ninja=False)`) gets setuptools' own loop
instead: one file at a time, one module after the other, whatever MAX_JOBS says.

setuptools builds a project's modules in a thread pool when `build_ext`'s `parallel` option is set,
and reads an extra configuration file named by DIST_EXTRA_CONFIG, so the option reaches the build
without touching the project's files and through `pip wheel --no-build-isolation`. But
BuildExtension without ninja is not safe in that pool: for each file it swaps the one compiler
object's `compiler_so` to nvcc for a .cu file and back afterwards (`unix_wrap_single_compile`), so
a .cpp compiled in another thread meanwhile runs nvcc with the C++ flags, and a thread that saved
nvcc as "the original" puts nvcc back for good. With ninja, every module writes its build.ninja to
the same build_temp. The build hook (torchkiln/inimage/buildhook/sitecustomize.py) therefore gives
each thread its own `compiler_so`, and keeps a build serial where a pool would not be safe (ninja
on, a source shared by two modules, setuptools' Library modules); it also gives nvcc the thread
budget of the compiles that really run at once, and records what it did for the report.

Forcing ninja on such a project is not done: torch's ninja path cannot build two modules at once
(one build.ninja per build_temp), so it would only overlap the two or three files of each module,
and it changes how the project compiles (it runs in the build folder, where per-module relative
include dirs are not made absolute: only the compiler's are, Note [Absolute include_dirs]), which
the project turned off for its own reasons. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

# TORCHKILN_EXTENSION_MODULES: how a ninja-off project's modules build. parallel (the default):
# at once, within MAX_JOBS; serial: one after the other, nvcc given the whole budget; off: as
# before torchkiln knew of them (no hook, nvcc's budget shared as if ninja ran the .cu files).
MODES = ("parallel", "serial", "off")
MODULES_PREFIX = "torchkiln-modules: "
HOOK_DIR = Path(__file__).resolve().parent / "buildhook"
_NINJA_OFF = re.compile(r"\buse_ninja\s*=\s*False\b")


def _code_lines(text: str) -> str:
    """The text without comments (a `# use_ninja=False` note is no setting)."""
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def ninja_off(tree: str | os.PathLike[str]) -> bool:
    """Tell, by reading its setup.py (no import, no build), whether a project turns ninja off."""
    try:
        text = (Path(tree) / "setup.py").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return bool(_NINJA_OFF.search(_code_lines(text)))


def extra_config(jobs: int, existing: str = "") -> str:
    """The configuration DIST_EXTRA_CONFIG names: the user's own, with `[build_ext] parallel`
    set to the job budget unless it sets one."""
    if re.search(r"(?ms)^\[build_ext\][^\[]*^\s*parallel\s*=", existing):
        return existing
    section = f"[build_ext]\nparallel = {max(1, jobs)}\n"
    if "[build_ext]" in existing:
        return existing.replace("[build_ext]\n", section, 1)
    return (existing.rstrip("\n") + "\n\n" if existing.strip() else "") + section


def mode_error(mode: str) -> str | None:
    if mode in MODES:
        return None
    return (
        f"TORCHKILN_EXTENSION_MODULES={mode!r} is not a mode; write one of {', '.join(MODES)} "
        f"(parallel builds a ninja-off project's modules at once, the default)"
    )


def env_lines(tree: str, environ: Mapping[str, str], scratch: str | None = None) -> list[str]:
    """Shell lines extension-env.sh evaluates for a ninja-off project: the extra configuration,
    the hook on PYTHONPATH, and what the build will do, said before it starts."""
    mode = environ.get("TORCHKILN_EXTENSION_MODULES") or "parallel"
    if mode == "off" or not ninja_off(tree):
        return []
    jobs = max(1, int(environ.get("MAX_JOBS") or 1))
    existing = ""
    if environ.get("DIST_EXTRA_CONFIG"):
        try:
            existing = Path(environ["DIST_EXTRA_CONFIG"]).read_text(encoding="utf-8")
        except OSError:
            existing = ""
    workers = jobs if mode == "parallel" else 1
    handle, config = tempfile.mkstemp(prefix="torchkiln-setup-", suffix=".cfg", dir=scratch)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(extra_config(workers, existing))
    path = environ.get("PYTHONPATH", "")
    how = (
        f"its modules compile in parallel, up to {jobs} at once (MAX_JOBS)"
        if mode == "parallel"
        else "its modules compile one after the other (TORCHKILN_EXTENSION_MODULES=serial)"
    )
    variables = {
        "DIST_EXTRA_CONFIG": config,
        "PYTHONPATH": str(HOOK_DIR) + (os.pathsep + path if path else ""),
        "TORCHKILN_MODULE_JOBS": str(jobs),
    }
    lines = [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]
    lines.append(
        shlex.join(["echo", f"torchkiln: ninja off in its setup.py (use_ninja=False): {how}"])
    )
    return lines


# --- what the hook recorded, for the report -----------------------------------------------


def read_record(log: str | os.PathLike[str] | None) -> dict[str, object] | None:
    """The hook's last record in a log file, None when there is none."""
    if not log:
        return None
    try:
        lines = Path(log).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def describe(record: Mapping[str, object] | None) -> str | None:
    """The summary's words for a ninja-off build, from the hook's record."""
    if not record:
        return None
    modules = int(record.get("modules") or 0)  # type: ignore[call-overload]
    at_once = int(record.get("at_once") or 1)  # type: ignore[call-overload]
    serial_why = record.get("serial")
    if modules <= 1:
        return "ninja off in its setup.py, one module: nothing but ninja can speed it up"
    if at_once > 1:
        return (
            f"ninja off in its setup.py: {modules} modules compiled in parallel ({at_once} at once)"
        )
    return f"ninja off in its setup.py: {modules} modules compiled one at a time ({serial_why})"


def main(argv: Sequence[str] | None = None) -> int:
    """`env TREE`: print extension-env.sh's lines for a ninja-off project (none otherwise)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != ["env"] or len(args) != 2:
        print("usage: python -m torchkiln.inimage.modules env TREE", file=sys.stderr)
        return 2
    error = mode_error(os.environ.get("TORCHKILN_EXTENSION_MODULES") or "parallel")
    if error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    print("\n".join(env_lines(args[1], os.environ)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
