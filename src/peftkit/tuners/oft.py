"""OFT (orthogonal fine-tuning; Qiu et al., 2023, with the block-diagonal and Cayley-Neumann forms
of Liu et al., 2024): the input of a linear layer is rotated before the frozen weight sees it,
``y = W (R x) + b``, with ``R`` block-diagonal and orthogonal, so the angles between the weight's
neurons are kept. Each block ``(b, b)`` is the Cayley transform of a skew-symmetric matrix ``Q``
built from ``b (b - 1) / 2`` trained numbers: ``R = (I - Q)(I + Q)^-1`` solved exactly, or the
Neumann series ``I + 2Q + 2Q^2 + ... + Q^k`` of ``(I - Q)^-1 (I + Q)`` (``use_cayley_neumann``,
PEFT's default; the two are each other's inverse for the same ``Q``, as in PEFT, and both
orthogonal). A fresh adapter has ``Q = 0``, ``R = I``: the base layer. Merging folds it into the
weight, ``W' = W R^T``.

Tensor names, shapes, draws and the block-size rules are PEFT's (``q_proj.oft_R.<name>.weight``,
(r, b (b - 1) / 2), or (1, ...) with ``block_share``). COFT (``coft``) projects ``Q`` back into a
ball of radius ``eps`` before each use, as PEFT does.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import PeftWarning
from .base import AdapterLayer, base_output

__all__ = ["OFTLayer", "OFTRotation", "cayley", "fit_to"]


def skew(vec: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, size: int) -> torch.Tensor:
    """(n, size (size - 1) / 2) upper-triangle entries -> (n, size, size) skew-symmetric ``Q``."""
    matrix = torch.zeros(vec.shape[0], size, size, device=vec.device, dtype=vec.dtype)
    matrix[:, rows, cols] = vec
    return matrix - matrix.transpose(-2, -1)


def cayley(q: torch.Tensor, neumann: bool, terms: int) -> torch.Tensor:
    """A Cayley transform of skew-symmetric ``q`` (n, b, b), in PEFT's order of operations (so the
    same numbers come out): ``(I - Q)(I + Q)^-1`` solved exactly, or the first ``terms`` terms of
    the Neumann series of ``(I - Q)^-1 (I + Q)``: ``I + 2Q + 2Q^2 + ... + 2Q^(k-2) + Q^(k-1)``."""
    n, size = q.shape[0], q.shape[-1]
    if not neumann:
        eye = torch.eye(size, device=q.device).unsqueeze(0).expand(n, size, size)
        return torch.linalg.solve(eye + q, eye - q, left=False)
    r = torch.eye(size, device=q.device, dtype=q.dtype).repeat(n, 1, 1)
    if terms > 1:
        r.add_(q, alpha=2.0)
        if terms > 2:
            power = torch.bmm(q, q)
            r.add_(power, alpha=2.0)
            for _ in range(3, terms - 1):
                power = torch.bmm(power, q)
                r.add_(power, alpha=2.0)
            r.add_(torch.bmm(power, q))
    return r


def fit_to(in_features: int, value: int) -> int:
    """The divisor of ``in_features`` nearest ``value`` (the lower one on a tie); PEFT's rule for an
    ``r`` or ``oft_block_size`` that does not divide the layer's input size."""
    if value >= in_features:
        return in_features
    higher = value
    while higher <= in_features and in_features % higher:
        higher += 1
    lower = value
    while lower > 1 and in_features % lower:
        lower -= 1
    return lower if value - lower <= higher - value else higher


class OFTRotation(nn.Module):
    """One adapter's rotation: ``weight`` (blocks, b (b - 1) / 2) holds each block's ``Q``."""

    def __init__(
        self,
        blocks: int,
        block_size: int,
        in_features: int,
        *,
        coft: bool = False,
        eps: float = 6e-5,
        block_share: bool = False,
        neumann: bool = True,
        terms: int = 5,
    ) -> None:
        super().__init__()
        self.block_size, self.in_features = block_size, in_features
        self.coft, self.eps, self.block_share = coft, eps, block_share
        self.neumann, self.terms = neumann, terms
        shared = 1 if block_share else blocks
        self.weight = nn.Parameter(torch.empty(shared, block_size * (block_size - 1) // 2))
        self.rows: torch.Tensor
        self.cols: torch.Tensor
        rows, cols = torch.triu_indices(block_size, block_size, 1)  # Q's upper triangle
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    @property
    def blocks(self) -> int:
        return self.in_features // self.block_size

    def _project(self) -> None:
        """COFT: pull each ``Q`` back into the ball of radius ``eps / sqrt(n)`` (in place, as PEFT)."""
        q = skew(self.weight, self.rows, self.cols, self.block_size)
        eps = self.eps * 1 / torch.sqrt(torch.tensor(q.shape[0]))
        norm = torch.norm(q, dim=(1, 2), keepdim=True)
        q = torch.where(norm <= eps, q, eps * (q / norm))
        self.weight.copy_(q[:, self.rows, self.cols])

    def rotations(self) -> torch.Tensor:
        """Each block's orthogonal ``R`` (n, b, b), in the weight's dtype."""
        if self.coft:
            with torch.no_grad():
                self._project()
        q = skew(self.weight, self.rows, self.cols, self.block_size)
        return cayley(q, self.neumann, self.terms).to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., in) rotated block by block: (..., blocks, b) times each block's ``R``."""
        dtype = x.dtype
        x = x.to(self.weight.dtype)
        rotations = self.rotations()  # (n, b, b)
        if self.block_share:
            rotations = rotations.repeat(self.blocks, 1, 1)
        pieces = x.reshape(*x.shape[:-1], self.blocks, self.block_size)  # (..., blocks, b)
        rotated = torch.einsum("...rk,rkc->...rc", pieces, rotations)
        return rotated.reshape(x.shape).to(dtype)

    def matrix(self) -> torch.Tensor:
        """The whole rotation (in, in): the blocks on the diagonal."""
        rotations = self.rotations()
        blocks = [rotations[0 if rotations.shape[0] == 1 else i] for i in range(self.blocks)]
        return torch.block_diag(*blocks)


class OFTLayer(AdapterLayer):
    """OFT around an ``nn.Linear`` (see the module's docstring)."""

    adapter_param_names = ("oft_R",)
    prefix = "oft_"
    """What every OFT tensor's name starts with (PEFT's tuner attribute of that name)."""
    repr_name = "oft.Linear"
    other_param_names = ("r", "oft_block_size", "module_dropout")

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__(base_layer)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.oft_R = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.oft_block_size: dict[str, int] = {}
        self.module_dropout: dict[str, float] = {}

    @property
    def adapter_names(self) -> list[str]:
        return list(self.oft_R)

    def _sizes(self, r: int, block_size: int) -> tuple[int, int]:
        """(blocks, block size) for this layer: the one of ``r`` and ``block_size`` that is set,
        moved to the nearest divisor of ``in_features`` with a warning when it does not divide."""
        given, name = (block_size, "oft_block_size") if r == 0 else (r, "r")
        fitted = given
        if self.in_features % given or given > self.in_features:
            fitted = fit_to(self.in_features, given)
            warnings.warn(
                f"Invalid `{name}` ({given})! Adjusted `{name}` to ({fitted}).",
                PeftWarning,
                stacklevel=5,
            )
        other = self.in_features // fitted
        return (other, fitted) if r == 0 else (fitted, other)

    def add_adapter(
        self,
        name: str,
        r: int,
        block_size: int,
        *,
        coft: bool = False,
        eps: float = 6e-5,
        block_share: bool = False,
        use_cayley_neumann: bool = True,
        num_cayley_neumann_terms: int = 5,
        init_weights: bool = True,
        module_dropout: float = 0.0,
    ) -> None:
        """Create adapter ``name`` with ``r`` blocks or blocks of ``block_size`` (the other 0):
        ``Q`` zero (``init_weights``: the base layer) or normal(0, 0.1), as PEFT draws it."""
        blocks, size = self._sizes(r, block_size)
        rotation = OFTRotation(
            blocks,
            size,
            self.in_features,
            coft=coft,
            eps=eps,
            block_share=block_share,
            neumann=use_cayley_neumann,
            terms=num_cayley_neumann_terms,
        ).to(self.weight.device)
        if init_weights:
            nn.init.zeros_(rotation.weight)
        else:
            nn.init.normal_(rotation.weight, mean=0.0, std=0.1)
        self.oft_R[name] = rotation
        self.r[name], self.oft_block_size[name] = blocks, size
        # PEFT builds its multiplicative dropout but never calls it in forward; kept, unused, alike
        self.module_dropout[name] = module_dropout

    def _forget(self, name: str) -> None:
        for table in (self.r, self.oft_block_size, self.module_dropout):
            table.pop(name, None)

    def rotation(self, name: str) -> OFTRotation:
        """Adapter ``name``'s rotation module (code outside the layers asks this)."""
        return self.oft_R[name]  # type: ignore[return-value]

    def delta_weight(self, name: str) -> torch.Tensor:
        """PEFT's ``get_delta_weight`` for OFT: the rotation matrix ``R`` (in, in), not a
        difference; on a CPU a bf16/fp16 adapter is rebuilt in fp32 first, as PEFT does."""
        rotation = self.rotation(name)
        low = rotation.weight.device.type == "cpu" and rotation.weight.dtype in (
            torch.float16,
            torch.bfloat16,
        )
        if not low:
            return rotation.matrix()
        stored = rotation.weight.data
        rotation.weight.data = stored.float()
        try:
            return rotation.matrix().to(stored.dtype)
        finally:
            rotation.weight.data = stored

    def _chain(self, names: list[str]) -> torch.Tensor | None:
        """The product ``R_a R_b ...`` of these adapters' rotations, in the order the forward
        applies them (None for no adapter)."""
        out = None
        for name in names:
            matrix = self.delta_weight(name)
            out = matrix if out is None else out @ matrix
        return out

    def _folded(self, name: str, before: list[str]) -> torch.Tensor:
        """What folding ``name`` after the merged adapters ``before`` multiplies the weight by:
        ``R`` alone, or ``P R P^-1`` with ``P`` their product, so the merged weight
        ``W (P R)^T`` applies the rotations in the forward's order (rotations do not commute;
        PEFT folds a second one as ``W P^T R^T``, the other order)."""
        matrix = self.delta_weight(name)  # (in, in)
        chain = self._chain(before)
        if chain is None:
            return matrix
        return chain @ matrix @ torch.linalg.inv(chain.float()).to(chain.dtype)

    def _merge_one(self, name: str) -> None:
        matrix = self._folded(name, self.merged_adapters)
        weight = self.weight.data  # (out, in): W' = W M^T
        weight.copy_(torch.mm(matrix, weight.t().to(matrix.dtype)).t())

    def _unmerge_one(self, name: str) -> None:
        matrix = self._folded(name, self.merged_adapters[: self.merged_adapters.index(name)])
        dtype = matrix.dtype
        inverse = torch.linalg.inv(matrix.float()).to(dtype)
        weight = self.weight.data
        weight.copy_(torch.mm(inverse, weight.t().to(dtype)).t())
        self.merged_adapters.remove(name)

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        dtype = x.dtype
        for name in self._pending():  # each rotation applied to the input in turn
            rotation = self.rotation(name)
            x = rotation(x.to(rotation.weight.dtype))
        return base_output(self.base_layer, x.to(dtype), *args, **kwargs).to(dtype)

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names}"
