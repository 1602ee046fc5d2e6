"""The training job's schema: one set of typed dataclasses behind Python, YAML files and CLI flags.

A YAML file mirrors the dataclasses::

    model: smollm2-135m
    method: lora
    adapter: {r: 8, lora_alpha: 16, target_modules: [q_proj, v_proj]}
    data: {path: ethos.csv, delimiter: ";", mode: classification, template: "Sentence : {comment}
           Label : {label}", label_column: isHate, label_threshold: 0.5, label_words: {"1": hate,
           "0": not hate}}
    train: {epochs: 2, lr: 3.0e-4}

and every field is also a flag: ``--model``, ``--data.path``, ``--train.lr``, ``--adapter.r``.
Validation collects every problem (field name, value, what is allowed) before raising one
:class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any

from ..common.configfile import read_config_file
from ..common.schema import choice, coerce, field_docs, field_types, is_number, positive, typecheck
from ..config import PeftConfig, TaskType
from ..errors import ConfigError, did_you_mean
from ..errors import short_repr as _short
from ..methods import method_named, methods
from ..tuners.prompt.model import GRADIENT_CHECKPOINTING
from .data import DataConfig

__all__ = ["DataConfig", "JobConfig", "TrainingConfig", "field_docs"]

FULL = "full"
"""The method that trains every weight, with no adapter; every other method is a registered one
(:mod:`peftkit.methods`)."""


def method_names() -> tuple[str, ...]:
    """What ``method`` accepts: ``full`` and every registered method's name."""
    return (FULL, *(m.name for m in methods()))


SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")
STRATEGIES = ("ddp", "fsdp")
TRACKERS = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}
"""The experiment trackers ``train.report_to`` accepts (accelerate's integrations), with the package
each needs."""


def _switch(value: str, name: str, problems: list[str]) -> bool | str:
    """``auto``, or text that means on or off, for a field that is true, false or auto."""
    words = {"true": True, "on": True, "yes": True, "false": False, "off": False, "no": False}
    if value.lower() == "auto":
        return "auto"
    if value.lower() not in words:
        problems.append(f"{name}={_short(value)} must be true, false or auto")
        return "auto"
    return words[value.lower()]


@dataclass
class TrainingConfig:
    """How to optimize: steps, batch, learning rate, precision, evaluation and checkpoints."""

    epochs: float = 1.0
    """Passes over the training data (fractions allowed); max_steps wins when set."""
    max_steps: int | None = None
    """Stop after this many optimizer steps."""
    max_minutes: float | None = None
    """Stop after this much training time (evaluation excluded); the schedule still spans
    epochs/max_steps."""
    batch_size: int = 8
    """Examples per forward pass, over all processes (torchrun splits each batch between them)."""
    grad_accum: int = 1
    """Forward passes per optimizer step (effective batch = batch_size * grad_accum, whatever the
    process count)."""
    group_by_length: bool = False
    """Batch examples of similar length together: far less padding, but batches become less random,
    which can cost accuracy where length tracks the label (benchmarks/results/training-cpu.md
    measures both)."""
    packing: bool | str = "auto"
    """Pack each batch's examples into as few rows as possible (no compute on padding), keeping them
    apart with restarting positions, so batches and losses are those of unpacked training.
    Decoder-only models whose attention honours position restarts (checked on two examples when
    training starts); every method (prompt tuning's and p-tuning's virtual tokens take slots in
    front of each example, prefix tuning masks each example to the prefix and itself). auto: on
    where it is exact, off otherwise; the start of training says which and why
    (:mod:`peftkit.train.defaults`)."""
    split_by_length: bool | str = "auto"
    """Run each unpacked batch as a few forward passes over rows of similar length (sorted within
    the batch), so less compute goes to padding. The step sees the same examples with the same loss
    weights, so it learns what the whole batch would, up to float rounding (unlike group_by_length,
    which changes which examples share a batch). auto: on for unpacked batches in a single-process
    run on a CPU, where compute grows with every padded position; off on a GPU, where a wider batch
    costs little more, and under torchrun, whose processes must run the same number of passes."""
    lr: float = 2e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    loraplus_lr_ratio: float | None = None
    """LoRA+: B's learning rate is lr times this (the paper suggests 16; LLaMA-Factory's and
    axolotl's loraplus_lr_ratio), LoRA on embeddings learns at 1e-6, as PEFT's
    create_loraplus_optimizer groups them; none: one rate for every tensor. LoRA only, not under
    FSDP."""
    schedule: str = "linear"
    """Learning-rate schedule after warmup: linear, cosine or constant."""
    warmup_steps: int = 0
    """Steps of linear warmup from 0 to lr."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm to this (none: no clipping)."""
    precision: str = "auto"
    """auto (bf16 on a GPU that has it, else fp32), fp32, bf16 or fp16 (autocast; fp16 with loss
    scaling)."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    eval_every: int | None = None
    """Evaluate every N steps (and always at the end)."""
    save_every: int | None = None
    """Write a checkpoint every N steps (adapter, optimizer, schedule, RNG, data position)."""
    keep_checkpoints: int = 2
    """How many of the latest checkpoints to keep."""
    log_every: int = 10
    """Write training loss to metrics.jsonl every N steps."""
    eval_batch_size: int | None = None
    """Batch size for evaluation (default: batch_size * 2)."""
    eval_before: bool = True
    """Evaluate once before training, to compare before and after."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, more time."""
    torch_compile: bool = False
    """Compile the training forward and backward with torch.compile, batch size and width marked
    dynamic so a run compiles once rather than once per batch shape. Off by default: on a 2-core CPU
    compiled steps ran 1.63x faster but the compile took 163-285 s, paid back only after ~750-1,350
    steps (benchmarks/results/compile-cpu.md)."""
    strategy: str = "ddp"
    """Under torchrun: ddp (replicate the model) or fsdp (shard the frozen base block by block)."""
    timeout_minutes: float = 30.0
    """Under torchrun: how long a process waits for the others before the run fails instead of
    hanging."""
    resume: bool | str = False
    """true: continue from the latest checkpoint in output_dir; or a checkpoint folder."""
    overwrite: bool = False
    """Replace an earlier run's results in output_dir (only files peftkit wrote; the user's are
    never touched)."""
    progress: bool = True
    """Show a progress bar with loss and tokens/s."""
    plot: bool = True
    """Save plot.png of loss and metrics at the end (needs matplotlib)."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers that also get the metrics: tensorboard (files under <output_dir>/runs),
    wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio; each needs its own package."""

    def _validate(self, problems: list[str]) -> None:
        typecheck(self, "train.", problems)

        for name in self.report_to if isinstance(self.report_to, list) else []:
            choice(problems, "train.report_to", name, tuple(TRACKERS))
        positive(problems, "train.epochs", self.epochs)
        for name in ("batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            positive(problems, f"train.{name}", getattr(self, name), integer=True)
        if self.max_minutes is not None:
            positive(problems, "train.max_minutes", self.max_minutes)
        for name in ("max_steps", "eval_every", "save_every", "eval_batch_size"):
            if getattr(self, name) is not None:
                positive(problems, f"train.{name}", getattr(self, name), integer=True)
        positive(problems, "train.lr", self.lr)
        if not is_number(self.weight_decay) or self.weight_decay < 0:
            problems.append(f"train.weight_decay={self.weight_decay!r} must be a number >= 0")
        if self.loraplus_lr_ratio is not None:
            positive(problems, "train.loraplus_lr_ratio", self.loraplus_lr_ratio)
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            problems.append(f"train.warmup_steps={self.warmup_steps!r} must be a whole number >= 0")
        if self.max_grad_norm is not None:
            positive(problems, "train.max_grad_norm", self.max_grad_norm)
        choice(problems, "train.schedule", self.schedule, SCHEDULES)
        choice(problems, "train.precision", self.precision, PRECISIONS)
        if isinstance(self.packing, str):  # flags and YAML text: "true", "off", ...
            self.packing = _switch(self.packing, "train.packing", problems)
        if isinstance(self.split_by_length, str):
            self.split_by_length = _switch(self.split_by_length, "train.split_by_length", problems)
        choice(problems, "train.device", self.device, DEVICES)
        choice(problems, "train.strategy", self.strategy, STRATEGIES)
        positive(problems, "train.timeout_minutes", self.timeout_minutes)


@dataclass
class JobConfig:
    """A whole fine-tuning job: model, method, adapter settings, data, training and where to write."""

    model: str = "smollm2-135m"
    """A packaged alias (smollm2-135m), a local folder, a .gguf file or a hub id."""
    method: str = "lora"
    """lora, ia3, prompt_tuning, p_tuning, prefix_tuning, or full (every weight trains; saves the
    whole model)."""
    adapter: dict[str, Any] = field(default_factory=dict)
    """Fields of the method's config, with PEFT's names (r, lora_alpha, target_modules,
    num_virtual_tokens, ...)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The data section."""
    train: TrainingConfig = field(default_factory=TrainingConfig)
    """The training section."""
    output_dir: str = "outputs/run"
    """Where the adapter, checkpoints, metrics.jsonl and plot.png go."""
    seed: int = 42
    """Seeds the split, the shuffling, adapter initialization and dropout."""
    dtype: str = "auto"
    """Base model weights: float32, bfloat16 or float16. auto: bfloat16 for the frozen base of an
    adapter method on hardware that computes bf16 natively (CPUs with avx512_bf16 or AMX, CUDA GPUs
    with bf16; the adapter and optimizer stay float32), float32 elsewhere and for full fine-tuning;
    the start of training says which and why (:mod:`peftkit.train.defaults`)."""
    trust_remote_code: bool = False
    """Run model code from the hub; off unless you ask for it."""
    quantization: str | None = None
    """QLoRA: nf4 or fp4 loads the base's linear layers in 4 bits (needs bitsandbytes); dtype is the
    compute dtype."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        build_sections(self, problems)
        choice(problems, "method", self.method, method_names())
        choice(problems, "dtype", self.dtype, DTYPES)
        if self.quantization is not None:
            choice(problems, "quantization", self.quantization, ("nf4", "fp4"))
            if self.method == "full":
                problems.append(
                    "quantization: a 4-bit base cannot be fully fine-tuned; use an adapter method "
                    "(lora, the QLoRA recipe) or leave quantization empty"
                )
        if not isinstance(self.adapter, dict):
            problems.append(
                f"adapter={_short(self.adapter)} must be a mapping of the method's fields, e.g. {{r: 8}}"
            )
        if (
            not isinstance(self.seed, int)
            or isinstance(self.seed, bool)
            or not 0 <= self.seed < 2**63
        ):
            problems.append(f"seed={_short(self.seed)} must be a whole number from 0 to 2**63 - 1")
        if not isinstance(self.output_dir, str) or not self.output_dir.strip():
            problems.append(
                f"output_dir={self.output_dir!r} is empty; name a folder for the results, e.g. "
                "--output-dir outputs/run (use '.' for the current folder explicitly)"
            )
        if getattr(self.train, "loraplus_lr_ratio", None) is not None:
            if self.method != "lora":
                problems.append(
                    f"train.loraplus_lr_ratio: LoRA+ sets the learning rate of LoRA's B factors; method "
                    f"{self.method} has none. Remove it or use method lora"
                )
            if getattr(self.train, "strategy", None) == "fsdp":
                problems.append(
                    "train.loraplus_lr_ratio is not supported with train.strategy fsdp yet (FSDP "
                    "replaces the parameters the groups are made of); use ddp or leave it out"
                )
        if (
            self.method == "prefix_tuning"
            and getattr(self.train, "gradient_checkpointing", False) is True
        ):
            problems.append("train.gradient_checkpointing: " + GRADIENT_CHECKPOINTING)
        validate_sections(self, problems)
        if (
            isinstance(self.method, str)
            and self.method in method_names()
            and isinstance(self.adapter, dict)
        ):
            try:
                if self.peft_config() is not None:
                    # text from YAML or flags, typed by the method's schema
                    self.adapter = self._typed_adapter()
            except ConfigError as err:
                problems += [f"adapter: {p}" for p in err.problems]
        if problems:
            raise ConfigError(problems, source="job config")

    def peft_config(self) -> PeftConfig | None:
        """The typed adapter config of ``method`` with ``adapter``'s fields, for a causal LM (None:
        full)."""
        if self.method == FULL:
            if self.adapter:
                raise ConfigError(
                    [
                        f"method full trains every weight and takes no adapter fields (got "
                        f"{', '.join(self.adapter)}); remove them or choose an adapter method"
                    ]
                )
            return None
        cls = method_named(self.method).config_class
        return cls(**{"task_type": TaskType.CAUSAL_LM, **self._typed_adapter()})

    def _typed_adapter(self) -> dict[str, Any]:
        """``adapter`` with each value typed by the method's config class; unknown fields are a
        ConfigError."""
        cls = method_named("lora" if self.method == FULL else self.method).config_class
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in self.adapter if k not in known]
        if unknown:
            raise ConfigError(
                [
                    f"{k!r} is not a field of {cls.__name__}.{did_you_mean(str(k), known)}"
                    for k in unknown
                ]
            )
        hints = typing.get_type_hints(cls)
        return {k: coerce(v, hints[k]) for k, v in self.adapter.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> JobConfig:
        """Build from a plain mapping (a parsed YAML file); unknown keys are reported with
        suggestions."""
        problems: list[str] = []
        job = _build(cls, data, "", problems)
        if problems:
            raise ConfigError(problems, source=source or "job config")
        return job

    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike[str], overrides: dict[str, Any] | None = None
    ) -> JobConfig:
        """Read a YAML file, apply dotted ``overrides`` (``{"train.lr": 1e-4}``), and validate."""
        return cls.from_dict(
            apply_overrides(read_yaml(path), overrides or {}), source=os.fspath(path)
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for YAML or JSON."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return str(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML config file's mapping, every scalar as its text (the schema types it; see
    :mod:`peftkit.common.configfile`).

    Raises:
        ConfigError: a missing, oversized, non-UTF-8 or malformed file, duplicate keys, or not a
            mapping.
    """
    return read_config_file(path)


def build_sections(
    obj: Any, problems: list[str], sections: tuple[tuple[str, type], ...] = ()
) -> None:
    """Turn ``obj.data`` and ``obj.train`` mappings (and those of ``sections``: (field, dataclass)
    pairs) into their dataclasses and type-check ``obj``'s own fields (shared by the job and the
    comparison configs)."""
    every = (("data", DataConfig), ("train", TrainingConfig), *sections)
    for name, cls in every:
        if isinstance(getattr(obj, name), dict):
            setattr(obj, name, _build(cls, getattr(obj, name), name, problems))
    typecheck(obj, "", problems, skip=tuple(name for name, _ in every))


def validate_sections(obj: Any, problems: list[str]) -> None:
    """Validate ``obj.data`` and ``obj.train``; a section that is not a mapping is reported and
    reset."""
    for name, cls in (("data", DataConfig), ("train", TrainingConfig)):
        section = getattr(obj, name)
        if isinstance(section, cls):
            section._validate(problems)
        else:
            problems.append(f"{name} must be a mapping of its fields, not {section!r}")
            setattr(obj, name, cls())


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``train.lr``) in a nested mapping; returns a new mapping."""
    result = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest:
            section = result.setdefault(head, {})
            if not isinstance(section, dict):
                section = result[head] = {}
            section[rest] = value
        else:
            result[head] = value
    return result


def _build(cls: type, data: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    """Instantiate ``cls`` from ``data``, recording unknown keys (with suggestions) and validation
    problems."""
    if not isinstance(data, dict):
        problems.append(f"{prefix or 'config'} must be a mapping, not {type(data).__name__}")
        return cls()
    known = {f.name for f in dataclasses.fields(cls)}
    dotted = f"{prefix}." if prefix else ""
    for key in data:
        if key not in known:
            problems.append(f"{dotted}{key} is not a known field.{did_you_mean(str(key), known)}")
    hints = field_types(cls)
    kwargs = {k: coerce(v, hints[k]) for k, v in data.items() if k in known}
    if cls is JobConfig:
        try:
            return cls(**kwargs)
        except ConfigError as err:
            problems += err.problems
            return None
    return cls(**kwargs)
