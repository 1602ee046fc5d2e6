"""Which adapters vLLM serves: its rules for ``adapter_config.json`` (``vllm/lora/peft_helper.py``),
checked here so a user learns before deploying that a folder will be refused there.

vLLM (``vllm serve MODEL --enable-lora --lora-modules name=path``) serves LoRA adapters only; it
refuses DoRA, trained copies of whole modules (``modules_to_save``), adapter biases, ranks above its
``--max-lora-rank`` (16 unless raised), and PiSSA/OLoRA adapters saved without conversion (they
changed the base weights, which vLLM does not have). peftkit's own server serves all of them.
"""

from __future__ import annotations

from ..config import AdaLoraConfig, LoraConfig, PeftConfig

__all__ = ["VLLM_MAX_LORA_RANK", "vllm_problems"]

VLLM_MAX_LORA_RANK = 16
"""vLLM's default ``--max-lora-rank``."""


def vllm_problems(config: PeftConfig, max_lora_rank: int = VLLM_MAX_LORA_RANK) -> list[str]:
    """Why vLLM would refuse the adapter ``config`` describes (vLLM's words where it has them);
    empty when it would load it."""
    if not isinstance(config, LoraConfig) or isinstance(config, AdaLoraConfig):
        return [f"vLLM serves LoRA adapters only, not {config.peft_type_name}"]
    problems = []
    if config.modules_to_save:
        problems.append(
            f"vLLM only supports modules_to_save being None (this adapter trains a full copy of "
            f"{', '.join(config.modules_to_save)})"
        )
    if config.use_dora:
        problems.append("vLLM does not yet support DoRA.")
    if config.bias != "none":
        problems.append("Adapter bias is not supported.")
    ranks = [config.r, *config.rank_pattern.values()]
    if max(ranks) > max_lora_rank:
        problems.append(
            f"LoRA rank {max(ranks)} is greater than max_lora_rank {max_lora_rank} (start vLLM with "
            f"--max-lora-rank {_next_rank(max(ranks))})"
        )
    init = config.init_lora_weights
    if isinstance(init, str) and init.startswith(("pissa", "olora")):
        problems.append(
            f"init_lora_weights={init!r}: the adapter expects the residual base weights it was trained "
            "on; save it with path_initial_model_for_weight_conversion to get a plain LoRA adapter"
        )
    return problems


def _next_rank(rank: int) -> int:
    """The smallest --max-lora-rank value vLLM accepts that holds ``rank``."""
    allowed = [8, 16, 32, 64, 128, 256, 320, 512]
    return next((a for a in allowed if a >= rank), rank)
