"""``PeftModel`` (PEFT's ``peft.peft_model``), split by concern: the API (:mod:`.model`), what
transformers reads from a model (:mod:`.wrapper`, :mod:`.holder`), saving and loading
(:mod:`.adapter_io`, :mod:`.format`, :mod:`.card`), checks before anything changes (:mod:`.checks`),
weighted adapters (:mod:`.weighted`), status (:mod:`.status`) and embedding layers saved with an
adapter (:mod:`.embeddings`).

The model classes are imported on first use (PEP 562), so that a submodule such as :mod:`.format`
can be imported without the whole model.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForFeatureExtraction",
    "PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "get_peft_model",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".model", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
