"""Typed adapter configs with Hugging Face PEFT's field names, defaults and JSON form.

One schema serves Python (``LoraConfig(r=16)``), ``adapter_config.json``
(:meth:`PeftConfig.from_dict`) and, through the training config, YAML files and CLI flags.
Validation runs in ``__post_init__`` and reports every problem at once as a
:class:`~peftkit.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .common.configfile import MAX_CONFIG_BYTES, read_json_file
from .common.files import write_json_atomic
from .common.schema import choice, fraction, is_int, positive, typecheck
from .errors import (
    AdapterFormatError,
    ConfigError,
    ConfigTypeError,
    MissingKeysError,
    did_you_mean,
    short_repr,
)

__all__ = [
    "IA3Config",
    "LoHaConfig",
    "LoKrConfig",
    "LoraConfig",
    "OFTConfig",
    "PeftConfig",
    "PeftType",
    "PrefixTuningConfig",
    "PromptEncoderConfig",
    "PromptEncoderReparameterizationType",
    "PromptLearningConfig",
    "PromptTuningConfig",
    "PromptTuningInit",
    "TaskType",
    "TrainableTokensConfig",
    "adopt",
    "config_from_dict",
    "get_peft_config",
    "read_adapter_config",
]

CONFIG_NAME = "adapter_config.json"

# Recorded as ``peft_version`` in every adapter_config.json. PEFT reads that field to decide how to
# interpret a file (it converts OFT files older than 0.18, for one), so it names the PEFT release
# whose format peftkit writes and is tested against (constraints.txt), not peftkit's own version.
# Module-level under PEFT's name so code that reads or patches ``peft.config.__version__`` works
# unchanged.
__version__ = "0.21.2"


class PeftType(str, enum.Enum):
    """The adapter method, as written in ``adapter_config.json``'s ``peft_type``."""

    LORA = "LORA"
    PROMPT_TUNING = "PROMPT_TUNING"
    P_TUNING = "P_TUNING"
    PREFIX_TUNING = "PREFIX_TUNING"
    IA3 = "IA3"
    LOHA = "LOHA"
    LOKR = "LOKR"
    OFT = "OFT"
    TRAINABLE_TOKENS = "TRAINABLE_TOKENS"
    ADALORA = "ADALORA"


class TaskType(str, enum.Enum):
    """What the base model does; selects the :class:`~peftkit.PeftModel` subclass."""

    SEQ_CLS = "SEQ_CLS"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    CAUSAL_LM = "CAUSAL_LM"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"


class PromptTuningInit(str, enum.Enum):
    """How prompt-tuning virtual tokens start."""

    RANDOM = "RANDOM"
    TEXT = "TEXT"
    SAMPLE_VOCAB = "SAMPLE_VOCAB"


class PromptEncoderReparameterizationType(str, enum.Enum):
    """The p-tuning prompt encoder."""

    MLP = "MLP"
    LSTM = "LSTM"


def _enum_value(enum_cls: type[enum.Enum], value: Any, name: str, problems: list[str]) -> Any:
    """Coerce ``value`` to ``enum_cls`` (case-insensitive), recording a problem when it is not a
    member."""
    if value is None or isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        for member in enum_cls:
            if member.value.lower() == value.lower():
                return member
    allowed = ", ".join(m.value for m in enum_cls)
    if enum_cls is TaskType:  # PEFT's words first, so code matching them still does
        problems.append(
            f"Invalid task type: {value!r}. Must be one of the following task types: {allowed}. "
            "Leave it empty for a plain model"
        )
    else:
        problems.append(f"{name}={short_repr(value)} is not allowed; expected one of {allowed}")
    return value


def _format_version() -> str:
    """``__version__``, with the commit it was installed from when it is a dev version (as PEFT
    records it)."""
    version = __version__
    if ".dev" not in version:
        return version
    try:
        commit = _get_commit_hash("peftkit") or "UNKNOWN"
    except Exception:  # bookkeeping must never stop a config from being built
        warnings.warn(
            "A dev version of PEFT is used but there was an error while trying to determine the commit "
            "hash; the version is recorded without it",
            stacklevel=4,
        )
        commit = "UNKNOWN"
    return f"{version}@{commit}"


def _get_commit_hash(package: str) -> str | None:
    """The commit a package was installed from (``pip install git+...@HASH``), from its
    ``direct_url.json``."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    text = dist.read_text("direct_url.json")
    vcs = json.loads(text).get("vcs_info", {}) if text else {}
    return vcs.get("commit_id")


def _name_set(value: Any, name: str, problems: list[str]) -> Any:
    """A names-or-regex field as PEFT keeps it: a list of names becomes a set (order carries no
    meaning)."""
    value = _str_list(value, name, problems, allow_str=True)
    return set(value) if isinstance(value, list) else value


def _str_list(value: Any, name: str, problems: list[str], *, allow_str: bool) -> Any:
    """Normalize a list-of-names field: tuples/sets become a de-duplicated list."""
    if value is None or (allow_str and isinstance(value, str)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        items = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        return list(dict.fromkeys(items))
    kind = "a string (regex) or a list of names" if allow_str else "a list of names"
    problems.append(f"{name}={short_repr(value)} must be {kind}")
    return value


# Fields that take more forms than their declared type (PEFT's: a tuple or set of names, an enum or
# its text, a path-like) and are normalized by their own checks rather than the schema's type check.
_OWN_CHECKS = (
    "task_type",
    "base_model_name_or_path",
    "modules_to_save",
    "target_modules",
    "exclude_modules",
    "feedforward_modules",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "prompt_tuning_init",
    "encoder_reparameterization_type",
)


@dataclass
class PeftConfig:
    """Fields every adapter config shares.

    Subclasses set ``peft_type`` and add their own fields. ``to_dict`` writes PEFT's JSON form.
    """

    task_type: TaskType | str | None = None
    """What the base model does (``"CAUSAL_LM"``, ``"SEQ_CLS"``, ...); selects the model wrapper."""
    base_model_name_or_path: str | None = None
    """The model the adapter was trained on, recorded so it can be loaded with the adapter."""
    revision: str | None = None
    """The hub revision of the base model, when loaded from the hub."""
    inference_mode: bool = False
    """True when the adapter is loaded for inference only (its weights are frozen)."""
    modules_to_save: list[str] | None = None
    """Extra base-model modules (e.g. a classification head) trained in full and saved with the
    adapter."""
    peft_version: str | None = None
    """The PEFT format version that wrote the file; filled in when left empty."""
    auto_mapping: dict[str, str] | None = None
    """PEFT's record of a custom base model class (``base_model_class``, ``parent_library``), kept
    as read; the auto classes refuse one outside transformers and diffusers and never import from
    any other."""

    peft_type: ClassVar[PeftType | str]
    # PEFT fields that peftkit reads but does not implement, with the value meaning "off".
    # Written so PEFT sees a complete config; a non-default value on load is an error.
    _unsupported: ClassVar[dict[str, Any]] = {}
    # peftkit-only fields that only shape the start of training; left out of adapter_config.json so
    # PEFT reads our files without warnings.
    _local: ClassVar[frozenset[str]] = frozenset()
    _peft_only_extra: ClassVar[frozenset[str]] = frozenset({"peft_version"})
    # True for a method that trains chosen embedding rows: "auto" then saves those rows only, never
    # the whole embedding matrix a targeted embedding would otherwise bring (PEFT's rule)
    trains_token_rows: ClassVar[bool] = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.peft_version is None:
            self.peft_version = _format_version()
        # a wrong type is put back to the default, then reported
        typecheck(self, "", problems, skip=_OWN_CHECKS)
        self.task_type = _enum_value(TaskType, self.task_type, "task_type", problems)
        self.modules_to_save = _str_list(
            self.modules_to_save, "modules_to_save", problems, allow_str=False
        )
        self._validate(problems)
        if problems:
            raise ConfigError(problems, source=type(self).__name__)

    def _validate(self, problems: list[str]) -> None:
        """Append a line to ``problems`` for each invalid field. Subclasses extend this."""

    @property
    def peft_type_name(self) -> str:
        """``peft_type`` as files write it (``"LORA"``), for a built-in method or a registered one."""
        return str(getattr(self.peft_type, "value", self.peft_type))

    @property
    def is_prompt_learning(self) -> bool:
        """Whether the method adds virtual tokens instead of changing layers."""
        return False

    @classmethod
    def peft_only_fields(cls) -> frozenset[str]:
        """Fields that exist so PEFT code and files work unchanged, for features peftkit does not
        implement (only their "off" value is accepted); left out of peftkit's own flags and docs."""
        return frozenset(cls._unsupported) | cls._peft_only_extra

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form, with PEFT's field names and enum values as strings."""
        out: dict[str, Any] = {"peft_type": self.peft_type_name}
        for f in dataclasses.fields(self):
            if f.name in self._local:
                continue
            value = getattr(self, f.name)
            # JSON has no sets; sorted so the file is the same on every run
            if isinstance(value, set):
                value = sorted(value)
            out[f.name] = value.value if isinstance(value, enum.Enum) else value
        out.update({k: v for k, v in self._unsupported.items() if k not in out})
        return out

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """Write ``adapter_config.json`` into ``save_directory`` (atomically)."""
        os.makedirs(save_directory, exist_ok=True)
        write_json_atomic(os.path.join(save_directory, CONFIG_NAME), self.to_dict())

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        subfolder: str | None = None,
        revision: str | None = None,
        **hub_kwargs: Any,
    ) -> PeftConfig:
        """Read ``adapter_config.json`` from a folder (or the file itself), or from a hub
        repository's ``revision``; ``hub_kwargs`` (``cache_dir``, ``token``, ...) go to the
        download, as in PEFT."""
        folder = os.path.join(path, subfolder) if subfolder else path
        if not Path(folder).exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", os.fspath(path)):
            folder = _download_config(os.fspath(path), subfolder, revision, hub_kwargs)
        config = read_adapter_config(folder, expected=cls)
        if cls is not PeftConfig and not isinstance(config, cls):
            raise ConfigError(f"{folder} holds a {type(config).__name__}, not a {cls.__name__}")
        return config

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, strict: bool = True, source: str | None = None
    ) -> PeftConfig:
        """Build a config from a mapping.

        Args:
            data: the fields; ``peft_type`` selects the class when called on :class:`PeftConfig`.
            strict: reject unknown keys (user configs). When False (an ``adapter_config.json``
                written by a newer PEFT), unknown keys are ignored with a warning.
            source: where the mapping came from, named in errors.
        """
        return config_from_dict(data, strict=strict, source=source, expected=cls)

    @classmethod
    def from_json_file(
        cls, path_json_file: str | os.PathLike[str], **kwargs: Any
    ) -> dict[str, Any]:
        """The mapping in a JSON config file, as PEFT returns it (``runtime_config`` dropped)."""
        data = read_json_file(path_json_file, "config file")
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path_json_file} holds {type(data).__name__}, not a mapping of config fields"
            )
        data.pop("runtime_config", None)
        return data

    def replace(self, **changes: Any) -> PeftConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass
class LoraConfig(PeftConfig):
    """Low-rank adaptation: ``y = W x + (lora_alpha / r) * B A dropout(x)`` on the targeted layers."""

    r: int = 8
    """Rank of the update (the inner size of ``A`` and ``B``)."""
    target_modules: list[str] | set[str] | str | None = None
    """Layers to adapt: a list of names or name suffixes (kept as a set, as PEFT does), a regex
    (full match), or ``"all-linear"``. None picks the architecture's default (e.g.
    ``q_proj``/``v_proj`` for Llama)."""
    exclude_modules: list[str] | set[str] | str | None = None
    """Layers never to adapt, with the same matching rules as ``target_modules``."""
    lora_alpha: float = 8
    """Numerator of the scaling ``lora_alpha / r``."""
    lora_dropout: float = 0.0
    """Dropout on the adapter's input, in [0, 1)."""
    fan_in_fan_out: bool = False
    """True when the base layer stores its weight as (in, out), like GPT-2's ``Conv1D``; set
    automatically."""
    bias: str = "none"
    """Which biases train: ``"none"``, ``"all"`` (every bias in the model) or ``"lora_only"``
    (targeted layers)."""
    use_rslora: bool = False
    """Rank-stabilized scaling ``lora_alpha / sqrt(r)``."""
    init_lora_weights: bool | str = True
    """``True``: A Kaiming-uniform, B zero (the adapter starts as a no-op); ``"gaussian"``: A
    normal(0, 1/r), B zero; ``"pissa"`` / ``"pissa_niter_<n>"`` / ``"olora"``: A and B from the SVD
    / QR of the weight, the base keeping the residual (save with
    ``path_initial_model_for_weight_conversion`` to get a plain LoRA); ``False``: both random (for
    tests: the adapter changes the output from the start)."""
    layers_to_transform: list[int] | int | None = None
    """Only adapt these layer indices."""
    layers_pattern: list[str] | str | None = None
    """Name of the layer list (e.g. ``"layers"``, ``"h"``) that ``layers_to_transform`` indexes."""
    rank_pattern: dict[str, int] = field(default_factory=dict)
    """Per-layer rank overrides: ``{name regex: r}``."""
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    """Per-layer alpha overrides: ``{name regex: lora_alpha}``."""
    use_dora: bool = False
    """DoRA: split each adapted weight into a learned magnitude per output row and a LoRA-updated
    direction."""
    lora_bias: bool = False
    """Give ``lora_B`` a trainable bias (zero at the start), merged into the base layer's bias; the
    base layer needs one to merge. Not with DoRA, nor on embeddings (as in PEFT)."""
    ensure_weight_tying: bool = False
    """Tie the adapters of modules tied to the input embeddings (``lm_head``) to the embedding's
    adapter, for tied modules named in ``modules_to_save`` or ``target_modules`` (PEFT's option; see
    :mod:`peftkit.surgery.tying`)."""
    # PEFT's fields for features peftkit does not implement. They exist so PEFT code and files work
    # unchanged with their "off" value (PEFT's default); any other value is refused by name
    # (_validate).
    layer_replication: Any = None
    """PEFT's layer replication; only empty."""
    loftq_config: Any = field(default_factory=dict)
    """PEFT's LoftQ initialization; only empty."""
    megatron_config: Any = None
    """PEFT's Megatron parallel layers; only empty."""
    megatron_core: Any = "megatron.core"
    """PEFT's Megatron module name; read and written, unused."""
    target_parameters: list[str] | None = None
    """Raw parameters to adapt, as ``'<module>.<parameter>'`` suffixes (e.g.
    ``'mlp.experts.gate_up_proj'``): mixture-of-experts weights stored as one ``nn.Parameter``
    ``(experts, ., .)`` rather than as linear layers; 2-D weights work too. Used alone
    (``target_modules`` empty) or beside ``target_modules``. Not with ``lora_dropout``, DoRA or
    ``lora_bias`` (PEFT's rule)."""
    trainable_token_indices: Any = None
    """Token rows of the input embeddings that train beside LoRA (a list of token ids), or rows
    per layer (``{"embed_tokens": [...], ...}``): new or chat-template tokens learn an embedding
    without training the whole matrix."""
    eva_config: Any = None
    """PEFT's EVA initialization; only empty."""
    corda_config: Any = None
    """PEFT's CorDA initialization; only empty."""
    lora_ga_config: Any = None
    """PEFT's LoRA-GA initialization; only empty."""
    velora_config: Any = None
    """PEFT's VeLoRA; only empty."""
    alora_invocation_tokens: Any = None
    """PEFT's activated LoRA; only empty."""
    use_qalora: bool = False
    """PEFT's QA-LoRA; only False."""
    qalora_group_size: Any = 16
    """PEFT's QA-LoRA group size; read and written, unused."""
    monteclora_config: Any = None
    """PEFT's MonteCLoRA; only empty."""
    use_bdlora: Any = None
    """PEFT's block-diagonal LoRA; only empty."""
    arrow_config: Any = None
    """PEFT's Arrow routing; only empty."""
    kasa_config: Any = None
    """PEFT's KaSA; only empty."""
    runtime_config: Any = None
    """PEFT's runtime options (GPU offload); not saved, ignored."""

    peft_type: ClassVar[PeftType] = PeftType.LORA

    def __post_init__(self) -> None:
        if isinstance(self.target_parameters, str):  # an easy slip: target_modules takes a str
            raise ConfigTypeError(
                "`target_parameters` must be a list of strings or None. Got "
                f"{self.target_parameters!r}: write [{self.target_parameters!r}]",
                source=type(self).__name__,
            )
        super().__post_init__()

    _unsupported: ClassVar[dict[str, Any]] = {
        "layer_replication": None,
        "loftq_config": {},
        "megatron_config": None,
        "eva_config": None,
        "corda_config": None,
        "lora_ga_config": None,
        "velora_config": None,
        "alora_invocation_tokens": None,
        "use_qalora": False,
        "monteclora_config": None,
        "use_bdlora": None,
        "arrow_config": None,
        "kasa_config": None,
    }
    _local: ClassVar[frozenset[str]] = frozenset({"runtime_config"})
    _peft_only_extra: ClassVar[frozenset[str]] = PeftConfig._peft_only_extra | {
        "megatron_core",
        "qalora_group_size",
        "runtime_config",
    }

    def _validate(self, problems: list[str]) -> None:
        problems += [
            f"{k}={short_repr(getattr(self, k))} is a PEFT feature peftkit does not support yet; remove it"
            for k, off in self._unsupported.items()
            if not _is_off(getattr(self, k), off)
        ]
        targets = self.target_modules
        if isinstance(targets, (list, set)) and [str(t).lower() for t in targets] == ["all-linear"]:
            # a one-item list, as a CLI flag or YAML list gives it
            self.target_modules = "all-linear"
        params = self.target_parameters
        if isinstance(params, list) and not all(isinstance(p, str) and p for p in params):
            problems.append(
                f"target_parameters={short_repr(params)} must be a list of parameter names such as "
                "['mlp.experts.gate_up_proj']"
            )
        positive(problems, "r", self.r, integer=True, hint="try 8 or 16")
        positive(problems, "lora_alpha", self.lora_alpha, hint="often r or 2*r")
        fraction(problems, "lora_dropout", self.lora_dropout)
        choice(problems, "bias", self.bias, ("none", "all", "lora_only"))
        if isinstance(self.init_lora_weights, str):  # PEFT compares these names case-insensitively
            self.init_lora_weights = self.init_lora_weights.lower()
        init = self.init_lora_weights
        pissa_niter = isinstance(init, str) and re.fullmatch(r"pissa_niter_\d+", init) is not None
        if init not in (True, False, "gaussian", "pissa", "olora") and not pissa_niter:
            problems.append(
                f"init_lora_weights={short_repr(init)} is not supported; expected true, false, 'gaussian', "
                f"'pissa', 'pissa_niter_<n>' or 'olora'"
            )
        if isinstance(init, str) and init != "gaussian" and self.use_dora:
            problems.append(
                f"init_lora_weights={short_repr(init)} cannot be combined with use_dora=True"
            )
        if self.lora_bias is True and init not in (True, False):
            problems.append(
                f"The argument lora_bias=True is only supported with init_lora_weights=True or False, got "
                f"init_lora_weights={init} instead"
            )
        if self.lora_bias is True and self.use_dora:
            problems.append(
                "The argument lora_bias=True is not supported for DoRA, please pass use_dora=False"
            )
        _validate_token_rows(self.trainable_token_indices, problems)
        _validate_targets(self, problems)
        rewrites_base = isinstance(init, str) and (init.startswith("pissa") or init == "olora")
        if self.use_rslora is True and (self.rank_pattern or self.alpha_pattern) and rewrites_base:
            warnings.warn(
                "Using Rank-Stabilized LoRA with rank_pattern/alpha_pattern and post-training conversion "
                "of modified base weights PiSSA/OLoRA means that you won't be able to pass "
                "`path_initial_model_for_weight_conversion` to `save_pretrained` to restore the initial "
                "values of the base weights; if you intend to do this, please ensure not to use rslora or "
                "rank_pattern/alpha_pattern.",
                UserWarning,
                stacklevel=4,
            )


def _validate_token_rows(value: Any, problems: list[str]) -> None:
    """``trainable_token_indices``: None, token ids, or ``{layer name: token ids}``."""

    def ids(rows: Any) -> bool:
        return isinstance(rows, (list, tuple)) and all(is_int(i) and i >= 0 for i in rows)

    if value is None or ids(value):
        return
    if (
        isinstance(value, dict)
        and value
        and all(isinstance(k, str) and ids(v) for k, v in value.items())
    ):
        return
    problems.append(
        f"trainable_token_indices={short_repr(value)} must be token ids (whole numbers >= 0) or a "
        "mapping of layer name to token ids, e.g. [32000, 32001] or {'embed_tokens': [32000]}"
    )


def _validate_targets(self: Any, problems: list[str]) -> None:
    """The target fields a LoRA-family config shares: names or regex, layers, per-layer patterns."""
    self.target_modules = _name_set(self.target_modules, "target_modules", problems)
    self.exclude_modules = _name_set(self.exclude_modules, "exclude_modules", problems)
    self.layers_pattern = _str_list(self.layers_pattern, "layers_pattern", problems, allow_str=True)
    _validate_layers(self, problems)
    _validate_patterns(self, problems)


def _validate_layers(self: Any, problems: list[str]) -> None:
    """``layers_to_transform`` and ``layers_pattern`` of a LoRA-family config, checked together."""
    layers = self.layers_to_transform
    if layers is not None:
        if isinstance(layers, (list, tuple)) and all(is_int(i) and i >= 0 for i in layers):
            self.layers_to_transform = list(layers)
        elif not (isinstance(layers, int) and not isinstance(layers, bool) and layers >= 0):
            problems.append(
                f"layers_to_transform={short_repr(layers)} must be a layer index or a list of them"
            )
        if isinstance(self.target_modules, str):
            problems.append(
                "`layers_to_transform` cannot be used when `target_modules` is a str. Name the "
                "layers in the regex instead, or give target_modules as a list"
            )
    if self.layers_pattern and isinstance(self.target_modules, str):
        problems.append(
            "`layers_pattern` cannot be used when `target_modules` is a str. Name the layers in the "
            "regex instead, or give target_modules as a list"
        )
    if self.layers_pattern and layers is None:
        problems.append(
            "When `layers_pattern` is specified, `layers_to_transform` must also be specified. Set "
            "both or neither"
        )


def _validate_patterns(self: Any, problems: list[str]) -> None:
    """``rank_pattern`` (positive integers) and ``alpha_pattern`` (positive numbers) of a
    LoRA-family config."""
    for name, positive_int in (("rank_pattern", True), ("alpha_pattern", False)):
        if name not in self.__dataclass_fields__:  # OFT has no per-layer patterns
            continue
        pattern = getattr(self, name)
        if pattern is None:
            setattr(self, name, {})
            continue
        if not isinstance(pattern, dict):
            problems.append(
                f"{name}={short_repr(pattern)} must be a mapping of layer-name pattern to value"
            )
            continue
        for key, value in pattern.items():
            positive(problems, f"{name}[{key!r}]", value, integer=positive_int)


@dataclass
class PromptLearningConfig(PeftConfig):
    """Fields shared by the methods that add virtual tokens. Model-shape fields left empty are
    filled from the model's config when the adapter is attached."""

    num_virtual_tokens: int | None = None
    """How many virtual tokens to learn."""
    token_dim: int | None = None
    """Hidden size of the base model's token embeddings."""
    num_transformer_submodules: int | None = None
    """1 for decoder-only and encoder-only models, 2 for encoder-decoder models."""
    num_attention_heads: int | None = None
    """Attention heads of the base model (key/value heads for prefix tuning on GQA models)."""
    num_layers: int | None = None
    """Transformer layers of the base model."""

    def _validate(self, problems: list[str]) -> None:
        # None is PEFT's default; the prompt is built only with a count
        if self.num_virtual_tokens is not None:
            positive(
                problems,
                "num_virtual_tokens",
                self.num_virtual_tokens,
                integer=True,
                hint="try 8 to 20",
            )
        for name in (
            "token_dim",
            "num_transformer_submodules",
            "num_attention_heads",
            "num_layers",
        ):
            if getattr(self, name) is not None:  # left empty, they are read from the model
                positive(
                    problems, name, getattr(self, name), integer=True, hint="or leave it empty"
                )

    @property
    def is_prompt_learning(self) -> bool:
        return True


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    """Prompt tuning: learned virtual-token embeddings prepended to the input."""

    prompt_tuning_init: PromptTuningInit | str = PromptTuningInit.RANDOM
    """RANDOM (normal init), TEXT (embeddings of ``prompt_tuning_init_text``) or SAMPLE_VOCAB."""
    prompt_tuning_init_text: str | None = None
    """Text whose token embeddings start the prompt, with TEXT init."""
    tokenizer_name_or_path: str | None = None
    """Tokenizer for ``prompt_tuning_init_text``."""
    tokenizer_kwargs: dict[str, Any] | None = None
    """Extra arguments for ``AutoTokenizer.from_pretrained`` (TEXT init)."""

    peft_type: ClassVar[PeftType] = PeftType.PROMPT_TUNING

    def _validate(self, problems: list[str]) -> None:
        super()._validate(problems)
        self.prompt_tuning_init = _enum_value(
            PromptTuningInit, self.prompt_tuning_init, "prompt_tuning_init", problems
        )
        if self.prompt_tuning_init == PromptTuningInit.TEXT:
            if not self.prompt_tuning_init_text:
                problems.append("prompt_tuning_init=TEXT needs prompt_tuning_init_text")
            if not self.tokenizer_name_or_path:
                problems.append(
                    "When prompt_tuning_init='TEXT', tokenizer_name_or_path can't be None: name the "
                    "tokenizer (usually the model's name) whose tokens start the prompt"
                )
        if self.tokenizer_kwargs is not None and not isinstance(self.tokenizer_kwargs, dict):
            problems.append(
                f"tokenizer_kwargs={short_repr(self.tokenizer_kwargs)} must be a mapping"
            )
        elif self.tokenizer_kwargs and self.prompt_tuning_init != PromptTuningInit.TEXT:
            problems.append(
                "tokenizer_kwargs only valid when using prompt_tuning_init='TEXT'. They configure the "
                "tokenizer of prompt_tuning_init_text; remove them or use the TEXT start"
            )


@dataclass
class PromptEncoderConfig(PromptLearningConfig):
    """P-tuning: virtual-token embeddings produced by a small MLP or LSTM encoder."""

    encoder_reparameterization_type: PromptEncoderReparameterizationType | str = (
        PromptEncoderReparameterizationType.MLP
    )
    """``"MLP"`` or ``"LSTM"``."""
    encoder_hidden_size: int | None = None
    """Hidden size of the encoder; defaults to ``token_dim``."""
    encoder_num_layers: int = 2
    """LSTM layers (the MLP always has two hidden layers, as in PEFT)."""
    encoder_dropout: float = 0.0
    """Dropout inside the encoder, in [0, 1)."""

    peft_type: ClassVar[PeftType] = PeftType.P_TUNING

    def _validate(self, problems: list[str]) -> None:
        super()._validate(problems)
        self.encoder_reparameterization_type = _enum_value(
            PromptEncoderReparameterizationType,
            self.encoder_reparameterization_type,
            "encoder_reparameterization_type",
            problems,
        )
        if self.encoder_hidden_size is not None:
            positive(problems, "encoder_hidden_size", self.encoder_hidden_size, integer=True)
        positive(problems, "encoder_num_layers", self.encoder_num_layers, integer=True)
        fraction(problems, "encoder_dropout", self.encoder_dropout)


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Prefix tuning: learned key/value prefixes for every attention layer."""

    encoder_hidden_size: int | None = None
    """Hidden size of the prefix projection MLP (with ``prefix_projection``)."""
    prefix_projection: bool = False
    """Produce the prefixes through a two-layer MLP instead of learning them directly."""
    init_weights: str | None = None
    """How the prefix starts: empty draws it at random (PEFT's default); ``"zero"`` starts it at
    zero."""
    prefix_init_text: str | None = None
    """Start the prefix as the keys and values the base model computes for this text (repeated or
    cut to ``num_virtual_tokens`` tokens), so training begins from the base model reading a real
    prompt instead of from random key/values. peftkit only: it shapes the start of training and is
    not saved."""
    tokenizer_name_or_path: str | None = None
    """Tokenizer for ``prefix_init_text``. peftkit only, like the text."""

    peft_type: ClassVar[PeftType] = PeftType.PREFIX_TUNING
    _local: ClassVar[frozenset[str]] = frozenset({"prefix_init_text", "tokenizer_name_or_path"})

    def _validate(self, problems: list[str]) -> None:
        super()._validate(problems)
        size = self.encoder_hidden_size
        if self.prefix_projection and not (
            isinstance(size, int) and not isinstance(size, bool) and size > 0
        ):
            problems.append("prefix_projection=true needs encoder_hidden_size, a positive integer")
        if self.init_weights not in (None, "zero"):
            problems.append(
                f'init_weights={short_repr(self.init_weights)} must be empty (random) or "zero"'
            )
        if self.prefix_init_text is not None:
            if not isinstance(self.prefix_init_text, str) or not self.prefix_init_text.strip():
                problems.append("prefix_init_text must be a non-empty text")
            if not self.tokenizer_name_or_path:
                problems.append(
                    "prefix_init_text needs tokenizer_name_or_path (usually the model's name)"
                )
            if self.prefix_projection:
                problems.append(
                    "prefix_init_text sets the key/values directly, so it cannot be combined with "
                    "prefix_projection=true; drop one of them"
                )
            if self.init_weights is not None:
                problems.append(
                    "prefix_init_text and init_weights both choose the start; set only one"
                )


@dataclass
class IA3Config(PeftConfig):
    """(IA)^3: learned vectors rescaling the outputs of attention projections and the inputs of
    feed-forward layers. Field names and defaults are PEFT's."""

    target_modules: list[str] | set[str] | str | None = None
    """Layers to adapt: a list of names (or name suffixes) or a regex; empty means the architecture
    default."""
    exclude_modules: list[str] | set[str] | str | None = None
    """Layers never to adapt, with the same matching rules as ``target_modules``."""
    feedforward_modules: list[str] | set[str] | str | None = None
    """Which targets are feed-forward layers (scaled on their input); must be among
    ``target_modules``."""
    fan_in_fan_out: bool = False
    """True for layers that store their weight as (in, out), such as GPT-2's Conv1D (set
    automatically)."""
    init_ia3_weights: bool = True
    """Start the vectors at 1 (the base model's behaviour); False draws them at random (for tests).
    """

    peft_type: ClassVar[PeftType] = PeftType.IA3

    def _validate(self, problems: list[str]) -> None:
        self.target_modules = _name_set(self.target_modules, "target_modules", problems)
        self.exclude_modules = _name_set(self.exclude_modules, "exclude_modules", problems)
        self.feedforward_modules = _name_set(
            self.feedforward_modules, "feedforward_modules", problems
        )
        if isinstance(self.feedforward_modules, set) and isinstance(self.target_modules, set):
            extra = sorted(self.feedforward_modules - self.target_modules)
            if extra:
                problems.append(
                    f"`feedforward_modules` should be a subset of `target_modules`: {extra} are not "
                    f"targets; every feed-forward module must also be a target"
                )


@dataclass
class LoHaConfig(PeftConfig):
    """LoHa (Hyeon-Woo et al., 2022; LyCORIS): the update is the Hadamard product of two low-rank
    products, ``(W1a W1b) * (W2a W2b) * alpha / r``, a rank up to r**2 from 4 r (in + out) numbers.
    Field names and defaults are PEFT's."""

    r: int = 8
    """The rank of each of the two products."""
    alpha: float = 8
    """The update is scaled by ``alpha / r``."""
    rank_dropout: float = 0.0
    """Training only: each output row of the update is dropped with this probability (rescaled to
    keep its mean)."""
    module_dropout: float = 0.0
    """Training only: the whole adapter of a layer is skipped for a step with this probability."""
    use_effective_conv2d: bool = False
    """Decompose convolution kernels larger than 1 with a CP core per product (FedPara's proposition
    3): fewer numbers for wide kernels."""
    target_modules: list[str] | set[str] | str | None = None
    """Layers to adapt (nn.Linear, nn.Conv1d, nn.Conv2d): names, name suffixes or a regex; empty
    means the architecture default (LoRA's table, as in PEFT)."""
    exclude_modules: list[str] | set[str] | str | None = None
    """Layers never to adapt, with the same matching rules as ``target_modules``."""
    init_weights: bool = True
    """Start W2b at zero, so a fresh adapter equals the base model; False draws every factor at
    random."""
    layers_to_transform: list[int] | int | None = None
    """Only these layer indices (of the layer list ``layers_pattern`` names) are adapted."""
    layers_pattern: list[str] | str | None = None
    """Name of the layer list that ``layers_to_transform`` indexes."""
    rank_pattern: dict[str, int] = field(default_factory=dict)
    """Per-layer rank overrides: ``{name regex: r}``."""
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    """Per-layer alpha overrides: ``{name regex: alpha}``."""

    peft_type: ClassVar[PeftType] = PeftType.LOHA

    def _validate(self, problems: list[str]) -> None:
        positive(problems, "r", self.r, integer=True, hint="try 8")
        positive(problems, "alpha", self.alpha, hint="often r")
        for name in ("rank_dropout", "module_dropout"):
            fraction(problems, name, getattr(self, name))
        _validate_targets(self, problems)


@dataclass
class LoKrConfig(PeftConfig):
    """LoKr (Yeh et al., 2023; LyCORIS): the update is a Kronecker product ``(W1 ⊗ W2) * alpha / r``
    of a small and a larger factor, each dimension split near its square root; few numbers for a
    full-rank update. Field names and defaults are PEFT's."""

    r: int = 8
    """The rank of a factor stored as a low-rank product (W2, and W1 with ``decompose_both``), used
    when r is below half the factor's larger side."""
    alpha: float = 8
    """The update is scaled by ``alpha / r``."""
    rank_dropout: float = 0.0
    """Training only: each output row of the update is dropped with this probability."""
    module_dropout: float = 0.0
    """Training only: the whole adapter of a layer is skipped for a step with this probability."""
    use_effective_conv2d: bool = False
    """Decompose W2 of convolution kernels larger than 1 with a CP core (fewer numbers for wide
    kernels)."""
    decompose_both: bool = False
    """Store W1 as a low-rank product too (when r is below half its larger side)."""
    decompose_factor: int = -1
    """Split each dimension as ``(factor, dim / factor)`` when the factor divides it; -1 splits near
    the square root."""
    rank_dropout_scale: bool = False
    """Scale the rows that survive rank dropout up to keep the update's mean."""
    target_modules: list[str] | set[str] | str | None = None
    """Layers to adapt (nn.Linear, nn.Conv1d, nn.Conv2d): names, name suffixes or a regex; empty
    means the architecture default (LoRA's table, as in PEFT)."""
    exclude_modules: list[str] | set[str] | str | None = None
    """Layers never to adapt, with the same matching rules as ``target_modules``."""
    init_weights: bool | str = True
    """True: W1 starts at zero, so a fresh adapter equals the base model; ``"lycoris"``: W2 starts
    at zero instead (LyCORIS's choice); False: every factor random."""
    layers_to_transform: list[int] | int | None = None
    """Only these layer indices (of the layer list ``layers_pattern`` names) are adapted."""
    layers_pattern: list[str] | str | None = None
    """Name of the layer list that ``layers_to_transform`` indexes."""
    rank_pattern: dict[str, int] = field(default_factory=dict)
    """Per-layer rank overrides: ``{name regex: r}``."""
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    """Per-layer alpha overrides: ``{name regex: alpha}``."""

    peft_type: ClassVar[PeftType] = PeftType.LOKR

    def _validate(self, problems: list[str]) -> None:
        positive(problems, "r", self.r, integer=True, hint="try 8")
        positive(problems, "alpha", self.alpha, hint="often r")
        for name in ("rank_dropout", "module_dropout"):
            fraction(problems, name, getattr(self, name))
        if self.init_weights not in (True, False, "lycoris"):
            problems.append(
                f"init_weights={short_repr(self.init_weights)} is not allowed; expected true, false "
                f"or 'lycoris'"
            )
        if is_int(self.decompose_factor) and self.decompose_factor != -1:
            positive(
                problems, "decompose_factor", self.decompose_factor, integer=True, hint="or -1"
            )
        _validate_targets(self, problems)


@dataclass
class OFTConfig(PeftConfig):
    """OFT (orthogonal fine-tuning): each targeted linear layer's input is rotated by a learned
    block-diagonal orthogonal matrix before the frozen weight, keeping the angles between its
    neurons. Set either ``r`` (the number of blocks) or ``oft_block_size``, not both. Field names
    and defaults are PEFT's."""

    r: int = 0
    """The number of blocks per layer (0: set by ``oft_block_size``)."""
    oft_block_size: int = 32
    """The size of each block (0: set by ``r``); moved to the nearest divisor of a layer's input
    size when it does not divide it, with a warning."""
    module_dropout: float = 0.0
    """PEFT's multiplicative dropout of whole blocks; PEFT creates it but does not apply it in
    the forward, and neither does peftkit (kept so configs read and write unchanged)."""
    target_modules: list[str] | set[str] | str | None = None
    """Layers to adapt (nn.Linear): names, name suffixes or a regex; empty means the architecture
    default (LoRA's table, as in PEFT)."""
    fan_in_fan_out: bool = False
    """PEFT's field for Conv1D-style layers; OFT here adapts ``nn.Linear`` only."""
    bias: str = "none"
    """Which biases train; peftkit's OFT supports ``"none"``."""
    exclude_modules: list[str] | set[str] | str | None = None
    """Layers never to adapt, with the same matching rules as ``target_modules``."""
    init_weights: bool = True
    """True: each block starts as the identity (a fresh adapter equals the base model); False:
    random skew-symmetric blocks, normal(0, 0.1)."""
    layers_to_transform: list[int] | int | None = None
    """Only these layer indices (of the layer list ``layers_pattern`` names) are adapted."""
    layers_pattern: list[str] | str | None = None
    """Name of the layer list that ``layers_to_transform`` indexes."""
    coft: bool = False
    """Constrained OFT: keep each block within ``eps`` of the identity."""
    eps: float = 6e-05
    """COFT's radius (used only with ``coft``)."""
    block_share: bool = False
    """One rotation block shared by every block of a layer."""
    use_cayley_neumann: bool = True
    """Approximate the Cayley transform by its Neumann series (faster than solving)."""
    num_cayley_neumann_terms: int = 5
    """The number of terms of that series."""

    peft_type: ClassVar[PeftType] = PeftType.OFT

    def _validate(self, problems: list[str]) -> None:
        for name in ("r", "oft_block_size"):
            value = getattr(self, name)
            if value != 0:
                positive(problems, name, value, integer=True, hint="or 0")
        if self.r == 0 and self.oft_block_size == 0:
            problems.append(
                f"Either `r` or `oft_block_size` must be non-zero. Currently, r = {self.r} and "
                f"oft_block_size = {self.oft_block_size}."
            )
        elif self.r != 0 and self.oft_block_size != 0:
            problems.append(
                f"You can only specify either r ({self.r}) or oft_block_size "
                f"({self.oft_block_size}), but not both simultaneously, because r x "
                f"oft_block_size == in_features. Set the other to 0"
            )
        fraction(problems, "module_dropout", self.module_dropout)
        positive(problems, "eps", self.eps)
        positive(problems, "num_cayley_neumann_terms", self.num_cayley_neumann_terms, integer=True)
        if self.bias != "none":
            problems.append(
                f"bias={short_repr(self.bias)} is a PEFT feature peftkit does not support yet for "
                f"OFT; remove it (train biases with modules_to_save instead)"
            )
        _validate_targets(self, problems)


@dataclass
class TrainableTokensConfig(PeftConfig):
    """Trainable tokens: only the embedding rows of ``token_indices`` train (new or chat-template
    tokens), the rest of the matrix stays frozen and unsaved. Field names and defaults are PEFT's."""

    token_indices: list[int] = field(default_factory=list)
    """The token ids whose embeddings train (a tokenizer's ``input_ids`` for the new tokens)."""
    target_modules: list[str] | str | None = None
    """The embedding layer(s) to adapt; empty means the model's input embeddings."""
    init_weights: bool = True
    """True: the rows start at their current embeddings (a fresh adapter changes nothing); False:
    random normal rows."""

    peft_type: ClassVar[PeftType] = PeftType.TRAINABLE_TOKENS
    trains_token_rows: ClassVar[bool] = True

    def _validate(self, problems: list[str]) -> None:
        indices = self.token_indices
        if not all(is_int(i) and i >= 0 for i in indices):
            problems.append(
                f"token_indices={short_repr(indices)} must be token ids (whole numbers >= 0), e.g. "
                "tokenizer(new_tokens)['input_ids']"
            )
        self.target_modules = _str_list(
            self.target_modules, "target_modules", problems, allow_str=True
        )


@dataclass
class AdaLoraConfig(LoraConfig):
    """AdaLoRA: LoRA in SVD form (``B diag(E) A``) whose rank budget shrinks during training, the
    least important singular values pruned, from ``init_r`` per layer to ``target_r`` on average.

    Training needs the loop's help: an orthogonality term on A and B in the loss (``orth_reg_weight``)
    and :meth:`~peftkit.PeftModel.update_and_allocate` after each optimizer step (peftkit's loop
    calls it; with your own loop or ``transformers.Trainer``, call
    ``model.base_model.update_and_allocate(step)`` after ``optimizer.step()`` and before
    ``zero_grad()``). Field names and defaults are PEFT's; ``r`` is unused (``init_r`` is the
    starting rank).
    """

    target_r: int = 8
    """The average rank the budget reaches at the end of the pruning phase."""
    init_r: int = 12
    """Each layer's starting rank."""
    tinit: int = 0
    """Steps of warm-up before any pruning."""
    tfinal: int = 0
    """Steps at the end that train the final ranks without pruning."""
    deltaT: int = 1
    """Steps between two budget allocations in the pruning phase."""
    beta1: float = 0.85
    """EMA factor of the parameters' sensitivity."""
    beta2: float = 0.85
    """EMA factor of the sensitivity's uncertainty."""
    orth_reg_weight: float = 0.5
    """Weight of the orthogonality term (``||A A^T - I|| + ||B^T B - I||``) added to the loss."""
    total_step: int | None = None
    """Total optimizer steps of the run; required (the budget schedule reads it)."""
    rank_pattern: dict[str, Any] | None = None  # type: ignore[assignment]
    """The ranks the allocator kept, per layer (``<layer>.lora_E``: one bool per singular value);
    written by training, read when loading."""

    peft_type: ClassVar[PeftType] = PeftType.ADALORA

    def record_ranks(self, pattern: dict[str, Any] | None) -> None:
        """Training's one write into the config: the ranks the allocator kept (PEFT's config
        carries them, and saving renames their keys in place, as PEFT does)."""
        self.rank_pattern = pattern

    def _validate(self, problems: list[str]) -> None:
        # LoRA's rank_pattern means other things; "adalora_only" is PEFT's <method>_only bias
        kept, self.rank_pattern = self.rank_pattern, {}
        bias, self.bias = self.bias, "lora_only" if self.bias == "adalora_only" else self.bias
        try:
            super()._validate(problems)
        finally:
            self.rank_pattern, self.bias = kept, bias
        if self.use_dora:
            problems.append("ADALORA does not support DoRA.")
        if self.loftq_config:
            problems.append("ADALORA does not support LOFTQ.")
        if self.r != 8:
            warnings.warn(
                "Note that `r` is not used in AdaLora and will be ignored."
                "If you intended to set the initial rank, use `init_r` instead.",
                UserWarning,
                stacklevel=4,
            )
        positive(problems, "init_r", self.init_r, integer=True, hint="12 is PEFT's default")
        positive(problems, "target_r", self.target_r, integer=True, hint="8 is PEFT's default")
        positive(problems, "deltaT", self.deltaT, integer=True)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0 < value < 1:
                problems.append(f"{name}={short_repr(value)} must be between 0 and 1 (exclusive)")
        if self.total_step is None or self.total_step <= 0:
            problems.append(
                "AdaLoRA does not work when `total_step` is None, supply a value > 0. It is the "
                "run's number of optimizer steps (the budget schedule reads it)"
            )
        elif self.tinit >= self.total_step - self.tfinal:
            problems.append(
                "The supplied schedule values don't allow for a budgeting phase. Decrease "
                "`tfinal`/`tinit` or increase `total_step`."
            )
        if self.orth_reg_weight < 0:
            problems.append(
                "`orth_reg_weight` should be greater than or equal to 0, but the value passed is "
                f"{self.orth_reg_weight}"
            )


# by peft_type; peftkit.methods.register_method adds to it
CONFIG_CLASSES: dict[str, type[PeftConfig]] = {
    PeftType.LORA: LoraConfig,
    PeftType.PROMPT_TUNING: PromptTuningConfig,
    PeftType.P_TUNING: PromptEncoderConfig,
    PeftType.PREFIX_TUNING: PrefixTuningConfig,
    PeftType.IA3: IA3Config,
    PeftType.LOHA: LoHaConfig,
    PeftType.LOKR: LoKrConfig,
    PeftType.OFT: OFTConfig,
    PeftType.TRAINABLE_TOKENS: TrainableTokensConfig,
    PeftType.ADALORA: AdaLoraConfig,
}

# Keys PEFT writes that carry no meaning for loading.
_IGNORED_KEYS = frozenset({"peft_type", "megatron_core", "qalora_group_size"})


def adopt(config: PeftConfig, resolved: PeftConfig) -> PeftConfig:
    """Write what was resolved for ``config`` back into it, and return it: the one place a config
    changes after validation.

    PEFT's contract is that the object given to ``get_peft_model``, ``add_adapter`` or
    ``from_pretrained`` *is* the adapter's config (``model.peft_config["default"] is config``), with
    its targets and model-shape fields filled in. Resolution works on copies (``config.replace``) so
    a failed step leaves the user's config as it was; the model adopts the result only once the
    adapter is in place.
    """
    if type(resolved) is not type(config):
        raise TypeError(f"cannot adopt a {type(resolved).__name__} into a {type(config).__name__}")
    for name in (f.name for f in dataclasses.fields(resolved)):
        value = getattr(resolved, name)
        if getattr(config, name) is not value:
            setattr(config, name, value)
    return config


def config_from_dict(
    data: dict[str, Any],
    *,
    strict: bool = True,
    source: str | None = None,
    expected: type[PeftConfig] = PeftConfig,
) -> PeftConfig:
    """Build the config class that ``data["peft_type"]`` names (or ``expected`` when it is
    concrete)."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"expected a mapping of field names to values, got {type(data).__name__}", source=source
        )
    # a file: any JSON is not an adapter config (PEFT's rule and words)
    if not strict and "peft_type" not in data:
        name = expected.__name__ if expected is not PeftConfig else "PEFT"
        raise MissingKeysError(
            f"The {name} config that is trying to be loaded is missing required keys: "
            "{'peft_type'}. It is not an adapter_config.json written by PEFT or peftkit",
            source=source,
        )
    cls = _select_class(data, expected, source)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    problems: list[str] = []
    unknown: list[str] = []
    for key, value in data.items():
        if key in known:
            kwargs[key] = value
        elif key in cls._unsupported:
            if not _is_off(value, cls._unsupported[key]):
                problems.append(
                    f"{key}={short_repr(value)} is a PEFT feature peftkit does not support yet; remove it"
                )
        elif key not in _IGNORED_KEYS:
            unknown.append(key)
    for key in unknown:
        hint = did_you_mean(key, known)
        if strict:
            problems.append(f"unknown field {key!r} for {cls.__name__}.{hint}")
    if problems:
        raise ConfigError(problems, source=source)
    if unknown:
        warnings.warn(  # PEFT's words first, so code that matches them still does
            f"Unexpected keyword arguments {sorted(unknown)} for class {cls.__name__}, these are ignored. "
            f"({source or cls.__name__} was probably written by a newer PEFT version.)",
            stacklevel=3,
        )
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(err.problems, source=source or cls.__name__) from None


def _is_off(value: Any, off: Any) -> bool:
    """Whether a PEFT-only field holds its "off" value (None, {} and False all mean off where off is
    empty)."""
    return bool(value == off or (value in (None, {}, [], False) and not off))


def _select_class(
    data: dict[str, Any], expected: type[PeftConfig], source: str | None
) -> type[PeftConfig]:
    peft_type = data.get("peft_type")
    known = ", ".join(str(getattr(t, "value", t)) for t in CONFIG_CLASSES)
    if peft_type is None:
        if expected is PeftConfig or expected is PromptLearningConfig:
            raise ConfigError("missing 'peft_type'; expected one of " + known, source=source)
        return expected
    cls = CONFIG_CLASSES.get(str(getattr(peft_type, "value", peft_type)).upper())
    if cls is None:
        raise ConfigError(
            f"peft_type={peft_type!r} is not supported; expected one of {known}", source=source
        )
    if not issubclass(cls, expected):
        raise ConfigError(
            f"peft_type={peft_type!r} does not fit {expected.__name__}", source=source
        )
    return cls


def _download_config(
    repo_id: str, subfolder: str | None, revision: str | None, hub_kwargs: dict[str, Any]
) -> str:
    """``adapter_config.json`` of a hub repository (the local cache when offline)."""
    from huggingface_hub import hf_hub_download

    allowed = {
        k: v
        for k, v in hub_kwargs.items()
        if k in ("cache_dir", "token", "force_download", "local_files_only")
    }
    try:
        return hf_hub_download(
            repo_id, CONFIG_NAME, subfolder=subfolder, revision=revision, **allowed
        )
    except Exception as err:  # offline, unknown repository, no permission: all "not available here"
        raise AdapterFormatError(
            f"{repo_id!r} is not a local folder and its {CONFIG_NAME} could not be fetched "
            f"from the hub ({type(err).__name__}); pass the folder save_pretrained wrote"
        ) from err


def read_adapter_config(
    folder: str | os.PathLike[str], expected: type[PeftConfig] = PeftConfig
) -> PeftConfig:
    """Read and validate ``adapter_config.json`` from ``folder`` (or a path to the file itself).

    Unknown fields (from a newer PEFT) are ignored with a warning; bad values raise ``ConfigError``.
    """
    path = Path(folder)
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.is_file():
        hint = "" if Path(folder).exists() else " (the folder does not exist)"
        raise AdapterFormatError(
            f"no {CONFIG_NAME} at {path}{hint}. Pass the folder that save_pretrained wrote; "
            "loading adapters from a model hub needs a hub id and a network connection."
        )
    size = path.stat().st_size
    # an untrusted file: refuse before reading (PEFT's configs are a few KB)
    if size > MAX_CONFIG_BYTES:
        raise AdapterFormatError(
            f"{path} is {size:,} bytes; an adapter_config.json above {MAX_CONFIG_BYTES:,} "
            "bytes is refused. It is not an adapter config, or it was damaged."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterFormatError(f"{path} is not valid JSON: {err}") from err
    except RecursionError as err:
        raise AdapterFormatError(f"{path} is nested too deeply to be an adapter config") from err
    try:
        return config_from_dict(data, strict=False, source=str(path), expected=expected)
    except ConfigError:
        raise
    except TypeError as err:
        raise ConfigError(str(err), source=str(path)) from err


def get_peft_config(config_dict: dict[str, Any]) -> PeftConfig:
    """The config that ``config_dict["peft_type"]`` names, built from the mapping (PEFT's function
    of the same name); an unknown key is refused, as PEFT's config constructors refuse it."""
    return config_from_dict(config_dict, strict=True)


def config_to_json(config: PeftConfig) -> str:
    """The text of ``adapter_config.json``: sorted keys, two-space indent, like PEFT."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
