"""``peftkit compare`` on a tiny model: every method trains, and the report agrees with the runs'
own files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peftkit.cli import main
from peftkit.compare import DEFAULT_METHODS, PRESETS, CompareConfig, compare
from peftkit.errors import ConfigError
from tests.train.test_loop import sentiment_csv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def config(tmp_path: Path, model_dir: Path, **fields: object) -> CompareConfig:
    data = {
        "path": str(sentiment_csv(tmp_path / "data.csv")),
        "mode": "classification",
        "template": "Review: {text} Label: {label}",
        "label_words": {"pos": "yes", "neg": "no"},
        "val_size": 12,
    }
    base: dict[str, object] = {
        "model": str(model_dir),
        "data": data,
        "budget": "3",
        "examples": 2,
        "output_dir": str(tmp_path / "cmp"),
        "train": {"batch_size": 8, "progress": False, "log_every": 1},
    }
    return CompareConfig(**{**base, **fields})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> tuple[Path, list]:  # type: ignore[type-arg]
    tmp = tmp_path_factory.mktemp("compare")
    results = compare(config(tmp, model_dir), log=lambda _: None)
    return tmp / "cmp", results


def test_every_method_trains_with_its_own_preset(report) -> None:  # type: ignore[no-untyped-def]
    folder, results = report
    assert [r.name for r in results] == ["base", *DEFAULT_METHODS]
    for row in results[1:]:
        job = json.loads(
            json.dumps(
                __import__("yaml").safe_load((folder / row.name / "config.yaml").read_text())
            )
        )
        assert job["method"] == PRESETS[row.name].method
        assert job["train"]["lr"] == PRESETS[row.name].lr
        assert job["train"]["max_steps"] == 3 and row.steps == 3
    full = next(r for r in results if r.name == "full")
    assert full.trainable == full.total  # every weight
    assert all(0 < r.trainable < r.total for r in results[1:] if r.name != "full")


def test_table_numbers_match_each_runs_files(report) -> None:  # type: ignore[no-untyped-def]
    folder, results = report
    table = (folder / "report.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(lines) == len(results)  # a row per method, plus the base model's
    for row, line in zip(results, lines, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row.label
        if row.name == "base":
            continue
        summary = json.loads((folder / row.name / "summary.json").read_text())
        assert float(cells[7]) == pytest.approx(summary["after"]["eval_loss"], abs=1e-4)
        assert float(cells[8]) == pytest.approx(summary["after"]["eval_accuracy"], abs=1e-3)
        assert cells[1] == f"{row.trainable:,d}"
        assert row.tokens_per_second == pytest.approx(summary["tokens_per_second"])
        saved = (
            folder
            / row.name
            / ("model/model.safetensors" if row.name == "full" else "adapter_model.safetensors")
        )
        assert saved.is_file() and row.size_bytes >= saved.stat().st_size
        assert row.peak_memory_bytes > 0
        losses = [
            json.loads(x)["loss"]
            for x in (folder / row.name / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(x)
        ]
        assert [loss for _, loss in row.curve] == losses


def test_the_base_row_is_the_untouched_model(report, model_dir: Path, chars) -> None:  # type: ignore[no-untyped-def]
    from peftkit.integrations.models import load_model
    from peftkit.train.data import load_task_data
    from peftkit.train.evaluate import evaluate

    folder, results = report
    cfg = CompareConfig.from_yaml(folder / "config.yaml", {})
    data = load_task_data(cfg.job("lora").data, chars, seed=cfg.seed)
    expected = evaluate(
        load_model(model_dir), data.val, pad_id=chars.pad_token_id, candidate_ids=data.candidate_ids
    )
    assert results[0].eval_loss == pytest.approx(expected.loss, abs=1e-5)
    assert results[0].accuracy == pytest.approx(expected.accuracy)


def test_images_and_page(report) -> None:  # type: ignore[no-untyped-def]
    folder, results = report
    for name in ("score.png", "curves.png"):
        assert (folder / name).read_bytes()[:8] == PNG_MAGIC
    from PIL import Image

    with Image.open(folder / "score.png") as image:
        image.verify()
    page = (folder / "report.html").read_text()
    assert page.count("<tr><td>") == len(results)
    assert page.count('src="data:image/png;base64,') == 2
    assert "Example 2" in page and "Example 3" not in page
    for row in results:
        assert len(row.outputs) == 2 and all(o in ("yes", "no") for o in row.outputs)


def test_a_finished_method_is_reused(report, model_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    folder, results = report

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished method was trained again")

    monkeypatch.setattr(sys.modules["peftkit.train"], "train", fail)
    monkeypatch.setattr(sys.modules["peftkit.compare.run"], "train", fail)  # bound at import there
    # as written before data.split_seed existed: still the same job
    saved = folder / "lora" / "config.yaml"
    saved.write_text(
        "".join(
            line for line in saved.read_text().splitlines(keepends=True) if "split_seed" not in line
        )
    )
    # showing progress does not change the run
    shown = {"batch_size": 8, "progress": True, "log_every": 1}
    again = compare(
        config(folder.parent, model_dir, methods=["lora", "ia3"], train=shown), log=lambda _: None
    )
    assert [r.accuracy for r in again[1:]] == [
        r.accuracy for r in results if r.name in ("lora", "ia3")
    ]


def test_a_method_saved_in_another_dtype_is_trained_again(
    report, model_dir: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """``dtype: auto`` resolves per machine and per policy (prefix tuning moved to fp32): a run
    saved in another dtype is another run, and reusing it would report its numbers under this
    config."""
    import re
    import sys

    folder, _ = report

    class Retrained(Exception):
        pass

    def retrain(*args: object, **kwargs: object) -> None:
        raise Retrained

    monkeypatch.setattr(sys.modules["peftkit.train"], "train", retrain)
    monkeypatch.setattr(sys.modules["peftkit.compare.run"], "train", retrain)
    saved = folder / "lora" / "config.yaml"
    text = saved.read_text()
    now = re.search(r"^dtype: (\S+)$", text, re.MULTILINE).group(1)  # type: ignore[union-attr]
    saved.write_text(
        text.replace(f"dtype: {now}", "dtype: float16" if now != "float16" else "dtype: float32")
    )
    try:
        with pytest.raises(Retrained):
            compare(
                config(folder.parent, model_dir, methods=["lora"], dtype="auto"), log=lambda _: None
            )
    finally:
        saved.write_text(text)


def test_bad_comparisons_are_reported_at_once(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(ConfigError) as err:
        config(tmp_path, model_dir, methods=["lora", "lorra"], budget="ten", lr={"promt": 1.0})
    text = str(err.value)
    assert "lorra" in text and "did you mean 'lora'" in text.lower()
    assert "budget='ten'" in text
    assert "lr.promt: not a method" in text


def test_minutes_budget_and_cli(tmp_path: Path, model_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = config(tmp_path, model_dir, budget="0.5m")
    assert cfg.budget_steps_minutes() == (None, 0.5)
    assert cfg.job("prompt").train.max_minutes == 0.5
    code = main(
        [
            "compare",
            "--model",
            str(model_dir),
            "--data",
            str(sentiment_csv(tmp_path / "d.csv")),
            "--data.mode",
            "classification",
            "--data.template",
            "Review: {text} Label: {label}",
            "--data.label_words",
            "{pos: yes, neg: no}",
            "--data.val_size",
            "8",
            "--methods",
            "lora,prefix",
            "--budget",
            "2",
            "--lr",
            "lora=0.02",
            "--output-dir",
            str(tmp_path / "c"),
            "--train.progress",
            "false",
        ]
    )
    assert code == 0
    assert "[2/2] prefix done" in capsys.readouterr().out
    results = json.loads((tmp_path / "c" / "results.json").read_text())["results"]
    assert [r["name"] for r in results] == ["base", "lora", "prefix"]
    job = (tmp_path / "c" / "lora" / "config.yaml").read_text()
    assert "lr: 0.02" in job
    assert main(["compare", "--model", str(model_dir), "--data", "x.csv", "--methods", "nope"]) == 2


def test_seeds_repeat_each_method_on_one_split(tmp_path: Path, model_dir: Path) -> None:
    code = main(
        [
            "compare",
            "--model",
            str(model_dir),
            "--data",
            str(sentiment_csv(tmp_path / "d.csv")),
            "--data.mode",
            "classification",
            "--data.template",
            "Review: {text} Label: {label}",
            "--data.label_words",
            "{pos: yes, neg: no}",
            "--data.val_size",
            "8",
            "--methods",
            "lora",
            "--budget",
            "2",
            "--seed",
            "5",
            "--seeds",
            "1",
            "2",
            "--output-dir",
            str(tmp_path / "c"),
            "--train.progress",
            "false",
            "--lr",
            "lora=0.05",
        ]
    )
    assert code == 0
    runs = [
        json.loads((tmp_path / "c" / f"lora-seed-{s}" / "summary.json").read_text()) for s in (1, 2)
    ]
    jobs = [
        __import__("yaml").safe_load(
            (tmp_path / "c" / f"lora-seed-{s}" / "config.yaml").read_text()
        )
        for s in (1, 2)
    ]
    assert [j["seed"] for j in jobs] == [1, 2] and {j["data"]["split_seed"] for j in jobs} == {5}
    losses = [r["after"]["eval_loss"] for r in runs]
    assert losses[0] != losses[1]  # the seeds trained differently
    row = json.loads((tmp_path / "c" / "results.json").read_text())["results"][1]
    assert row["eval_loss"] == pytest.approx(sum(losses) / 2)
    assert [r["seed"] for r in row["per_seed"]] == [1, 2]
    line = next(
        x for x in (tmp_path / "c" / "report.md").read_text().splitlines() if x.startswith("| LoRA")
    )
    cell = [c.strip() for c in line.strip("|").split("|")][7]
    assert cell == f"{sum(losses) / 2:.4f} ({min(losses):.4f}-{max(losses):.4f})"
    with pytest.raises(ConfigError, match="seeds"):
        config(tmp_path, model_dir, seeds=[1, 1])
    # A single run in the same folder sits beside the seeds' runs and leaves them alone.
    single = config(
        tmp_path, model_dir, methods=["lora"], budget="1", output_dir=str(tmp_path / "c")
    )
    compare(single, log=lambda _: None)
    assert (tmp_path / "c" / "lora" / "summary.json").is_file()
    assert all((tmp_path / "c" / f"lora-seed-{s}" / "summary.json").is_file() for s in (1, 2))


def test_full_fine_tuning_saves_a_loadable_model(report) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    folder, _ = report
    model = AutoModelForCausalLM.from_pretrained(folder / "full" / "model")
    trained = __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(folder / "full" / "model" / "model.safetensors")
    )
    assert torch.equal(
        model.state_dict()["model.embed_tokens.weight"], trained["model.embed_tokens.weight"]
    )


def test_a_foreign_folder_in_the_way_is_not_deleted(tmp_path: Path, model_dir: Path) -> None:
    cfg = config(tmp_path, model_dir, methods=["lora"])
    keep = tmp_path / "cmp" / "lora" / "notes.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("mine")
    with pytest.raises(ConfigError, match="is not a peftkit run"):
        compare(cfg, log=lambda _: None)
    assert keep.read_text() == "mine"


def test_prompt_and_prefix_start_from_the_tasks_words(tmp_path: Path, model_dir: Path) -> None:
    cfg = config(tmp_path, model_dir)
    assert cfg.job("prompt").adapter["prompt_tuning_init_text"] == "Answer yes or no:"
    assert cfg.job("prefix").adapter["prefix_init_text"] == "Answer yes or no:"
    completion = {"path": "d.csv", "mode": "completion", "template": "Act as a {act_name}. prompt:"}
    cfg = config(tmp_path, model_dir, data=completion)
    assert cfg.job("prefix").adapter["prefix_init_text"] == "Act as a act name. prompt:"
    assert cfg.job("prompt").adapter["prompt_tuning_init"] == "SAMPLE_VOCAB"  # the preset's
    cfg = config(
        tmp_path,
        model_dir,
        data=completion,
        init_text="Write a prompt:",
        adapters={
            "prefix": {
                "prefix_init_text": None,
                "tokenizer_name_or_path": None,
                "init_weights": "zero",
            }
        },
    )
    assert cfg.job("prompt").adapter["prompt_tuning_init_text"] == "Write a prompt:"
    assert cfg.job("prefix").adapter["init_weights"] == "zero"  # the user's settings win


def test_packing_applies_to_every_method(tmp_path: Path, model_dir: Path) -> None:
    """``train.packing`` in a comparison reaches every method's job, prefix tuning's included (it
    packs with a mask per example), and each of them trains packed."""
    cfg = config(tmp_path, model_dir, train={"packing": True, "progress": False})
    assert all(cfg.job(name).train.packing is True for name in DEFAULT_METHODS)
    results = compare(
        config(
            tmp_path,
            model_dir,
            methods=["lora", "prompt", "prefix"],
            train={"packing": True, "progress": False, "batch_size": 8},
        ),
        log=lambda _: None,
    )
    assert [r.name for r in results] == ["base", "lora", "prompt", "prefix"]
    assert all(r.steps == 3 for r in results[1:])


def test_every_preset_builds_a_valid_config_of_its_method() -> None:
    """Each preset's adapter settings are a valid config of the method it names (through the
    registry), so ``--methods loha,lokr,oft`` cannot fail on its own defaults."""
    from peftkit.methods import method_named

    for name, preset in PRESETS.items():
        if preset.method == "full":
            continue
        config = method_named(preset.method).config_class(**preset.adapter)
        assert config.peft_type_name, name
