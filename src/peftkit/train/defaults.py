"""What ``auto`` means on this machine: every hardware- and method-dependent default, decided in one
place.

A job that leaves ``dtype`` and ``train.packing`` at ``auto`` gets the fastest setup that learns the
same:

- ``dtype``: a bfloat16 frozen base where the hardware computes bf16 natively (CPUs with avx512_bf16
  or AMX, CUDA GPUs with bf16), with the adapter and optimizer in float32; float32 elsewhere,
  because a CPU without those instructions emulates bf16 matmuls far slower than fp32 (hundreds of
  times on AVX2 machines), and for full fine-tuning, whose weights would lose small updates to bf16
  rounding, and p-tuning, which measured less accurate over a bf16 base (4 points on ETHOS, 3 seeds
  each, at the same loss). Prefix tuning's 11-point loss over a bf16 base was a scoring bug
  (docs/compare.md); scored right, it matches fp32, so it takes bf16 too.
- ``train.packing``: on when the model's attention honours position restarts and packed examples
  lose what they lose unpacked (checked on two real examples before training), for every method:
  prompt tuning's and p-tuning's virtual tokens take slots in front of each packed example, and
  prefix tuning masks each packed example to the prefix and itself (causal LMs with sdpa or eager
  attention; off elsewhere, with the reason).

Each decision comes with its reason; training prints them at the start and ``peftkit inspect`` shows
them.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .config import JobConfig
from .data import DataConfig

__all__ = [
    "Choice",
    "banner",
    "bf16_hardware",
    "choose_dtype",
    "choose_packing",
    "choose_precision",
    "choose_split",
    "cpu_flags",
    "cpu_summary",
    "describe",
    "generation_dtype",
    "inference_dtype",
    "with_choices",
]


FP32_METHODS = {
    "full": "full fine-tuning trains every weight, and bf16 weights lose small updates",
    "p_tuning": "p-tuning over a bf16 base scored 4 accuracy points lower on ETHOS, below fp32's seed range "
    "(docs/compare.md)",
}
"""Methods that ``dtype: auto`` keeps in float32 on any hardware, and why."""


@dataclass(frozen=True)
class Choice:
    """One default as decided: the field, its value, and why."""

    field: str
    value: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.value} ({self.reason})"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def cpu_summary() -> str:
    """The flags that decide CPU speed here (avx2, avx512f, avx512_bf16, amx_bf16), for benchmark
    headers."""
    found = cpu_flags()
    return (
        " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in found)
        or platform.machine()
    )


def bf16_hardware(device: torch.device, flags: set[str] | None = None) -> str | None:
    """What computes bf16 natively on ``device`` ("avx512_bf16", "amx_bf16", "CUDA bf16"), or None."""
    if device.type == "cuda":
        return "CUDA bf16" if torch.cuda.is_bf16_supported() else None
    if device.type != "cpu" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None  # Apple and ARM CPUs: not measured here, so not assumed
    flags = cpu_flags() if flags is None else flags
    return next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)


def choose_dtype(
    job: JobConfig,
    device: torch.device,
    model_dtype: torch.dtype | None = None,
    flags: set[str] | None = None,
) -> Choice:
    """The base model's dtype for ``job`` on ``device``; ``model_dtype``: that of a model passed in
    already loaded, which is what it trains in (and what the run records), whatever the job says."""
    if model_dtype is not None:
        name = str(model_dtype).removeprefix("torch.")
        unused = (
            ""
            if job.dtype in ("auto", name)
            else f"; the job's dtype {job.dtype} is not applied to it"
        )
        return Choice("dtype", name, f"the model was passed in already loaded in {name}{unused}")
    if job.dtype == "auto" and job.method in FP32_METHODS:
        return Choice("dtype", "float32", FP32_METHODS[job.method])
    chosen = inference_dtype(job.dtype, device, flags)
    if job.dtype == "auto" and chosen.value == "bfloat16":
        return Choice(
            "dtype",
            "bfloat16",
            f"frozen base in {chosen.reason}; the adapter and optimizer stay fp32",
        )
    return chosen


def _emulated(dtype: str, device: torch.device, flags: set[str] | None) -> str:
    """A warning for half precision asked for on a CPU that only emulates it, else nothing."""
    if (
        dtype not in ("bfloat16", "float16", "bf16", "fp16")
        or device.type != "cpu"
        or bf16_hardware(device, flags)
    ):
        return ""
    return (
        "; WARNING: this CPU has neither avx512_bf16 nor AMX, so PyTorch emulates half-precision matmuls, on "
        "one core and ~100x slower than fp32 (benchmarks/results/training-cpu.md): use auto or float32"
    )


def choose_precision(job: JobConfig, device: torch.device, flags: set[str] | None = None) -> Choice:
    """The autocast precision (``auto`` is resolved by :func:`~peftkit.train.kernels.autocast_for`),
    with a warning where half precision would be emulated."""
    if job.train.precision == "auto":
        return Choice("precision", "auto", "bf16 autocast on a CUDA GPU with bf16, else none")
    return Choice(
        "precision",
        job.train.precision,
        "set in the job" + _emulated(job.train.precision, device, flags),
    )


def inference_dtype(dtype: str, device: torch.device, flags: set[str] | None = None) -> Choice:
    """The weights' dtype for evaluation and generation: ``auto`` is bf16 where it is native
    (decoding reads every weight per token, so half the bytes), float32 elsewhere."""
    if dtype != "auto":
        return Choice("dtype", dtype, "set in the job" + _emulated(dtype, device, flags))
    hardware = bf16_hardware(device, flags)
    if hardware is None:
        where = (
            "this GPU has no bf16"
            if device.type == "cuda"
            else "this CPU has neither avx512_bf16 nor AMX"
        )
        return Choice("dtype", "float32", f"{where}, and emulated bf16 is slower than fp32")
    return Choice("dtype", "bfloat16", f"bf16 on {hardware}")


def generation_dtype(dtype: str, device: torch.device, flags: set[str] | None = None) -> Choice:
    """The weights' dtype for ``peftkit generate`` (one prompt, one token at a time).

    ``auto`` is bf16 on a CUDA GPU with bf16 and float32 on a CPU, even one with AMX: there, batch-1
    decoding of SmolLM2-135M measured slower in bf16 than in fp32 (25.2 against 28.2 tokens/s,
    benchmarks/results/generation-dtype-cpu.md): at this size a token costs kernel overhead, not
    weight bytes. Evaluation runs batches, where bf16 pays, and keeps :func:`inference_dtype`.
    """
    if dtype != "auto" or device.type == "cuda":
        return inference_dtype(dtype, device, flags)
    return Choice(
        "dtype",
        "float32",
        "batch-1 decoding on a CPU measured faster in fp32 than bf16, even with AMX",
    )


def choose_packing(job: JobConfig, check: Callable[[], None]) -> Choice:
    """Whether ``job`` trains packed; ``check`` raises :class:`ConfigError` when the model cannot
    pack exactly."""
    if job.train.packing is True:
        check()  # asked for: a model that cannot pack is an error, not a silent fallback
    if job.train.packing != "auto":
        return Choice("packing", "on" if job.train.packing else "off", "set in the job")
    try:
        check()
    except ConfigError as err:
        # the reason, not the fix
        why = err.problems[0].removeprefix("train.packing: ").split(";")[0]
        return Choice("packing", "off", why)
    return Choice(
        "packing", "on", f"{job.method} on this model packs exactly (checked on two examples)"
    )


def choose_split(job: JobConfig, packed: bool, device: torch.device, processes: int) -> Choice:
    """Whether ``job`` runs each batch as sub-batches of similar length (``train.split_by_length``)."""
    if packed:
        return Choice("split_by_length", "off", "packed rows have no padding to save")
    if job.train.split_by_length != "auto":
        return Choice(
            "split_by_length", "on" if job.train.split_by_length else "off", "set in the job"
        )
    if processes > 1:
        return Choice(
            "split_by_length", "off", "torchrun's processes must run the same number of passes"
        )
    if device.type != "cpu":
        return Choice("split_by_length", "off", f"on {device.type} a wider batch costs little more")
    return Choice(
        "split_by_length",
        "on",
        "unpacked rows on a CPU: padding costs compute; same examples per step",
    )


def with_choices(job: JobConfig, choices: list[Choice]) -> JobConfig:
    """``job`` with its ``auto`` fields replaced by what was chosen (recorded in config.yaml and
    checkpoints)."""
    values = {c.field: c.value for c in choices}
    train = job.train
    if "packing" in values:
        train = dataclasses.replace(train, packing=values["packing"] == "on")
    if "split_by_length" in values:
        train = dataclasses.replace(train, split_by_length=values["split_by_length"] == "on")
    return dataclasses.replace(job, dtype=values.get("dtype", job.dtype), train=train)


def describe(device: torch.device | None = None) -> str:
    """What ``auto`` gives on this machine, with the reasons (``peftkit inspect``)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lora = choose_dtype(JobConfig(method="lora", data=DataConfig(path="any")), device)
    evaluation, generation = inference_dtype("auto", device), generation_dtype("auto", device)
    return "\n".join(
        [
            f"Training defaults on this machine ({device.type}; every one can be set in the job):",
            f"  dtype: auto -> {lora.value} for adapter methods ({lora.reason})",
            *(
                f"                 float32 for {method} ({reason})"
                for method, reason in FP32_METHODS.items()
            ),
            f"                 {evaluation.value} for peftkit eval ({evaluation.reason})",
            f"                 {generation.value} for peftkit generate ({generation.reason})",
            "  train.packing: auto -> on for every method when the model's attention honours position restarts "
            "(checked on two examples when training starts)",
            "  train.split_by_length: auto -> on for unpacked batches in a single-process CPU run (each batch as "
            "sub-batches of similar length: the same examples per step, less padding); off on a GPU and under torchrun",
        ]
    )


def banner(choices: list[Choice]) -> str:
    """The line training prints at its start: ``defaults: dtype: float32 (...), packing: on (...)``."""
    return "defaults: " + "; ".join(str(c) for c in choices)
