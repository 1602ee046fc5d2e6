"""LoHa (Hyeon-Woo et al., 2022; the LyCORIS family): the update is a Hadamard product of two
low-rank products, ``dW = (W1a @ W1b) * (W2a @ W2b) * alpha / r``, so its rank can reach ``r**2``
from ``2 r (out + in)`` numbers.

On ``nn.Linear`` ``dW`` is (out, in); on ``nn.Conv1d/2d`` it is the kernel flattened to (out, in /
groups * k...) and reshaped. With ``use_effective_conv2d`` (a kernel larger than 1) each product is
instead a CP decomposition of the kernel, ``T (r, r, k1, k2)`` contracted with W_b (r, in) and W_a
(r, out) (FedPara's proposition 3). Tensor names and shapes are PEFT's (``q_proj.hada_w1_a.<name>``;
``hada_t1`` and ``hada_t2`` for the CP cores). The forward applies ``dW`` like the base layer
applies its weight; merging adds it to the weight.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .lycoris import LycorisLayer

__all__ = ["LoHaLayer"]

_FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
_CORES = ("hada_t1", "hada_t2")


class LoHaLayer(LycorisLayer):
    """LoHa around ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d`` (see the module's docstring)."""

    adapter_param_names = (*_FACTORS, *_CORES)
    method = "loha"
    prefix = "hada_"
    """What every LoHa tensor's name starts with (PEFT's tuner attribute of that name)."""

    def add_adapter(
        self,
        name: str,
        r: int,
        alpha: float,
        rank_dropout: float = 0.0,
        module_dropout: float = 0.0,
        init_weights: bool = True,
        use_effective_conv2d: bool = False,
    ) -> None:
        """Create adapter ``name``, its tensors drawn as PEFT draws them (He initialization; W2b
        zero unless ``init_weights`` is False, so a fresh adapter is the base layer)."""
        kernel = tuple(self.weight.shape[2:])  # () for a linear layer
        # a 1x1 kernel is a matrix: no core needed
        cp = use_effective_conv2d and any(k != 1 for k in kernel)
        # a kernel flattened
        out_features, in_features = self.weight.shape[0], self.weight[0].numel()
        if cp:  # PEFT's creation order: t1, w1_a, w1_b, t2, w2_a, w2_b
            core, in_features = (r, r, *kernel, *(1,) * (2 - len(kernel))), self.weight.shape[1]
            shapes = {
                "hada_t1": core,
                "hada_w1_a": (r, out_features),
                "hada_w1_b": (r, in_features),
                "hada_t2": core,
                "hada_w2_a": (r, out_features),
                "hada_w2_b": (r, in_features),
            }
        else:
            shapes = {
                "hada_w1_a": (out_features, r),
                "hada_w1_b": (r, in_features),
                "hada_w2_a": (out_features, r),
                "hada_w2_b": (r, in_features),
            }
        device = self.weight.device
        for attr, shape in shapes.items():
            self._tensors(attr)[name] = nn.Parameter(torch.empty(shape, device=device))
        # PEFT's draw order: the same seed, its adapter
        for attr in (a for a in (*_FACTORS, *_CORES) if a in shapes):
            tensor = self._tensors(attr)[name]
            if attr == "hada_w2_b" and init_weights:
                nn.init.zeros_(tensor)
            else:
                nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))
        self._record(name, r, alpha, rank_dropout, module_dropout)

    def delta_weight(self, name: str) -> torch.Tensor:
        """``(W1a W1b) * (W2a W2b) * scaling`` in the base weight's shape (each product rebuilt from
        its CP core when the adapter has one)."""
        w1a, w1b, w2a, w2b = (self._tensors(attr)[name] for attr in _FACTORS)
        if name in self._tensors("hada_t1"):
            t1, t2 = (
                self._tensors("hada_t1")[name],
                self._tensors("hada_t2")[name],
            )  # (r, r, k1, k2)
            first = torch.einsum("ijkl,jr,ip->prkl", t1, w1b, w1a)  # (out, in, k1, k2)
            second = torch.einsum("ijkl,jr,ip->prkl", t2, w2b, w2a)
            return (first * second * self.scaling[name]).reshape(self.weight.shape)
        # (out, in...)
        return ((w1a @ w1b) * (w2a @ w2b) * self.scaling[name]).reshape(self.weight.shape)
