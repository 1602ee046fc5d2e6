"""Prompt-learning modules: they produce virtual-token embeddings or per-layer key/value prefixes.

Pure modules with PEFT's parameter names (``embedding.weight``, ``mlp_head.0.weight``, ``transform.0.weight``).
Each ``forward()`` returns the whole prompt, ``(num_tokens, width)``; batching happens where it is used.
"""

from __future__ import annotations

import torch
from torch import nn

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

    With ``direct=True`` (an adapter loaded for inference) only the encoder's saved output is kept, as in PEFT.
    """

    def __init__(
        self,
        num_tokens: int,
        token_dim: int,
        hidden_size: int,
        kind: str = "MLP",
        num_layers: int = 2,
        dropout: float = 0.0,
        direct: bool = False,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, token_dim)
        self.kind = kind
        self.direct = direct
        if direct:
            return
        if kind == "LSTM":
            self.lstm_head = nn.LSTM(token_dim, hidden_size, num_layers=num_layers, dropout=dropout,
                                     bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * hidden_size, 2 * hidden_size), nn.ReLU(),
                                          nn.Linear(2 * hidden_size, token_dim))
        else:
            self.mlp_head = nn.Sequential(nn.Linear(token_dim, hidden_size), nn.ReLU(),
                                          nn.Linear(hidden_size, hidden_size), nn.ReLU(),
                                          nn.Linear(hidden_size, token_dim))

    def forward(self) -> torch.Tensor:
        x = self.embedding.weight  # (N, D)
        if self.direct:
            return x
        if self.kind == "LSTM":
            x = self.lstm_head(x.unsqueeze(0))[0].squeeze(0)  # (N, 2H)
        return self.mlp_head(x)  # (N, D)


class PrefixEncoder(nn.Module):
    """Prefix tuning: ``num_layers * 2`` key/value vectors per virtual token, optionally through an MLP."""

    def __init__(self, num_tokens: int, token_dim: int, num_layers: int, hidden_size: int | None,
                 projection: bool) -> None:
        super().__init__()
        width = num_layers * 2 * token_dim
        self.projection = projection
        if projection:
            assert hidden_size is not None
            self.embedding = nn.Embedding(num_tokens, token_dim)
            self.transform = nn.Sequential(nn.Linear(token_dim, hidden_size), nn.Tanh(),
                                           nn.Linear(hidden_size, width))
        else:
            self.embedding = nn.Embedding(num_tokens, width)

    def forward(self) -> torch.Tensor:
        x = self.embedding.weight  # (N, D) or (N, L*2*D)
        return self.transform(x) if self.projection else x  # (N, L*2*D)
