"""PEFT's own tests, a fixed fast subset, against PEFT and against peftkit (the full run is ``make
conformance``).

The subset (``--subset ci`` in ``benchmarks/conformance/run_peft_tests.py``) covers every claimed
method on the hub-model stand-ins (Llama, BERT, BART, a BERT classifier), the custom models and the
low-level API. It fails on a harness error (a test one library ran and the other did not), on any
behaviour difference without a written reason, and when peftkit passes less of what PEFT passes than
the last recorded full run did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "benchmarks" / "conformance" / "run_peft_tests.py"
RECORDED = ROOT / "benchmarks" / "results" / "peft-conformance.json"


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("conformance") / "ci.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, str(HARNESS), "--subset", "ci", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert out.exists(), f"the harness wrote no result:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    result = json.loads(out.read_text())
    result["returncode"], result["stdout"] = run.returncode, run.stdout
    return result


def test_every_test_ran_under_both_libraries(subset: dict) -> None:
    assert subset["harness_errors"] == [], subset["stdout"][-3000:]
    assert subset["returncode"] == 0
    assert subset["selected"] > 300  # the subset really ran


def test_no_behaviour_difference_without_a_written_reason(subset: dict) -> None:
    unexplained = {t: r["why"] for t, r in subset["tests"].items() if r["category"] == "behaviour"}
    assert not unexplained, json.dumps(unexplained, indent=1)[:4000]


def test_every_claimed_method_is_represented_and_passes(subset: dict) -> None:
    recorded = json.loads(RECORDED.read_text())["ratio"]
    for method in (
        "lora",
        "ia3",
        "loha",
        "lokr",
        "adalora",
        "prompt tuning",
        "p-tuning",
        "prefix tuning",
    ):
        row = subset["by_method"][method]
        assert row["peft_passes"] >= 10, (method, row)
        assert row["ratio"] >= min(recorded, 0.97) - 0.02, (
            method,
            row,
            f"the full run recorded {recorded}",
        )
