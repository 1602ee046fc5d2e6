"""The exported files in llama.cpp itself (llama-cpp-python, built from source by `make test`), on
the packaged SmolLM2-135M with the demo's kind of adapter: LoRA r=16, alpha=32 on all seven
projections of layers 14-29.

Tolerances, and why:
- f32 files (the merged model, or the adapter on an f32 base): llama.cpp computes in f32 like
  peftkit, but in another order and with its own kernels; logits (spread over about +-20) agree to
  0.1 and the top token to 99% of positions (a near tie can flip).
- the adapter on the packaged Q4_1 file: llama.cpp multiplies Q4_1 weights by activations it rounds
  to 8 bits, peftkit by float activations, so even the *base* models differ by a measurable mean
  |logit difference|. That base difference is measured in the test and is the yardstick: with the
  adapter, the two must differ no more than that (x1.5), agree on the top token as often as the
  bases do (-3 points), and the adapter must change the logits the same way (correlation of the
  changes >= 0.95), while the adapter moves the top token at more than 15% of the positions
  (asserted, so the comparison is not of two near-identical models).
- f16 merged file: f16 rounding of every weight (2**-11 relative) adds its own error on top; bound
  0.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from peftkit import LoraConfig, get_peft_model
from peftkit.export import export_gguf, export_gguf_lora
from peftkit.integrations.models import load_model, packaged_gguf

pytestmark = pytest.mark.slow
POSITIONS = 300


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        pytest.fail(
            "llama-cpp-python is not installed: `make test` builds it (see the Makefile's test-deps)"
        )
    return llama_cpp


@pytest.fixture(scope="module")
def setup(smol_tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("llama_cpp")
    torch.manual_seed(0)
    config = LoraConfig(
        r=16,
        lora_alpha=32,
        layers_to_transform=list(range(14, 30)),
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    )
    model = get_peft_model(load_model("smollm2-135m"), config).eval()
    # large enough a change that the top token moves (asserted in the Q4_1 test)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    text = (Path(__file__).resolve().parents[3] / "shared" / "README.md").read_text()
    ids = smol_tokenizer(text, return_tensors="pt").input_ids[:, :POSITIONS]
    with torch.no_grad():
        adapted = model(input_ids=ids).logits[0]
        with model.disable_adapter():
            base = model(input_ids=ids).logits[0]
    source = packaged_gguf("smollm2-135m")
    export_gguf_lora(model, folder / "lora.gguf")
    export_gguf(
        load_model("smollm2-135m"),
        smol_tokenizer,
        folder / "base-f32.gguf",
        encoding="f32",
        tokenizer_gguf=source,
    )
    return {
        "model": model,
        "ids": ids,
        "adapted": adapted,
        "base": base,
        "folder": folder,
        "source": source,
        "tokenizer": smol_tokenizer,
    }


def _run(path: Path, ids: torch.Tensor, lora: Path | None = None) -> torch.Tensor:
    llm = _llama_cpp().Llama(
        model_path=str(path),
        lora_path=str(lora) if lora else None,
        logits_all=True,
        # f32 key/value cache
        n_ctx=512,
        n_threads=2,
        verbose=False,
        type_k=0,
        type_v=0,
    )
    llm.eval(ids[0].tolist())
    scores = torch.tensor(llm.scores[: ids.shape[1]], dtype=torch.float32)
    llm.close()
    return scores


def _top1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


def test_adapter_on_an_f32_base_gives_peftkits_logits(setup: dict[str, Any]) -> None:
    got = _run(setup["folder"] / "base-f32.gguf", setup["ids"], setup["folder"] / "lora.gguf")
    assert (got - setup["adapted"]).abs().max() < 0.1
    assert _top1(got, setup["adapted"]) >= 0.99


def test_adapter_on_the_packaged_q4_1_file_changes_logits_the_way_peftkits_does(
    setup: dict[str, Any],
) -> None:
    base = _run(setup["source"], setup["ids"])
    adapted = _run(setup["source"], setup["ids"], setup["folder"] / "lora.gguf")
    floor = (base - setup["base"]).abs().mean()
    assert _top1(setup["adapted"], setup["base"]) < 0.85  # the adapter really moves the top token
    assert (adapted - setup["adapted"]).abs().mean() <= 1.5 * floor
    assert _top1(adapted, setup["adapted"]) >= _top1(base, setup["base"]) - 0.03
    changes = torch.stack(
        [(adapted - base).flatten(), (setup["adapted"] - setup["base"]).flatten()]
    )
    assert torch.corrcoef(changes)[0, 1] >= 0.95


@pytest.mark.parametrize("encoding, bound", [("f32", 0.1), ("f16", 0.5)])
def test_merged_export_gives_the_adapted_models_logits(
    setup: dict[str, Any], encoding: str, bound: float
) -> None:
    import copy

    path = setup["folder"] / f"merged-{encoding}.gguf"
    export_gguf(
        copy.deepcopy(setup["model"]),
        setup["tokenizer"],
        path,
        encoding=encoding,
        tokenizer_gguf=setup["source"],
    )
    got = _run(path, setup["ids"])
    assert (got - setup["adapted"]).abs().max() < bound
    assert _top1(got, setup["adapted"]) >= 0.98


def test_merged_file_tokenizes_and_chats_like_the_original(setup: dict[str, Any]) -> None:
    llm = _llama_cpp().Llama(
        model_path=str(setup["folder"] / "base-f32.gguf"), n_ctx=64, verbose=False
    )
    for text in [
        "The movie was great, I loved it!",
        "  spaces, 12345 digits and émojis 🙂",
        "<|im_start|>user\nhi<|im_end|>",
    ]:
        assert (
            llm.tokenize(text.encode(), add_bos=False, special=True)
            == setup["tokenizer"](text).input_ids
        )
    assert llm.metadata["tokenizer.chat_template"] == setup["tokenizer"].chat_template
    llm.close()
