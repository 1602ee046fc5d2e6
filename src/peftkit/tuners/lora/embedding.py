"""LoRA on ``nn.Embedding``: ``y = E[x] + scaling * (A^T[x]) B^T``, the update looked up like the
embedding.

Tensor names follow PEFT's (``embed_tokens.lora_embedding_A.<name>``); no dropout, as in PEFT. An
embedding that scales its output (Gemma's ``embed_scale``) scales the update too, so merged equals
unmerged. DoRA here normalizes each embedding dimension (a column of ``E``, over the vocabulary) and
rescales it by a learned magnitude, PEFT's choice for embeddings: ``y = f * E[x] + f * s (A^T[x])
B^T`` with ``f = m / ||E^T + s B A||``.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ..rows import RowGroups
from . import dora
from .layer import LoraLayer

__all__ = ["LoraEmbedding"]


class LoraEmbedding(LoraLayer):
    """LoRA around ``nn.Embedding``: the update is looked up like the embedding itself (no dropout)."""

    repr_name = "lora.Embedding"

    adapter_param_names = ("lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")

    def __init__(self, base_layer: nn.Embedding) -> None:
        super().__init__(base_layer)
        self.num_embeddings = base_layer.num_embeddings
        self.embedding_dim = base_layer.embedding_dim
        # as every PEFT layer has
        self.in_features, self.out_features = self.num_embeddings, self.embedding_dim
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()
        # DoRA adapters only: one magnitude per dimension, (D,)
        self.lora_magnitude_vector = nn.ParameterDict()
        # DoRA: the norm used at merge, for unmerge
        self._merged_norms: dict[str, torch.Tensor] = {}
        self.rows: RowGroups | None = None  # set for a mixed batch: each row's own adapter

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Adapter ``name``'s A (r, num_embeddings) and B (embedding_dim, r), or None when not held
        here."""
        if name not in self.lora_embedding_A:
            return None
        return self.lora_embedding_A[name], self.lora_embedding_B[name]

    def own_factors(self, name: str) -> tuple[nn.Parameter, nn.Parameter]:
        """Adapter ``name``'s A (r, num_embeddings) and B (embedding_dim, r) parameters themselves."""
        return self.lora_embedding_A[name], self.lora_embedding_B[name]

    def share_factors(self, name: str, a: nn.Parameter, b: nn.Parameter) -> None:
        """Make adapter ``name`` hold ``a`` and ``b``, another embedding's parameters (tied
        embeddings)."""
        self.lora_embedding_A[name], self.lora_embedding_B[name] = a, b

    def transposed_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B^T, A^T)``: views of adapter ``name``'s factors shaped as a tied output head's A (r,
        embedding_dim) and B (num_embeddings, r); the head's update is this one's, transposed
        (``ensure_weight_tying``)."""
        return self.lora_embedding_B[name].t(), self.lora_embedding_A[name].t()

    def add_adapter(
        self,
        name: str,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        init_lora_weights: bool | str = True,
        use_rslora: bool = False,
        use_dora: bool = False,
        lora_bias: bool = False,
    ) -> None:
        """Create adapter ``name``: A (r, num_embeddings) and B (embedding_dim, r), in fp32; with
        ``use_dora`` its magnitudes start at the adapted weight's norms, so a fresh DoRA adapter
        equals the base layer."""
        if lora_bias:  # PEFT's ValueError: the factors are plain tensors, with no bias to add
            raise ConfigError(
                f"lora_bias={lora_bias} is not supported for Embedding: leave the embedding out of "
                "target_modules or set lora_bias=False"
            )
        device = self.weight.device
        a = torch.randn(r, self.num_embeddings, device=device)
        b = torch.randn(self.embedding_dim, r, device=device)
        if init_lora_weights is not False:
            # As in the LoRA paper's embedding layer: A zero, B normal, so the update starts at
            # zero. B is drawn a second time because PEFT does: the same seed then gives PEFT's
            # adapter, draw for draw.
            a.zero_()
            b.normal_()
        self.lora_embedding_A[name] = nn.Parameter(a)
        self.lora_embedding_B[name] = nn.Parameter(b)
        self._set_scaling(name, r, lora_alpha, use_rslora)
        if use_dora:
            with torch.no_grad():
                self.lora_magnitude_vector[name] = nn.Parameter(self._weight_norm(name).float())

    def _weight_norm(self, name: str) -> torch.Tensor:
        """``||E^T + s B A||`` per embedding dimension, ``(D,)``: DoRA's norm (E^T is (D, V), a
        linear layer's (out, in) layout)."""
        a, b = self.lora_embedding_A[name], self.lora_embedding_B[name]
        return dora.row_norms(self.weight.T, a, b, self.scaling[name])

    def _embed_scale(self) -> torch.Tensor | None:
        """The factor a scaled embedding (Gemma's) applies to its output, or None."""
        scale = getattr(self.base_layer, "embed_scale", None)
        if scale is None:
            return None
        return torch.as_tensor(scale, device=self.weight.device, dtype=self.weight.dtype)

    def _merge_one(self, name: str) -> None:
        if name not in self.lora_magnitude_vector:
            super()._merge_one(name)
            return
        # the unmerged weight's norm, as forward
        a, b = self.lora_embedding_A[name], self.lora_embedding_B[name]
        norm = dora.row_norms(self._unmerged_weight(), a, b, self.scaling[name]).detach()
        self._merged_norms[name] = norm
        factor = self.lora_magnitude_vector[name] / norm  # (D,)
        merged = dora.merged_weight(self.weight.T, self.delta_weight(name).T, factor)  # (D, V)
        self.weight.data = merged.T.to(self.weight.dtype).contiguous()

    def _unmerged_weight(self) -> torch.Tensor:
        """``E^T`` (D, V) as it was before any merge: the merged adapters undone on a copy, newest
        first."""
        merges = [
            (self.delta_weight(n).T, self._merged_factor(n)) for n in reversed(self.merged_adapters)
        ]
        return dora.weight_before_merges(self.weight.T.float(), merges)  # (D, V)

    def _unmerge_one(self, name: str) -> None:
        if name not in self.lora_magnitude_vector:
            super()._unmerge_one(name)
            return
        factor = self.lora_magnitude_vector[name] / self._merged_norms.pop(name)
        weight = dora.unmerged_weight(self.weight.T, self.delta_weight(name).T, factor)  # (D, V)
        self.weight.data = weight.T.to(self.weight.dtype).contiguous()
        self.merged_adapters.remove(name)

    def delta_weight(self, name: str) -> torch.Tensor:
        a = self.lora_embedding_A[name]  # (r, V)
        b = self.lora_embedding_B[name]  # (D, r)
        return (b @ a).T * self.scaling[name]  # (V, D)

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if self.rows is not None and not self.disabled:
            return self._forward_rows(x, self.rows, *args, **kwargs)
        pending = self._pending()  # first: it may unmerge before the base layer runs
        result = self.base_layer(x, *args, **kwargs)  # (B, T, D)
        for name in pending:
            update = self._update(name, x)  # (B, T, D)
            if name in self.lora_magnitude_vector:  # DoRA rescales what came before, as PEFT's does
                # (D,), fp32
                factor = self.lora_magnitude_vector[name] / self._weight_norm(name).detach()
                result, update = (factor * result).to(result.dtype), factor * update
            result = result + update.to(result.dtype)
        return result

    def _update(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``scaling * (A^T[x]) B^T`` (times the embedding's own scale, if it has one), ``(B, T,
        D)``."""
        base = cast(nn.Embedding, self.base_layer)
        a, b = self.lora_embedding_A[name], self.lora_embedding_B[name]
        after_a = F.embedding(
            x,
            a.T,
            base.padding_idx,
            base.max_norm,
            base.norm_type,
            base.scale_grad_by_freq,
            base.sparse,
        )  # (B, T, r)
        update = (after_a @ b.T) * self.scaling[name]  # (B, T, D)
        embed_scale = self._embed_scale()
        return update if embed_scale is None else update * embed_scale.to(update.dtype)

    def _forward_rows(
        self, x: torch.Tensor, rows: RowGroups, *args: object, **kwargs: object
    ) -> torch.Tensor:
        """Each adapter's update on its own rows of the batch (see :mod:`.rows`)."""
        self._check_rows(rows, x)
        result = self.base_layer(x, *args, **kwargs)  # (B, T, D)
        for name, index in rows.by_adapter.items():
            if name in self.scaling:
                result = result.index_add(0, index, self._update(name, x[index]).to(result.dtype))
        return result

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, dim={self.embedding_dim}, adapters={self.adapter_names}"
