"""The model card (README.md) saved beside an adapter, written with huggingface_hub's model card
tools."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

from ..common.files import write_text_atomic
from ..version import __version__

__all__ = ["CARD_MARK", "write_model_card"]

CARD_MARK = "Saved by peftkit"
"""The model card's own words: a README.md without them is not peftkit's, and only gets metadata
added."""


def write_model_card(folder: Path, model: Any, training: list[str] | None = None) -> None:
    """README.md with the Hub's metadata, written with huggingface_hub's model card tools, as PEFT's
    is: ``library_name: peft``, ``base_model``, the tags the Hub reads (``lora``,
    ``base_model:adapter:<id>``, ``transformers``) and ``pipeline_tag`` for a causal LM, on the
    Hub's card template.

    A README.md that peftkit did not write keeps every word: only that metadata is added to its
    header, as PEFT adds it (a header that does not parse is left alone, with a warning).

    Args:
        training: markdown lines on how the adapter was trained, when known.
    """
    from huggingface_hub import ModelCard, ModelCardData

    card_path = folder / "README.md"
    base = _card_base_model(model)
    active = model.peft_config[model.active_adapter]
    tags = {"peftkit"} | ({f"base_model:adapter:{base}"} if base else set())
    tags |= {"lora"} if active.peft_type_name == "LORA" else set()
    tags |= {"transformers"} if hasattr(model, "config") else set()
    causal = active.task_type is not None and active.task_type.value == "CAUSAL_LM"
    pipeline = "text-generation" if causal else None
    if card_path.is_file() and CARD_MARK not in card_path.read_text(
        encoding="utf-8", errors="replace"
    ):
        _add_card_metadata(card_path, base, tags, pipeline)
        return
    data = ModelCardData(
        library_name="peft", base_model=base, tags=sorted(tags), pipeline_tag=pipeline
    )
    lines = ["| adapter | method | task |", "|---|---|---|"]
    for name, config in model.peft_config.items():
        task = config.task_type.value if config.task_type is not None else "-"
        lines.append(f"| {name} | {config.peft_type_name} | {task} |")
    lines += ["", *training] if training else []
    gguf = getattr(model.get_base_model(), "gguf_source", None)
    if gguf:
        lines += [
            "",
            f"The base model was loaded from the GGUF file `{gguf}` and de-quantized to float: the "
            "adapter was trained on those weights, which differ slightly from the original checkpoint's "
            f"({base or 'the base model'}), so it fits the GGUF's de-quantized weights best.",
        ]

    fields = {
        **data.to_dict(),
        "model_id": f"an adapter of {base}" if base else "an adapter",
        "model_description": "\n".join(lines),
        "model_type": f"{active.peft_type_name} adapter",
        "base_model": base,
        "model_summary": f"{CARD_MARK} in Hugging Face PEFT's format: it loads in peftkit and in PEFT.",
        "get_started_code": "```python\nfrom peftkit import PeftModel\n\nmodel = PeftModel.from_pretrained("
        'base_model, "path/to/this/folder")\n```',
        "software": f"peftkit {__version__} (PEFT's adapter format)",
    }
    card = ModelCard(_hub_template().render(card_data=data.to_yaml(), **fields))
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(card_path, str(card))


@functools.cache
def _hub_template() -> Any:
    """The Hub's model card template, compiled once: ``ModelCard.from_template`` renders this same
    template but compiles it on every call, which was three quarters of the time of saving a small
    adapter."""
    import jinja2
    from huggingface_hub import ModelCard

    return jinja2.Template(Path(ModelCard.default_template_path).read_text(encoding="utf-8"))


def _add_card_metadata(
    card_path: Path, base: str | None, tags: set[str], pipeline: str | None
) -> None:
    """Add PEFT's metadata to the header of someone else's card, keeping its text as it is."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard.load(card_path)
    except Exception as err:  # any parse failure: leave the user's file alone
        warnings.warn(
            f"{card_path} is kept as it is: its metadata header could not be read ({err})",
            stacklevel=3,
        )
        return
    card.data.library_name = "peft"
    card.data.tags = sorted(set(card.data.tags or []) | tags)
    if base and not card.data.base_model:
        card.data.base_model = base
    if pipeline and not card.data.pipeline_tag:
        card.data.pipeline_tag = pipeline
    write_text_atomic(card_path, str(card))


def _card_base_model(model: Any) -> str | None:
    """The base model's name as PEFT's card gives it: the transformers config's ``_name_or_path``,
    else the one name all adapters record; None for a custom model or a model built from a
    config."""
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) if config is not None else None
    if name:
        return str(name)
    bases = {
        c.base_model_name_or_path for c in model.peft_config.values() if c.base_model_name_or_path
    }
    return bases.pop() if len(bases) == 1 else None
