#!/usr/bin/env python3
"""Print how long one extension's build step takes with its modules built at once vs one at a
time, as a ratio in one run, and whether the two wheels hold the same files with the same bytes.

Each build runs docker/scripts/build-wheel.sh (the script the image's extension stage runs, with
its nvcc wrapper and build hook) on a fresh copy of the tree at one fixed path, with sccache
answering no compile from its cache (SCCACHE_RECACHE), so the two compiles are equal work and
their outputs comparable; libraries are compared by size and SASS (see `contents`). It needs
torch with CUDA and nvcc (a GPU host, or a build image); no GPU is used.

Usage (from the checkout's root):
  python3 scripts/measure_modules.py [TREE or SDIST] [--cca 8.6] [--modes serial,parallel]
      [--out DIR] [--name NAME]
TREE defaults to tests/fixtures/ninja_off_extension. --modes names TORCHKILN_EXTENSION_MODULES
values in build order; the first is the baseline (`off`: as before torchkiln knew ninja-off
projects). Every other variable (MAX_JOBS, EXTENSION_ARCHS, FORCE_CUDA…) comes from the caller;
KILN_NINJA_OFF_KERNELS defaults to all: the fixture's full kernels, not the CI test's few.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "ninja_off_extension"


def unpack(source: Path, into: Path) -> Path:
    """The source tree: a folder as it is, an sdist (.tar.gz / .zip) unpacked."""
    if source.is_dir():
        shutil.copytree(source, into / "tree")
        return into / "tree"
    if source.suffix == ".zip":
        with zipfile.ZipFile(source) as archive:
            archive.extractall(into)
    else:
        with tarfile.open(source) as archive:
            archive.extractall(into, filter="data")
    (tree,) = [path for path in into.iterdir() if path.is_dir()]
    return tree


def cuobjdump() -> str | None:
    """The toolkit's cuobjdump, None without one."""
    found = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "cuobjdump"
    return str(found) if found.is_file() else shutil.which("cuobjdump")


def contents(wheel: Path) -> dict[str, str]:
    """Each file of a wheel and the sha256 of its bytes (RECORD aside: it lists the others); for
    a library, of its size and its SASS as cuobjdump prints it: nvcc writes the name of its
    temporary file, which holds a process id, into every object, so two builds of one library
    never agree in bytes, while their code does."""
    tool = cuobjdump()
    found = {}
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as scratch:
        for name in archive.namelist():
            if name.endswith("/RECORD"):
                continue
            data = archive.read(name)
            if tool and name.endswith(".so"):
                library = Path(scratch) / "library.so"
                library.write_bytes(data)
                sass = subprocess.run(
                    [tool, "-sass", str(library)], capture_output=True, text=True, timeout=600,
                    check=False,
                ).stdout  # fmt: skip
                data = f"{len(data)}\n{sass}".encode()
            found[name] = hashlib.sha256(data).hexdigest()
    return found


def build(source: Path, mode: str, cca: str, out: Path, name: str) -> tuple[float, Path, str]:
    """One build of the source in `mode`: seconds, the wheel, the build's log."""
    work = Path(tempfile.gettempdir()) / "torchkiln-measure-modules"  # one path: equal objects
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tree = unpack(source, work)
    wheels = out / mode
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    env = dict(os.environ, TORCHKILN_EXTENSION_MODULES=mode, SCCACHE_RECACHE="1")
    env.setdefault("TORCH_CUDA_ARCH_LIST", cca)
    # The fixture's full set of kernels (the CI test builds a lighter one); other trees ignore it.
    env.setdefault("KILN_NINJA_OFF_KERNELS", "all")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env["TORCHKILN_BUILD_NAME"] = name
    env["TORCHKILN_MODULES_LOG"] = str(out / f"{mode}-modules.log")
    env["TORCHKILN_NVCC_LOG"] = str(out / f"{mode}-nvcc.jsonl")
    started = time.monotonic()
    result = subprocess.run(
        [str(ROOT / "docker" / "scripts" / "build-wheel.sh"), str(tree), str(wheels)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=7200,
        check=False,
    )  # fmt: skip
    seconds = time.monotonic() - started
    (out / f"{mode}-build.log").write_text(result.stdout)
    if result.returncode != 0:
        sys.exit(f"the {mode} build failed; its last lines:\n{result.stdout[-3000:]}")
    (wheel,) = wheels.glob("*.whl")
    shutil.rmtree(work, ignore_errors=True)
    return seconds, wheel, result.stdout


def said(log: str) -> list[str]:
    keys = (
        "torchkiln-jobs:",
        "torchkiln: nvcc through",
        "torchkiln: ninja off",
        "torchkiln-modules:",
    )
    return [line.strip() for line in log.splitlines() if line.strip().startswith(keys)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", type=Path, default=FIXTURE)
    parser.add_argument("--cca", default="8.6")
    parser.add_argument("--modes", default="serial,parallel")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--name", default="")
    options = parser.parse_args()
    modes = options.modes.split(",")
    out = options.out or Path(tempfile.mkdtemp(prefix="measure-modules-"))
    out.mkdir(parents=True, exist_ok=True)
    name = options.name or options.source.name.split(".tar")[0]
    results = {}
    for mode in modes:  # one after the other: side by side they would share the cores
        seconds, wheel, log = build(options.source.resolve(), mode, options.cca, out, name)
        results[mode] = (seconds, wheel)
        print(f"{name}: TORCHKILN_EXTENSION_MODULES={mode}: {seconds:.1f} s, {wheel.name}")
        for line in said(log):
            print(f"  {line}")
    base_seconds, base_wheel = results[modes[0]]
    for mode in modes[1:]:
        seconds, wheel = results[mode]
        print(f"{name}: {mode} / {modes[0]} build time: {seconds:.1f} s / {base_seconds:.1f} s = "
              f"{seconds / base_seconds:.2f}")  # fmt: skip
        ours, theirs = contents(wheel), contents(base_wheel)
        if ours == theirs:
            print(f"{name}: the {mode} and {modes[0]} wheels are identical in content "
                  f"({len(ours)} files, RECORD aside; libraries by size and SASS"
                  f"{'' if cuobjdump() else ' (no cuobjdump here: by bytes)'})")  # fmt: skip
        else:
            differ = sorted(n for n in ours.keys() | theirs.keys() if ours.get(n) != theirs.get(n))
            print(f"{name}: the {mode} and {modes[0]} wheels DIFFER in: {' '.join(differ)}")
    print(f"logs and wheels: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
