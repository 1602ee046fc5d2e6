"""Import paths keep working: every module path peftkit had before its modules moved into folders,
and the module paths of PEFT that peftkit mirrors (``from peft.peft_model import PeftModel`` with
the import changed)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import peftkit
from peftkit._moved import MOVED

# The public names each module exported at its old path (its __all__ before the move).
OLD_PATHS = {
    "peftkit.adapter_io": [
        "adapter_state_dict",
        "load_adapter",
        "load_adapter_state",
        "load_weights",
        "push_to_hub",
        "read_config",
        "save_pretrained",
    ],
    "peftkit.card": ["CARD_MARK", "write_model_card"],
    "peftkit.checks": [
        "check_adapter_name",
        "check_finite_weights",
        "check_mixed_batch",
        "check_new_adapter",
        "check_saveable",
        "check_unsupported_load_options",
        "warn_base_rewriting_adapters",
    ],
    "peftkit.compare": ["PRESETS", "CompareConfig", "MethodResult", "SelectConfig", "compare"],
    "peftkit.compare_report": ["MethodResult", "ReportContext", "Section", "write_report"],
    "peftkit.compare_select": [
        "SELECTABLE",
        "SelectConfig",
        "Selection",
        "Trial",
        "choose",
        "select_settings",
        "selection_section",
        "write_selection",
    ],
    "peftkit.configfile": ["MAX_CONFIG_BYTES", "parse_yaml", "read_config_file", "read_json_file"],
    "peftkit.data": [
        "Example",
        "TaskData",
        "collate",
        "load_rows",
        "load_task_data",
        "render_template",
        "template_fields",
    ],
    "peftkit.embeddings": ["EMBEDDING_LAYER_NAMES", "embedding_keys", "embedding_state"],
    "peftkit.files": [
        "atomic_directory",
        "atomic_write",
        "is_write_failure",
        "write_failure_reason",
        "write_json_atomic",
        "write_text_atomic",
    ],
    "peftkit.format": [
        "CONFIG_NAME",
        "LEGACY_WEIGHTS_NAME",
        "WEIGHTS_NAME",
        "atomic_write",
        "file_keys",
        "load_adapter_weights",
        "read_adapter_config",
        "write_adapter",
        "write_json_atomic",
    ],
    "peftkit.holder": ["BaseModelHolder"],
    "peftkit.hub": ["upload_folder"],
    "peftkit.memory": ["available_bytes", "check_allocation"],
    "peftkit.merging": ["MIXES", "mix"],
    "peftkit.model": [
        "PeftModel",
        "PeftModelForCausalLM",
        "PeftModelForFeatureExtraction",
        "PeftModelForSeq2SeqLM",
        "PeftModelForSequenceClassification",
        "PeftModelForTokenClassification",
        "get_peft_model",
    ],
    "peftkit.models": [
        "PACKAGED_MODELS",
        "PackagedModel",
        "load_model",
        "load_tokenizer",
        "packaged_alias",
        "packaged_gguf",
        "resolve_model_path",
        "source_gguf",
    ],
    "peftkit.optimizers": ["create_loraplus_optimizer", "loraplus_groups"],
    "peftkit.outputs": [
        "LOCK_NAME",
        "MANIFEST_NAME",
        "OutputDirError",
        "check_replaceable",
        "claim",
        "clean_leftovers",
        "owned",
        "record",
        "remove_owned",
        "writer_lock",
    ],
    "peftkit.prompting": [
        "PrefixKeyValues",
        "PromptShape",
        "VirtualTokens",
        "build_prompt_module",
        "cache_keyword",
        "check_window",
        "embeddings_to_save",
        "generate",
        "load_embeddings",
        "output_cache",
        "prepare_inputs",
        "resolve",
        "sliding_window",
        "strategy",
    ],
    "peftkit.quantization": [
        "QUANTIZATIONS",
        "is_quantized",
        "is_quantized_model",
        "prepare_model_for_kbit_training",
        "quantization_config",
    ],
    "peftkit.schema": ["coerce", "field_docs", "field_types", "is_int", "is_number", "typecheck"],
    "peftkit.status": [
        "TunerLayerStatus",
        "TunerModelStatus",
        "get_layer_status",
        "get_model_status",
    ],
    "peftkit.surgery": [
        "DEFAULT_TARGET_MODULES",
        "adapter_buffers",
        "adapter_layers",
        "add_modules_to_save",
        "delete_adapter",
        "get_submodules",
        "inject_loha",
        "inject_lora",
        "is_target",
        "mark_trainable",
        "matches_target",
        "merge",
        "resolve_target_modules",
        "set_active",
        "set_disabled",
        "unload",
        "unmerge",
    ],
    "peftkit.target_tables": [
        "IA3_FEEDFORWARD_MODULES",
        "IA3_TARGET_MODULES",
        "LORA_TARGET_MODULES",
    ],
    "peftkit.trainer_support": ["install"],
    "peftkit.tuners.dora": [
        "merged_weight",
        "output_change",
        "row_norms",
        "unmerged_weight",
        "weight_before_merges",
    ],
    "peftkit.tuners.lora": [
        "AdapterLayer",
        "LoraLayer",
        "LoraLinear",
        "rank_axis",
        "unpaired_factors",
    ],
    "peftkit.tuners.lora_conv": [
        "CONV_TYPES",
        "LoraConv",
        "LoraConv1d",
        "LoraConv2d",
        "LoraConv3d",
        "wrap_conv",
    ],
    "peftkit.tuners.lora_embedding": ["LoraEmbedding"],
    "peftkit.tuners.lora_init": ["from_weight", "olora", "pissa", "random_start"],
    "peftkit.tuners.low_rank": ["LowPrecisionInputLora", "low_rank_update"],
    "peftkit.tuners.prompt": ["PrefixEncoder", "PromptEmbedding", "PromptEncoder"],
    "peftkit.tying": [
        "EMBEDDING_LAYER_NAMES",
        "embedding_name",
        "module_names_tied_with_embedding",
        "saved_names",
        "saved_ties",
        "tie_lora",
        "tie_saved_copies",
        "tied_targets",
        "warn_or_plan",
    ],
    "peftkit.weighted": [
        "WeightedPlan",
        "check_no_shared_copies",
        "plan",
        "plan_ia3",
        "to_plain_lora",
    ],
    "peftkit.wrapper": ["ModelWrapper", "is_transformers_model"],
}

# PEFT's module paths that peftkit mirrors, with the names peftkit implements there.
PEFT_PATHS = {
    "": [
        "LoraConfig",
        "IA3Config",
        "LoHaConfig",
        "PeftConfig",
        "PeftModel",
        "PeftModelForCausalLM",
        "PeftType",
        "PromptTuningConfig",
        "PromptEncoderConfig",
        "PrefixTuningConfig",
        "TaskType",
        "get_peft_model",
        "get_peft_model_state_dict",
        "set_peft_model_state_dict",
        "inject_adapter_in_model",
        "get_layer_status",
        "get_model_status",
        "AutoPeftModelForCausalLM",
        "prepare_model_for_kbit_training",
        "PeftError",
    ],
    ".peft_model": [
        "PeftModel",
        "PeftModelForCausalLM",
        "PeftModelForFeatureExtraction",
        "PeftModelForQuestionAnswering",
        "PeftModelForSeq2SeqLM",
        "PeftModelForSequenceClassification",
        "PeftModelForTokenClassification",
    ],
    ".mapping": [
        "PEFT_TYPE_TO_CONFIG_MAPPING",
        "PEFT_TYPE_TO_PREFIX_MAPPING",
        "PEFT_TYPE_TO_TUNER_MAPPING",
    ],
    ".mapping_func": ["get_peft_model"],
    ".config": ["PeftConfig", "PromptLearningConfig", "PeftType", "TaskType", "CONFIG_NAME"],
    ".functional": [
        "get_peft_model_state_dict",
        "inject_adapter_in_model",
        "set_peft_model_state_dict",
    ],
    ".auto": [
        "AutoPeftModel",
        "AutoPeftModelForCausalLM",
        "AutoPeftModelForSequenceClassification",
    ],
    ".helpers": ["check_if_peft_model", "rescale_adapter_scale"],
    ".optimizers": ["create_loraplus_optimizer"],
}


def test_every_moved_module_is_listed_here() -> None:
    """A module that moves gets an entry in both tables, so its old path stays tested."""
    assert set(MOVED) - {"peftkit.mapping_func"} <= set(OLD_PATHS)


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_module_path_imports_its_names(old: str) -> None:
    module = importlib.import_module(old)
    missing = [name for name in OLD_PATHS[old] if not hasattr(module, name)]
    assert not missing, f"{old} lost {missing}"
    new = MOVED.get(old)
    if new is not None:  # the same module object under both names, named by where it lives now
        assert module is importlib.import_module(new)
        assert module.__spec__.name == new
        assert module.__name__ == new


def test_patching_through_an_old_path_changes_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    import peftkit.data as old

    from peftkit.train import data as new

    monkeypatch.setattr(old, "IGNORE_INDEX", -7)
    assert new.IGNORE_INDEX == -7


def test_from_import_of_an_old_path_in_a_fresh_interpreter() -> None:
    """The finder is installed by ``import peftkit``, which any ``peftkit.x`` import runs first."""
    code = (
        "from peftkit.tuners.lora_conv import LoraConv2d; from peftkit.prompting import VirtualTokens; "
        "import peftkit.trainer_support as t; print(LoraConv2d.__module__, VirtualTokens.__module__, t.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [
        "peftkit.tuners.lora.conv",
        "peftkit.tuners.prompt.model",
        "peftkit.integrations.trainer",
    ]


@pytest.mark.parametrize("path", sorted(PEFT_PATHS))
def test_peft_module_paths(path: str) -> None:
    module = importlib.import_module("peftkit" + path)
    missing = [name for name in PEFT_PATHS[path] if not hasattr(module, name)]
    assert not missing, f"peftkit{path} lacks {missing}"


@pytest.mark.parametrize("path", sorted(PEFT_PATHS))
def test_the_mirrored_paths_are_pefts(path: str) -> None:
    """The table above names real PEFT paths (read from the installed PEFT), so it cannot drift into
    inventions."""
    peft_module = importlib.import_module("peft" + path)
    assert [name for name in PEFT_PATHS[path] if not hasattr(peft_module, name)] == []


def test_public_names_resolve() -> None:
    unresolved = [name for name in peftkit.__all__ if getattr(peftkit, name, None) is None]
    assert not unresolved
