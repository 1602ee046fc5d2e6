"""What each ``peftkit`` command takes besides the job schema: one typed dataclass per command, a
docstring per field. The CLI builds its flags and ``--help`` from these (as it builds ``--train.lr``
from the job schema and the serve flags from ``ServeConfig``), so a flag cannot exist without a
documented, typed field behind it.

Field metadata carries what argparse needs beyond the type: ``positional`` (an argument, not a
flag), ``flag`` (another spelling, such as ``--data`` for ``data_path``), ``nargs``, ``metavar``,
``choices`` and ``const``. Nothing here imports torch: ``peftkit --help`` reads these classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["COMMAND_OPTIONS"]


def _arg(**meta: Any) -> Any:
    """A positional argument (required unless ``nargs`` says otherwise)."""
    return field(default=None, metadata={"positional": True, **meta})


def _opt(default: Any = None, **meta: Any) -> Any:
    return field(default=default, metadata=meta)


@dataclass
class TrainOptions:
    """fine-tune a model with an adapter (YAML config and/or flags)"""

    resume: bool | str | None = _opt(nargs="?", const=True, metavar="CHECKPOINT")
    """continue from the latest checkpoint in the output dir (or the one given)"""
    nproc: int | None = _opt(metavar="N")
    """train on N processes of this machine (starts torchrun; one per GPU, or CPU with gloo)"""


@dataclass
class EvalOptions:
    """evaluate a base model, or base + adapter, on a data file"""

    adapter_path: str | None = None
    """an adapter folder (peftkit's or PEFT's); without it, the base model"""
    all: bool = False
    """evaluate every row, not the held-out split"""


@dataclass
class GenerateOptions:
    """generate from a prompt, base model and adapter side by side"""

    model: str = _arg()
    """model alias, folder, .gguf file or hub id"""
    prompt: str = _arg()
    """the prompt to continue"""
    adapter_path: str | None = None
    """an adapter folder; its output is shown next to the base model's"""
    max_new_tokens: int = 48
    """the most tokens each side generates"""
    chat: bool = False
    """wrap the prompt in the tokenizer's chat template"""
    dtype: str = _opt("auto", choices=("auto", "float32", "bfloat16"))
    """weights' dtype; auto: float32 on a CPU (batch-1 decoding measured faster than bf16, even with
    AMX), bfloat16 on a CUDA GPU with bf16"""


@dataclass
class MergeOptions:
    """fold an adapter into the base model and save a plain transformers folder"""

    model: str = _arg()
    """model alias, folder, .gguf file or hub id"""
    adapter_path: str = _arg()
    """the adapter folder"""
    output_dir: str = _arg()
    """where the merged model goes"""


@dataclass
class ExportOptions:
    """write an adapter, or a model with its adapter merged, as GGUF for llama.cpp and Ollama"""

    paths: list[str] = field(
        default_factory=list, metadata={"positional": True, "nargs": "+", "metavar": "PATH"}
    )
    """the adapter (gguf-lora), or the base and adapter (gguf)"""
    to: list[str] = field(
        default_factory=list,
        metadata={"nargs": 2, "metavar": ("FORMAT", "OUT.gguf"), "required": True},
    )
    """gguf-lora: the LoRA adapter alone (llama.cpp --lora, Ollama ADAPTER); gguf: the merged model;
    then the file to write"""
    base: str | None = None
    """gguf-lora: the base model (default: the one the adapter records)"""
    quant: str | None = _opt(choices=("f32", "f16", "q8_0", "q4_0"))
    """tensor encoding: f16 for a model, f32 for an adapter by default (an adapter takes f32 or f16)
    """
    adapter_name: str | None = None
    """which adapter of the folder (default: the active one)"""


@dataclass
class InspectOptions:
    """list a model's adaptable layers and trainable-parameter counts"""

    model: str = _arg()
    """model alias, folder, .gguf file or hub id"""
    task: str | None = None
    """CAUSAL_LM, SEQ_CLS, SEQ_2_SEQ_LM, FEATURE_EXTRACTION"""
    r: int = 8
    """LoRA rank for the counts"""


@dataclass
class CompareOptions:
    """train several methods on one task and budget, and write a report"""

    config: str | None = None
    """a YAML comparison file (model, data, methods, budget, train, lr, adapters)"""
    model: str | None = None
    """model alias, folder, .gguf file or hub id"""
    data_path: str | None = _opt(flag="--data", metavar="PATH")
    """the data file (same as --data.path)"""
    methods: str | None = None
    """comma-separated, from full, lora, dora, ia3, loha, lokr, oft, prompt, p_tuning, prefix (default:
    full,lora,dora,ia3,prompt,p_tuning,prefix)"""
    budget: str | None = None
    """the same for every method: steps (200) or minutes (10m); default: epochs"""
    lr: list[str] | None = field(default=None, metadata={"nargs": "+", "metavar": "METHOD=RATE"})
    """learning rates replacing the presets'"""
    output_dir: str | None = None
    """where the report and each method's run go"""
    seed: int | None = None
    """the seed of the split and of every method's run"""
    seeds: list[int] | None = field(default=None, metadata={"nargs": "+", "metavar": "SEED"})
    """train every method once per seed on --seed's split; the table shows mean and range"""
    examples: int | None = None
    """held-out examples shown per method"""
    dtype: str | None = None
    """base weights: auto (default: bf16 where native, else fp32), float32, bfloat16, float16"""
    select: str | None = _opt(metavar="lr,epochs")
    """choose each method's learning rate and/or epoch count on validation rows carved from the
    training rows (the held-out split is read only to score the choice); --select.max_epochs 2 and
    the like tune the search"""


@dataclass
class ServeOptions:
    """serve a model and its adapters behind an OpenAI-compatible HTTP API"""

    model: str | None = _arg(nargs="?")
    """model alias, folder, .gguf file or hub id (or set it in --config)"""
    adapter: list[str] | None = field(
        default=None, metadata={"action": "append", "metavar": "NAME=PATH"}
    )
    """an adapter folder, chosen by requests whose model is NAME (repeatable)"""
    config: str | None = None
    """a YAML file with the fields below (flags override it)"""


@dataclass
class DemoOptions:
    """the main job: teach SmolLM2-135M movie-review sentiment, before vs after"""

    output_dir: str = "outputs/demo"
    """where the demo's runs and adapter go"""
    quick: bool = False
    """a smaller run, for a first look"""


COMMAND_OPTIONS: dict[str, type] = {
    "train": TrainOptions,
    "eval": EvalOptions,
    "generate": GenerateOptions,
    "merge": MergeOptions,
    "export": ExportOptions,
    "inspect": InspectOptions,
    "compare": CompareOptions,
    "serve": ServeOptions,
    "demo": DemoOptions,
}
