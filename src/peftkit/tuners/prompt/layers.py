"""Prompt-learning modules: they produce virtual-token embeddings or per-layer key/value prefixes.

Pure modules with PEFT's parameter names (``embedding.weight``, ``mlp_head.0.weight``,
``transform.0.weight``). Each ``forward()`` returns the whole prompt, ``(num_tokens, width)``;
batching happens where it is used.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ...config import PromptEncoderConfig

__all__ = ["PrefixEncoder", "PromptEmbedding", "PromptEncoder"]


class PromptEmbedding(nn.Module):
    """Prompt tuning: the virtual tokens are free embedding vectors."""

    def __init__(self, num_tokens: int, token_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, token_dim)

    def forward(self) -> torch.Tensor:
        return self.embedding.weight  # (N, D)


class PromptEncoder(nn.Module):
    """P-tuning: embeddings reparameterized by an MLP or a bidirectional LSTM plus MLP.

    Built from its config, as PEFT's is. An adapter loaded for inference (``config.inference_mode``)
    keeps only the encoder's saved output, as in PEFT.
    """

    def __init__(self, config: PromptEncoderConfig) -> None:
        super().__init__()
        if config.num_virtual_tokens is None or config.token_dim is None:
            raise ValueError(
                "PromptEncoder needs config.num_virtual_tokens and config.token_dim; get_peft_model "
                "fills token_dim from the model, or set both in the PromptEncoderConfig"
            )
        tokens = config.num_virtual_tokens * (config.num_transformer_submodules or 1)
        token_dim, hidden = config.token_dim, config.encoder_hidden_size or config.token_dim
        self.embedding = nn.Embedding(tokens, token_dim)
        self.kind = str(
            getattr(
                config.encoder_reparameterization_type,
                "value",
                config.encoder_reparameterization_type,
            )
        )
        self.direct = config.inference_mode
        if self.direct:
            return
        if self.kind == "LSTM":
            self.lstm_head = nn.LSTM(
                token_dim,
                hidden,
                num_layers=config.encoder_num_layers,
                dropout=config.encoder_dropout,
                bidirectional=True,
                batch_first=True,
            )
            self.mlp_head = nn.Sequential(
                nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, token_dim)
            )
            return
        if config.encoder_num_layers != 2:  # PEFT's words: the MLP has a fixed depth
            warnings.warn(
                f"for {self.kind}, the argument `encoder_num_layers` is ignored. Exactly 2 MLP layers are "
                "used.",
                stacklevel=2,
            )
        self.mlp_head = nn.Sequential(
            nn.Linear(token_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, token_dim),
        )

    def forward(self) -> torch.Tensor:
        x = self.embedding.weight  # (N, D)
        if self.direct:
            return x
        if self.kind == "LSTM":
            x = self.lstm_head(x.unsqueeze(0))[0].squeeze(0)  # (N, 2H)
        return self.mlp_head(x)  # (N, D)


class PrefixEncoder(nn.Module):
    """Prefix tuning: ``num_layers * 2`` key/value vectors per virtual token, optionally through an
    MLP."""

    def __init__(
        self,
        num_tokens: int,
        token_dim: int,
        num_layers: int,
        hidden_size: int | None,
        projection: bool,
    ) -> None:
        super().__init__()
        width = num_layers * 2 * token_dim
        self.projection = projection
        if projection:
            assert hidden_size is not None
            self.embedding = nn.Embedding(num_tokens, token_dim)
            self.transform = nn.Sequential(
                nn.Linear(token_dim, hidden_size), nn.Tanh(), nn.Linear(hidden_size, width)
            )
        else:
            self.embedding = nn.Embedding(num_tokens, width)

    def forward(self) -> torch.Tensor:
        x = self.embedding.weight  # (N, D) or (N, L*2*D)
        return self.transform(x) if self.projection else x  # (N, L*2*D)
