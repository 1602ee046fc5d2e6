"""LoRA on a raw parameter (PEFT's ``target_parameters``): the expert weights of mixture-of-experts
layers, which models store as one ``nn.Parameter`` of shape ``(experts, ., .)`` rather than as
``nn.Linear`` layers.

The wrapper holds the module that owns the parameter. While that module runs, its attribute
``parameter_name`` reads ``W + delta`` instead of ``W`` (the sum computed once per call), so the
module's own code, whatever it does with the weight, sees the adapted one; ``W`` itself stays the
frozen ``nn.Parameter`` it was. Two parameters of one module are two wrappers, one inside the
other, in the order the module registered them: PEFT's nesting, hence PEFT's keys
(``experts.base_layer.lora_A`` for the inner one).

For a ``(E, a, b)`` parameter A is ``(E * r, in)`` and B ``(out, E * r)`` (PEFT's layout), with
``in, out = b, a`` (the weight applied as ``x @ W[e].T``), or ``a, b`` when the module says
``is_transposed``. A 2-D parameter is a linear layer's weight: ``(out, in)``, one "expert".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import cast

import torch
from torch import nn

from ...errors import ConfigError
from . import init as lora_init
from .layer import LoraLayer

__all__ = ["LoraParam", "owner"]


def owner(layer: nn.Module) -> nn.Module:
    """The module that holds the parameters, under any number of :class:`LoraParam` wrappers."""
    while isinstance(layer, LoraParam):
        layer = layer.base_layer
    return layer


class LoraParam(LoraLayer):
    """LoRA on parameter ``parameter_name`` of ``base_layer`` (a module, or another wrapper)."""

    repr_name = "lora.ParamWrapper"
    adapter_param_names = ("lora_A", "lora_B", "lora_dropout")
    mixed_batch_refusal = "lora.ParamWrapper does not support mixed adapter batches yet."

    def __init__(self, base_layer: nn.Module, parameter_name: str) -> None:
        super().__init__(base_layer)
        self.parameter_name: str = parameter_name
        shape = self.param.shape
        if len(shape) not in (2, 3):
            raise ConfigError(
                f"target_parameters: {parameter_name!r} has {len(shape)} dimensions; LoRA adapts 2-D "
                "weights and 3-D expert stacks (experts, ., .) only"
            )
        self.num_experts = shape[0] if len(shape) == 3 else 1
        self.swapped = len(shape) == 3 and not getattr(owner(base_layer), "is_transposed", False)
        if len(shape) == 2:
            self.in_features, self.out_features = shape[1], shape[0]
        else:
            self.in_features, self.out_features = (
                (shape[2], shape[1]) if self.swapped else (shape[1], shape[2])
            )
        self.fan_in_fan_out = False
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()

    @property
    def param(self) -> torch.Tensor:
        """The adapted parameter (the owner's, not any wrapper's)."""
        return cast(torch.Tensor, owner(self.base_layer)._parameters[self.parameter_name])

    @property
    def weight(self) -> torch.Tensor:
        return self.param

    @property
    def bias(self) -> torch.Tensor | None:
        return None  # a merge changes the parameter alone

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
        """Create adapter ``name``: A ``(experts * r, in)``, B ``(out, experts * r)``, fp32."""
        what = type(self).__name__
        for problem, said in (
            (lora_dropout, "lora_dropout != 0"),
            (use_dora, "use_dora=True"),
            (lora_bias, "lora_bias=True"),
        ):
            if problem:  # PEFT's refusals (dropout cannot be factored out of B A x)
                raise ConfigError(f"lora.{what} (target_parameters) does not work with {said}.")
        if isinstance(init_lora_weights, str) and init_lora_weights != "gaussian":
            raise ConfigError(
                f"init_lora_weights={init_lora_weights!r} reads a layer's weight; with target_parameters "
                "use true, false or 'gaussian'"
            )
        rank = r * self.num_experts
        device = self.param.device
        a = nn.Linear(self.in_features, rank, bias=False, device=device)
        b = nn.Linear(rank, self.out_features, bias=False, device=device)
        lora_init.random_start(a, b, init_lora_weights, r)
        self.lora_A[name], self.lora_B[name] = a, b
        self.lora_dropout[name] = nn.Identity()
        self._set_scaling(name, r, lora_alpha, use_rslora)
        self.lora_bias[name] = False

    def _factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            cast(torch.Tensor, self.lora_A[name].weight),
            cast(torch.Tensor, self.lora_B[name].weight),
        )

    def _expert_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lhs, rhs)`` with ``delta = scaling * lhs @ rhs``, both ``(E, ., r)``/``(E, r, .)`` in
        the parameter's dtype (PEFT's ``get_delta_factors``)."""
        a, b = self._factors(name)
        a3 = a.reshape(self.num_experts, -1, a.shape[-1])  # (E, r, in)
        b3 = b.reshape(b.shape[0], -1, self.num_experts).permute(2, 0, 1)  # (E, out, r)
        lhs, rhs = (b3, a3) if self.swapped else (a3.transpose(-2, -1), b3.transpose(-2, -1))
        dtype = self.param.dtype
        return lhs.to(dtype), rhs.to(dtype)

    def delta_weight(self, name: str) -> torch.Tensor:
        """``scaling * B A`` in the parameter's shape and dtype."""
        a, b = self._factors(name)
        if self.num_experts == 1:
            delta = (b @ a) * self.scaling[name]  # (out, in)
        else:
            a3 = a.reshape(self.num_experts, -1, a.shape[-1])  # (E, r, in)
            b3 = b.reshape(b.shape[0], -1, self.num_experts)  # (out, r, E)
            how = "o r e, e r i -> e o i" if self.swapped else "o r e, e r i -> e i o"
            delta = torch.einsum(how, b3, a3) * self.scaling[name]
        return delta.to(self.param.dtype)

    def _adapted(self, names: list[str]) -> torch.Tensor:
        """What the parameter reads while adapters ``names`` apply: one fused ``baddbmm`` for a
        single adapter on an expert stack (no delta the size of the stack), else ``W + sum of
        deltas``, as PEFT computes them."""
        param = self.param
        if len(names) == 1 and self.num_experts > 1:
            lhs, rhs = self._expert_factors(names[0])
            with torch.autocast(device_type=param.device.type, enabled=False):
                return torch.baddbmm(param, lhs, rhs, alpha=self.scaling[names[0]])
        delta = self.delta_weight(names[0])
        for name in names[1:]:
            delta = delta + self.delta_weight(name)
        return param + delta

    @contextlib.contextmanager
    def _reading(self, value: torch.Tensor) -> Iterator[None]:
        """Inside, the owner's attribute ``parameter_name`` is ``value``: an instance attribute
        shadows the entry in ``_parameters`` (``nn.Module`` looks there only when normal lookup
        fails), which stays as it is, in its place, for optimizers and state dicts."""
        module = owner(self.base_layer)
        module.__dict__[self.parameter_name] = value
        try:
            yield
        finally:
            del module.__dict__[self.parameter_name]

    def _merge_one(self, name: str) -> None:
        self.param.data += self.delta_weight(name)

    def _unmerge_one(self, name: str) -> None:
        self.param.data -= self.delta_weight(name)
        self.merged_adapters.remove(name)

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        # a mixed batch (adapter_names) is refused before it gets here: surgery.rows_through_adapters
        pending = self._pending()
        if not pending:
            return cast(torch.Tensor, self.base_layer(x, *args, **kwargs))
        with self._reading(self._adapted(pending)):
            return cast(torch.Tensor, self.base_layer(x, *args, **kwargs))

    def extra_repr(self) -> str:
        return (
            f"parameter_name={self.parameter_name!r}, experts={self.num_experts}, "
            f"in_features={self.in_features}, out_features={self.out_features}, adapters={self.adapter_names}"
        )
