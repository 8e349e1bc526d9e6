"""The numbers the checks compare: fp64 references, relative errors and their tolerances."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

from torchkiln.inimage.report import CheckFailed

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
