"""LoRA layers: a frozen base layer plus named low-rank adapters.

``y = base(x) + sum over active adapters of scaling * B(A(dropout(x)))``

Each adapter lives under its name in ``ModuleDict``/``ParameterDict`` containers, so parameter names
match Hugging Face PEFT's (``q_proj.lora_A.<name>.weight``). These modules do no I/O and know
nothing about the model around them; :mod:`peftkit.surgery` places them. LoRA on embeddings is in
:mod:`.lora_embedding`, DoRA's arithmetic in :mod:`.dora`, PiSSA's and OLoRA's start in
:mod:`.lora_init`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, MergeError, PeftWarning, warn_caller
from ..base import AdapterLayer, base_output
from ..rows import RowGroups
from . import dora
from . import init as lora_init
from .low_rank import low_rank_update

__all__ = ["AdapterLayer", "LoraLayer", "LoraLinear", "rank_axis", "unpaired_factors"]


def rank_axis(key: str) -> int | None:
    """The rank axis of a saved LoRA factor: 0 for ``lora_A`` (r, in), 1 for ``lora_B`` (out, r);
    None for any other tensor of an adapter file."""
    parts = key.split(".")
    if parts[-1] == "bias":  # B's bias (lora_bias) has no rank axis
        return None
    return 0 if "lora_A" in parts else 1 if "lora_B" in parts else None


def unpaired_factors(keys: Iterable[str]) -> set[str]:
    """The layers (keys without the factor's name) whose saved tensors hold only one of ``lora_A``
    and ``lora_B``."""
    # B's bias (lora_bias) is no third factor
    a_keys = {k.split(".lora_A.")[0] for k in keys if ".lora_A." in k}
    b_keys = {k.split(".lora_B.")[0] for k in keys if ".lora_B." in k}
    return a_keys ^ b_keys


class LoraLayer(AdapterLayer):
    """Bookkeeping shared by LoRA layers: ranks and scalings on top of :class:`AdapterLayer`.

    Attributes:
        scaling: ``lora_alpha / r`` (or ``/ sqrt(r)`` with rsLoRA) per adapter.
    """

    prefix = "lora_"
    """What every LoRA tensor's name starts with (PEFT's tuner attribute of that name)."""
    other_param_names = ("r", "scaling")
    lora_magnitude_vector: nn.ParameterDict  # DoRA's magnitudes, created by each layer kind
    _merged_norms: dict[str, torch.Tensor]  # DoRA: the norm each merged adapter used, for unmerge

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        # adapters whose B has a bias (PEFT's layer attribute of that name)
        self.lora_bias: dict[str, bool] = {}

    @property
    def adapter_names(self) -> list[str]:
        return list(self.scaling)

    def _set_scaling(self, name: str, r: int, lora_alpha: float, use_rslora: bool) -> None:
        self.r[name] = r
        self.scaling[name] = lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r

    def _magnitude(self, name: str) -> torch.Tensor:
        """DoRA's magnitude of adapter ``name`` as one value per normalized row, ``(out,)``."""
        return self.lora_magnitude_vector[name]

    def _merged_factor(self, name: str) -> torch.Tensor | None:
        """DoRA's ``m / ||.||`` that adapter ``name`` was merged with; None for a plain LoRA
        adapter."""
        if name not in self.lora_magnitude_vector:
            return None
        return self._magnitude(name) / self._merged_norms[name]

    def _forget(self, name: str) -> None:
        self.r.pop(name, None)
        self.scaling.pop(name, None)
        self.lora_bias.pop(name, None)

    def delta_weight(self, name: str) -> torch.Tensor:
        """The dense update ``scaling * B @ A`` in the base weight's layout and dtype."""
        raise NotImplementedError

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Adapter ``name``'s A and B tensors as stored (A first: (r, in...) and (out, r...) for
        linear and convolution layers), or None when this layer does not hold it. Code outside the
        layers reaches the factors only through this method."""
        container_a, container_b = self._modules.get("lora_A"), self._modules.get("lora_B")
        if not isinstance(container_a, nn.ModuleDict) or name not in container_a:
            return None
        return _weight_of(container_a, name), _weight_of(container_b, name)

    def splits_rows(self, name: str) -> bool:
        # DoRA: not in a mixed batch yet
        return name in self.scaling and name not in self.lora_magnitude_vector

    def _check_rows(self, rows: RowGroups, x: torch.Tensor) -> None:
        """A mixed batch's rows fit ``x`` and hold no DoRA adapter (PEFT's refusal and words)."""
        rows.check(x.shape[0])
        if any(n in self.lora_magnitude_vector for n in rows.by_adapter):
            raise ConfigError(
                "Cannot pass `adapter_names` when DoRA is enabled: a mixed batch cannot include DoRA "
                "adapters yet; run them separately"
            )

    def _merge_one(self, name: str) -> None:
        self._check_bias_merge(name)
        self.weight.data += self.delta_weight(name).to(self.weight.dtype)
        self._shift_bias(name, 1.0)

    def _unmerge_one(self, name: str) -> None:
        self.weight.data -= self.delta_weight(name).to(self.weight.dtype)
        self._shift_bias(name, -1.0)
        self.merged_adapters.remove(name)

    def _lora_bias(self, name: str) -> torch.Tensor | None:
        """B's bias of adapter ``name`` (``lora_bias=True``), or None. A dict lookup first: this
        runs in every forward of every layer."""
        if not self.lora_bias.get(name):
            return None
        return cast(torch.Tensor, cast(nn.Linear, self._modules["lora_B"]._modules[name]).bias)  # type: ignore[union-attr]

    def _check_bias_merge(self, name: str) -> None:
        """Refuse, before any change, to merge B's bias into a base layer without a bias (PEFT's
        RuntimeError)."""
        if self._lora_bias(name) is not None and self.bias is None:
            raise MergeError(
                f"Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias: "
                f"adapter {name!r} adds one to a layer that has none. Keep it unmerged"
            )

    def _shift_bias(self, name: str, sign: float) -> None:
        """Add (``sign=1``) or take out (``-1``) ``scaling * B.bias`` from the base layer's bias."""
        bias = self._lora_bias(name)
        if bias is not None and self.bias is not None:
            self.bias.data += (sign * self.scaling[name] * bias).to(self.bias.dtype)

    def _warn_bias(self, lora_bias: bool) -> None:
        if lora_bias and self.bias is None:
            kind = type(self.base_layer).__name__
            warn_caller(
                f"`lora_bias=True` was passed but the targeted layer of type {kind} has no bias. "
                "This means that merging LoRA weights won't be possible.",
                PeftWarning,
            )


class LoraLinear(LoraLayer):
    """LoRA around ``nn.Linear`` or GPT-2's ``Conv1D`` (``fan_in_fan_out=True``: weight stored (in,
    out))."""

    repr_name = "lora.Linear"

    adapter_param_names = ("lora_A", "lora_B", "lora_dropout", "lora_magnitude_vector")

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer)
        self._set_features(fan_in_fan_out)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        # DoRA adapters only: one magnitude per output row
        self.lora_magnitude_vector = nn.ParameterDict()
        # DoRA: the weight norm used at merge, for unmerge
        self._merged_norms: dict[str, torch.Tensor] = {}
        self.rows: RowGroups | None = None  # set for a mixed batch: each row's own adapter

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
        """Create adapter ``name`` (A: in -> r, B: r -> out, with a bias when ``lora_bias``) on the
        base weight's device, in fp32.

        With ``use_dora`` the magnitude starts at the row norms of the adapted weight, so a fresh
        DoRA adapter (B = 0) equals the base layer.
        """
        reads_weight = use_dora or (
            isinstance(init_lora_weights, str) and init_lora_weights != "gaussian"
        )
        if self.quantized and reads_weight:
            what = "use_dora" if use_dora else f"init_lora_weights={init_lora_weights!r}"
            raise ConfigError(
                f"{what} reads the dense base weight, and this layer's is packed in 4 bits; use plain "
                f"LoRA (init_lora_weights true or 'gaussian') on a quantized base"
            )
        self._warn_bias(lora_bias)
        device = self.weight.device
        a = nn.Linear(self.in_features, r, bias=False, device=device)
        b = nn.Linear(r, self.out_features, bias=lora_bias, device=device)
        lora_init.random_start(a, b, init_lora_weights, r)
        self.lora_A[name] = a
        self.lora_B[name] = b
        self.lora_dropout[name] = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        # a new adapter follows the layer's train/eval mode
        self.lora_dropout[name].train(self.training)
        self._set_scaling(name, r, lora_alpha, use_rslora)
        self.lora_bias[name] = lora_bias
        if isinstance(init_lora_weights, str) and init_lora_weights != "gaussian":
            self._start_from_weight(name, init_lora_weights.lower())
        if use_dora:
            with torch.no_grad():
                norm = self._weight_norm(name)
            self.lora_magnitude_vector[name] = nn.Parameter(norm.float())

    def share_factors(self, name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        """Make adapter ``name``'s A (r, in) and B (out, r) parameters over ``a``'s and ``b``'s
        storage (views of a tied embedding's factors): a change to either is a change to both, as
        PEFT ties them."""
        cast(nn.Linear, self.lora_A[name]).weight = nn.Parameter(a)
        cast(nn.Linear, self.lora_B[name]).weight = nn.Parameter(b)

    @torch.no_grad()
    def _start_from_weight(self, name: str, how: str) -> None:
        """PiSSA or OLoRA: A and B from the base weight's principal part; the base keeps the
        residual."""
        args = (self._base_weight(), self.r[name], self.scaling[name], self.fan_in_fan_out)
        a, b, residual = lora_init.from_weight(how, *args)
        cast(torch.Tensor, self.lora_A[name].weight).data = a.contiguous()
        cast(torch.Tensor, self.lora_B[name].weight).data = b.contiguous()
        self._set_base_weight(residual)

    def _base_weight(self) -> torch.Tensor:
        """The base weight as (out, in), whatever the layer's storage layout."""
        return self.weight.T if self.fan_in_fan_out else self.weight

    def _weight_norm(self, name: str) -> torch.Tensor:
        """DoRA's row norms of ``W + scaling * B @ A``, ``(out,)``."""
        a, b = self._factors(name)
        return dora.row_norms(self._base_weight(), a, b, self.scaling[name])

    def _dora(self, name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """What DoRA adapter ``name`` adds to ``result``, the base output (see :mod:`.dora`)."""
        dropout = self.lora_dropout[name]
        factor = self.lora_magnitude_vector[name] / self._weight_norm(name).detach()  # (out,)
        a, b = self._factors(name)
        if isinstance(dropout, nn.Identity) or not self.training:
            h, base = x, (result if self.bias is None else result - self.bias)  # (..., out): W x
        else:
            h = dropout(x.to(a.dtype))
            # W applied to the dropped-out input
            base = F.linear(h, self._base_weight().to(h.dtype))
        return dora.output_change(base, h, a, b, self.scaling[name], factor).to(result.dtype)

    def _merge_one(self, name: str) -> None:
        if name not in self.lora_magnitude_vector:
            super()._merge_one(name)
            return
        a, b = self._factors(name)  # the norm of the unmerged weight, as the forward computes it
        norm = dora.row_norms(self._unmerged_weight(), a, b, self.scaling[name]).detach()
        self._merged_norms[name] = norm
        factor = self.lora_magnitude_vector[name] / norm
        self._set_base_weight(
            dora.merged_weight(self._base_weight(), self._delta_out_in(name), factor)
        )

    def _unmerge_one(self, name: str) -> None:
        if name not in self.lora_magnitude_vector:
            super()._unmerge_one(name)
            return
        factor = self.lora_magnitude_vector[name] / self._merged_norms.pop(name)
        self._set_base_weight(
            dora.unmerged_weight(self._base_weight(), self._delta_out_in(name), factor)
        )
        self.merged_adapters.remove(name)

    def _unmerged_weight(self) -> torch.Tensor:
        """The base weight (out, in) as it was before any merge: the merged adapters undone on a
        copy, newest first. A DoRA adapter merged after others must take its norm from this weight,
        not the merged one."""
        merges = [
            (self._delta_out_in(n), self._merged_factor(n)) for n in reversed(self.merged_adapters)
        ]
        return dora.weight_before_merges(self._base_weight().float(), merges)

    def _delta_out_in(self, name: str) -> torch.Tensor:
        a, b = self._factors(name)
        return (b @ a) * self.scaling[name]  # (out, in)

    def _set_base_weight(self, weight: torch.Tensor) -> None:
        """Store a weight given as (out, in) in the layer's own layout and dtype."""
        self.weight.data = (
            (weight.T if self.fan_in_fan_out else weight).to(self.weight.dtype).contiguous()
        )

    def delta_weight(self, name: str) -> torch.Tensor:
        delta = self._delta_out_in(name)  # (out, in)
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        # switched off wins over per-row adapters, as in PEFT
        if self.rows is not None and not self.disabled:
            return self._forward_rows(x, self.rows, *args, **kwargs)
        pending = self._pending()  # first: it may unmerge before the base layer runs
        result = base_output(self.base_layer, x, *args, **kwargs)  # (..., out)
        for name in pending:
            if name in self.lora_magnitude_vector:
                result = result + self._dora(name, x, result)
            else:
                result = self._add_update(name, x, result)
        return result

    def _add_update(
        self, name: str, x: torch.Tensor, result: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``result + scaling * B(A(dropout(x)))``; with ``rows`` (a mixed batch), added in place to
        those rows of ``result`` only, ``x`` being theirs.

        Calls the functional ops directly rather than the ``nn.Linear`` containers, folds the
        scaling into the sum, and skips the cast and the dropout when they would do nothing: at
        batch 1 a decode step is a few microseconds of arithmetic per layer, so each module call,
        lookup and no-op shows up in generation speed.
        """
        a, b = self._factors(name)  # (r, in), (out, r)
        bias = self._lora_bias(name)
        if bias is not None:  # lora_bias: the plain computation, B's bias scaled with the rest
            h = self.lora_dropout[name](x.to(a.dtype))
            update = F.linear(F.linear(h, a), b, bias) * self.scaling[name]
            return (
                result + update.to(result.dtype)
                if rows is None
                else result.index_add_(0, rows, update.to(result.dtype))
            )
        h = x
        # the identity in eval mode
        if self.training and not isinstance(self.lora_dropout[name], nn.Identity):
            h = self.lora_dropout[name](x.to(a.dtype))
        # e.g. a bf16 base: the update is computed in fp32, then rounded once
        if result.dtype != b.dtype:
            update, alpha = low_rank_update(h, a, b, self.scaling[name]).to(result.dtype), 1.0
        else:
            update, alpha = (
                F.linear(F.linear(h if h.dtype == a.dtype else h.to(a.dtype), a), b),
                self.scaling[name],
            )
        if rows is None:
            return torch.add(result, update, alpha=alpha)  # (..., out)
        return result.index_add_(0, rows, update, alpha=alpha)  # the same sum, row for row

    def _factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapter ``name``'s A and B weights, read through the containers' dicts: ``nn.Module``'s
        attribute lookup, three per factor, is a measurable share of a batch-1 decode step
        (benchmarks/lora_floor.py)."""
        return _weight_of(self._modules["lora_A"], name), _weight_of(self._modules["lora_B"], name)

    def _forward_rows(
        self, x: torch.Tensor, rows: RowGroups, *args: object, **kwargs: object
    ) -> torch.Tensor:
        """Each adapter on its own rows, with the single-adapter path's operations (see
        :mod:`.rows`)."""
        self._check_rows(rows, x)
        result = base_output(self.base_layer, x, *args, **kwargs)  # (B, ..., out)
        for name, index in rows.by_adapter.items():
            if name in self.scaling:  # other rows: the base layer's output, untouched
                result = self._add_update(name, x[index], result, index)
        return result

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, adapters={self.adapter_names}"


def _weight_of(container: nn.Module | None, name: str) -> torch.Tensor:
    """``container[name].weight``, from the dicts ``nn.Module`` keeps them in when it can (a
    parametrized factor keeps its weight elsewhere: then by attribute)."""
    layer = cast(nn.Module, cast(nn.Module, container)._modules[name])
    weight = layer._parameters.get("weight")
    return weight if weight is not None else cast(torch.Tensor, layer.weight)
