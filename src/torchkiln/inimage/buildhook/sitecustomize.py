"""torchkiln's build hook, on PYTHONPATH only for the build of a project whose setup.py turns
ninja off (torchkiln.inimage.modules says why). When distutils' build_ext is imported, its two
module loops are wrapped:

- the thread pool (`[build_ext] parallel`, from DIST_EXTRA_CONFIG) gets a compiler whose
  `compiler_so` is each thread's own, so BuildExtension's per-file swap to nvcc and back stays in
  its thread; a pool that would not be safe (ninja on: one build.ninja per build_temp; a source
  compiled into two modules: one object file; setuptools' Library modules: a shared compiler
  switch) builds serially instead, and says why;
- nvcc's thread budget (TORCHKILN_NVCC_THREADS, read by the nvcc wrapper at each call) becomes
  the job budget divided by the modules that really compile at once;
- a `torchkiln-modules:` line records the modules and how many ran at once (and in
  TORCHKILN_MODULES_LOG), for the extension's report.

The site's own sitecustomize, if any, still runs. Standard library only.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import sys
import threading

_TARGETS = ("setuptools._distutils.command.build_ext", "distutils.command.build_ext")


def _record(modules: int, at_once: int, serial: str = "") -> None:
    record = {"modules": modules, "at_once": at_once, "serial": serial}
    print("torchkiln-modules: " + json.dumps(record), flush=True)
    log = os.environ.get("TORCHKILN_MODULES_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _share_budget(at_once: int) -> None:
    jobs = int(os.environ.get("TORCHKILN_MODULE_JOBS") or 1)
    threads = str(max(1, jobs // max(1, at_once)))
    os.environ["TORCHKILN_NVCC_THREADS"] = os.environ["NVCC_THREADS"] = threads


def _why_serial(command) -> str:
    if getattr(command, "use_ninja", False):
        return "ninja writes one build.ninja for all modules"
    seen: set[str] = set()
    for extension in command.extensions:
        if type(extension).__name__ == "Library":
            return f"{extension.name} is a setuptools Library"
        for source in extension.sources:
            path = os.path.abspath(source)
            if path in seen:
                return f"{source} is compiled into two modules"
            seen.add(path)
    return ""


def _per_thread_compiler(compiler) -> None:
    """Give each thread its own compiler_so (the one it starts with: the compiler's own)."""
    base = type(compiler)
    if getattr(base, "_torchkiln_per_thread", False):
        return
    local = threading.local()
    default = compiler.__dict__.pop("compiler_so", None)

    def get(self):
        return getattr(local, "compiler_so", default)

    def put(self, value) -> None:
        local.compiler_so = value

    namespace = {"_torchkiln_per_thread": True, "compiler_so": property(get, put)}
    compiler.__class__ = type(base.__name__, (base,), namespace)


def _wrap(build_ext) -> None:
    if getattr(build_ext, "_torchkiln_wrapped", False):
        return
    parallel, serial = build_ext._build_extensions_parallel, build_ext._build_extensions_serial

    def in_parallel(self) -> None:
        modules = len(self.extensions)
        workers = os.cpu_count() if self.parallel is True else int(self.parallel)
        why = _why_serial(self)
        if why:
            print(f"torchkiln: building the {modules} modules one at a time: {why}", flush=True)
            self.parallel = False
            _share_budget(1)
            _record(modules, 1, why)
            return serial(self)
        at_once = max(1, min(workers or 1, modules))
        _share_budget(at_once)
        _per_thread_compiler(self.compiler)
        _record(modules, at_once, "" if at_once > 1 or modules < 2 else f"parallel = {workers}")
        return parallel(self)

    def in_series(self) -> None:
        if not self.parallel:
            _share_budget(1)
            _record(len(self.extensions), 1, "parallel is off")
        return serial(self)

    build_ext._build_extensions_parallel = in_parallel
    build_ext._build_extensions_serial = in_series
    build_ext._torchkiln_wrapped = True


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps build_ext right after its module is executed."""

    def find_spec(self, name, path, target=None):
        if name not in _TARGETS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module) -> None:
            execute(module)
            _wrap(module.build_ext)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _site_sitecustomize() -> None:
    """Run the sitecustomize this one shadows, if the site has one."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved, module = sys.path[:], sys.modules.pop("sitecustomize", None)
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != here]
    try:
        spec = importlib.util.find_spec("sitecustomize")
        if spec is not None and spec.loader is not None:
            other = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(other)
    except Exception as error:  # as site.py does: a broken one only warns
        print(f"Error in sitecustomize; set PYTHONVERBOSE for traceback: {error}", file=sys.stderr)
    finally:
        sys.path[:] = saved
        if module is not None:
            sys.modules["sitecustomize"] = module


for _name in _TARGETS:
    if _name in sys.modules:
        _wrap(sys.modules[_name].build_ext)
sys.meta_path.insert(0, _Finder())
_site_sitecustomize()
