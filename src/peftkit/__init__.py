"""peftkit: parameter-efficient fine-tuning with Hugging Face PEFT-compatible adapters.

A drop-in for PEFT's core API::

    from peftkit import LoraConfig, get_peft_model, PeftModel

    model = get_peft_model(base_model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    model.print_trainable_parameters()

The package imports lazily (PEP 562): ``import peftkit`` loads no torch or transformers, so the
CLI's ``--version`` and ``--help`` answer at once; each public name is imported from its module on
first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

from . import _moved
from .integrations import trl as _trl
from .version import __version__

_moved.install()
_trl.install()  # TRL's trainers take peftkit's configs and models (integrations/trl.py)

_EXPORTS: dict[str, str] = {  # public name -> the module that defines it
    "AdapterFormatError": ".errors",
    "AdapterNotFoundError": ".errors",
    "AdapterShapeError": ".errors",
    "AdapterStateError": ".errors",
    "AutoPeftModel": ".auto",
    "AutoPeftModelForCausalLM": ".auto",
    "AutoPeftModelForFeatureExtraction": ".auto",
    "AutoPeftModelForQuestionAnswering": ".auto",
    "AutoPeftModelForSeq2SeqLM": ".auto",
    "AutoPeftModelForSequenceClassification": ".auto",
    "AutoPeftModelForTokenClassification": ".auto",
    "BrokenAdapterError": ".errors",
    "CompareConfig": ".compare",
    "ConfigError": ".errors",
    "DataConfig": ".train",
    "DataError": ".errors",
    "HubError": ".errors",
    "AdaLoraConfig": ".config",
    "IA3Config": ".config",
    "JobConfig": ".train",
    "LoHaConfig": ".config",
    "LoKrConfig": ".config",
    "OFTConfig": ".config",
    "TrainableTokensConfig": ".config",
    "LoraConfig": ".config",
    "ModelLoadError": ".errors",
    "OutputDirError": ".common.outputs",
    "PACKAGED_MODELS": ".integrations.models",
    "PeftConfig": ".config",
    "PeftModel": ".peft_model.model",
    "PeftModelForCausalLM": ".peft_model.model",
    "PeftModelForFeatureExtraction": ".peft_model.model",
    "PeftModelForQuestionAnswering": ".peft_model.model",
    "PeftModelForSeq2SeqLM": ".peft_model.model",
    "PeftModelForSequenceClassification": ".peft_model.model",
    "PeftModelForTokenClassification": ".peft_model.model",
    "PeftType": ".config",
    "PeftkitError": ".errors",
    "PrefixTuningConfig": ".config",
    "PromptEncoderConfig": ".config",
    "PromptEncoderReparameterizationType": ".config",
    "PromptLearningConfig": ".config",
    "PromptTuningConfig": ".config",
    "PromptTuningInit": ".config",
    "TargetNotFoundError": ".errors",
    "TaskType": ".config",
    "TrainResult": ".train",
    "TrainingConfig": ".train",
    "TrainingError": ".errors",
    "TunerLayerStatus": ".peft_model.status",
    "TunerModelStatus": ".peft_model.status",
    "UserInputError": ".errors",
    "compare": ".compare",
    "evaluate_job": ".workflows",
    "export_gguf": ".export",
    "export_gguf_lora": ".export",
    "generate_side_by_side": ".workflows",
    "get_base_model_state_dict": ".functional",
    "get_layer_status": ".peft_model.status",
    "get_model_status": ".peft_model.status",
    "get_peft_config": ".config",
    "get_peft_model": ".peft_model.model",
    "get_peft_model_state_dict": ".functional",
    "inject_adapter_in_model": ".functional",
    "load_model": ".integrations.models",
    "load_tokenizer": ".integrations.models",
    "merge_to_folder": ".workflows",
    "prepare_model_for_kbit_training": ".integrations.quantization",
    "set_base_model_state_dict": ".functional",
    "set_peft_model_state_dict": ".functional",
    "train": ".train",
}
_ALIASES = {
    "NoMatchingPeftModuleError": "TargetNotFoundError",  # PEFT's name for the same error
    "PeftError": "PeftkitError",
}  # PEFT's base error class


def __getattr__(name: str) -> Any:
    """A public name, imported from its module the first time it is asked for (then cached here); a
    submodule (``peftkit.methods``) is imported on first access too."""
    target = _ALIASES.get(name, name)
    module = _EXPORTS.get(target)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), target)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'peftkit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """``peftkit.train`` and ``peftkit.compare`` are functions named like the subpackages that
    define them: the import system binds a subpackage to its parent's attribute when it first loads
    it, which would replace the function by the module. The function stays (as with the eager
    imports this package had before)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from .auto import (
        AutoPeftModel,
        AutoPeftModelForCausalLM,
        AutoPeftModelForFeatureExtraction,
        AutoPeftModelForQuestionAnswering,
        AutoPeftModelForSeq2SeqLM,
        AutoPeftModelForSequenceClassification,
        AutoPeftModelForTokenClassification,
    )
    from .common.outputs import OutputDirError
    from .compare import CompareConfig, compare
    from .config import (
        AdaLoraConfig,
        IA3Config,
        LoHaConfig,
        LoKrConfig,
        LoraConfig,
        OFTConfig,
        PeftConfig,
        PeftType,
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptEncoderReparameterizationType,
        PromptLearningConfig,
        PromptTuningConfig,
        PromptTuningInit,
        TaskType,
        TrainableTokensConfig,
        get_peft_config,
    )
    from .errors import (
        AdapterFormatError,
        AdapterNotFoundError,
        AdapterShapeError,
        AdapterStateError,
        BrokenAdapterError,
        ConfigError,
        DataError,
        HubError,
        ModelLoadError,
        PeftkitError,
        TargetNotFoundError,
        TrainingError,
        UserInputError,
    )
    from .export import export_gguf, export_gguf_lora
    from .functional import (
        get_base_model_state_dict,
        get_peft_model_state_dict,
        inject_adapter_in_model,
        set_base_model_state_dict,
        set_peft_model_state_dict,
    )
    from .integrations.models import PACKAGED_MODELS, load_model, load_tokenizer
    from .integrations.quantization import prepare_model_for_kbit_training
    from .peft_model.model import (
        PeftModel,
        PeftModelForCausalLM,
        PeftModelForFeatureExtraction,
        PeftModelForQuestionAnswering,
        PeftModelForSeq2SeqLM,
        PeftModelForSequenceClassification,
        PeftModelForTokenClassification,
        get_peft_model,
    )
    from .peft_model.status import (
        TunerLayerStatus,
        TunerModelStatus,
        get_layer_status,
        get_model_status,
    )
    from .train import DataConfig, JobConfig, TrainingConfig, TrainResult, train
    from .workflows import evaluate_job, generate_side_by_side, merge_to_folder

    NoMatchingPeftModuleError = TargetNotFoundError
    PeftError = PeftkitError

__all__ = [
    "PACKAGED_MODELS",
    "AdaLoraConfig",
    "AdapterFormatError",
    "AdapterNotFoundError",
    "AdapterShapeError",
    "AdapterStateError",
    "AutoPeftModel",
    "AutoPeftModelForCausalLM",
    "AutoPeftModelForFeatureExtraction",
    "AutoPeftModelForQuestionAnswering",
    "AutoPeftModelForSeq2SeqLM",
    "AutoPeftModelForSequenceClassification",
    "AutoPeftModelForTokenClassification",
    "BrokenAdapterError",
    "CompareConfig",
    "ConfigError",
    "DataConfig",
    "DataError",
    "HubError",
    "IA3Config",
    "JobConfig",
    "LoHaConfig",
    "LoKrConfig",
    "LoraConfig",
    "ModelLoadError",
    "NoMatchingPeftModuleError",
    "OFTConfig",
    "OutputDirError",
    "PeftConfig",
    "PeftError",
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForFeatureExtraction",
    "PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "PeftType",
    "PeftkitError",
    "PrefixTuningConfig",
    "PromptEncoderConfig",
    "PromptEncoderReparameterizationType",
    "PromptLearningConfig",
    "PromptTuningConfig",
    "PromptTuningInit",
    "TargetNotFoundError",
    "TaskType",
    "TrainResult",
    "TrainableTokensConfig",
    "TrainingConfig",
    "TrainingError",
    "TunerLayerStatus",
    "TunerModelStatus",
    "UserInputError",
    "__version__",
    "compare",
    "evaluate_job",
    "export_gguf",
    "export_gguf_lora",
    "generate_side_by_side",
    "get_base_model_state_dict",
    "get_layer_status",
    "get_model_status",
    "get_peft_config",
    "get_peft_model",
    "get_peft_model_state_dict",
    "inject_adapter_in_model",
    "load_model",
    "load_tokenizer",
    "merge_to_folder",
    "prepare_model_for_kbit_training",
    "set_base_model_state_dict",
    "set_peft_model_state_dict",
    "train",
]
