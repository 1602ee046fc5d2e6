"""peftkit: parameter-efficient fine-tuning with Hugging Face PEFT-compatible adapters.

A drop-in for PEFT's core API::

    from peftkit import LoraConfig, get_peft_model, PeftModel

    model = get_peft_model(base_model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    model.print_trainable_parameters()
"""

from .auto import (
    AutoPeftModel,
    AutoPeftModelForCausalLM,
    AutoPeftModelForFeatureExtraction,
    AutoPeftModelForQuestionAnswering,
    AutoPeftModelForSeq2SeqLM,
    AutoPeftModelForSequenceClassification,
    AutoPeftModelForTokenClassification,
)
from .compare import CompareConfig, compare
from .config import (
    IA3Config,
    LoraConfig,
    PeftConfig,
    PeftType,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
    PromptLearningConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
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
from .model import (
    PeftModel,
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForQuestionAnswering,
    PeftModelForSeq2SeqLM,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
    get_peft_model,
)
from .models import PACKAGED_MODELS, load_model, load_tokenizer
from .outputs import OutputDirError
from .quantization import prepare_model_for_kbit_training
from .status import TunerLayerStatus, TunerModelStatus, get_layer_status, get_model_status
from .train import DataConfig, JobConfig, TrainingConfig, TrainResult, train
from .version import __version__

NoMatchingPeftModuleError = TargetNotFoundError  # PEFT's name for the same error
PeftError = PeftkitError  # PEFT's base error class

__all__ = [
    "PACKAGED_MODELS",
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
    "LoraConfig",
    "ModelLoadError",
    "NoMatchingPeftModuleError",
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
    "TrainingConfig",
    "TrainingError",
    "TunerLayerStatus",
    "TunerModelStatus",
    "UserInputError",
    "__version__",
    "compare",
    "export_gguf",
    "export_gguf_lora",
    "get_base_model_state_dict",
    "get_layer_status",
    "get_model_status",
    "get_peft_config",
    "get_peft_model",
    "get_peft_model_state_dict",
    "inject_adapter_in_model",
    "load_model",
    "load_tokenizer",
    "prepare_model_for_kbit_training",
    "set_base_model_state_dict",
    "set_peft_model_state_dict",
    "train",
]
