"""Property-based checks: any config or file either loads or raises one of peftkit's own errors."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peftkit import JobConfig, PeftConfig
from peftkit.errors import PeftkitError
from peftkit.train.data import load_rows, template_fields

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5000),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.text(max_size=6), max_size=3),
)
SECTIONS = {
    "data": [
        "path",
        "mode",
        "template",
        "label_words",
        "val_size",
        "max_length",
        "delimiter",
        "label_threshold",
    ],
    "train": [
        "lr",
        "epochs",
        "batch_size",
        "schedule",
        "precision",
        "max_steps",
        "resume",
        "warmup_steps",
    ],
    "adapter": [
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "num_virtual_tokens",
        "bias",
        "rank",
    ],
}


def section(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys), SCALARS, max_size=4)


JOBS = st.fixed_dictionaries(
    {},
    optional={
        "model": SCALARS,
        "method": st.one_of(SCALARS, st.sampled_from(["lora", "prompt_tuning", "prefix_tuning"])),
        "seed": SCALARS,
        "output_dir": SCALARS,
        "unknown": SCALARS,
        **{name: st.one_of(SCALARS, section(keys)) for name, keys in SECTIONS.items()},
    },
)


@settings(max_examples=300, deadline=None)
@given(JOBS)
def test_any_job_dict_loads_or_raises_config_error(data: dict[str, Any]) -> None:
    with contextlib.suppress(PeftkitError):
        JobConfig.from_dict(data)


ADAPTER_FIELDS = st.fixed_dictionaries(
    {
        "peft_type": st.one_of(
            SCALARS, st.sampled_from(["LORA", "PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"])
        )
    },
    optional={
        k: SCALARS
        for k in [
            "r",
            "lora_alpha",
            "target_modules",
            "num_virtual_tokens",
            "task_type",
            "use_dora",
            "layers_to_transform",
            "prompt_tuning_init",
            "encoder_reparameterization_type",
        ]
    },
)


@settings(max_examples=300, deadline=None)
@given(ADAPTER_FIELDS)
def test_any_adapter_config_loads_or_raises_our_error(data: dict[str, Any]) -> None:
    with contextlib.suppress(PeftkitError):
        PeftConfig.from_dict(data)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_any_template_parses_or_raises_data_error(template: str) -> None:
    with contextlib.suppress(PeftkitError):
        template_fields(template)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.sampled_from([".csv", ".tsv", ".jsonl", ".json"]))
def test_any_file_reads_or_raises_data_error(content: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(content)
        try:
            rows = load_rows(path)
        except PeftkitError:
            return
        assert isinstance(rows, list) and rows
