"""Trainable tokens (PEFT's ``TrainableTokensConfig``): a few rows of an embedding matrix are
trained, the rest frozen, so new tokens (chat-template markers, added words) learn an embedding
without training, saving or holding optimizer state for the whole matrix.

The layer keeps the trained rows (``trainable_tokens_delta``, (tokens, dim)) and a copy of the
original rows (a buffer, not saved); the forward looks tokens up in the base weight with those rows
replaced. A head tied to the embedding (``lm_head``) shares the same rows through ``tied_to``, so
the output projection sees the new embeddings too. Tensor names and shapes are PEFT's
(``embed_tokens.trainable_tokens_delta``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterLayer

__all__ = ["TrainableTokensLayer"]


class TrainableTokensLayer(AdapterLayer):
    """Chosen rows of an ``nn.Embedding`` (or of a linear head tied to it) trained in place."""

    adapter_param_names = ("trainable_tokens_delta",)
    prefix = "trainable_tokens_"
    """What every tensor's name starts with (PEFT's tuner attribute of that name)."""
    other_param_names = ("token_indices", "trainable_tokens_original")

    def __init__(
        self,
        base_layer: nn.Embedding | nn.Linear,
        tied_to: TrainableTokensLayer | None = None,
        file_prefix: str = "",
    ):
        super().__init__(base_layer)
        # "token_adapter." beside LoRA (``trainable_token_indices``): PEFT wraps the layer there,
        # so its file keys carry the wrapper's attribute name
        self.file_prefix = file_prefix
        self.in_features, self.out_features = (
            (base_layer.num_embeddings, base_layer.embedding_dim)
            if isinstance(base_layer, nn.Embedding)
            else (base_layer.in_features, base_layer.out_features)
        )
        # a tied head keeps no rows of its own: it shares the embedding's container, so both
        # layers see the same rows (named_parameters() lists them once)
        self._tied = [tied_to] if tied_to is not None else []
        if tied_to is None:
            self.trainable_tokens_delta = nn.ParameterDict()
            self.trainable_tokens_original: dict[str, torch.Tensor] = {}
            self.token_indices: dict[str, list[int]] = {}
        else:  # the embedding's rows, registered here too (PEFT saves them under both keys)
            self.trainable_tokens_delta = tied_to.trainable_tokens_delta

    @property
    def tied_to(self) -> TrainableTokensLayer | None:
        """The embedding layer whose rows this head uses, or None."""
        return self._tied[0] if self._tied else None

    def _owner(self) -> TrainableTokensLayer:
        """The layer that holds the rows: this one, or the embedding a head is tied to."""
        return self.tied_to or self

    def rows(self, name: str) -> nn.Parameter:
        """Adapter ``name``'s trained rows (tokens, dim)."""
        return cast(nn.Parameter, self._owner().trainable_tokens_delta[name])

    def adapter_parameters(self, name: str) -> Iterator[tuple[str, str, nn.Parameter]]:
        """As every layer's, with ``file_prefix`` in the file names; a head tied beside LoRA holds
        nothing of its own in PEFT's files (the method alone saves it under both keys)."""
        if self.file_prefix and self.tied_to is not None:
            return
        for key, in_file, param in super().adapter_parameters(name):
            yield key, self.file_prefix + in_file, param

    def _token_indices(self) -> dict[str, list[int]]:
        return self._owner().token_indices

    @property
    def adapter_names(self) -> list[str]:
        return list(self._token_indices())

    def add_adapter(self, name: str, token_indices: list[int], init_weights: bool = True) -> None:
        """Train rows ``token_indices``: starting at the embedding's own values (``init_weights``:
        the layer is unchanged) or at random normal values, as PEFT does."""
        if self.tied_to is not None:
            return  # the embedding adds them
        weight = self.weight  # (vocabulary, dim)
        originals = weight[token_indices]
        values = (
            originals
            if init_weights
            else torch.randn(
                (len(token_indices), weight.shape[1]), dtype=weight.dtype, device=weight.device
            )
        )
        self.token_indices[name] = list(token_indices)
        self.trainable_tokens_delta[name] = nn.Parameter(values.clone(), requires_grad=True)
        self.trainable_tokens_original[name] = originals.detach().clone()

    def _forget(self, name: str) -> None:
        if self.tied_to is None:
            self.token_indices.pop(name, None)
            self.trainable_tokens_original.pop(name, None)

    def delete_adapter(self, name: str) -> None:
        if self.tied_to is None:
            super().delete_adapter(name)
        else:  # the embedding owns the rows: only this head's bookkeeping goes
            self.active_adapters = [n for n in self.active_adapters if n != name]
            self._applied = [n for n in self._applied if n != name]

    def _check_disjoint(self, names: list[str]) -> None:
        seen: set[int] = set()
        for name in dict.fromkeys([*self.merged_adapters, *names]):
            rows = set(self._token_indices()[name])
            if seen & rows:
                raise ValueError(
                    f"Token indices of adapter {name} are already defined and would result in "
                    "undefined merging behavior. Only disjunct token indices are currently supported."
                )
            seen |= rows

    def _weight_with(self, names: list[str]) -> torch.Tensor:
        """The base weight with the rows of ``names`` replaced (a new tensor; gradients reach the
        rows)."""
        weight = self.weight
        for name in names:
            index = torch.tensor(self._token_indices()[name], device=weight.device)
            weight = weight.index_copy(0, index, self.rows(name).to(weight))
        return weight

    def _plain_lookup(self, base: nn.Embedding, names: list[str]) -> bool:
        """Whether the lookup can skip building the whole new matrix: no option of the embedding
        reads or rescales the matrix (``max_norm``, ``scale_grad_by_freq``), and no trained row is
        the padding row (which gets no gradient)."""
        rows = {i for name in names for i in self._token_indices()[name]}
        return (
            base.max_norm is None and not base.scale_grad_by_freq and base.padding_idx not in rows
        )

    def _lookup(self, x: torch.Tensor, names: list[str]) -> torch.Tensor:
        """The base lookup with the trained rows put in where ``x`` names them: the same values
        as looking ``x`` up in the replaced matrix, without copying the (vocabulary, dim) matrix
        on every forward."""
        out = F.embedding(x, self.weight)  # (B, T, dim)
        for name in names:
            index = torch.tensor(self._token_indices()[name], device=x.device)
            slot = torch.full((self.weight.shape[0],), -1, dtype=torch.long, device=x.device)
            slot[index] = torch.arange(len(index), device=x.device)
            which = slot[x]  # (B, T): each token's trained row, -1 for none
            rows = self.rows(name).to(out.dtype)[which.clamp(min=0)]  # (B, T, dim)
            out = torch.where((which >= 0).unsqueeze(-1), rows, out)
        return out

    def _merge_one(self, name: str) -> None:
        self._check_disjoint([name])
        self.weight.data = self._weight_with([name]).detach()

    def _unmerge_one(self, name: str) -> None:
        index = torch.tensor(self._token_indices()[name], device=self.weight.device)
        original = self._owner().trainable_tokens_original[name].to(self.weight)
        self.weight.data.index_copy_(0, index, original)
        self.merged_adapters.remove(name)

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        names = self._pending()
        base = self.base_layer
        if not names:
            return base(x, *args, **kwargs)
        self._check_disjoint(names)
        if isinstance(base, nn.Embedding) and self._plain_lookup(base, names):
            out = self._lookup(x, names)
            scale = getattr(base, "embed_scale", None)  # Gemma-style scaled embeddings
            return out * scale.to(out.dtype) if isinstance(scale, torch.Tensor) else out
        weight = self._weight_with(names)
        if isinstance(base, nn.Embedding):
            out = F.embedding(
                x,
                weight,
                base.padding_idx,
                base.max_norm,
                base.norm_type,
                base.scale_grad_by_freq,
                base.sparse,
            )
            scale = getattr(base, "embed_scale", None)  # Gemma-style scaled embeddings
            return out * scale.to(out.dtype) if isinstance(scale, torch.Tensor) else out
        return F.linear(x, weight)
