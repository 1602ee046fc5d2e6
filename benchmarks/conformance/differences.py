"""Behaviour differences from PEFT that peftkit keeps on purpose, each with its reason.

A test listed here (by a pattern over its id) that PEFT passes and peftkit does not is counted as
``reasoned``, not ``behaviour``. Every entry is also a line of ``docs/conformance.md``. A pattern
that matches nothing in a run is stale and should be removed.
"""

from __future__ import annotations

import re

DIFFERENCES: dict[str, str] = {
    r"TestRequiresGrad::test_requires_grad_adalora_(same|different)_targets": (
        "set_adapter keeps an adapter whose config says inference_mode=True frozen (here AdaLoRA's second "
        "adapter, which must be frozen because AdaLoRA trains one adapter at a time); PEFT makes it trainable "
        "when it is activated. set_adapter(name, inference_mode=False) on a trainable config trains it, as in PEFT"
    ),
    r"TestTargetParameters::test_(target_multiple_parameters_on_same_module|target_parameter_result_caching_works|"
    r"target_parameters_forward_under_autocast)": (
        "LoRA on raw parameters reads the adapted weight through the owning module's attribute for the duration of "
        "its forward, computed once per call (tested), without torch.nn.utils.parametrize: these tests observe "
        "PEFT's internal parametrization proxy (_LoraFactorsProxy.forward), which peftkit does not have"
    ),
    r"test_get_peft_model_repeated_invocation": (
        "get_peft_model on a model that is already a PeftModel is refused with a pointer to add_adapter: PEFT nests "
        "the wrappers, and the outer adapter's file then holds the inner adapter's tensors under a config that does "
        "not describe them, so it does not load back as saved"
    ),
    r"test_generate_pos_args\[.*(T5ForConditionalGeneration|BartForConditionalGeneration)": (
        "an encoder-decoder PeftModel's generate accepts input_ids as its first positional argument, as transformers' "
        "generate does; PEFT's takes keywords only and raises TypeError"
    ),
    r"TestPeftConfig::test_set_attributes\[|TestPeftConfig::test_adalora_config_r_warning": (
        "a config class fixes its method: `peft_type` is not a constructor argument (PEFT accepts any value, here "
        "'test', and silently overwrites it)"
    ),
    r"test_ia3_is_feedforward_subset_invalid_config": (
        "config errors name the config class and list every problem at once ('Invalid configuration in IA3Config: "
        "`feedforward_modules` should be a subset of `target_modules`'); PEFT's test anchors its bare sentence"
    ),
    r"test_lora_with_bias_argument\[invalid\]": (
        "configs validate when they are built: LoraConfig(bias='invalid') itself raises (a ValueError), where PEFT "
        "raises later, in get_peft_model, where the test expects it"
    ),
    r"TestNamingConflictWarning::test_warning_naming_conflict_(get_peft_model|add_adapter)": (
        "no warning for an adapter named like the tensor prefix ('lora', 'ora_'): peftkit maps file keys through "
        "the layers, not by replacing strings, so such an adapter saves and loads intact (tested); PEFT warns "
        "because its own loading can re-initialize it"
    ),
    r"test_save_pretrained_targeting_lora_to_embedding_layer\[peft_config0": (
        "an entry of a target_modules list that matches no layer is refused, naming the layers the model has (a "
        "typo would otherwise train fewer layers than asked for); PEFT ignores 'lin0' on a Llama model because "
        "'embed_tokens' matches"
    ),
    r"test_from_pretrained_missing_keys_warning": (
        "save_pretrained writes the adapter's tensors from its layers, not from model.state_dict(); the test "
        "removes a tensor by replacing state_dict, so peftkit's file is complete and loads without the warning"
    ),
    r"test_delete_adapter_multiple_adapters_with_modules_to_save": (
        "deleting the last adapter that has a trainable copy of a module puts the plain module back (no empty "
        "wrapper is left in the model); PEFT keeps an empty ModulesToSaveWrapper"
    ),
    r"test_dora_save_and_load_remapping|test_dora_unmerge_inverts_merge_for_fan_in_fan_out_layer|"
    r"test_dora_params_have_gradients": (
        "DoRA's magnitude is a parameter (`lora_magnitude_vector[name]`, as PEFT stored it before its refactor); "
        "PEFT now wraps it in a module with a `.weight`, which these tests read. The adapter files are the same"
    ),
    r"TestLoraVariants::test_(invalid_variant_combination|unregistered_variant|unsorted_variant_keys|"
    r"multiple_string_variants)": (
        "PEFT's LoRA-variant registry internals: layers built as lora.Linear(base, adapter_name, r=...) and "
        "resolve_lora_variant; peftkit's layers are built empty and given adapters with add_adapter(name, r, ...), "
        "DoRA being one of its options"
    ),
    r"TestDynamicDispatch::test_target_layer_without_in_features_out_features": (
        "user-written LoRA layer classes registered with PEFT's _register_custom_module (dynamic dispatch) are not "
        "supported; the test's class mixes nn.Module with PEFT's LoraLayer"
    ),
    r"test_lora_embed_scale_is_applied_mixed_batch": (
        "a mixed batch is routed from the model (model(..., adapter_names=[...])), which the layers then follow; "
        "a single layer called by hand takes no adapter_names argument (the test calls the embedding directly)"
    ),
    r"test_prefix_tuning_offsets_position_ids_in_forward|"
    r"test_prompt_tuning_prepare_inputs_for_generation_4d_attention_mask|test_prompt_tuning_trust_remote_code": (
        "these tests replace PEFT internals (model.base_model.forward, base_model_prepare_inputs_for_generation, "
        "the PromptEmbedding(config, embeddings) constructor) and check what PEFT passes to them; the behaviour "
        "behind them is PEFT's (prefix tuning with explicit position_ids gives PEFT's logits, tested) and "
        "a prompt-tuning config never passes trust_remote_code from a file to a tokenizer"
    ),
    r"TestModelAndLayerStatus::test_(model_)?requires_grad_(model_)?irregular|"
    r"TestModelAndLayerStatus::test_model_active_adapters_irregular|"
    r"test_transient_attribute_access_non_existing_adapter": (
        "these tests put a layer into a state no public call makes by writing PEFT-internal attributes "
        "(`_active_adapter`, `lora_embedding_A` on a linear layer); peftkit's layers keep their state elsewhere"
    ),
    r"TestDoraCaching::": (
        "PEFT's DoraCaching context manager (it caches DoRA's weight norm during inference) is not provided: "
        "peftkit computes the norm in each forward; merge the adapter for speed"
    ),
    r"TestDisableInputDtypeCasting::": (
        "PEFT's disable_input_dtype_casting helper is not provided: peftkit's layers cast the input to the adapter's "
        "dtype for the update only and never change the base layer's input, so there is nothing to switch off"
    ),
    r"test_default_target_modules_(list_of_str|str)\[LoraConfig\]": (
        "the test checks the default-target tables of every PEFT method, DeLoRA's among them, for each config it "
        "is given; peftkit's LoRA table equals PEFT's (tests/test_targets.py)"
    ),
    r"test_transformers_pipeline|TestNamingConflictWarning::test_(no_)?warning_(without_)?naming_conflict_save_and_"
    r"load|TestModelAndLayerStatus::test_transformers_model": (
        "transformers' own PEFT integration (a transformers model's load_adapter, used by pipelines) imports PEFT's "
        "internal weight-conversion module; with peftkit standing in for peft it finds none. Load adapters into "
        "transformers models with peftkit.PeftModel.from_pretrained"
    ),
    r"TestLoadPeftKeyMapping::test_key_mapping_save_old_load_new_lora": (
        "key_mapping (renaming a checkpoint's module paths while loading, for transformers' reorganised models) is "
        "not supported: peftkit refuses tensors that match no layer rather than loading part of an adapter"
    ),
    r"TestBaseTunerWarnForTiedEmbeddings::test_warn_for_tied_embeddings_merge": (
        "merging LoRA on an LM head tied to the input embeddings gives the head its own weight first, so merged "
        "equals unmerged and the embeddings stay as they were (tested); the config then says untied, with PEFT's "
        "'no longer tied after merging' warning. PEFT merges into the shared weight, changing the input embeddings "
        "too, and warns about complications with example code instead"
    ),
}
_COMPILED = [
    (re.compile(pattern, re.IGNORECASE), reason) for pattern, reason in DIFFERENCES.items()
]


def reason(test_id: str) -> str | None:
    """The written reason for a kept difference in this test, if any."""
    return next((why for pattern, why in _COMPILED if pattern.search(test_id)), None)
