"""LoRA's layers: linear (:mod:`.layer`), embeddings (:mod:`.embedding`) and convolutions
(:mod:`.conv`); DoRA's magnitude (:mod:`.dora`), the update and its dtype policy (:mod:`.low_rank`),
how A and B start (:mod:`.init`)."""

from __future__ import annotations

from .layer import AdapterLayer, LoraLayer, LoraLinear, rank_axis, unpaired_factors

__all__ = ["AdapterLayer", "LoraLayer", "LoraLinear", "rank_axis", "unpaired_factors"]
