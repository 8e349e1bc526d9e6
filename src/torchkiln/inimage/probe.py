"""Facts about the machine the checks run on: driver, device nodes, why CUDA is missing, the
GPUs and torch's arch list. Standard library only (torch is passed in)."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import subprocess
from typing import Any

from torchkiln.inimage.archs import driver_too_old, min_driver
from torchkiln.inimage.report import one_line

# NVIDIA_VISIBLE_DEVICES values with which the NVIDIA container runtime mounts no GPU.
NO_GPU_VISIBLE = ("", "void", "none")


def public_version(text: str) -> str:
    """Drop a local version suffix: '2.11.0+cu130' -> '2.11.0'."""
    return text.strip().split("+", 1)[0]


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


def format_cudnn_version(version: int | None) -> str:
    """Turn torch's cuDNN integer (91002, 8907) into 9.10.2 / 8.9.7; '-' when there is none."""
    if not version:
        return "-"
    if version >= 90000:
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}"
    return f"{version // 1000}.{version // 100 % 10}.{version % 100}"


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
