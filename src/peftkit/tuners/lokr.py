"""LoKr (Yeh et al., 2023; the LyCORIS family): the update is a Kronecker product,
``dW = (W1 ⊗ W2) * alpha / r``, of a small matrix W1 (a, c) and a larger one W2 (b, d), with
``out = a b`` and ``in = c d`` (each dimension split into two factors near its square root, or
near ``decompose_factor``). W2, and W1 with ``decompose_both``, is itself a rank-r product when r
is below half its larger side; with ``use_effective_conv2d`` a convolution's W2 is a CP core
``T (r, r, k1, k2)`` contracted with W2a (r, b) and W2b (r, d).

Tensor names, shapes, draws and the factor split are PEFT's (``q_proj.lokr_w1.<name>``,
``lokr_w1_a``/``lokr_w1_b``, ``lokr_w2`` or ``lokr_w2_a``/``lokr_w2_b``, ``lokr_t2``). The
forward applies ``dW`` like the base layer applies its weight; merging adds it to the weight.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .lycoris import LycorisLayer

__all__ = ["LoKrLayer", "factorization", "kron"]

_TENSORS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)``, ``m <= n``, ``m * n == dimension``: ``m = factor`` when
    it divides, else the divisor pair nearest the square root with ``m`` at most ``factor``
    (LyCORIS's rule, which PEFT copies: ``factorization(128) == (8, 16)``,
    ``factorization(128, 4) == (4, 32)``, ``factorization(127) == (1, 127)``)."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    factor = dimension if factor == -1 else factor
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m:
            new_m += 1
        new_n = dimension // new_m
        # stop once the pair grows apart again or m passes the factor
        if new_m + new_n > m + n or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


def kron(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``torch.kron(x, y)``, element for element (the fewer-dimensional tensor gets leading axes of
    1), by broadcasting: ``torch.kron`` views its inputs and fails on the strides of a Conv1d's CP
    rebuild (PEFT's forward raises there)."""
    dims = max(x.dim(), y.dim())
    x = x.reshape((1,) * (dims - x.dim()) + tuple(x.shape))
    y = y.reshape((1,) * (dims - y.dim()) + tuple(y.shape))
    # x (m0, m1, ...) -> (m0, 1, m1, 1, ...); y (n0, n1, ...) -> (1, n0, 1, n1, ...)
    product = x.reshape([s for d in x.shape for s in (d, 1)]) * y.reshape(
        [s for d in y.shape for s in (1, d)]
    )
    return product.reshape([m * n for m, n in zip(x.shape, y.shape, strict=True)])


class LoKrLayer(LycorisLayer):
    """LoKr around ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d`` (see the module's docstring)."""

    adapter_param_names = _TENSORS
    method = "lokr"
    prefix = "lokr_"
    """What every LoKr tensor's name starts with (PEFT's tuner attribute of that name)."""
    other_param_names = (*LycorisLayer.other_param_names, "rank_dropout_scale")

    def __init__(self, base_layer: nn.Linear | nn.Conv1d | nn.Conv2d) -> None:
        super().__init__(base_layer)
        self.rank_dropout_scale: dict[str, bool] = {}

    def _shapes(
        self, r: int, factor: int, decompose_both: bool, effective_conv: bool
    ) -> dict[str, tuple[int, ...]]:
        """Each tensor's shape, in PEFT's creation order."""
        weight = self.weight  # (out, in / groups, k...)
        kernel = tuple(weight.shape[2:])
        (a, b), (c, d) = (
            factorization(weight.shape[0], factor),
            factorization(weight.shape[1], factor),
        )
        # a factor below twice the rank is stored whole (W1 always, unless decompose_both)
        use_w1 = not (decompose_both and r < max(a, c) / 2)
        use_w2 = r >= max(b, d) / 2
        cp = effective_conv and any(k != 1 for k in kernel)
        shapes: dict[str, tuple[int, ...]] = (
            {"lokr_w1": (a, c)} if use_w1 else {"lokr_w1_a": (a, r), "lokr_w1_b": (r, c)}
        )
        if use_w2:
            shapes["lokr_w2"] = (b, d, *kernel)
        elif cp:  # a Conv1d's core gets a second kernel axis of 1
            shapes["lokr_t2"] = (r, r, *kernel, *(1,) * (2 - len(kernel)))
            shapes["lokr_w2_a"], shapes["lokr_w2_b"] = (r, b), (r, d)
        else:
            shapes["lokr_w2_a"] = (b, r)
            shapes["lokr_w2_b"] = (r, d * math.prod(kernel))
        return shapes

    def add_adapter(
        self,
        name: str,
        r: int,
        alpha: float,
        rank_dropout: float = 0.0,
        module_dropout: float = 0.0,
        init_weights: bool | str = True,
        use_effective_conv2d: bool = False,
        decompose_both: bool = False,
        decompose_factor: int = -1,
        rank_dropout_scale: bool = False,
    ) -> None:
        """Create adapter ``name``, its tensors drawn as PEFT draws them: He initialization, with W1
        zero (``init_weights=True``: a fresh adapter is the base layer), W2 zero
        (``"lycoris"``), or nothing zero (False)."""
        shapes = self._shapes(r, decompose_factor, decompose_both, use_effective_conv2d)
        device = self.weight.device
        for attr, shape in shapes.items():
            self._tensors(attr)[name] = nn.Parameter(torch.empty(shape, device=device))
        zero = {True: {"lokr_w1", "lokr_w1_a"}, "lycoris": {"lokr_w2", "lokr_w2_b"}}
        zeros = zero.get(init_weights if init_weights == "lycoris" else bool(init_weights), set())
        # PEFT's draw order: W1 (or W1a, W1b), W2 (or W2a, W2b), T2; "lycoris" draws W2a before W2b
        order = [
            "lokr_w1",
            "lokr_w1_a",
            "lokr_w1_b",
            "lokr_w2",
            "lokr_w2_a",
            "lokr_w2_b",
            "lokr_t2",
        ]
        for attr in (a for a in order if a in shapes):
            tensor = self._tensors(attr)[name]
            if attr in zeros:
                nn.init.zeros_(tensor)
            else:
                nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))
        self._record(name, r, alpha, rank_dropout, module_dropout)
        self.rank_dropout_scale[name] = rank_dropout_scale

    def _rescales_rank_dropout(self, name: str) -> bool:
        return self.rank_dropout_scale[name]

    def _factor(self, name: str, whole: str, first: str, second: str) -> torch.Tensor:
        """A Kronecker factor: stored whole, or rebuilt from its two low-rank parts."""
        if name in self._tensors(whole):
            return self._tensors(whole)[name]
        return self._tensors(first)[name] @ self._tensors(second)[name]

    def delta_weight(self, name: str) -> torch.Tensor:
        """``kron(W1, W2) * scaling`` in the base weight's shape."""
        w1 = self._factor(name, "lokr_w1", "lokr_w1_a", "lokr_w1_b")  # (a, c)
        if name in self._tensors("lokr_t2"):
            t2, w2a, w2b = (self._tensors(t)[name] for t in ("lokr_t2", "lokr_w2_a", "lokr_w2_b"))
            w2 = torch.einsum("ijkl,ip,jr->prkl", t2, w2a, w2b)  # (b, d, k1, k2)
        else:
            w2 = self._factor(name, "lokr_w2", "lokr_w2_a", "lokr_w2_b")  # (b, d...)
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]  # (a, c, 1, 1): the kernel comes from W2
        return (kron(w1, w2) * self.scaling[name]).reshape(self.weight.shape)
