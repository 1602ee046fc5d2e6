"""PyTorch's fused (flash) CPU attention against the unfused ("math") kernel, forward and
forward+backward.

The shapes of the training benchmark's batches on SmolLM2-135M: 8 rows, 9 heads of 64, causal, at
two widths, in bf16 and fp32. This is the measurement behind peftkit's choice of the unfused kernel
for half-precision training steps on CPU (``peftkit.train.kernels.unfused_attention``).

    python benchmarks/attention.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

KERNELS = {"fused": SDPBackend.FLASH_ATTENTION, "unfused": SDPBackend.MATH}


def milliseconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1000 * (time.perf_counter() - start) / repeats


def measure(
    dtype: torch.dtype, width: int, kernel: SDPBackend, repeats: int
) -> tuple[float, float]:
    """(forward ms, forward+backward ms) of causal attention over (8, 9, width, 64) inputs."""
    q, k, v = (torch.randn(8, 9, width, 64, dtype=dtype, requires_grad=True) for _ in range(3))

    def forward() -> None:
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def forward_backward() -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    with sdpa_kernel([kernel]):
        return milliseconds(forward, repeats), milliseconds(forward_backward, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(f"# CPU attention kernels, 8 rows x 9 heads x 64, causal, {args.repeats} repeats (mean)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}\n")
    print(
        "| dtype | width | fused fwd ms | unfused fwd ms | fused fwd+bwd ms | unfused fwd+bwd ms "
        "| fused / unfused (fwd+bwd) |"
    )
    print("|---|---|---|---|---|---|---|")
    for dtype in (torch.bfloat16, torch.float32):
        for width in (64, 136):
            fused = measure(dtype, width, KERNELS["fused"], args.repeats)
            unfused = measure(dtype, width, KERNELS["unfused"], args.repeats)
            print(
                f"| {str(dtype).removeprefix('torch.')} | {width} | {fused[0]:.2f} | {unfused[0]:.2f} | "
                f"{fused[1]:.2f} | {unfused[1]:.2f} | {fused[1] / unfused[1]:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
