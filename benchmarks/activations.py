"""What a bf16-base LoRA training step keeps for backward, by kind of tensor.

A random-weight Llama of SmolLM2-135M's shape (30 layers), stored in bf16, with LoRA r8 on q,k,v,o
in fp32 (peftkit's ``dtype: bfloat16`` setup), one forward of a batch of 8 x ``--width`` tokens in
training mode, on the attention kernel the training loop picks for that batch. Every tensor autograd
saves is recorded through ``torch.autograd.graph.saved_tensors_hooks``; a storage is counted once,
and the frozen weights (saved by reference, already resident) are left out. Prints a markdown table.

    python benchmarks/activations.py [--width 200]
"""

from __future__ import annotations

import argparse
import collections

import torch
import transformers

import peftkit
from peftkit.train.kernels import UNFUSED_ATTENTION_SCORES, attention_kernel

LLAMA = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "tie_word_embeddings": True,
}


def saved_bytes(width: int) -> tuple[dict[tuple[str, tuple[int, ...]], int], int]:
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).to(torch.bfloat16)
    model = peftkit.get_peft_model(
        base,
        peftkit.LoraConfig(
            r=8,
            lora_alpha=16,  # type: ignore[arg-type]
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        ),
    )
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    by_kind: collections.Counter[tuple[str, tuple[int, ...]]] = collections.Counter()

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in seen and key not in weights:
            seen.add(key)
            by_kind[(str(t.dtype).removeprefix("torch."), tuple(t.shape))] += (
                t.untyped_storage().nbytes()
            )
        return t

    ids = torch.randint(10, 1000, (8, width), generator=torch.Generator().manual_seed(1))
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        attention_kernel(model, {"input_ids": ids}, UNFUSED_ATTENTION_SCORES),
    ):
        model(input_ids=ids, logits_to_keep=1)
    return dict(by_kind), sum(by_kind.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=200)
    args = parser.parse_args()
    by_kind, total = saved_bytes(args.width)
    print(
        f"# Saved for backward: bf16-base LoRA r8 (q,k,v,o), Llama-134M shape, batch 8 x {args.width} tokens"
    )
    print(f"torch {torch.__version__}, transformers {transformers.__version__}\n")
    print("| dtype | shape | MB (all 30 layers) |")
    print("|---|---|---|")
    for (dtype, shape), nbytes in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        if nbytes >= 2**20:
            print(f"| {dtype} | {shape} | {nbytes / 2**20:.0f} |")
    print(f"| all | | {total / 2**20:.0f} |")


if __name__ == "__main__":
    main()
