"""The training job's schema: one set of typed dataclasses behind Python, YAML files and CLI flags.

A YAML file mirrors the dataclasses::

    model: smollm2-135m
    method: lora
    adapter: {r: 8, lora_alpha: 16, target_modules: [q_proj, v_proj]}
    data: {path: ethos.csv, delimiter: ";", mode: classification, template: "Sentence : {comment} Label : {label}",
           label_column: isHate, label_threshold: 0.5, label_words: {"1": hate, "0": not hate}}
    train: {epochs: 2, lr: 3.0e-4}

and every field is also a flag: ``--model``, ``--data.path``, ``--train.lr``, ``--adapter.r``. Validation
collects every problem (field name, value, what is allowed) before raising one :class:`ConfigError`.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import math
import os
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from ..config import CONFIG_CLASSES, PeftConfig, PeftType, TaskType, _is_number
from ..configfile import read_config_file
from ..errors import ConfigError, did_you_mean
from ..errors import short_repr as _short

__all__ = ["DataConfig", "JobConfig", "TrainingConfig", "field_docs"]

METHODS: dict[str, PeftType | None] = {
    "full": None,  # every weight trains; no adapter
    "lora": PeftType.LORA,
    "prompt_tuning": PeftType.PROMPT_TUNING,
    "p_tuning": PeftType.P_TUNING,
    "prefix_tuning": PeftType.PREFIX_TUNING,
    "ia3": PeftType.IA3,
}
PROMPT_METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning")  # virtual tokens in front of every row
MODES = ("text", "completion", "classification", "chat")
SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
STRATEGIES = ("ddp", "fsdp")


@dataclass
class DataConfig:
    """Where the examples come from and how each row becomes text."""

    path: str | None = None
    """A CSV, TSV, JSON, JSON Lines or Parquet file (compressed too), or a packaged dataset (rotten-tomatoes)."""
    format: str | None = None
    """csv, tsv, json, jsonl or parquet; taken from the file name when empty."""
    delimiter: str | None = None
    """The CSV column separator, e.g. ';' (default ',' for CSV, tab for TSV)."""
    mode: str = "text"
    """text (train on everything), completion, classification (label words) or chat (a messages column)."""
    template: str | None = None
    """{column} fields. text: the whole example; completion: the prompt; classification: a prompt ending in {label}."""
    completion_template: str = "{completion}"
    """completion mode: the target the loss is taken on."""
    label_column: str = "label"
    """classification mode: the column that holds each row's label."""
    label_words: dict[str, str] | None = None
    """classification mode: label value -> the word to answer, e.g. {fresh: positive, rotten: negative}."""
    label_threshold: float | None = None
    """classification mode: a numeric label column is "1" at or above this value, else "0"."""
    drop_unlabeled: bool = False
    """classification mode: skip rows whose label is not in label_words (else they are an error)."""
    messages_column: str = "messages"
    """chat mode: the column with a list of {role, content} messages (or its JSON text)."""
    chat_template: bool = False
    """completion and classification: send the prompt as a user turn through the tokenizer's chat template."""
    system_prompt: str | None = None
    """With chat_template: a system message before the prompt."""
    train_on_prompt: bool = False
    """completion and classification: take the loss on the prompt's tokens too (a plain language-model loss)."""
    add_eos: bool = True
    """End each target with the EOS token, so the model learns to stop."""
    max_length: int = 512
    """Longer examples are truncated (prompts lose their start, text its end), and counted in the report."""
    eval_path: str | None = None
    """A separate validation file; when empty, val_size of the data is held out."""
    val_size: float = 0.1
    """The held-out share (below 1) or count (1 and above) for validation; 0 for none."""
    split_seed: int | None = None
    """Seeds the train/validation split; empty: the job's ``seed``. Set it to keep one held-out split while
    ``seed`` varies initialization and batch order (runs over several seeds on the same split)."""
    max_train_samples: int | None = None
    """Use at most this many training examples (after the seeded shuffle)."""
    max_eval_samples: int | None = None
    """Use at most this many validation examples."""

    def _validate(self, problems: list[str]) -> None:
        from ..data import DataError, split_label_template, template_fields

        typecheck(self, "data.", problems)
        _choice(problems, "data.mode", self.mode, MODES)
        if self.format is not None:
            _choice(problems, "data.format", self.format, ("csv", "tsv", "json", "jsonl", "parquet"))
        if not self.path:
            problems.append("data.path is required: a data file such as train.csv, or rotten-tomatoes")
        if self.template is None and self.mode != "chat":
            defaults = {"text": "{text}", "completion": "{prompt}", "classification": "{text} {label}"}
            self.template = defaults.get(self.mode) if isinstance(self.mode, str) else None
        for name, text in (("data.template", self.template), ("data.completion_template", self.completion_template)):
            try:
                template_fields(text or "")
            except DataError as err:
                problems.append(f"{name}: {err}")
        if self.mode == "classification":
            try:
                split_label_template(self.template or "")
            except DataError as err:
                problems.append(f"data.template: {err}")
            if not self.label_words or not isinstance(self.label_words, dict):
                problems.append("data.label_words is required in classification mode: a mapping from label value "
                                "to word, e.g. {fresh: positive, rotten: negative}")
            else:
                self.label_words = {str(k): str(v) for k, v in self.label_words.items()}
                empty = [k for k, v in self.label_words.items() if not v.strip()]
                if empty:
                    problems.append(f"data.label_words: the word for label {empty[0]!r} is empty; every label needs "
                                    "a word for the model to answer, e.g. {fresh: positive, rotten: negative}")
        _positive(problems, "data.max_length", self.max_length, integer=True)
        if not _is_number(self.val_size) or self.val_size < 0 or (self.val_size >= 1 and self.val_size % 1):
            problems.append(f"data.val_size={_short(self.val_size)} must be a fraction in [0, 1) or a whole count")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                _positive(problems, f"data.{name}", getattr(self, name), integer=True)


@dataclass
class TrainingConfig:
    """How to optimize: steps, batch, learning rate, precision, evaluation and checkpoints."""

    epochs: float = 1.0
    """Passes over the training data (fractions allowed); max_steps wins when set."""
    max_steps: int | None = None
    """Stop after this many optimizer steps."""
    max_minutes: float | None = None
    """Stop after this much training time (evaluation excluded); the schedule still spans epochs/max_steps."""
    batch_size: int = 8
    """Examples per forward pass, over all processes (torchrun splits each batch between them)."""
    grad_accum: int = 1
    """Forward passes per optimizer step (effective batch = batch_size * grad_accum, whatever the process count)."""
    group_by_length: bool = False
    """Batch examples of similar length together: far less padding (about 1.6x faster on mixed lengths), but
    batches become less random, which can cost accuracy where length tracks the label (ETHOS: ~8 points)."""
    packing: bool = False
    """Pack each batch's examples into as few rows as possible (no compute on padding), keeping them apart with
    restarting positions, so batches and losses are those of unpacked training. Decoder-only models whose
    attention honours position restarts (checked when training starts); not with prompt methods (in a
    comparison, they train unpacked and the other methods packed)."""
    lr: float = 2e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    schedule: str = "linear"
    """Learning-rate schedule after warmup: linear, cosine or constant."""
    warmup_steps: int = 0
    """Steps of linear warmup from 0 to lr."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm to this (none: no clipping)."""
    precision: str = "auto"
    """auto (bf16 on a GPU that has it, else fp32), fp32, bf16 or fp16 (autocast; fp16 with loss scaling)."""
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
    strategy: str = "ddp"
    """Under torchrun: ddp (replicate the model) or fsdp (shard the frozen base block by block)."""
    timeout_minutes: float = 30.0
    """Under torchrun: how long a process waits for the others before the run fails instead of hanging."""
    resume: bool | str = False
    """true: continue from the latest checkpoint in output_dir; or a checkpoint folder."""
    overwrite: bool = False
    """Replace an earlier run's results in output_dir (only files peftkit wrote; the user's are never touched)."""
    progress: bool = True
    """Show a progress bar with loss and tokens/s."""
    plot: bool = True
    """Save plot.png of loss and metrics at the end (needs matplotlib)."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers that also get the metrics: tensorboard (files under <output_dir>/runs), wandb,
    mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio; each needs its own package."""

    def _validate(self, problems: list[str]) -> None:
        typecheck(self, "train.", problems)
        from .report import TRACKERS

        for name in self.report_to if isinstance(self.report_to, list) else []:
            _choice(problems, "train.report_to", name, tuple(TRACKERS))
        _positive(problems, "train.epochs", self.epochs)
        for name in ("batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            _positive(problems, f"train.{name}", getattr(self, name), integer=True)
        if self.max_minutes is not None:
            _positive(problems, "train.max_minutes", self.max_minutes)
        for name in ("max_steps", "eval_every", "save_every", "eval_batch_size"):
            if getattr(self, name) is not None:
                _positive(problems, f"train.{name}", getattr(self, name), integer=True)
        _positive(problems, "train.lr", self.lr)
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            problems.append(f"train.weight_decay={self.weight_decay!r} must be a number >= 0")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            problems.append(f"train.warmup_steps={self.warmup_steps!r} must be a whole number >= 0")
        if self.max_grad_norm is not None:
            _positive(problems, "train.max_grad_norm", self.max_grad_norm)
        _choice(problems, "train.schedule", self.schedule, SCHEDULES)
        _choice(problems, "train.precision", self.precision, PRECISIONS)
        _choice(problems, "train.device", self.device, DEVICES)
        _choice(problems, "train.strategy", self.strategy, STRATEGIES)
        _positive(problems, "train.timeout_minutes", self.timeout_minutes)


@dataclass
class JobConfig:
    """A whole fine-tuning job: model, method, adapter settings, data, training and where to write."""

    model: str = "smollm2-135m"
    """A packaged alias (smollm2-135m), a local folder, a .gguf file or a hub id."""
    method: str = "lora"
    """lora, ia3, prompt_tuning, p_tuning, prefix_tuning, or full (every weight trains; saves the whole model)."""
    adapter: dict[str, Any] = field(default_factory=dict)
    """Fields of the method's config, with PEFT's names (r, lora_alpha, target_modules, num_virtual_tokens, ...)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The data section."""
    train: TrainingConfig = field(default_factory=TrainingConfig)
    """The training section."""
    output_dir: str = "outputs/run"
    """Where the adapter, checkpoints, metrics.jsonl and plot.png go."""
    seed: int = 42
    """Seeds the split, the shuffling, adapter initialization and dropout."""
    dtype: str = "float32"
    """Base model weights: float32, bfloat16 or float16."""
    trust_remote_code: bool = False
    """Run model code from the hub; off unless you ask for it."""
    quantization: str | None = None
    """QLoRA: nf4 or fp4 loads the base's linear layers in 4 bits (needs bitsandbytes); dtype is the compute dtype."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        build_sections(self, problems)
        _choice(problems, "method", self.method, tuple(METHODS))
        _choice(problems, "dtype", self.dtype, ("float32", "bfloat16", "float16"))
        if self.quantization is not None:
            _choice(problems, "quantization", self.quantization, ("nf4", "fp4"))
            if self.method == "full":
                problems.append("quantization: a 4-bit base cannot be fully fine-tuned; use an adapter method "
                                "(lora, the QLoRA recipe) or leave quantization empty")
        if not isinstance(self.adapter, dict):
            problems.append(f"adapter={_short(self.adapter)} must be a mapping of the method's fields, e.g. {{r: 8}}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            problems.append(f"seed={_short(self.seed)} must be a whole number from 0 to 2**63 - 1")
        if not isinstance(self.output_dir, str) or not self.output_dir.strip():
            problems.append(f"output_dir={self.output_dir!r} is empty; name a folder for the results, e.g. "
                            "--output-dir outputs/run (use '.' for the current folder explicitly)")
        if getattr(self.train, "packing", False) is True and self.method in PROMPT_METHODS:
            problems.append(f"train.packing: {self.method} puts its virtual tokens in front of each row, so rows "
                            "cannot hold several examples; set train.packing: false")
        validate_sections(self, problems)
        if isinstance(self.method, str) and self.method in METHODS and isinstance(self.adapter, dict):
            try:
                if self.peft_config() is not None:
                    self.adapter = self._typed_adapter()  # text from YAML or flags, typed by the method's schema
            except ConfigError as err:
                problems += [f"adapter: {p}" for p in err.problems]
        if problems:
            raise ConfigError(problems, source="job config")

    def peft_config(self) -> PeftConfig | None:
        """The typed adapter config of ``method`` with ``adapter``'s fields, for a causal LM (None: full)."""
        peft_type = METHODS[self.method]
        if peft_type is None:
            if self.adapter:
                raise ConfigError([f"method full trains every weight and takes no adapter fields (got "
                                   f"{', '.join(self.adapter)}); remove them or choose an adapter method"])
            return None
        cls = CONFIG_CLASSES[peft_type]
        return cls(**{"task_type": TaskType.CAUSAL_LM, **self._typed_adapter()})

    def _typed_adapter(self) -> dict[str, Any]:
        """``adapter`` with each value typed by the method's config class; unknown fields are a ConfigError."""
        cls = CONFIG_CLASSES[METHODS[self.method] or PeftType.LORA]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in self.adapter if k not in known]
        if unknown:
            raise ConfigError([f"{k!r} is not a field of {cls.__name__}.{did_you_mean(str(k), known)}"
                               for k in unknown])
        hints = typing.get_type_hints(cls)
        return {k: coerce(v, hints[k]) for k, v in self.adapter.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> JobConfig:
        """Build from a plain mapping (a parsed YAML file); unknown keys are reported with suggestions."""
        problems: list[str] = []
        job = _build(cls, data, "", problems)
        if problems:
            raise ConfigError(problems, source=source or "job config")
        return job

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> JobConfig:
        """Read a YAML file, apply dotted ``overrides`` (``{"train.lr": 1e-4}``), and validate."""
        return cls.from_dict(apply_overrides(read_yaml(path), overrides or {}), source=os.fspath(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for YAML or JSON."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return str(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML config file's mapping, every scalar as its text (the schema types it: see :mod:`peftkit.configfile`).

    Raises:
        ConfigError: a missing, oversized, non-UTF-8 or malformed file, duplicate keys, or not a mapping.
    """
    return read_config_file(path)


def build_sections(obj: Any, problems: list[str]) -> None:
    """Turn ``obj.data`` and ``obj.train`` mappings into their dataclasses and type-check ``obj``'s own fields
    (shared by the job and the comparison configs)."""
    if isinstance(obj.data, dict):
        obj.data = _build(DataConfig, obj.data, "data", problems)
    if isinstance(obj.train, dict):
        obj.train = _build(TrainingConfig, obj.train, "train", problems)
    typecheck(obj, "", problems, skip=("data", "train"))


def validate_sections(obj: Any, problems: list[str]) -> None:
    """Validate ``obj.data`` and ``obj.train``; a section that is not a mapping is reported and reset."""
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
    """Instantiate ``cls`` from ``data``, recording unknown keys (with suggestions) and validation problems."""
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


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (the attribute-docstring convention), for ``--help``."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = after.value.value.strip()
    return docs


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a config dataclass."""
    return get_type_hints(cls)


def typecheck(obj: Any, prefix: str, problems: list[str], skip: tuple[str, ...] = ()) -> None:
    """Record a problem for each field whose value is not of its declared type, and put the default back
    so later checks see a sane value."""
    hints = field_types(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in skip or _matches(value, hints[f.name]):
            continue
        problems.append(f"{prefix}{f.name}={_short(value)} must be {_describe(hints[f.name])}")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        setattr(obj, f.name, default)


def _matches(value: Any, hint: Any) -> bool:
    for kind in typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,):
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if kind is Any or (kind is type(None) and value is None) or (kind is bool and isinstance(value, bool)):
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind is float and _is_number(value) and (not isinstance(value, float) or math.isfinite(value)):
            return True
        if kind is str and isinstance(value, str):
            return True
        if origin is list and isinstance(value, list) and all(_matches(v, args[0]) for v in value):
            return True
        if origin is dict and isinstance(value, dict):
            return True
    return False


def _describe(hint: Any) -> str:
    names = {str: "text", int: "a whole number", float: "a number", bool: "true or false", type(None): "empty"}
    kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    words = [names.get(k) or ("a list" if typing.get_origin(k) is list else "a mapping") for k in kinds]
    return " or ".join(dict.fromkeys(words))


def coerce(value: Any, hint: Any) -> Any:
    """Turn text into the field's scalar type where that is unambiguous.

    YAML reads ``1e-4`` as a string and flags are all strings; ``"1e-4"`` for a float field becomes 1e-4.
    Anything that does not convert is left alone for validation to report.
    """
    args = set(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else {hint}
    if isinstance(value, dict):  # {name: value} fields such as rank_pattern: coerce the values
        inner = [typing.get_args(a)[1] for a in args if typing.get_origin(a) is dict and typing.get_args(a)]
        return {k: coerce(v, inner[0]) for k, v in value.items()} if inner else value
    if isinstance(value, list):  # flags with several values: coerce the items of list[int] and the like
        inner = [typing.get_args(a)[0] for a in args if typing.get_origin(a) is list and typing.get_args(a)]
        return [coerce(v, inner[0]) for v in value] if inner else value
    if not isinstance(value, str):
        return value
    text = value.strip()
    if type(None) in args and text.lower() in ("", "none", "null", "~"):
        return None
    if bool in args and text.lower() in ("true", "false", "yes", "no", "on", "off"):
        return text.lower() in ("true", "yes", "on")
    for kind in (int, float):
        if kind in args:
            try:
                return kind(text)
            except ValueError:
                continue
    return value


def _positive(problems: list[str], name: str, value: Any, integer: bool = False) -> None:
    ok = (isinstance(value, int) and not isinstance(value, bool)) if integer else _is_number(value)
    if not ok or value <= 0:
        kind = "a whole number" if integer else "a number"
        problems.append(f"{name}={_short(value)} must be {kind} > 0")


def _choice(problems: list[str], name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        problems.append(f"{name}={_short(value)} is not allowed; expected one of {', '.join(allowed)}."
                        f"{did_you_mean(str(value), allowed)}")
