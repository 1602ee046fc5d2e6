"""Behaviour differences from PEFT that peftkit keeps on purpose, each with its reason.

A test listed here (by a pattern over its id) that PEFT passes and peftkit does not is counted as
``reasoned``, not ``behaviour``. Every entry is also a line of ``docs/conformance.md``. A pattern that
matches nothing in a run is stale and should be removed.
"""

from __future__ import annotations

import re

DIFFERENCES: dict[str, str] = {
    r"test_get_peft_model_repeated_invocation": (
        "get_peft_model on a model that is already a PeftModel is refused with a pointer to add_adapter: PEFT nests "
        "the wrappers, and the outer adapter's file then holds the inner adapter's tensors under a config that does "
        "not describe them, so it does not load back as saved"),
    r"test_generate_pos_args\[.*(T5ForConditionalGeneration|BartForConditionalGeneration)": (
        "an encoder-decoder PeftModel's generate accepts input_ids as its first positional argument, as transformers' "
        "generate does; PEFT's takes keywords only and raises TypeError"),
}
_COMPILED = [(re.compile(pattern, re.IGNORECASE), reason) for pattern, reason in DIFFERENCES.items()]


def reason(test_id: str) -> str | None:
    """The written reason for a kept difference in this test, if any."""
    return next((why for pattern, why in _COMPILED if pattern.search(test_id)), None)
