"""What peftkit claims to do as PEFT does, and what the conformance run leaves out, each with its
reason.

``run_peft_tests.py`` runs the files in :data:`FILES` and deselects a test only when a word of its
id names something in :data:`UNCLAIMED` (matched on whole words, case-insensitively: ``OFTConfig``
and ``oft`` are OFT, ``soft`` is not). Everything else in those files is in scope: LoRA (with DoRA,
rsLoRA, PiSSA, OLoRA) on linear, Conv1D (GPT-2), embedding and convolution (nn.Conv1d/2d/3d) layers,
IA3, prompt tuning, p-tuning, prefix tuning, modules_to_save, several adapters, weighted merges,
configs, the low-level API, the auto classes.
"""

from __future__ import annotations

import re

CLAIMED = [
    "LoRA (DoRA, rsLoRA, PiSSA, OLoRA) on Linear, Conv1D, Embedding, Conv1d/2d/3d",
    "IA3",
    "prompt tuning",
    "p-tuning",
    "prefix tuning",
    "modules_to_save",
    "several adapters",
    "weighted adapters",
    "merge/unload",
    "configs",
    "low-level API (inject_adapter_in_model, get/set_peft_model_state_dict)",
    "AutoPeftModel*",
]

# PEFT's test files that run, and why the others do not.
FILES = [
    "test_custom_models.py",
    "test_initialization.py",
    "test_config.py",
    "test_other.py",
    "test_tuners_utils.py",
    "test_mapping.py",
    "test_decoder_models.py",
    "test_encoder_decoder_models.py",
    "test_feature_extraction_models.py",
    "test_seq_classifier.py",
    "test_token_classification_qa.py",
    "test_low_level_api.py",
    "test_lora_variants.py",
    "test_helpers.py",
    "test_auto.py",
    "test_target_parameters.py",
]
SUPPORT = ["__init__.py", "conftest.py", "testing_common.py", "testing_utils.py"]

_METHOD_FILE = "tests of one method peftkit does not claim"
DESELECTED_FILES: dict[str, str] = {
    **{
        f: _METHOD_FILE
        for f in [
            "test_adamss_asa.py",
            "test_adaption_prompt.py",
            "test_arrow.py",
            "test_bdlora.py",
            "test_boft.py",
            "test_cartridge.py",
            "test_cpt.py",
            "test_deft.py",
            "test_frod.py",
            "test_lora_ga.py",
            "test_lorafa.py",
            "test_loraplus.py",
            "test_multitask_prompt_tuning.py",
            "test_osf.py",
            "test_poly.py",
            "test_pvera.py",
            "test_randlora.py",
            "test_shadow.py",
            "test_shira.py",
            "test_supertuning.py",
            "test_trainable_tokens.py",
            "test_unilora.py",
            "test_vblora.py",
            "test_velora.py",
            "test_vera.py",
            "test_xlora.py",
            "test_riemannian_lora.py",
            "test_lora_intruders.py",
            "test_lora_conversion.py",
            "test_bufferdict.py",
            "test_incremental_pca.py",
        ]
    },
    "test_mixed.py": "PeftMixedModel (LoRA mixed with LoHa, LoKr, OFT, ...): not claimed",
    "test_common_gpu.py": "needs a CUDA GPU and bitsandbytes' GPU kernels",
    "test_gpu_examples.py": "needs a CUDA GPU (training examples on real checkpoints)",
    "test_gptqmodel.py": "needs a GPU and the gptqmodel package (quantized backends are not claimed)",
    "test_quantization.py": "quantized backends (GPTQ, AWQ, HQQ, torchao) are not claimed",
    "test_lora_megatron.py": "needs Megatron-LM",
    "test_stablediffusion.py": "diffusers pipelines (tiny-sd-pipe) with LoHa/LoKr/OFT: not claimed",
    "test_vision_models.py": "image models (ResNet, Llava) with an image data set and processors from the hub",
    "test_integrations.py": "mixture-of-experts checkpoints and transformers' weight conversion (target_parameters)",
    "test_hub_features.py": "hub features (revisions, subfolders, tokenizer revisions) that need the real hub",
    "test_torch_compile.py": "opt-in in PEFT itself (PEFT_DEBUG_WITH_TORCH_COMPILE) and slow; not claimed",
}

# Words that mark a test of something peftkit does not claim -> why. A word matches a test id's word
# when they are equal, or the id's word is this word plus "config", "layer", "model" or a number
# ("LoHaConfig").
UNCLAIMED: dict[str, str] = {
    **{
        m: "method not claimed"
        for m in [
            "glora",
            "vera",
            "boft",
            "oft",
            "hra",
            "vblora",
            "fourierft",
            "miss",
            "bone",
            "lntuning",
            "randlora",
            "shira",
            "c3a",
            "road",
            "waveft",
            "delora",
            "osf",
            "xlora",
            "poly",
            "cpt",
            "adaptionprompt",
            "unilora",
            "lily",
            "hira",
            "gralora",
            "peanut",
            "psoft",
            "tinylora",
            "velora",
            "frod",
            "beft",
            "deft",
            "adamss",
            "kasa",
            "monteclora",
            "supertuning",
            "bdlora",
            "pvera",
            "shadow",
            "multitaskprompt",
            "trainabletokens",
            "multitaskprompttuning",
            "cartridge",
            "arrow",
            "alora",
            "activatedlora",
            "loraplus",
            "lorafa",
            "qalora",
            "kappatune",
            "intruders",
            "riemannian",
            "rslora_fa",
            "mica",
            "peftmixedmodel",
        ]
    },
    **{
        m: "an initialization peftkit does not implement (gaussian, PiSSA and OLoRA are claimed)"
        for m in ["eva", "corda", "loftq", "lora_ga", "loraga", "orthogonal", "nf4"]
    },
    **{
        m: "layer type not claimed (LoRA on Linear, Conv1D, Embedding and Conv1d/2d/3d is)"
        for m in ["mha", "multiheadattention"]
    },
    **{
        m: "LoRA feature not claimed"
        for m in [
            "layer_replication",
            "megatron",
            "hotswap",
            "ephemeral",
            "trainable_token_indices",
            "use_qalora",
        ]
    },
    **{
        m: "needs a GPU or a quantized backend"
        for m in [
            "gpu",
            "cuda",
            "xpu",
            "mps",
            "bnb",
            "8bit",
            "4bit",
            "gptq",
            "hqq",
            "awq",
            "torchao",
            "eetq",
            "aqlm",
        ]
    },
}
# Phrases of several words (matched as consecutive words)
UNCLAIMED_PHRASES: dict[tuple[str, ...], str] = {
    ("ln", "tuning"): "method not claimed",
    ("trainable", "tokens"): "method not claimed",
    ("x", "lora"): "method not claimed",
    ("lora", "ga"): "an initialization peftkit does not implement",
    ("lora", "conversion"): "converting other methods' adapters to LoRA: not claimed",
    ("adaption", "prompt"): "method not claimed",
    ("mixed", "model"): "PeftMixedModel: not claimed",
}

_SUFFIX = re.compile(r"(config|layer|model|s)?\d*$")


def words(test_id: str) -> list[str]:
    """The lower-case words of a test id: ``TestX::test_y[LoHaConfig-kw3]`` -> test, x, test, y,
    lohaconfig, kw3.

    CamelCase is not split (``LoHaConfig`` is one word) except in a test class's name, whose
    capitals start words (``TestLilyInitialization`` -> lily); an underscore joins words only inside
    the unclaimed names that contain one (``target_parameters``), which are matched on the joined
    text.
    """
    found = [w for w in re.split(r"[^0-9a-z]+", test_id.lower()) if w]
    # a test class's name, split at its capitals: TestLilyInit -> lily
    for part in test_id.split("::"):
        if part.startswith("Test"):
            split = [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z][a-z]+|\d+", part)]
            found += split
            # and runs of two or three of those words, for a method whose name the capitals split:
            # TestDeLoRAInit -> delora, TestTinyLoraInit -> tinylora, TestKappaTuneSelector ->
            # kappatune
            found += [
                "".join(split[i : i + n]) for n in (2, 3) for i in range(1, len(split) - n + 1)
            ]
    return found


def unclaimed_reason(test_id: str) -> str | None:
    """Why a test is out of scope, or None when it is in scope."""
    lowered = test_id.lower()
    for name, reason in UNCLAIMED.items():
        if "_" in name and re.search(rf"(?<![0-9a-z]){re.escape(name)}(?![a-z])", lowered):
            return f"{name}: {reason}"
    ws = words(test_id)
    for word in ws:
        for name, reason in UNCLAIMED.items():
            if "_" not in name and word.startswith(name) and _SUFFIX.fullmatch(word[len(name) :]):
                return f"{name}: {reason}"
    for phrase, reason in UNCLAIMED_PHRASES.items():
        n = len(phrase)
        if any(tuple(ws[i : i + n]) == phrase for i in range(len(ws) - n + 1)):
            return f"{' '.join(phrase)}: {reason}"
    return None


# Config fields whose use marks a test of something not claimed, when set (not None, False or
# empty).
UNCLAIMED_FIELDS: dict[str, str] = {
    "alora_invocation_tokens": "aLoRA (activated LoRA): not claimed",
    "trainable_token_indices": "trainable tokens: not claimed",
    "use_qalora": "QA-LoRA: not claimed",
    "layer_replication": "layer replication: not claimed",
    "megatron_config": "Megatron: not claimed",
    "arrow_config": "Arrow routing: not claimed",
    "eva_config": "EVA initialization: not claimed",
    "corda_config": "CorDA initialization: not claimed",
    "loftq_config": "LoftQ initialization: not claimed",
    "lora_ga_config": "LoRA-GA initialization: not claimed",
    "use_bdlora": "BD-LoRA: not claimed",
}
UNCLAIMED_INITS = {"eva", "corda", "loftq", "orthogonal", "lora_ga"}


def unclaimed_config_reason(params: dict[str, object]) -> str | None:
    """Why a test's parameters put it out of scope, or None: a config (class or instance) of an
    unclaimed method hidden behind an id like ``config03``, or config arguments (a dict) that set an
    unclaimed field."""
    for value in params.values():
        config_class = value if isinstance(value, type) else type(value)
        if config_class.__name__.endswith("Config") and unclaimed_reason(config_class.__name__):
            return f"{config_class.__name__}: {unclaimed_reason(config_class.__name__)}"
        if not isinstance(value, dict):
            continue
        for name, reason in UNCLAIMED_FIELDS.items():
            if value.get(name) not in (None, False, [], {}, ()):
                return f"config sets {name}: {reason}"
        init = value.get("init_lora_weights")
        if isinstance(init, str) and init.lower() in UNCLAIMED_INITS:
            return f"init_lora_weights={init!r}: an initialization peftkit does not implement"
    return None
