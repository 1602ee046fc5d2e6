"""How fast can an unmerged LoRA decode at batch 1 in eager PyTorch? The floor, against peftkit and
the base.

Issue 22 asks unmerged LoRA for >= 0.95x the base model's tokens/s at batch 1. Every adapted linear
layer (210 in SmolLM2-135M with ``all-linear``) adds at least three operations per token: ``A x``,
``B (A x)`` and the sum. This script measures what those three operations cost on their own: a
"floor" model whose adapted layers run exactly them, on plain tensors (no adapter bookkeeping, no
module lookups), next to peftkit's unmerged LoRA with the same weights, the base model, and
peftkit's merged LoRA. The floor's ratio to the base is the best any eager unmerged LoRA can reach
on this machine; the floor and peftkit must produce the same tokens (same arithmetic), which the
script checks.

    python benchmarks/lora_floor.py [--rounds 5] [--dtype float32]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn

import peftkit
from peftkit.integrations.models import load_model
from peftkit.train.defaults import cpu_summary
from peftkit.tuners.lora import LoraLinear

NEW_TOKENS, PROMPT_TOKENS = 32, 16


class FloorLora(nn.Module):
    """``W x + s * B(A x)`` with nothing else: the three operations any unmerged LoRA must run."""

    def __init__(
        self, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float
    ) -> None:
        super().__init__()
        # plain tensors: plain attributes
        self.weight, self.a, self.b, self.scaling = weight, a, b, scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a bf16 base with its fp32 adapter: the update in fp32, rounded once, as peftkit
        if x.dtype != self.a.dtype:
            update = F.linear(F.linear(x.to(self.a.dtype), self.a) * self.scaling, self.b).to(
                x.dtype
            )
            return F.linear(x, self.weight).add_(update)  # (B, T, out)
        return F.linear(x, self.weight).add_(
            F.linear(F.linear(x, self.a), self.b), alpha=self.scaling
        )  # (B, T, out)


def lora_model(dtype: str) -> Any:
    """peftkit LoRA r8 on every linear layer, with random nonzero B so the branch really computes."""
    torch.manual_seed(0)
    model = peftkit.get_peft_model(
        load_model("smollm2-135m", task="CAUSAL_LM", dtype=dtype),
        peftkit.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    return model.eval()


def floor_model(lora: Any, dtype: str) -> nn.Module:
    """The base model with each of ``lora``'s adapted layers replaced by a :class:`FloorLora` of its
    weights."""
    model = load_model("smollm2-135m", task="CAUSAL_LM", dtype=dtype).eval()
    for name, layer in lora.get_base_model().named_modules():
        if isinstance(layer, LoraLinear):
            parent, _, child = name.rpartition(".")
            weights = (
                layer.weight.detach(),
                layer.lora_A["default"].weight.detach(),
                layer.lora_B["default"].weight.detach(),
            )
            setattr(
                model.get_submodule(parent), child, FloorLora(*weights, layer.scaling["default"])
            )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(
        f"# Unmerged LoRA at batch 1 against its floor, SmolLM2-135M, {args.dtype}, {PROMPT_TOKENS}-token prompt, "
        f"{NEW_TOKENS} new tokens"
    )
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads; "
        f"device {args.device}; CPU: {cpu_summary()}\n"
    )
    lora = lora_model(args.dtype).to(args.device)
    merged = lora_model(args.dtype).to(args.device)
    merged.merge_adapter()
    base = load_model("smollm2-135m", task="CAUSAL_LM", dtype=args.dtype).eval().to(args.device)
    # after lora's move: its plain tensors are lora's own
    floor = floor_model(lora, args.dtype).to(args.device)
    models = {
        "base": base,
        "peftkit LoRA unmerged": lora,
        "floor: 3 ops per layer": floor,
        "peftkit LoRA merged": merged,
    }
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    ids = torch.randint(
        100, 10000, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0)
    ).to(args.device)
    settings = {
        "max_new_tokens": NEW_TOKENS,
        "min_new_tokens": NEW_TOKENS,
        "do_sample": False,
        "attention_mask": torch.ones_like(ids),
    }
    speeds: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        # warm-up
        tokens = {name: model.generate(input_ids=ids, **settings) for name, model in models.items()}
        for _ in range(args.rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model.generate(input_ids=ids, **settings)
                sync()
                speeds[name].append(NEW_TOKENS / (time.perf_counter() - start))
    same = torch.equal(tokens["peftkit LoRA unmerged"], tokens["floor: 3 ops per layer"])
    tps = {name: statistics.median(v) for name, v in speeds.items()}
    base_ms = 1000 / tps["base"]
    print("| row | tokens/s | x base | ms per token over the base |")
    print("|---|---|---|---|")
    for name, speed in tps.items():
        print(
            f"| {name} | {speed:.1f} | {speed / tps['base']:.2f}x | {1000 / speed - base_ms:+.2f} |"
        )
    layers = sum(isinstance(m, LoraLinear) for m in lora.modules())
    extra = 1000 / tps["peftkit LoRA unmerged"] - 1000 / tps["floor: 3 ops per layer"]
    print(
        f"\n{layers} adapted layers; peftkit's bookkeeping over the floor: {extra * 1000 / layers:+.1f} us per "
        f"layer per token; floor and peftkit unmerged give the same tokens: {same}"
    )


if __name__ == "__main__":
    main()
