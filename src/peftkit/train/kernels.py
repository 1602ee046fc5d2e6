"""Where and how a step computes: the device, the autocast precision, and the CPU attention kernel."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .distributed import Processes
from .evaluate import tokens_in_front

__all__ = [
    "UNFUSED_ATTENTION_SCORES",
    "attention_kernel",
    "autocast_for",
    "compiled",
    "pick_device",
    "unfused_attention",
]


def pick_device(name: str, procs: Processes | None = None) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device=cuda but no CUDA device is visible; use device: auto or cpu"
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and procs is not None and procs.distributed:
        return torch.device("cuda", procs.local_rank)  # one GPU per process
    return torch.device(name)


def autocast_for(
    precision: str, device: torch.device
) -> tuple[contextlib.AbstractContextManager[Any], bool]:
    """The autocast context for ``precision`` and whether fp16 loss scaling is needed."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext(), False
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"train.precision=fp16 needs a CUDA device (this run is on {device.type}); use bf16 or fp32"
        )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype), precision == "fp16"


UNFUSED_ATTENTION_SCORES = 1 << 23
"""Most attention scores (rows x heads x width^2) a step may hold per layer on the unfused kernel;
wider batches keep the fused kernel, which stores none. On CPU the unfused kernel computes a bf16
batch in fp32 and keeps the scores and fp32 copies of q, k and v for backward: 2^23 scores are 32
MiB per layer, and the copies add 3 x head_dim / width of that."""


def unfused_attention(
    device: torch.device, model: nn.Module, autocast: contextlib.AbstractContextManager[Any]
) -> int:
    """How many attention scores per layer a training step may hold on the unfused ("math") kernel:
    up to :data:`UNFUSED_ATTENTION_SCORES` for half precision on CPU, else 0 (always the fused
    kernel).

    PyTorch's fused CPU attention is fast forward but slow backward in bf16 (in fp32 the fused one
    is faster; measured in benchmarks/results/attention-cpu.md, by ``benchmarks/attention.py``). The
    unfused kernel keeps the (rows, heads, width, width) scores for backward, so long batches stay
    on the fused one. Evaluation and generation (no backward) keep the fused kernel, as do fp32 and
    CUDA.
    """
    half = (torch.bfloat16, torch.float16)
    computes_half = getattr(autocast, "fast_dtype", None) in half or any(
        p.dtype in half for p in model.parameters()
    )
    return UNFUSED_ATTENTION_SCORES if device.type == "cpu" and computes_half else 0


def attention_kernel(
    model: nn.Module, inputs: dict[str, Any], budget: int
) -> contextlib.AbstractContextManager[Any]:
    """The unfused attention kernel when this batch's scores fit ``budget`` (see
    :func:`unfused_attention`)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not budget:
        return contextlib.nullcontext()
    rows, width = inputs["input_ids"].shape
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or 32
    # virtual tokens widen the scores
    scores = rows * int(heads) * (width + tokens_in_front(model, inputs)) ** 2
    return sdpa_kernel([SDPBackend.MATH]) if scores <= budget else contextlib.nullcontext()


@contextlib.contextmanager
def compiled(module: nn.Module, enabled: bool) -> Iterator[None]:
    """``module`` compiled in place with ``torch.compile`` while the block runs
    (``train.torch_compile``), eager again after it, so a model the user passed in is handed back as
    it came (compiled or not).

    The transformers model is compiled, not the PeftModel or DDP wrapper around it: the wrappers'
    Python (prompt inputs, gradient sync) stays eager and ``isinstance`` checks on them still hold,
    while the layers, LoRA's included, are in the graph. ``dynamic=True`` gives one graph for every
    batch width and row count; static shapes would compile again for each new one.
    """
    if not enabled:
        yield
        return
    # a model the caller compiled stays compiled their way afterwards
    before = module._compiled_call_impl
    module.compile(dynamic=True)
    try:
        yield
    finally:
        # what nn.Module.compile set; torch has no public way to undo it
        module._compiled_call_impl = before
