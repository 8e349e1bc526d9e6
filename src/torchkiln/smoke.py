"""Check a PyTorch install on the GPU: `python -m torchkiln.smoke [--json] [--allow-cpu]`.

Runs inside the built images, so it imports only the standard library and torch (torchvision
and torchaudio when present). Every check catches its own errors and reports them as a row.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, SKIP, WARN = "pass", "fail", "skip", "warn"

# Minimum Linux x86_64 driver for each CUDA major under minor-version compatibility.
# Source: NVIDIA "CUDA Compatibility" guide (docs.nvidia.com/deploy/cuda-compatibility/),
# table "CUDA Toolkit and Minimum Required Driver Version for CUDA Minor Version Compatibility".
MIN_DRIVER: dict[int, str] = {
    11: "450.80.02",
    12: "525.60.13",
    13: "580.65.06",
}

# NVIDIA_VISIBLE_DEVICES values with which the NVIDIA container runtime mounts no GPU.
NO_GPU_VISIBLE = ("", "void", "none")

NCCL_TIMEOUT_S = 60.0

# --- tolerances (relative Frobenius error ||out - ref|| / ||ref|| against an fp64 reference
# computed from the very same, already rounded, inputs; so only the arithmetic is measured) ---

# fp32 sums of a few hundred to a few thousand products land near 1e-7..1e-6; 1e-4 keeps a wide
# margin for cuDNN's Winograd/FFT algorithms yet still catches TF32 (unit roundoff 2^-11 ~ 5e-4)
# leaking into a path that was asked to stay in fp32.
TOL_FP32 = 1e-4
# TF32 keeps 10 mantissa bits: rounding both operands gives ~3e-4..5e-4 on random data (more if
# the hardware truncates); 2e-3 passes that and still fails bf16-grade (~3e-3+) or broken results.
TOL_TF32 = 2e-3
# bf16 has 8 mantissa bits (unit roundoff 2^-9 ~ 2e-3 for the output rounding); fp16 has 11.
# Accumulation is fp32 in cuBLAS, so 1e-2 is a ~4x margin for bf16 and a wide one for fp16.
TOL_HALF = 1e-2
# Flash/efficient attention also rounds the softmax probabilities to bf16/fp16 before P @ V,
# adding a second rounding of the same size as the output's: 2e-2 for bf16, 1e-2 for fp16.
TOL_SDPA = {"bfloat16": 2e-2, "float16": 1e-2, "float32": 1e-4}


# How long the background torchvision check may take before it is redone in this process.
TORCHVISION_TIMEOUT_S = 90


class CheckFailed(Exception):
    """A check's own verdict of failure; its message is the reason shown."""


class CheckSkipped(Exception):
    """A check that cannot run here; its message is the reason shown."""


class CheckWarned(Exception):
    """A check that ran but whose result deserves attention without failing the run."""


@dataclass
class Check:
    """One row of the report."""

    name: str
    status: str
    detail: str
    seconds: float = 0.0
    required: bool = True


@dataclass
class Report:
    """Everything smoke found, ready for the table or JSON."""

    checks: list[Check] = field(default_factory=list)
    torch: str | None = None
    cuda: str | None = None
    driver: str | None = None
    devices: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Tell whether no required check failed (skips and warnings do not fail a run)."""
        return all(c.status != FAIL for c in self.checks if c.required)


# --- pure helpers (unit-tested without a GPU) -----------------------------------------------


def version_tuple(text: str) -> tuple[int, ...]:
    """Parse the leading numbers of '580.65.06', '13.0' or '2.11.0+cu130' into a tuple."""
    match = re.match(r"^\s*v?(\d+(?:\.\d+)*)", text)
    if not match:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def public_version(text: str) -> str:
    """Drop a local version suffix: '2.11.0+cu130' -> '2.11.0'."""
    return text.strip().split("+", 1)[0]


def arch_covers(capability: tuple[int, int], arch_list: list[str]) -> str | None:
    """Say how a GPU of this capability runs torch's kernels, or None when nothing covers it."""
    major, minor = capability
    number = major * 10 + minor
    archs = set(arch_list)
    for name in (f"sm_{number}", f"sm_{number}a", f"sm_{number}f"):
        if name in archs:
            return f"SASS {name}"
    # Machine code for sm_XY runs on any sm_XZ with Z >= Y of the same major (CUDA binary
    # compatibility); 'a' variants are tied to one exact chip, so they never count here.
    same_major = [
        int(m.group(1))
        for arch in arch_list
        if (m := re.fullmatch(r"sm_(\d+)f?", arch))
        and int(m.group(1)) // 10 == major
        and int(m.group(1)) <= number
    ]
    if same_major:
        return f"SASS sm_{max(same_major)} (binary-compatible with {major}.{minor})"
    # PTX compiles forward at load time onto any newer GPU; 'a' PTX only onto its own chip.
    if f"compute_{number}a" in archs:
        return f"PTX JIT from compute_{number}a"
    ptx = [
        int(m.group(1))
        for arch in arch_list
        if (m := re.fullmatch(r"compute_(\d+)", arch)) and int(m.group(1)) <= number
    ]
    if ptx:
        return f"PTX JIT from compute_{max(ptx)}"
    return None


_CCA_ITEM = re.compile(r"^(?P<major>\d{1,2})\.(?P<minor>\d)(?P<suffix>[af]?)(?P<ptx>\+PTX)?$")


def parse_expected_cca(text: str) -> list[str]:
    """Turn '8.6;9.0a 12.0+PTX' into the arch names torch lists: sm_86, sm_90a, sm_120, ..."""
    items = [item for item in re.split(r"[;,\s]+", text.strip()) if item]
    if not items:
        raise ValueError("expected CCA is empty; write it as 8.6, or several as '8.6;9.0'")
    archs: list[str] = []
    for item in items:
        match = _CCA_ITEM.match(item)
        if not match:
            raise ValueError(f"'{item}' is not a compute capability; write it as 8.6 or 9.0a")
        number = f"{int(match['major'])}{match['minor']}"
        wanted = [f"sm_{number}{match['suffix']}"]
        if match["ptx"]:
            wanted.append(f"compute_{number}{match['suffix']}")
        archs.extend(arch for arch in wanted if arch not in archs)
    return archs


def min_driver(cuda: str) -> str | None:
    """Return the oldest Linux driver for a CUDA version, or None for a major not in the table."""
    return MIN_DRIVER.get(version_tuple(cuda)[0])


def driver_too_old(driver: str, cuda: str) -> bool:
    """Tell whether a driver is older than the minimum for a CUDA version (unknown: not old)."""
    needed = min_driver(cuda)
    if needed is None:
        return False
    return version_tuple(driver) < version_tuple(needed)


def parse_driver_version(text: str) -> str | None:
    """Find the driver version in /proc/driver/nvidia/version or nvidia-smi output."""
    match = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    if match:
        return match.group(1)
    match = re.search(r"^\s*(\d{3,}\.\d+(?:\.\d+)?)\s*$", text, re.MULTILINE)
    return match.group(1) if match else None


def diagnose(
    torch_cuda: str | None,
    device_nodes: bool,
    visible_devices: str | None,
    driver: str | None,
    torch_error: str,
    cuda_visible_devices: str | None = None,
) -> str:
    """Name the likely reason torch sees no GPU, from plain facts about the environment."""
    if torch_cuda is None:
        return "CPU-only build of torch (torch.version.cuda is None): install or build a CUDA wheel"
    if not device_nodes:
        return (
            "no /dev/nvidia* device nodes: container started without the GPU: use the NVIDIA "
            "runtime / the Compose `deploy` GPU reservation, or compose/cpu.yaml is in "
            "COMPOSE_FILE"
        )
    if visible_devices is not None and visible_devices.strip().lower() in NO_GPU_VISIBLE:
        shown = visible_devices if visible_devices.strip() else "empty"
        return (
            f"NVIDIA_VISIBLE_DEVICES is {shown}: the NVIDIA runtime hides every GPU; set it to "
            "'all' or to GPU indices"
        )
    if driver and driver_too_old(driver, torch_cuda):
        return (
            f"NVIDIA driver {driver} is older than CUDA {torch_cuda} needs "
            f"(>= {min_driver(torch_cuda)}): upgrade the host driver or build with an older "
            "CUDA_VERSION"
        )
    if cuda_visible_devices is not None and cuda_visible_devices.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES is '{cuda_visible_devices}': it hides every GPU from CUDA"
    reason = torch_error.strip() or "torch.cuda.is_available() is False and gave no reason"
    return f"torch says: {reason}"


def one_line(text: str, limit: int = 400) -> str:
    """Collapse whitespace so a reason fits in one table cell."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def format_cudnn_version(version: int | None) -> str:
    """Turn torch's cuDNN integer (91002, 8907) into 9.10.2 / 8.9.7; '-' when there is none."""
    if not version:
        return "-"
    if version >= 90000:
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}"
    return f"{version // 1000}.{version // 100 % 10}.{version % 100}"


def render_table(report: Report) -> str:
    """Lay the checks out as a plain-text table with a header and a verdict line."""
    rows = [("check", "status", "detail")] + [
        (c.name, c.status if c.required or c.status != FAIL else "fail*", c.detail)
        for c in report.checks
    ]
    width0 = max(len(r[0]) for r in rows)
    width1 = max(len(r[1]) for r in rows)
    lines = []
    gpus = ", ".join(f"{d['name']} ({d['capability']})" for d in report.devices) or "no GPU"
    lines.append(
        f"torch {report.torch or '-'}  CUDA {report.cuda or '-'}  driver {report.driver or '-'}"
        f"  {gpus}"
    )
    for i, (name, status, detail) in enumerate(rows):
        lines.append(f"{name:<{width0}}  {status:<{width1}}  {detail}")
        if i == 0:
            lines.append(f"{'-' * width0}  {'-' * width1}  {'-' * 6}")
    failed = [c.name for c in report.checks if c.required and c.status == FAIL]
    verdict = "OK" if report.ok else "FAILED: " + ", ".join(failed)
    if any(c.status == FAIL and not c.required for c in report.checks):
        verdict += "  (fail*: informational check, does not fail the run)"
    lines.append(f"{verdict}  ({report.seconds:.1f} s)")
    return "\n".join(lines)


def report_json(report: Report) -> str:
    """Serialise the report as the JSON object documented in the module's help."""
    return json.dumps(
        {
            "ok": report.ok,
            "checks": [asdict(c) for c in report.checks],
            "torch": report.torch,
            "cuda": report.cuda,
            "driver": report.driver,
            "devices": report.devices,
            "seconds": round(report.seconds, 3),
        },
        indent=2,
    )


# --- environment probes -----------------------------------------------------------------------


def read_driver_version() -> str | None:
    """Read the NVIDIA driver version from /proc, else from nvidia-smi; None if neither works."""
    with contextlib.suppress(OSError):
        with open("/proc/driver/nvidia/version", encoding="utf-8") as handle:
            found = parse_driver_version(handle.read())
        if found:
            return found
    smi = shutil.which("nvidia-smi")
    if smi:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout
            return parse_driver_version(out)
    return None


def device_nodes_present() -> bool:
    """Tell whether the container has NVIDIA device nodes (/dev/nvidia0, /dev/nvidiactl...)."""
    return bool(glob.glob("/dev/nvidia*"))


def torch_cuda_error(torch: Any) -> str:
    """Ask torch to initialise CUDA and return the error it gives ('' when it works)."""
    try:
        torch.cuda.init()
    except Exception as exc:  # torch raises RuntimeError or AssertionError depending on build
        return one_line(str(exc))
    return ""


def diagnose_environment(torch: Any) -> str:
    """Gather the facts diagnose() needs from this process's environment."""
    return diagnose(
        torch_cuda=torch.version.cuda,
        device_nodes=device_nodes_present(),
        visible_devices=os.environ.get("NVIDIA_VISIBLE_DEVICES"),
        driver=read_driver_version(),
        torch_error=torch_cuda_error(torch),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )


def torch_arch_list(torch: Any) -> list[str]:
    """Return the archs torch was built for, also where older torch needs a visible GPU."""
    archs = list(torch.cuda.get_arch_list())
    if not archs and hasattr(torch._C, "_cuda_getArchFlags"):
        flags = torch._C._cuda_getArchFlags()
        archs = flags.split() if flags else []
    return archs


def free_port() -> int:
    """Find a TCP port on the loopback interface that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- numerics -------------------------------------------------------------------------------


def rel_error(torch: Any, out: Any, ref: Any) -> float:
    """Return ||out - ref|| / ||ref|| in fp64 on the CPU; NaN/inf stay NaN/inf."""
    out64 = out.detach().to("cpu", torch.float64)
    ref64 = ref.detach().to("cpu", torch.float64)
    return float(torch.linalg.vector_norm(out64 - ref64) / torch.linalg.vector_norm(ref64))


def judge(errors: dict[str, float], tol: float) -> str:
    """Fail unless every error is finite and within tol; return the figures otherwise."""
    shown = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
    bad = [k for k, v in errors.items() if not math.isfinite(v) or v > tol]
    if bad:
        raise CheckFailed(f"rel. error too large ({shown}; tol {tol:.0e})")
    return f"rel. error {shown} (tol {tol:.0e})"


@contextlib.contextmanager
def tf32(torch: Any, enabled: bool) -> Iterator[None]:
    """Set both TF32 switches for a block and restore what the caller had afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def conv_errors(torch: Any, device: str) -> dict[str, float]:
    """Run conv2d forward and backward in fp32 on a device against fp64 on the CPU."""
    functional = torch.nn.functional
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 32, 28, 28, generator=gen)
    w = torch.randn(64, 32, 3, 3, generator=gen) * 0.1
    grad = torch.randn(8, 64, 28, 28, generator=gen)

    def run(dev: str, dtype: Any) -> tuple[Any, Any, Any]:
        xi = x.to(dev, dtype).requires_grad_(True)
        wi = w.to(dev, dtype).requires_grad_(True)
        out = functional.conv2d(xi, wi, padding=1)
        dx, dw = torch.autograd.grad(out, (xi, wi), grad.to(dev, dtype))
        return out, dx, dw

    with tf32(torch, False):
        got = run(device, torch.float32)
        if device != "cpu":
            torch.cuda.synchronize()
    ref = run("cpu", torch.float64)
    names = ("fwd", "dgrad", "wgrad")
    return {name: rel_error(torch, g, r) for name, g, r in zip(names, got, ref, strict=True)}


def matmul_error(torch: Any, device: str, mode: str) -> tuple[float, str]:
    """Multiply random matrices in one precision mode; return the error and output dtype."""
    gen = torch.Generator().manual_seed(1)
    # Non-square so a transposed operand cannot pass by accident.
    a = torch.randn(512, 1024, generator=gen)
    b = torch.randn(1024, 768, generator=gen)
    if mode in ("bf16", "autocast-bf16"):
        rounded = torch.bfloat16
    elif mode == "fp16":
        rounded = torch.float16
    else:
        rounded = torch.float32
    # The reference sees the inputs exactly as the device does after rounding.
    ref = a.to(rounded).double() @ b.to(rounded).double()
    with tf32(torch, mode == "tf32"):
        if mode == "autocast-bf16":
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                out = a.to(device) @ b.to(device)
        else:
            out = a.to(device, rounded) @ b.to(device, rounded)
        if device != "cpu":
            torch.cuda.synchronize()
    return rel_error(torch, out, ref), str(out.dtype).removeprefix("torch.")


def sdpa_error(torch: Any, device: str, dtype: Any, causal: bool) -> float:
    """Run scaled_dot_product_attention against an fp64 softmax(QK^T/sqrt(d))V on the CPU."""
    gen = torch.Generator().manual_seed(2)
    shape = (2, 8, 256, 64)
    q, k, v = (torch.randn(*shape, generator=gen).to(dtype) for _ in range(3))
    out = torch.nn.functional.scaled_dot_product_attention(
        q.to(device), k.to(device), v.to(device), is_causal=causal
    )
    if device != "cpu":
        torch.cuda.synchronize()
    q64, k64, v64 = q.double(), k.double(), v.double()
    scores = q64 @ k64.transpose(-2, -1) / math.sqrt(shape[-1])
    if causal:
        mask = torch.ones(shape[2], shape[2], dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    ref = torch.softmax(scores, dim=-1) @ v64
    return rel_error(torch, out, ref)


def reference_nms(torch: Any, boxes: Any, scores: Any, iou: float) -> list[int]:
    """Greedy NMS in plain torch, as torchvision documents it, for a second opinion."""
    order = torch.argsort(scores, descending=True).tolist()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep: list[int] = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        x1 = torch.maximum(boxes[i, 0], boxes[:, 0])
        y1 = torch.maximum(boxes[i, 1], boxes[:, 1])
        x2 = torch.minimum(boxes[i, 2], boxes[:, 2])
        y2 = torch.minimum(boxes[i, 3], boxes[:, 3])
        inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
        suppressed |= inter / (area[i] + area - inter) > iou
    return keep


def random_boxes(torch: Any, count: int) -> tuple[Any, Any]:
    """Make random boxes (x1, y1, x2, y2) with distinct scores."""
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(count, 2, generator=gen) * 200
    wh = torch.rand(count, 2, generator=gen) * 60 + 1
    return torch.cat([xy, xy + wh], dim=1), torch.rand(count, generator=gen)


# --- NCCL all-reduce across processes ---------------------------------------------------------

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


def nccl_all_reduce(world: int, timeout: float = NCCL_TIMEOUT_S, backend: str = "nccl") -> str:
    """Run the all-reduce check from start to end; return a summary or raise CheckFailed."""
    return AllReduce(world, timeout, backend).result()


# --- the checks -------------------------------------------------------------------------------

CUDA_CHECKS = (
    "arch coverage",
    "cuDNN conv2d fwd/bwd",
    "matmul fp32",
    "matmul tf32",
    "matmul bf16",
    "matmul fp16",
    "matmul autocast bf16",
    "sdpa bf16",
    "sdpa fp16",
    "nccl",
    "nccl all-reduce",
)


class Runner:
    """Collects check results, timing each and turning exceptions into failing rows."""

    def __init__(self) -> None:
        self.report = Report()

    def add(self, name: str, status: str, detail: str, required: bool = True) -> None:
        """Record a row without running anything."""
        self.report.checks.append(Check(name, status, one_line(detail), 0.0, required))

    def run(self, name: str, func: Callable[[], str], required: bool = True) -> Check:
        """Run one check; a returned string passes, exceptions fail, skip or warn."""
        start = time.perf_counter()
        try:
            status, detail = PASS, func()
        except CheckSkipped as exc:
            status, detail = SKIP, str(exc)
        except CheckWarned as exc:
            status, detail = WARN, str(exc)
        except CheckFailed as exc:
            status, detail = FAIL, str(exc)
        except Exception as exc:  # any failure inside a check is a result, never a traceback
            status, detail = FAIL, f"{type(exc).__name__}: {exc}"
        seconds = round(time.perf_counter() - start, 4)
        check = Check(name, status, one_line(detail), seconds, required)
        self.report.checks.append(check)
        return check


def check_torch_version(torch: Any, expected: str) -> str:
    """Compare torch's public version with the one the image was built for."""
    found = public_version(torch.__version__)
    if found != public_version(expected):
        hint = ""
        if re.search(r"a0$", found):
            hint = " (a source build without PYTORCH_BUILD_VERSION reports X.Y.Za0)"
        raise CheckFailed(f"torch is {torch.__version__}, expected {expected}{hint}")
    return f"{torch.__version__} matches {expected}"


def check_cuda_build(torch: Any) -> str:
    """Refuse a torch without CUDA."""
    if torch.version.cuda is None:
        hip = getattr(torch.version, "hip", None)
        kind = f"ROCm/HIP {hip} build" if hip else "CPU-only build"
        raise CheckFailed(f"{kind}: torch.version.cuda is None")
    return f"CUDA {torch.version.cuda}"


def check_gpu_arch(torch: Any, index: int, archs: list[str], device: dict[str, Any]) -> str:
    """Check the arch list covers one GPU and that a kernel really runs there."""
    cap = torch.cuda.get_device_capability(index)
    how = arch_covers(cap, archs)
    label = f"{device['name']} ({cap[0]}.{cap[1]})"
    device["coverage"] = how
    if how is None:
        raise CheckFailed(
            f"{label} not covered by arch list {' '.join(archs) or '(empty)'}: rebuild with "
            f"CCA={cap[0]}.{cap[1]}"
        )
    # A launch proves the driver accepts the code, which the list alone cannot.
    t = torch.arange(1024, device=f"cuda:{index}", dtype=torch.float32)
    total = float((t * 2).sum().item())
    if total != 1023 * 1024:
        raise CheckFailed(f"{label}: a kernel gave {total}, expected {1023 * 1024}")
    if how.startswith("PTX"):
        raise CheckWarned(f"{label}: {how} (slow first start; build with CCA={cap[0]}.{cap[1]})")
    return f"{label}: {how}"


def check_expected_cca(archs: list[str], expected: str) -> str:
    """Check every arch asked for at build time is in torch's arch list."""
    wanted = parse_expected_cca(expected)
    missing = [arch for arch in wanted if arch not in archs]
    if missing:
        raise CheckFailed(
            f"missing {' '.join(missing)} from arch list {' '.join(archs) or '(empty)'}"
        )
    return f"{' '.join(wanted)} in arch list {' '.join(archs)}"


def check_cudnn(torch: Any) -> str:
    """Check cuDNN is there and conv2d forward/backward on CUDA matches fp64 on the CPU."""
    cudnn = torch.backends.cudnn
    if not cudnn.is_available():
        raise CheckFailed("cuDNN not available in this build (USE_CUDNN=0?)")
    if not cudnn.enabled:
        raise CheckFailed("torch.backends.cudnn.enabled is False")
    version = format_cudnn_version(int(cudnn.version()))
    return f"cuDNN {version}; fp32 " + judge(conv_errors(torch, "cuda"), TOL_FP32)


def check_matmul(torch: Any, device: str, mode: str, tol: float, want: str) -> str:
    """Check one matmul precision mode against fp64 and that it returned the expected dtype."""
    err, dtype = matmul_error(torch, device, mode)
    if dtype != want:
        raise CheckFailed(f"output dtype {dtype}, expected {want} (autocast not applied?)")
    return judge({dtype: err}, tol)


def check_sdpa(torch: Any, device: str, dtype: Any) -> str:
    """Check SDPA with and without a causal mask in one dtype."""
    name = str(dtype).removeprefix("torch.")
    errors = {
        "full": sdpa_error(torch, device, dtype, causal=False),
        "causal": sdpa_error(torch, device, dtype, causal=True),
    }
    return judge(errors, TOL_SDPA[name])


def check_nccl(torch: Any) -> str:
    """Check NCCL is compiled in and report its version."""
    import torch.cuda.nccl  # a submodule torch.cuda does not import by itself
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_nccl_available():
        raise CheckFailed("torch.distributed has no NCCL backend (USE_NCCL=0 or USE_DISTRIBUTED=0)")
    version = torch.cuda.nccl.version()
    text = ".".join(str(p) for p in version) if isinstance(version, tuple) else str(version)
    return f"NCCL {text}"


def start_all_reduce(torch: Any) -> AllReduce | None:
    """Start the all-reduce ranks early when there are >= 2 GPUs (None: none, or it failed)."""
    count = torch.cuda.device_count()
    if count < 2:
        return None
    try:
        return AllReduce(count)
    except Exception:  # the check starts it again and reports the error
        return None


def check_nccl_all_reduce(torch: Any, started: AllReduce | None = None) -> str:
    """All-reduce across every visible GPU, one process each."""
    count = torch.cuda.device_count()
    if count < 2:
        raise CheckSkipped(f"{count} GPU: all-reduce needs 2")
    return (started or AllReduce(count)).result()


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


class TorchvisionInBackground:
    """The torchvision check in a second process, started before this one imports torch.

    Importing torchvision takes seconds; a second process does it (and its own torch import) on
    other cores while this one runs the other checks, so smoke stays well under 15 s.
    """

    def __init__(self) -> None:
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        try:
            self.proc: subprocess.Popen[str] | None = subprocess.Popen(
                [sys.executable, "-m", "torchkiln.smoke", "--torchvision-worker"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            self.proc = None

    def result(self, torch: Any, device: str) -> str:
        """Take the worker's verdict for `device`, or check in this process when it has none."""
        outcome = self._collect()
        if not outcome or outcome.get("device") != device:
            return check_torchvision(torch, device)
        raised = {FAIL: CheckFailed, SKIP: CheckSkipped, WARN: CheckWarned}.get(outcome["status"])
        if raised:
            raise raised(outcome["detail"])
        return str(outcome["detail"])

    def stop(self) -> None:
        """End the worker when its answer is not needed (no early exit leaves it running)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _collect(self) -> dict[str, Any] | None:
        if self.proc is None:
            return None
        try:
            out, _ = self.proc.communicate(timeout=TORCHVISION_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
            return None
        lines = [line for line in out.splitlines() if line.startswith("{")]
        try:
            return json.loads(lines[-1]) if lines else None
        except ValueError:
            return None


def torchvision_result(torch: Any, device: str, vision: TorchvisionInBackground | None) -> str:
    """The torchvision check's verdict, from the background worker when there is one."""
    return vision.result(torch, device) if vision else check_torchvision(torch, device)


def torchvision_worker() -> int:
    """Run only the torchvision check, on CUDA when it works, and print it as one JSON line."""
    import torch

    device = "cuda" if torch.version.cuda is not None and torch.cuda.is_available() else "cpu"
    try:
        status, detail = PASS, check_torchvision(torch, device)
    except CheckSkipped as exc:
        status, detail = SKIP, str(exc)
    except CheckWarned as exc:
        status, detail = WARN, str(exc)
    except Exception as exc:  # reported by the parent as the check's failure
        status, detail = FAIL, f"{type(exc).__name__}: {exc}"
    print(json.dumps({"device": device, "status": status, "detail": detail}), flush=True)
    return 0


def check_torchaudio() -> str:
    """Report torchaudio's version when it is installed."""
    torchaudio = import_optional("torchaudio")
    return f"torchaudio {torchaudio.__version__}"


def describe_devices(torch: Any) -> list[dict[str, Any]]:
    """List the visible GPUs with name, capability and memory."""
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(
            {
                "index": index,
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
            }
        )
    return devices


def check_cuda_available(torch: Any, runner: Runner) -> str:
    """Check CUDA works, or raise with a diagnosis of why not."""
    if torch.version.cuda is not None and torch.cuda.is_available():
        count = torch.cuda.device_count()
        runner.report.devices = describe_devices(torch)
        torch.zeros(1, device="cuda").add_(1)  # create the context here, not in a later check
        torch.cuda.synchronize()
        return f"{count} GPU{'s' if count != 1 else ''}"
    raise CheckFailed(diagnose_environment(torch))


def run_cuda_checks(
    torch: Any,
    runner: Runner,
    args: argparse.Namespace,
    vision: TorchvisionInBackground | None = None,
) -> None:
    """Run the checks that need a working GPU."""
    started = start_all_reduce(torch)
    archs = torch_arch_list(torch)
    for device in runner.report.devices:
        index = device["index"]
        runner.run(
            "arch coverage" + (f" gpu{index}" if len(runner.report.devices) > 1 else ""),
            lambda i=index, d=device: check_gpu_arch(torch, i, archs, d),
        )
    if args.expect_cca:
        runner.run("expected CCA", lambda: check_expected_cca(archs, args.expect_cca))
    runner.run("cuDNN conv2d fwd/bwd", lambda: check_cudnn(torch))
    for mode, tol, want in (
        ("fp32", TOL_FP32, "float32"),
        ("tf32", TOL_TF32, "float32"),
        ("bf16", TOL_HALF, "bfloat16"),
        ("fp16", TOL_HALF, "float16"),
        ("autocast-bf16", TOL_HALF, "bfloat16"),
    ):
        name = "matmul " + mode.replace("-", " ")
        runner.run(name, lambda m=mode, t=tol, w=want: check_matmul(torch, "cuda", m, t, w))
    runner.run("sdpa bf16", lambda: check_sdpa(torch, "cuda", torch.bfloat16))
    runner.run("sdpa fp16", lambda: check_sdpa(torch, "cuda", torch.float16))
    runner.run("nccl", lambda: check_nccl(torch))
    runner.run("nccl all-reduce", lambda: check_nccl_all_reduce(torch, started))
    runner.run("torchvision", lambda: torchvision_result(torch, "cuda", vision))
    runner.run("torchaudio", check_torchaudio, required=False)


def run_cpu_checks(
    torch: Any, runner: Runner, vision: TorchvisionInBackground | None = None
) -> None:
    """Run the CPU subset used with --allow-cpu."""
    runner.run("cpu conv2d fwd/bwd", lambda: "fp32 " + judge(conv_errors(torch, "cpu"), TOL_FP32))
    runner.run("cpu matmul fp32", lambda: check_matmul(torch, "cpu", "fp32", TOL_FP32, "float32"))
    runner.run("cpu matmul bf16", lambda: check_matmul(torch, "cpu", "bf16", TOL_HALF, "bfloat16"))
    runner.run("cpu sdpa fp32", lambda: check_sdpa(torch, "cpu", torch.float32))
    runner.run("cpu sdpa bf16", lambda: check_sdpa(torch, "cpu", torch.bfloat16))
    runner.run("torchvision", lambda: torchvision_result(torch, "cpu", vision))
    runner.run("torchaudio", check_torchaudio, required=False)


def run_all(args: argparse.Namespace) -> Report:
    """Run every check that applies here and return the report."""
    start = time.perf_counter()
    vision = TorchvisionInBackground()
    try:
        return _run_all(args, start, vision)
    finally:
        vision.stop()


def _run_all(args: argparse.Namespace, start: float, vision: TorchvisionInBackground) -> Report:
    runner = Runner()
    report = runner.report
    torch_box: list[Any] = []

    def import_torch() -> str:
        import torch

        torch_box.append(torch)
        return f"torch {torch.__version__} from {os.path.dirname(torch.__file__)}"

    runner.run("torch import", import_torch)
    if not torch_box:
        report.seconds = time.perf_counter() - start
        return report
    torch = torch_box[0]
    report.torch = torch.__version__
    report.cuda = torch.version.cuda
    report.driver = read_driver_version()

    if args.expect_torch:
        runner.run("torch version", lambda: check_torch_version(torch, args.expect_torch))
    cpu_build = torch.version.cuda is None
    if cpu_build and args.allow_cpu:
        runner.add("CUDA build", SKIP, "--allow-cpu: CPU-only build (torch.version.cuda is None)")
    else:
        runner.run("CUDA build", lambda: check_cuda_build(torch))

    cuda = runner.run("CUDA available", lambda: check_cuda_available(torch, runner))
    if cuda.status == PASS:
        run_cuda_checks(torch, runner, args, vision)
    else:
        reason = "--allow-cpu" if args.allow_cpu else "CUDA not available"
        if args.allow_cpu:
            cuda.status, cuda.detail = SKIP, f"--allow-cpu: {cuda.detail}"
        for name in CUDA_CHECKS:
            runner.add(name, SKIP, reason)
        if args.expect_cca:
            if cpu_build:
                runner.add("expected CCA", SKIP, reason)
            else:
                # The arch list is in the binary, so a build can be checked without a GPU.
                runner.run(
                    "expected CCA",
                    lambda: check_expected_cca(torch_arch_list(torch), args.expect_cca),
                )
        if args.allow_cpu:
            run_cpu_checks(torch, runner, vision)
    report.seconds = time.perf_counter() - start
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m torchkiln.smoke",
        description="Check that torch works on this machine's GPUs.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        help="without a usable GPU, run a CPU subset and skip the CUDA checks",
    )
    parser.add_argument("--expect-torch", metavar="VER", help="torch version the image must have")
    parser.add_argument(
        "--expect-cca", metavar="X", help="archs the build must contain, e.g. '8.6;9.0a'"
    )
    parser.add_argument("--torchvision-worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the checks, print the report, return 0 when every required check passed."""
    args = parse_args(argv)
    if args.torchvision_worker:
        return torchvision_worker()
    report = run_all(args)
    print(report_json(report) if args.json else render_table(report), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
