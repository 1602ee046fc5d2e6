"""LoRA on ``nn.Embedding``: ``y = E[x] + scaling * (A^T[x]) B^T``, the update looked up like the embedding.

Tensor names follow PEFT's (``embed_tokens.lora_embedding_A.<name>``); no dropout, as in PEFT.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .lora import LoraLayer

__all__ = ["LoraEmbedding"]


class LoraEmbedding(LoraLayer):
    """LoRA around ``nn.Embedding``: the update is looked up like the embedding itself (no dropout)."""

    adapter_param_names = ("lora_embedding_A", "lora_embedding_B")

    def __init__(self, base_layer: nn.Embedding) -> None:
        super().__init__(base_layer)
        self.num_embeddings = base_layer.num_embeddings
        self.embedding_dim = base_layer.embedding_dim
        self.in_features, self.out_features = self.num_embeddings, self.embedding_dim  # as every PEFT layer has
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    def add_adapter(
        self,
        name: str,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        init_lora_weights: bool | str = True,
        use_rslora: bool = False,
    ) -> None:
        """Create adapter ``name``: A (r, num_embeddings) and B (embedding_dim, r), in fp32."""
        device = self.weight.device
        a = torch.randn(r, self.num_embeddings, device=device)
        b = torch.randn(self.embedding_dim, r, device=device)
        if init_lora_weights is not False:
            # As in the LoRA paper's embedding layer: A zero, B normal, so the update starts at zero. B is
            # drawn a second time because PEFT does: the same seed then gives PEFT's adapter, draw for draw.
            a.zero_()
            b.normal_()
        self.lora_embedding_A[name] = nn.Parameter(a)
        self.lora_embedding_B[name] = nn.Parameter(b)
        self._set_scaling(name, r, lora_alpha, use_rslora)

    def delta_weight(self, name: str) -> torch.Tensor:
        a = self.lora_embedding_A[name]  # (r, V)
        b = self.lora_embedding_B[name]  # (D, r)
        return (b @ a).T * self.scaling[name]  # (V, D)

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        pending = self._pending()  # first: it may unmerge before the base layer runs
        result = self.base_layer(x, *args, **kwargs)  # (B, T, D)
        base = cast(nn.Embedding, self.base_layer)
        for name in pending:
            a, b = self.lora_embedding_A[name], self.lora_embedding_B[name]
            after_a = F.embedding(
                x, a.T, base.padding_idx, base.max_norm, base.norm_type, base.scale_grad_by_freq, base.sparse
            )  # (B, T, r)
            result = result + ((after_a @ b.T) * self.scaling[name]).to(result.dtype)  # (B, T, D)
        return result

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, dim={self.embedding_dim}, adapters={self.adapter_names}"
