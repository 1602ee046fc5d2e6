"""Local stand-ins for the hub models PEFT's tests load, laid out as a Hugging Face hub cache.

PEFT's model-level test files (decoder, encoder-decoder, feature extraction, sequence
classification, ...) load tiny random models by hub id
(``peft-internal-testing/tiny-random-OPTForCausalLM``). There is no hub here, so this module builds,
for each id, a model of the same architecture class with random weights (seeded, small normal
values), a small byte-level BPE tokenizer whose ids fit the model's vocabulary, and the LoRA
adapters some tests load by id, and writes them where ``huggingface_hub`` looks with
``HF_HUB_OFFLINE=1``:

    <cache>/models--<org>--<name>/refs/main                 -> the snapshot's name
    <cache>/models--<org>--<name>/snapshots/<name>/<files>

PEFT and peftkit then run against the same files, so a difference between the two runs is a
difference of the libraries. The sizes follow the published tiny configs where known (hidden size,
layers, heads); they are written in ``MODELS`` below, and none of PEFT's tests depends on a weight's
value (they compare a model with itself: before/after, merged/unmerged, saved/loaded).

    python benchmarks/conformance/standins.py CACHE_DIR
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# hub id -> (transformers model class, its config's keyword arguments). Special token ids follow
# TOKENS below.
_OPT_TINY = {
    "vocab_size": 50265,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "ffn_dim": 4,
    "word_embed_proj_dim": 16,
    "max_position_embeddings": 100,
}
_GPT2_TINY = {
    "vocab_size": 1000,
    "n_embd": 32,
    "n_layer": 5,
    "n_head": 4,
    "n_positions": 512,
    "n_inner": 37,
}
_LLAMA_TINY = {
    "vocab_size": 32000,
    "hidden_size": 16,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}
_T5_TINY = {
    "vocab_size": 32128,
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 37,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
}
_BART_TINY = {
    "vocab_size": 1000,
    "d_model": 16,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 4,
    "decoder_ffn_dim": 4,
    "max_position_embeddings": 100,
}
_BERT_TINY = {
    "vocab_size": 1124,
    "hidden_size": 32,
    "num_hidden_layers": 5,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "max_position_embeddings": 512,
}
_ROBERTA_TINY = {**_BERT_TINY, "vocab_size": 1000}

MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "peft-internal-testing/tiny-random-OPTForCausalLM": ("OPTForCausalLM", _OPT_TINY),
    "hf-internal-testing/tiny-random-OPTForCausalLM": ("OPTForCausalLM", _OPT_TINY),
    "peft-internal-testing/tiny-random-GPT2LMHeadModel": ("GPT2LMHeadModel", _GPT2_TINY),
    "hf-internal-testing/tiny-random-gpt2": ("GPT2LMHeadModel", _GPT2_TINY),
    "peft-internal-testing/tiny-random-gpt2": ("GPT2LMHeadModel", _GPT2_TINY),
    "peft-internal-testing/tiny-random-GPTJForCausalLM": (
        "GPTJForCausalLM",
        {
            "vocab_size": 1000,
            "n_embd": 32,
            "n_layer": 5,
            "n_head": 4,
            "rotary_dim": 4,
            "n_positions": 512,
            "n_inner": 37,
        },
    ),
    "trl-internal-testing/tiny-random-LlamaForCausalLM": ("LlamaForCausalLM", _LLAMA_TINY),
    "peft-internal-testing/tiny-random-LlamaForCausalLM": ("LlamaForCausalLM", _LLAMA_TINY),
    "peft-internal-testing/tiny-dummy-qwen2": (
        "Qwen2ForCausalLM",
        {
            "vocab_size": 151936,
            "hidden_size": 8,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 512,
        },
    ),
    # mixture-of-experts models for LoRA on parameters (test_target_parameters.py); PEFT's test
    # redraws their weights (and casts gpt-oss to fp32) after loading
    "trl-internal-testing/tiny-Llama4ForCausalLM": (
        "Llama4ForCausalLM",
        {
            "vocab_size": 1000,
            "hidden_size": 16,
            "intermediate_size": 32,
            "intermediate_size_mlp": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 8,
            "num_local_experts": 4,
            "num_experts_per_tok": 1,
            "max_position_embeddings": 512,
        },
    ),
    "trl-internal-testing/tiny-GptOssForCausalLM": (
        "GptOssForCausalLM",
        {
            "vocab_size": 1000,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 8,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "max_position_embeddings": 512,
        },
    ),
    "trl-internal-testing/tiny-Qwen3ForCausalLM": (
        "Qwen3ForCausalLM",
        {
            "vocab_size": 151936,
            "hidden_size": 8,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "max_position_embeddings": 512,
        },
    ),
    "hf-internal-testing/tiny-random-MistralForCausalLM": (
        "MistralForCausalLM",
        {
            "vocab_size": 32000,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
        },
    ),
    "hf-internal-testing/tiny-random-Gemma3ForCausalLM": (
        "Gemma3ForCausalLM",
        {
            "vocab_size": 262144,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 512,
            "sliding_window": 128,
        },
    ),
    "peft-internal-testing/tiny-random-BloomForCausalLM": (
        "BloomForCausalLM",
        {"vocab_size": 1024, "hidden_size": 32, "n_layer": 5, "n_head": 4},
    ),
    "peft-internal-testing/tiny-random-GPTNeoXForCausalLM": (
        "GPTNeoXForCausalLM",
        {
            "vocab_size": 1024,
            "hidden_size": 32,
            "num_hidden_layers": 5,
            "num_attention_heads": 4,
            "intermediate_size": 37,
        },
    ),
    "peft-internal-testing/tiny-random-T5ForConditionalGeneration-calibrated": (
        "T5ForConditionalGeneration",
        _T5_TINY,
    ),
    "peft-internal-testing/tiny-random-T5ForConditionalGeneration": (
        "T5ForConditionalGeneration",
        _T5_TINY,
    ),
    "peft-internal-testing/tiny-random-t5": ("T5ForConditionalGeneration", _T5_TINY),
    "peft-internal-testing/tiny-random-BartForConditionalGeneration": (
        "BartForConditionalGeneration",
        _BART_TINY,
    ),
    "peft-internal-testing/tiny-random-BertModel": ("BertModel", _BERT_TINY),
    "peft-internal-testing/tiny-random-RobertaModel": ("RobertaModel", _ROBERTA_TINY),
    "peft-internal-testing/tiny-random-DebertaModel": (
        "DebertaModel",
        {
            **_BERT_TINY,
            "vocab_size": 1000,
            "relative_attention": True,
            "max_relative_positions": 16,
            "pos_att_type": ["c2p", "p2c"],
        },
    ),
    "peft-internal-testing/tiny-random-DebertaV2Model": (
        "DebertaV2Model",
        {
            **_BERT_TINY,
            "vocab_size": 1000,
            "relative_attention": True,
            "position_buckets": 16,
            "pos_att_type": ["c2p", "p2c"],
        },
    ),
    "peft-internal-testing/tiny-random-BertForSequenceClassification": (
        "BertForSequenceClassification",
        _BERT_TINY,
    ),
    "peft-internal-testing/tiny-random-RobertaForSequenceClassification": (
        "RobertaForSequenceClassification",
        _ROBERTA_TINY,
    ),
    "trl-internal-testing/tiny-LlamaForSequenceClassification-3.2": (
        "LlamaForSequenceClassification",
        {
            **_LLAMA_TINY,
            "vocab_size": 128256,
            "hidden_size": 8,
            "intermediate_size": 32,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
    ),
    # full-size shapes that a few tests use (random weights; the tests only need the architecture)
    "peft-internal-testing/opt-125m": (
        "OPTForCausalLM",
        {
            "vocab_size": 50272,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "ffn_dim": 3072,
            "word_embed_proj_dim": 768,
            "max_position_embeddings": 2048,
        },
    ),
    "gpt2": (
        "GPT2LMHeadModel",
        {"vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024},
    ),
    "bert-base-uncased": (
        "BertModel",
        {
            "vocab_size": 30522,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
        },
    ),
}

# hub id of an adapter -> (its base model's hub id, the auto class to build the base, the task type)
ADAPTERS: dict[str, tuple[str, str, str]] = {
    "peft-internal-testing/tiny-OPTForCausalLM-lora": (
        "hf-internal-testing/tiny-random-OPTForCausalLM",
        "AutoModelForCausalLM",
        "CAUSAL_LM",
    ),
    "peft-internal-testing/gpt2-lora-random": ("gpt2", "AutoModelForCausalLM", "CAUSAL_LM"),
    "peft-internal-testing/tiny_T5ForSeq2SeqLM-lora": (
        "peft-internal-testing/tiny-random-T5ForConditionalGeneration",
        "AutoModelForSeq2SeqLM",
        "SEQ_2_SEQ_LM",
    ),
    "peft-internal-testing/tiny_OPTForSequenceClassification-lora": (
        "hf-internal-testing/tiny-random-OPTForCausalLM",
        "AutoModelForSequenceClassification",
        "SEQ_CLS",
    ),
    "peft-internal-testing/tiny_OPTForQuestionAnswering-lora": (
        "hf-internal-testing/tiny-random-OPTForCausalLM",
        "AutoModelForQuestionAnswering",
        "QUESTION_ANS",
    ),
    "peft-internal-testing/tiny_OPTForFeatureExtraction-lora": (
        "hf-internal-testing/tiny-random-OPTForCausalLM",
        "AutoModel",
        "FEATURE_EXTRACTION",
    ),
    "peft-internal-testing/tiny_GPT2ForTokenClassification-lora": (
        "hf-internal-testing/tiny-random-gpt2",
        "AutoModelForTokenClassification",
        "TOKEN_CLS",
    ),
}

# The tokenizer's special tokens come first, so every model's ids for them are the same small
# numbers.
TOKENS = {
    "pad": "<pad>",
    "eos": "</s>",
    "bos": "<s>",
    "unk": "<unk>",
    "mask": "<mask>",
    "cls": "<cls>",
    "sep": "<sep>",
}
TOKEN_IDS = {name: i for i, name in enumerate(TOKENS)}
TOKENIZER_VOCAB = 600

# A small corpus for the tokenizer and the stand-in for PEFT's english_quotes data set.
QUOTES = [
    "Be yourself; everyone else is already taken.",
    "So many books, so little time.",
    "A room without books is like a body without a soul.",
    "You only live once, but if you do it right, once is enough.",
    "Be the change that you wish to see in the world.",
    "In three words I can sum up everything I've learned about life: it goes on.",
    "If you tell the truth, you don't have to remember anything.",
    "A friend is someone who knows all about you and still loves you.",
    "To live is the rarest thing in the world. Most people exist, that is all.",
    "Without music, life would be a mistake.",
    "We accept the love we think we deserve.",
    "It is never too late to be what you might have been.",
    "Everything you can imagine is real.",
    "The list of colors: red, blue, green, yellow, orange and purple.",
    "Classify if the tweet is a complaint or not: the service was slow.",
    "This is a great day. Another sentence follows, and then one more, with numbers 1 2 3 4 5 6 7 8 9 10.",
]


def _special_ids(model_class: str) -> dict[str, Any]:
    ids = {
        "pad_token_id": TOKEN_IDS["pad"],
        "eos_token_id": TOKEN_IDS["eos"],
        "bos_token_id": TOKEN_IDS["bos"],
    }
    if model_class.startswith("T5"):
        ids["decoder_start_token_id"] = TOKEN_IDS["pad"]
    elif model_class.startswith("Bart"):
        ids["decoder_start_token_id"] = TOKEN_IDS["eos"]
    return ids


def build_model(model_class: str, kwargs: dict[str, Any], seed: int) -> Any:
    """A model of ``model_class`` with seeded random weights (transformers' own init: small normal
    values)."""
    import torch
    import transformers

    cls = getattr(transformers, model_class)
    config = cls.config_class(**kwargs, **_special_ids(model_class))
    torch.manual_seed(seed)
    model = cls(config)
    model.eval()
    return model


def build_tokenizer(max_vocab: int) -> Any:
    """A byte-level BPE tokenizer trained on :data:`QUOTES`, its ids below ``max_vocab``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=TOKENS["unk"]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(TOKENIZER_VOCAB, max_vocab),
        special_tokens=list(TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(QUOTES * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, **{f"{k}_token": v for k, v in TOKENS.items()}
    )


def _snapshot(cache: Path, repo_id: str) -> Path:
    """The snapshot folder for ``repo_id`` in the hub cache layout, with ``refs/main`` pointing at
    it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    folder = repo / "snapshots" / commit
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def build_adapter(
    cache: Path, repo_id: str, base_id: str, auto_class: str, task_type: str, seed: int
) -> None:
    """A LoRA adapter on the stand-in of ``base_id``, written by PEFT itself (the reference format)."""
    import peft
    import torch
    import transformers

    base = getattr(transformers, auto_class).from_pretrained(base_id, cache_dir=cache)
    torch.manual_seed(seed)
    model = peft.get_peft_model(base, peft.LoraConfig(task_type=task_type, init_lora_weights=False))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        for file in Path(tmp).iterdir():
            shutil.copy(file, _snapshot(cache, repo_id) / file.name)


def build(cache: Path) -> dict[str, str]:
    """Write every stand-in into ``cache`` (a ``HF_HUB_CACHE`` folder); returns hub id -> what was
    built."""
    built: dict[str, str] = {}
    tokenizer = build_tokenizer(TOKENIZER_VOCAB)
    for seed, (repo_id, (model_class, kwargs)) in enumerate(sorted(MODELS.items())):
        folder = _snapshot(cache, repo_id)
        build_model(model_class, kwargs, seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        built[repo_id] = model_class
    for seed, (repo_id, (base_id, auto_class, task_type)) in enumerate(sorted(ADAPTERS.items())):
        build_adapter(cache, repo_id, base_id, auto_class, task_type, seed)
        built[repo_id] = f"LoRA adapter on {base_id}"
    (cache / "standins.json").write_text(json.dumps(built, indent=1) + "\n")
    return built


def quotes_dataset() -> Any:
    """Stand-in for PEFT's ``load_dataset_english_quotes`` (the hub data set
    ybelkada/english_quotes_copy)."""
    from datasets import Dataset, DatasetDict

    rows = {"quote": QUOTES, "author": ["unknown"] * len(QUOTES), "tags": [["life"]] * len(QUOTES)}
    return DatasetDict({"train": Dataset.from_dict(rows)})


BUILD_VERSION = 1  # raise when the build code changes what it writes


def fingerprint() -> str:
    """Changes whenever the stand-ins would: the tables and the build code's version."""
    tables = [MODELS, ADAPTERS, TOKENS, TOKENIZER_VOCAB, QUOTES, BUILD_VERSION]
    return hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()[:16]


if __name__ == "__main__":
    print(json.dumps(build(Path(sys.argv[1])), indent=1))
