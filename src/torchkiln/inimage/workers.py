"""Checks that run in other processes, started early so their start-up overlaps the rest: the
NCCL all-reduce (one process per GPU) and the torchvision check (`python -m
torchkiln.inimage.workers torchvision`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from torchkiln.inimage.numerics import random_boxes, reference_nms
from torchkiln.inimage.report import RAISED, CheckFailed, CheckSkipped, one_line, outcome

NCCL_TIMEOUT_S = 60.0

# How long the background torchvision check may take before it is redone in this process.
TORCHVISION_TIMEOUT_S = 90


def free_port() -> int:
    """Find a TCP port on the loopback interface that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Run with `python -c`, one process per GPU, so the parent's CUDA context is never forked.
NCCL_WORKER = r"""
import datetime, json, os, sys
import torch
import torch.distributed as dist
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
backend = os.environ["TORCHKILN_BACKEND"]
device = "cuda" if backend == "nccl" else "cpu"
if device == "cuda":
    torch.cuda.set_device(rank)
dist.init_process_group(
    backend, rank=rank, world_size=world,
    timeout=datetime.timedelta(seconds=float(os.environ["TORCHKILN_NCCL_TIMEOUT"])),
)
t = torch.full((1 << 20,), float(rank + 1), device=device)
dist.all_reduce(t)
if device == "cuda":
    torch.cuda.synchronize()
want = world * (world + 1) / 2
ok = bool((t == want).all().item())
print(json.dumps({"rank": rank, "ok": ok, "min": t.min().item(), "max": t.max().item()}))
dist.destroy_process_group()
sys.exit(0 if ok else 3)
"""


class AllReduce:
    """All-reduce (rank+1) over `world` GPUs in `world` processes, started at construction.

    Starting the ranks before the other checks lets their torch import and NCCL set-up overlap
    with them; `result()` then waits. backend="gloo" runs the same processes on the CPU, so the
    plumbing is testable without GPUs.
    """

    def __init__(self, world: int, timeout: float = NCCL_TIMEOUT_S, backend: str = "nccl") -> None:
        # Checking the sum needs no NVLink multicast (NVLS): it stays off unless the caller set
        # these, so the check creates no multicast objects on GPUs that other jobs may be using.
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
        self.world, self.timeout = world, timeout
        self.start = time.monotonic()
        self.procs: list[tuple[subprocess.Popen[bytes], Any]] = []
        port = free_port()
        try:
            for rank in range(world):
                env = dict(os.environ)
                env.update(
                    MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(port),
                    RANK=str(rank),
                    LOCAL_RANK=str(rank),
                    WORLD_SIZE=str(world),
                    TORCHKILN_NCCL_TIMEOUT=str(int(timeout)),
                    TORCHKILN_BACKEND=backend,
                )
                # Files, not pipes: a chatty NCCL_DEBUG cannot fill a pipe and stall a rank.
                log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in result()
                proc = subprocess.Popen(
                    [sys.executable, "-c", NCCL_WORKER], env=env, stdout=log, stderr=log
                )
                self.procs.append((proc, log))
        except BaseException:
            self._stop()
            raise

    def _stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def result(self) -> str:
        """Wait for the ranks; return a summary, or raise CheckFailed naming the failing rank."""
        try:
            # Poll rather than wait on each in turn: when one rank dies the others would block
            # in the rendezvous until the timeout, so stop at the first failure.
            while any(proc.poll() is None for proc, _ in self.procs):
                if any(proc.poll() not in (None, 0) for proc, _ in self.procs):
                    break
                if time.monotonic() - self.start > self.timeout:
                    raise CheckFailed(
                        f"all-reduce over {self.world} ranks did not finish within "
                        f"{self.timeout:.0f} s"
                    )
                time.sleep(0.05)
        finally:
            self._stop()
        try:
            # Report the rank that failed on its own before those killed because of it.
            ordered = sorted(enumerate(self.procs), key=lambda item: item[1][0].returncode < 0)
            for rank, (proc, log) in ordered:
                log.seek(0)
                text = log.read().decode(errors="replace")
                parsed = [line for line in text.splitlines() if line.startswith('{"rank"')]
                if proc.returncode != 0 or not parsed:
                    lines = [line for line in text.splitlines() if line.strip()]
                    tail = lines[-1] if lines else "no output"
                    raise CheckFailed(
                        f"rank {rank} exited {proc.returncode}: {one_line(tail, 300)}"
                    )
        finally:
            for _, log in self.procs:
                log.close()
        want = self.world * (self.world + 1) // 2
        seconds = time.monotonic() - self.start
        return f"{self.world} ranks each got {want} (= 1+...+{self.world}) in {seconds:.1f} s"


def import_optional(name: str) -> Any:
    """Import torchvision/torchaudio; skip when absent, fail when present but broken."""
    try:
        return __import__(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise CheckSkipped(f"{name} not installed") from exc
        raise


def check_torchvision(torch: Any, device: str) -> str:
    """Check torchvision's NMS on a device gives the same keep list as on the CPU."""
    torchvision = import_optional("torchvision")
    boxes, scores = random_boxes(torch, 1000)
    keep_cpu = torchvision.ops.nms(boxes, scores, 0.5).tolist()
    if keep_cpu != reference_nms(torch, boxes, scores, 0.5):
        raise CheckFailed("nms on the CPU disagrees with a plain greedy NMS")
    if device != "cpu":
        keep = torchvision.ops.nms(boxes.to(device), scores.to(device), 0.5).cpu().tolist()
        if keep != keep_cpu:
            raise CheckFailed(f"nms on {device} kept {len(keep)} boxes, on the CPU {len(keep_cpu)}")
    return f"torchvision {torchvision.__version__}; nms on {device} kept {len(keep_cpu)}/1000 boxes"


def start_module(module: str, *args: str) -> subprocess.Popen[str] | None:
    """Start `python -m module args` in the background with this torchkiln on its path; its
    stdout is piped for the answer (None when it cannot start: the caller works in-process)."""
    # The directory holding the torchkiln package, wherever this copy of it lives.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    try:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    except OSError:
        return None


class ModuleInBackground:
    """`python -m <module> <args>` started at once, its output taken when needed.

    A worker that fails, runs past `timeout` or could not start gives None, and the caller does
    the work in its own process instead; `stop` ends a worker whose answer is not needed.
    """

    def __init__(self, module: str, *args: str, timeout: float) -> None:
        self.timeout = timeout
        self.timed_out = False
        self.proc = start_module(module, *args)

    def stop(self) -> None:
        """End the worker when its answer is not needed (no early exit leaves it running)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str | None:
        """The worker's standard output once it exits with 0; None otherwise."""
        if self.proc is None:
            return None
        try:
            out, _ = self.proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self.stop()
            return None
        return out if self.proc.returncode == 0 else None


class CheckInBackground(ModuleInBackground):
    """A check run by a worker of this module, which prints its verdict as one JSON line."""

    def verdict(self) -> dict[str, Any] | None:
        """The worker's last JSON line, None without one."""
        lines = [line for line in (self.output() or "").splitlines() if line.startswith("{")]
        try:
            return json.loads(lines[-1]) if lines else None
        except ValueError:
            return None


def as_result(verdict: dict[str, Any]) -> str:
    """Raise a worker's failing verdict as the check's outcome, or return its detail."""
    raised = RAISED.get(verdict["status"])
    if raised:
        raise raised(verdict["detail"])
    return str(verdict["detail"])


def run_worker(check: Any) -> int:
    """Run one check on CUDA when it works (else the CPU) and print it as one JSON line."""
    import torch

    device = "cuda" if torch.version.cuda is not None and torch.cuda.is_available() else "cpu"
    status, detail = outcome(lambda: check(torch, device))
    print(json.dumps({"device": device, "status": status, "detail": detail}), flush=True)
    return 0


class TorchvisionInBackground(CheckInBackground):
    """The torchvision check in a second process, started before this one imports torch.

    Importing torchvision takes seconds; a second process does it (and its own torch import) on
    other cores while this one runs the other checks, so smoke stays well under 15 s.
    """

    def __init__(self) -> None:
        super().__init__("torchkiln.inimage.workers", "torchvision", timeout=TORCHVISION_TIMEOUT_S)

    def result(self, torch: Any, device: str) -> str:
        """Take the worker's verdict for `device`, or check in this process when it has none."""
        verdict = self.verdict()
        if not verdict or verdict.get("device") != device:
            return check_torchvision(torch, device)
        return as_result(verdict)


def torchvision_worker() -> int:
    """Run only the torchvision check, and print it as one JSON line."""
    return run_worker(check_torchvision)


# --- torch.compile ---------------------------------------------------------------------------

# How long the background torch.compile check may take (a cold Inductor C++ compile on two
# cores takes about 15 s).
COMPILE_TIMEOUT_S = 240
COMPILE_TOL = 1e-5


@contextlib.contextmanager
def fresh_compile_caches() -> Iterator[None]:
    """Point Inductor's and Triton's caches at an empty folder for the check, so a kernel
    compiled earlier cannot hide a compiler or Python.h the image lacks now; and compile in
    this process, since starting Inductor's pool of compile workers costs more than the one
    small kernel."""
    names = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TORCHINDUCTOR_COMPILE_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    with tempfile.TemporaryDirectory(prefix="torchkiln-compile-") as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(folder, "torchinductor")
        os.environ["TRITON_CACHE_DIR"] = os.path.join(folder, "triton")
        os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def compile_tools() -> dict[str, str]:
    """What torch.compile builds with here: g++/gcc on PATH and this Python's Python.h ('' for
    each that is missing)."""
    include = sysconfig.get_paths().get("include", "")
    header = os.path.join(include, "Python.h") if include else ""
    return {
        "g++": shutil.which(os.environ.get("CXX", "g++")) or "",
        "gcc": shutil.which(os.environ.get("CC", "gcc")) or "",
        "Python.h": header if header and os.path.isfile(header) else "",
        "include": include,
        "python": f"python{sys.version_info[0]}.{sys.version_info[1]}",
    }


def compile_diagnosis(text: str, device: str, tools: dict[str, str]) -> str:
    """Turn a torch.compile failure into its cause and fix, in one line: what the error says
    first, else what this image lacks (g++, Python.h, gcc), else the error itself."""
    no_cxx = (
        "no working C++ compiler (g++) in this image: install g++ (apt-get install g++) or "
        "point CXX at one; Inductor compiles its CPU kernels with it"
    )
    no_header = (
        f"no Python.h for this Python (looked in {tools['include'] or 'its include folder'}): "
        f"install {tools['python']}-dev (uv's CPython ships its headers); Inductor and "
        "Triton compile against it"
    )
    no_cc = "no C compiler for Triton's launcher: install gcc (apt-get install gcc) or set CC"
    if "InvalidCxxCompiler" in text or "No working C++ compiler" in text:
        return no_cxx
    if "Python.h" in text:
        return no_header
    if "Failed to find C compiler" in text:
        return no_cc
    if "Cannot find a working triton installation" in text or "No module named 'triton'" in text:
        return (
            "Triton is not installed: pip install the triton version torch requires (pip show "
            "torch lists it); torch.compile on the GPU generates Triton kernels"
        )
    if device == "cpu" and not tools["g++"]:
        return no_cxx
    if not tools["Python.h"]:
        return no_header
    if device != "cpu" and not tools["gcc"]:
        return no_cc
    return f"torch.compile on {device} failed: {one_line(text, 300)}"


def exception_text(exc: BaseException) -> str:
    """The exception and those it was raised from, as 'Type: message' joined."""
    parts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return " <- ".join(parts)


def check_compile(torch: Any, device: str) -> str:
    """Compile sin(x)*2+1 with Inductor (C++ on the CPU, a Triton kernel on a GPU) in fresh
    caches and compare it with eager."""
    start = time.perf_counter()

    def function(x: Any) -> Any:
        return torch.sin(x) * 2 + 1

    x = torch.linspace(-3, 3, 4096, device=device)
    try:
        with fresh_compile_caches():
            compiled = torch.compile(function, fullgraph=True)
            try:
                from torch._inductor.utils import run_and_get_code
            except ImportError:  # a private helper: without it, values alone are compared
                got, code = compiled(x), None
            else:
                got, codes = run_and_get_code(compiled, x)
                code = "\n".join(codes)
            if device != "cpu":
                torch.cuda.synchronize()
    except Exception as exc:
        raise CheckFailed(compile_diagnosis(exception_text(exc), device, compile_tools())) from exc
    kernel = "Triton kernel" if device != "cpu" else "Inductor C++ kernel"
    if code is not None and ("@triton.jit" if device != "cpu" else "cpp_fused") not in code:
        raise CheckFailed(f"torch.compile on {device} made no {kernel} for sin(x)*2+1")
    error = float((got - function(x)).abs().max().item())
    if not error <= COMPILE_TOL:
        raise CheckFailed(f"{kernel} on {device} differs from eager by {error:.1e}")
    seconds = time.perf_counter() - start
    return (
        f"{kernel} on {device}: sin(x)*2+1 matches eager (max diff {error:.0e}) in {seconds:.1f} s"
    )


class CompileInBackground(CheckInBackground):
    """The torch.compile check in a second process, started before this one imports torch: a
    cold compile takes seconds (Inductor's import, g++ or Triton), which overlap the others."""

    def __init__(self) -> None:
        super().__init__("torchkiln.inimage.workers", "compile", timeout=COMPILE_TIMEOUT_S)

    def result(self, torch: Any, device: str) -> str:
        """Take the worker's verdict for `device`; check here when it could not start or saw
        another device; fail when it ran out of time or died."""
        if self.proc is None:
            return check_compile(torch, device)
        verdict = self.verdict()
        if verdict is None:
            if self.timed_out:
                raise CheckFailed(f"torch.compile did not finish within {self.timeout:.0f} s")
            raise CheckFailed(
                f"the torch.compile worker exited {self.proc.returncode} without a verdict; run "
                "python -m torchkiln.inimage.workers compile to see why"
            )
        if verdict.get("device") != device:
            return check_compile(torch, device)
        return as_result(verdict)


def compile_worker() -> int:
    """Run only the torch.compile check, and print it as one JSON line."""
    return run_worker(check_compile)


WORKERS = {"torchvision": torchvision_worker, "compile": compile_worker}

if __name__ == "__main__" and sys.argv[1:2] and sys.argv[1] in WORKERS and len(sys.argv) == 2:
    sys.exit(WORKERS[sys.argv[1]]())
