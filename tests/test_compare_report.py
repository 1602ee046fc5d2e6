"""The compare report from hand-made rows: the table's cells, the files, and what each holds (no
training)."""

from __future__ import annotations

import json
from pathlib import Path

from peftkit.compare.report import MethodResult, ReportContext, table_rows, write_report

BASE = MethodResult("base", "base model (zero-shot)", 0, 1000, 0, 0.0, 0.0, 0, 0, 2.5, 0.5)
LORA = MethodResult(
    "lora",
    "LoRA r8",
    20,
    1000,
    2048,
    61.4,
    950.2,
    3 * 2**20,
    40,
    1.25,
    0.7125,
    curve=[(10, 2.0), (20, 1.5)],
    outputs=["yes"],
    per_seed=[
        {"seed": 1, "eval_loss": 1.2, "accuracy": 0.70},
        {"seed": 2, "eval_loss": 1.3, "accuracy": 0.725},
    ],
)
CONTEXT = ReportContext(
    80,
    20,
    0.55,
    [("Review: fine. Label:", "yes")],
    "tiny-llama",
    ["model: `tiny-llama`", "budget per method: 40 steps"],
    "model: tiny-llama\n",
)


def test_the_table_shows_sizes_times_and_the_seed_range() -> None:
    base, lora = table_rows([BASE, LORA])
    assert base == ["base model (zero-shot)", "-", "-", "-", "-", "-", "-", "2.5000", "0.500"]
    assert lora == [
        "LoRA r8",
        "20",
        "2%",
        "2.0 KB",
        "61 s",
        "950",
        "3.0 MB",
        "1.2500 (1.2000-1.3000)",
        "0.713 (0.700-0.725)",
    ]


def test_the_report_files_hold_the_facts_the_rows_and_the_config(tmp_path: Path) -> None:
    write_report(tmp_path, CONTEXT, [BASE, LORA])
    markdown = (tmp_path / "report.md").read_text()
    assert (
        "- model: `tiny-llama`" in markdown
        and "majority class on the held-out split: 0.550" in markdown
    )
    assert "| LoRA r8 | 20 |" in markdown and "Review: fine. Label:" in markdown
    page = (tmp_path / "report.html").read_text()
    assert "<title>peftkit compare: tiny-llama</title>" in page and "<td>LoRA r8</td>" in page
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["context"] == {
        "train_examples": 80,
        "val_examples": 20,
        "majority": 0.55,
        "examples": [["Review: fine. Label:", "yes"]],
    }
    assert [r["name"] for r in saved["results"]] == ["base", "lora"]
    assert (tmp_path / "config.yaml").read_text() == "model: tiny-llama\n"
