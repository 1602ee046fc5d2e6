"""PEFT's ``AutoPeftModelFor*``: load an adapter together with the base model its config names.

``AutoPeftModelForCausalLM.from_pretrained("outputs/demo")`` reads ``adapter_config.json``, loads
the base model it records (``base_model_name_or_path``: a local folder, a hub id, or one of
peftkit's packaged aliases) with the task's transformers auto class, and attaches the adapter, as
PEFT's classes of the same names do.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from .config import PeftConfig, TaskType
from .errors import ConfigError
from .integrations.models import load_model
from .peft_model import format as fmt
from .peft_model.model import (
    PeftModel,
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForQuestionAnswering,
    PeftModelForSeq2SeqLM,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
)

__all__ = [
    "AutoPeftModel",
    "AutoPeftModelForCausalLM",
    "AutoPeftModelForFeatureExtraction",
    "AutoPeftModelForQuestionAnswering",
    "AutoPeftModelForSeq2SeqLM",
    "AutoPeftModelForSequenceClassification",
    "AutoPeftModelForTokenClassification",
]


class AutoPeftModel:
    """Loads the base model named in an adapter's config, then the adapter. Use a task's class
    (:class:`AutoPeftModelForCausalLM`, ...); this one only serves adapters saved without a task, as
    PEFT's."""

    task: ClassVar[TaskType | None] = None
    model_class: ClassVar[type[PeftModel]] = PeftModel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise OSError(
            f"{type(self).__name__} is designed to be instantiated using "
            f"`{type(self).__name__}.from_pretrained(pretrained_model_name_or_path)`"
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: PeftConfig | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ) -> PeftModel:
        """The base model (``kwargs`` go to its ``from_pretrained``: ``dtype``,
        ``trust_remote_code``, ...) with the adapter at ``pretrained_model_name_or_path`` attached
        as ``adapter_name``.

        Raises:
            ConfigError: the config names no base model, or a task this class does not load.
            ModelLoadError: the base model cannot be found (offline, a folder that moved).
        """
        folder = fmt.resolve_adapter_path(pretrained_model_name_or_path, revision=revision)
        peft_config = config or fmt.read_adapter_config(folder)
        # first, as PEFT checks it: nothing is loaded for a refused config
        _check_auto_mapping(peft_config)
        base_path = peft_config.base_model_name_or_path
        if not base_path:
            raise ConfigError(
                f"{folder}/adapter_config.json records no base_model_name_or_path, so there is no base "
                "model to load; load the base yourself and use PeftModel.from_pretrained(base, path)"
            )
        task = _check_task(cls, peft_config)
        base = load_model(base_path, task=task, revision=peft_config.revision, **kwargs)
        _fit_vocabulary(base, folder)
        return cls.model_class.from_pretrained(
            base, folder, adapter_name=adapter_name, is_trainable=is_trainable, config=peft_config
        )


# libraries a config's auto_mapping may name (PEFT's list's)
IMPORT_ALLOWLIST = ("transformers", "diffusers")


def _check_auto_mapping(config: PeftConfig) -> None:
    """Refuse a config whose auto_mapping names a library outside the allow list (PEFT would import
    from it; a crafted adapter could run code that way)."""
    parent = (config.auto_mapping or {}).get("parent_library")
    if parent and not any(parent == a or parent.startswith(f"{a}.") for a in IMPORT_ALLOWLIST):
        raise ConfigError(
            f"auto_mapping: {parent!r}, which is not in the import allowlist "
            f"({', '.join(IMPORT_ALLOWLIST)}), is refused; peftkit loads only base models of those "
            "libraries. Load the base model yourself and use PeftModel.from_pretrained"
        )


def _check_task(cls: type[AutoPeftModel], config: PeftConfig) -> TaskType:
    task = TaskType(config.task_type) if config.task_type is not None else None
    # PEFT's words: the generic class needs PEFT's auto_mapping, which peftkit does not write
    if cls.task is None:
        raise ConfigError(
            "Cannot use `AutoPeftModel` with a task type, please use a specific class for your task "
            "type. (e.g. `AutoPeftModelForCausalLM` for `task_type='CAUSAL_LM'`)"
            if task
            else "Cannot infer the auto class from the config, please make sure that you are loading the "
            "correct model for your task type."
        )
    if task is not None and task != cls.task:
        expected = _BY_TASK[task].model_class.__name__
        raise ConfigError(
            f"Expected target PEFT class: {expected}, but you have asked for: "
            f"{cls.model_class.__name__} make sure that you are loading the correct model for your task "
            f"type (the adapter's task_type is {task.value}; use {_BY_TASK[task].__name__})"
        )
    return cls.task


def _fit_vocabulary(base: Any, folder: str | os.PathLike[str]) -> None:
    """A tokenizer saved beside the adapter with more (or fewer) tokens than the base: resize the
    embeddings to it, as PEFT does, so the adapter's saved embedding weights fit."""
    if not os.path.isfile(os.path.join(folder, "tokenizer_config.json")):
        return
    from transformers import AutoTokenizer

    size = len(AutoTokenizer.from_pretrained(folder))
    if size != base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(size)


class AutoPeftModelForCausalLM(AutoPeftModel):
    task = TaskType.CAUSAL_LM
    model_class = PeftModelForCausalLM


class AutoPeftModelForSeq2SeqLM(AutoPeftModel):
    task = TaskType.SEQ_2_SEQ_LM
    model_class = PeftModelForSeq2SeqLM


class AutoPeftModelForSequenceClassification(AutoPeftModel):
    task = TaskType.SEQ_CLS
    model_class = PeftModelForSequenceClassification


class AutoPeftModelForTokenClassification(AutoPeftModel):
    task = TaskType.TOKEN_CLS
    model_class = PeftModelForTokenClassification


class AutoPeftModelForQuestionAnswering(AutoPeftModel):
    task = TaskType.QUESTION_ANS
    model_class = PeftModelForQuestionAnswering


class AutoPeftModelForFeatureExtraction(AutoPeftModel):
    task = TaskType.FEATURE_EXTRACTION
    model_class = PeftModelForFeatureExtraction


_BY_TASK: dict[TaskType, type[AutoPeftModel]] = {
    c.task: c for c in AutoPeftModel.__subclasses__() if c.task
}
