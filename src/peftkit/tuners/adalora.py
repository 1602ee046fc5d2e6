"""AdaLoRA: LoRA in SVD form whose ranks shrink to a budget during training.

``y = W x + (scaling / ranknum) * B (E * A) dropout(x)`` with ``A`` (r, in), ``E`` (r, 1) the
"singular values" and ``B`` (out, r); ``ranknum`` is the initial rank (a frozen tensor, PEFT's).
Pruning a rank sets its ``E`` entry to zero; saving drops the pruned rows and columns
(``rank_pattern`` in the config says which were kept) and loading cuts the layer back to them.

:class:`RankAllocator` decides what to prune: every step it smooths each adapter tensor's
sensitivity ``|p * grad|`` and its uncertainty (two EMAs), scores each rank from its ``E`` entry and
its row of ``A`` and column of ``B``, and keeps the best ranks within a budget that falls, on a cubic
schedule, from the initial ranks to ``target_r`` per layer (PEFT's algorithm and arithmetic, so a
run equals PEFT's step for step).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdapterStateError, ConfigError
from .base import base_output
from .lora.layer import LoraLayer

__all__ = [
    "AdaLoraLayer",
    "RankAllocator",
    "after_step",
    "before_load",
    "loss_term",
    "orthogonality",
    "resize_to_pattern",
    "to_file",
]


class AdaLoraLayer(LoraLayer):
    """AdaLoRA around ``nn.Linear``, GPT-2's ``Conv1D`` (``fan_in_fan_out``) or ``nn.Conv2d`` (A
    then spans ``in_channels * kh * kw``, and the update is a convolution with the base's stride,
    padding, dilation and groups, as in PEFT's ``SVDConv2d``)."""

    repr_name = "adalora.SVDLinear"
    # ranknum (the initial rank, a frozen tensor) is not an adapter tensor: never trained, never
    # saved (PEFT's files leave it out), rebuilt from the rank when an adapter is created
    adapter_param_names = ("lora_A", "lora_B", "lora_E", "lora_dropout")

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer)
        self.conv = isinstance(base_layer, nn.Conv2d)
        if self.conv:
            conv = cast(nn.Conv2d, base_layer)
            if conv.groups != 1:  # PEFT builds one and fails at the first forward (a shape error)
                raise ConfigError(
                    f"AdaLoRA on a grouped convolution (groups={conv.groups}) is not supported: its "
                    "update spans all input channels. Leave this layer out of target_modules"
                )
            self.fan_in_fan_out = False
            self.in_features, self.out_features = conv.in_channels, conv.out_channels
            self._a_width = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
            self.repr_name = "adalora.SVDConv2d"
        else:
            self._set_features(fan_in_fan_out)
            self._a_width = self.in_features
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_E = nn.ParameterDict()
        self.ranknum = nn.ParameterDict()
        self.lora_dropout = nn.ModuleDict()

    def add_adapter(
        self,
        name: str,
        r: int,
        lora_alpha: float,
        lora_dropout: float,
        init_lora_weights: bool | str,
    ) -> None:
        """Create adapter ``name`` of rank ``r`` (the tensors drawn in PEFT's order)."""
        if r < 0:
            raise ConfigError(f"`r` should be a positive integer or 0, but the value passed is {r}")
        device = self.weight.device
        self.lora_A[name] = nn.Parameter(torch.randn(r, self._a_width).to(device))
        self.lora_E[name] = nn.Parameter(torch.randn(r, 1).to(device))
        self.lora_B[name] = nn.Parameter(torch.randn(self.out_features, r).to(device))
        ranknum = torch.randn(1)  # drawn, then filled: the random stream stays PEFT's
        self.ranknum[name] = nn.Parameter(ranknum.fill_(float(r)).to(device), requires_grad=False)
        self.r[name] = r
        self.scaling[name] = lora_alpha if lora_alpha > 0 else float(r)
        self.lora_bias[name] = False
        self.lora_dropout[name] = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.lora_dropout[name].train(self.training)
        if init_lora_weights:
            nn.init.zeros_(self.lora_E[name])
            nn.init.normal_(self.lora_A[name], mean=0.0, std=0.02)
            nn.init.normal_(self.lora_B[name], mean=0.0, std=0.02)

    def _forget(self, name: str) -> None:
        super()._forget(name)
        if name in self.ranknum:
            del self.ranknum[name]

    def bookkeeping(self, name: str) -> list[str]:
        return [f"ranknum.{name}"] if name in self.ranknum else []

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        if name not in self.lora_A:
            return None
        return self.lora_A[name] * self.lora_E[name], self.lora_B[name]

    def splits_rows(self, name: str) -> bool:
        return False  # no mixed batches (PEFT's SVDLinear has none)

    def delta_weight(self, name: str) -> torch.Tensor:
        delta = (
            self.lora_B[name]
            @ (self.lora_A[name] * self.lora_E[name])
            * self.scaling[name]
            / (self.ranknum[name] + 1e-5)
        )  # (out, in), or (out, in * kh * kw) for a convolution
        if self.conv:
            return delta.reshape(self.weight.shape)
        return delta.T if self.fan_in_fan_out else delta

    def _merge_one(self, name: str) -> None:
        self.weight.data += self.delta_weight(name).to(self.weight.dtype)

    def _unmerge_one(self, name: str) -> None:
        self.weight.data -= self.delta_weight(name).to(self.weight.dtype)
        self.merged_adapters.remove(name)

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        pending = self._pending()
        result = base_output(self.base_layer, x, *args, **kwargs)  # (..., out)
        for name in pending:
            a, b, e = self.lora_A[name], self.lora_B[name], self.lora_E[name]
            h = self.lora_dropout[name](x.to(a.dtype))
            if self.conv:
                conv = cast(nn.Conv2d, self.base_layer)
                update = F.conv2d(
                    h,
                    self.delta_weight(name),
                    stride=conv.stride,
                    padding=conv.padding,
                    dilation=conv.dilation,
                    groups=conv.groups,
                )
                result = result + update.to(result.dtype)
                continue
            # PEFT's expression, in its order: the same rounding
            update = (h @ (a * e).T @ b.T) * self.scaling[name] / (self.ranknum[name] + 1e-5)
            result = result + update.to(result.dtype)
        return result

    def resize(self, name: str, kept: torch.Tensor) -> None:
        """Keep only the ranks ``kept`` (bools, one per rank) of adapter ``name``."""
        with torch.no_grad():
            a, b, e = self.lora_A[name][kept], self.lora_B[name][:, kept], self.lora_E[name][kept]
        trainable = self.lora_A[name].requires_grad
        self.lora_A[name] = nn.Parameter(a.clone(), requires_grad=trainable)
        self.lora_B[name] = nn.Parameter(b.clone(), requires_grad=trainable)
        self.lora_E[name] = nn.Parameter(e.clone(), requires_grad=trainable)
        self.r[name] = int(kept.sum())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, adapters={self.adapter_names}"


def orthogonality(model: nn.Module, adapter: str) -> torch.Tensor | None:
    """The mean of ``||A A^T - I||_F`` and ``||B^T B - I||_F`` over adapter ``adapter``'s layers
    (PEFT's regularizer, summed in its order); None when it has none."""
    total: Any = 0
    count = 0
    for name, param in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and adapter in name:
            cov = param @ param.T if "lora_A" in name else param.T @ param
            eye = torch.eye(*cov.size(), out=torch.empty_like(cov))
            eye.requires_grad = False
            total = total + torch.norm(cov - eye, p="fro")
            count += 1
    return cast(torch.Tensor, total / count) if count else None


def resize_to_pattern(model: nn.Module, pattern: dict[str, Any], adapter: str) -> None:
    """Cut each layer back to the ranks ``pattern`` kept (``<layer>.lora_E`` -> bools)."""
    for key, kept in pattern.items():
        layer_name = (
            key[: -len(".lora_E")] if key.endswith(".lora_E") else key.rsplit(".lora_E", 1)[0]
        )
        layer = model.get_submodule(layer_name)
        if not isinstance(layer, AdaLoraLayer):
            raise ConfigError(
                f"rank_pattern names {key!r}, which is not an AdaLoRA layer of this model; the "
                "adapter was saved from another model"
            )
        mask = torch.as_tensor(kept, dtype=torch.bool).view(-1)
        if layer.r[adapter] != len(mask):
            continue  # cut already (a second load into the same adapter)
        layer.resize(adapter, mask)


class RankAllocator:
    """PEFT's rank allocator for one trainable AdaLoRA adapter of ``model`` (the base model)."""

    def __init__(
        self, model: nn.Module, config: Any, adapter: str, state: dict[str, Any] | None = None
    ) -> None:
        """``state``: where the smoothed scores live (three dicts of tensors, plain data that a
        checkpoint can hold); a fresh dict when not given."""
        self.config = config
        self.adapter = adapter
        state = {} if state is None else state
        self.ipt: dict[str, torch.Tensor] = state.setdefault("ipt", {})
        self.exp_avg_ipt: dict[str, torch.Tensor] = state.setdefault("exp_avg_ipt", {})
        self.exp_avg_unc: dict[str, torch.Tensor] = state.setdefault("exp_avg_unc", {})
        self.init_bgt = 0
        names = set()
        for n, p in model.named_parameters():
            if f"lora_A.{adapter}" in n:
                self.init_bgt += p.size(0)
                names.add(n.replace("lora_A", "%s"))
        self.name_set = sorted(names)
        self.target_bgt = config.target_r * len(self.name_set)

    def reset_ipt(self) -> None:
        for scores in (self.ipt, self.exp_avg_ipt, self.exp_avg_unc):
            scores.clear()  # in place: the dicts are the caller's state

    def budget_schedule(self, step: int) -> tuple[int, bool]:
        """(budget, whether to mask now): constant, then a cubic fall, then the target."""
        c = self.config
        if step <= c.tinit:
            return self.init_bgt, False
        if step > c.total_step - c.tfinal:
            return self.target_bgt, True
        mul = 1 - (step - c.tinit) / (c.total_step - c.tfinal - c.tinit)
        budget = int((self.init_bgt - self.target_bgt) * (mul**3) + self.target_bgt)
        return budget, step % c.deltaT == 0

    @torch.no_grad()
    def update_ipt(self, model: nn.Module) -> None:
        b1, b2 = self.config.beta1, self.config.beta2
        for n, p in model.named_parameters():
            if "lora_" in n and self.adapter in n:
                if n not in self.ipt:
                    self.ipt[n] = torch.zeros_like(p)
                    self.exp_avg_ipt[n] = torch.zeros_like(p)
                    self.exp_avg_unc[n] = torch.zeros_like(p)
                if p.grad is None:
                    raise AdapterStateError(
                        f"update_and_allocate found no gradient for {n}: call it after "
                        "loss.backward() and optimizer.step(), before optimizer.zero_grad()"
                    )
                self.ipt[n] = (p * p.grad).abs().detach()
                self.exp_avg_ipt[n] = b1 * self.exp_avg_ipt[n] + (1 - b1) * self.ipt[n]
                self.exp_avg_unc[n] = (
                    b2 * self.exp_avg_unc[n] + (1 - b2) * (self.ipt[n] - self.exp_avg_ipt[n]).abs()
                )

    def _score(self, n: str) -> torch.Tensor:
        return self.exp_avg_ipt[n] * self.exp_avg_unc[n]

    def mask_to_budget(self, model: nn.Module, budget: int) -> dict[str, list[bool]]:
        """Zero the ``E`` entries of the lowest-scoring ranks beyond ``budget``; returns which ranks
        each layer kept."""
        value_ipt: dict[str, torch.Tensor] = {}
        vector_ipt: dict[str, list[torch.Tensor]] = {}
        for n, _ in model.named_parameters():
            if f"lora_A.{self.adapter}" in n:
                score = torch.mean(self._score(n), dim=1, keepdim=True)
                vector_ipt.setdefault(n.replace("lora_A", "%s"), []).append(score)
            if f"lora_B.{self.adapter}" in n:
                score = torch.mean(self._score(n), dim=0, keepdim=False).view(-1, 1)
                vector_ipt.setdefault(n.replace("lora_B", "%s"), []).append(score)
            if f"lora_E.{self.adapter}" in n:
                value_ipt[n.replace("lora_E", "%s")] = self._score(n)
        triplet: dict[str, torch.Tensor] = {}
        scores = []
        for name_m, vectors in vector_ipt.items():
            ab = torch.cat(vectors, dim=1).sum(dim=1, keepdim=False)
            combined = value_ipt[name_m].view(-1) + ab.view(-1)
            triplet[name_m % "lora_E"] = combined.view(-1, 1)
            scores.append(combined.view(-1))
        threshold = torch.kthvalue(torch.cat(scores), k=self.init_bgt - budget)[0].item()
        pattern: dict[str, list[bool]] = {}
        with torch.no_grad():
            for n, p in model.named_parameters():
                if f"lora_E.{self.adapter}" in n:
                    p.masked_fill_(triplet[n] <= threshold, 0.0)
                    pattern[n] = (~(triplet[n] <= threshold)).view(-1).tolist()
        return pattern

    def update_and_allocate(
        self, model: nn.Module, step: int, force_mask: bool = False
    ) -> tuple[int, dict[str, list[bool]] | None]:
        if step < self.config.total_step - self.config.tfinal:
            self.update_ipt(model)
        budget, mask = self.budget_schedule(step)
        return budget, (self.mask_to_budget(model, budget) if mask or force_mask else None)

    @torch.no_grad()
    def mask_using_rank_pattern(self, model: nn.Module, pattern: dict[str, list[bool]]) -> None:
        truncated = self.adapter not in next(iter(pattern))
        for n, p in model.named_parameters():
            if f"lora_E.{self.adapter}" in n:
                key = n.replace(f".{self.adapter}", "") if truncated else n
                kept = torch.Tensor(pattern[key]).unsqueeze(-1).to(p.device)
                p.masked_fill_(~kept.bool(), 0.0)


def allocate(model: nn.Module, allocator: RankAllocator, config: Any, step: int) -> None:
    """One step of PEFT's ``update_and_allocate``: score, then prune to the step's budget; the
    final ranks are fixed at ``total_step - tfinal`` and kept masked after it."""
    last = config.total_step - config.tfinal
    if step < last:
        _, pattern = allocator.update_and_allocate(model, step)
        if pattern:
            config.record_ranks(pattern)
    elif step == last:
        _, pattern = allocator.update_and_allocate(model, step, force_mask=True)
        config.record_ranks(pattern)
        allocator.reset_ipt()
    elif config.rank_pattern:
        allocator.mask_using_rank_pattern(model, config.rank_pattern)


# ----- the method's hooks (peftkit.methods registers them)
# ------------------------------------------------------------------------


def loss_term(model: nn.Module, config: Any, adapter: str) -> torch.Tensor | None:
    """``orth_reg_weight`` times :func:`orthogonality` (PEFT adds it to every loss the model
    returns while the adapter is trainable)."""
    term = orthogonality(model, adapter)
    return None if term is None else config.orth_reg_weight * term


def after_step(
    model: nn.Module, config: Any, adapter: str, step: int, state: dict[str, Any]
) -> None:
    """PEFT's ``update_and_allocate(step)``. ``state`` holds the allocator's scores and the ranks
    kept so far, plain tensors and lists, so a checkpoint carries them and a resumed run prunes as
    the uninterrupted one does."""
    if config.rank_pattern is None and state.get("rank_pattern") is not None:
        config.record_ranks(state["rank_pattern"])  # a resumed run: the config starts empty
    allocate(model, RankAllocator(model, config, adapter, state), config, step)
    state["rank_pattern"] = config.rank_pattern


def _pattern_for_file(pattern: dict[str, Any], adapter: str) -> dict[str, Any]:
    return {k.replace(f".{adapter}", ""): v for k, v in pattern.items()}


def to_file(config: Any, tensors: dict[str, Any], adapter: str) -> tuple[Any, dict[str, Any]]:
    """The pruned ranks cut out of A, B and E, as PEFT saves them, with ``rank_pattern`` under
    names without the adapter's (in ``config`` itself too: PEFT renames them in the live config
    when it saves, and the allocator reads either form)."""
    if not config.rank_pattern:
        return config, tensors
    pattern = _pattern_for_file(config.rank_pattern, adapter)
    config.record_ranks(pattern)
    tensors = dict(tensors)
    for name, kept in pattern.items():
        mask = torch.as_tensor(kept, dtype=torch.bool).view(-1)
        prefix = name[: -len(".lora_E")]
        for part in ("lora_E", "lora_A", "lora_B"):
            key = f"base_model.model.{prefix}.{part}"
            if key not in tensors:
                continue
            held = tensors[key]
            axis = 1 if part == "lora_B" else 0
            if int(mask.sum()) != held.shape[axis]:
                tensors[key] = held[:, mask] if axis else held[mask]
    return config, tensors


def before_load(model: nn.Module, config: Any, adapter: str) -> None:
    """Cut the layers to the ranks the file kept (``rank_pattern``), before its tensors load."""
    if config.rank_pattern:
        resize_to_pattern(model, _pattern_for_file(config.rank_pattern, adapter), adapter)
