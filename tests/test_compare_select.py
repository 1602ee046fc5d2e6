"""``peftkit compare --select``: settings chosen on a validation carve, the held-out rows unread
until the end."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from peftkit.cli import main
from peftkit.compare import CompareConfig, compare
from peftkit.compare.select import SelectConfig, Trial, choose, steps_per_epoch
from peftkit.errors import ConfigError
from peftkit.train import data as data_module
from peftkit.train.data import DataConfig, _split, load_task_data, read_rows
from peftkit.train.report import read_metrics
from tests.train.test_loop import sentiment_csv

ROWS, HELD_OUT = 64, 12
CLASSIFY = {
    "mode": "classification",
    "template": "Review: {text} Label: {label}",
    "label_words": {"pos": "positive", "neg": "negative"},
    "val_size": HELD_OUT,
}


def select_config(tmp_path: Path, model_dir: Path, **fields: Any) -> CompareConfig:
    data = {"path": str(sentiment_csv(tmp_path / "data.csv", n=ROWS)), **CLASSIFY}
    base: dict[str, Any] = {
        "model": str(model_dir),
        "data": data,
        "methods": ["lora", "prompt"],
        "examples": 1,
        "output_dir": str(tmp_path / "cmp"),
        "seeds": [1, 2],
        "train": {"batch_size": 8, "progress": False, "log_every": 1},
        "select": {"params": ["lr", "epochs"], "max_epochs": 2, "val_size": 10},
    }
    return CompareConfig(**{**base, **fields})


def held_out_rows(config: CompareConfig) -> set[int]:
    """The row numbers of the held-out split, computed here from the split rule itself."""
    rows = read_rows(config.data, config.data.path or "").rows
    return {i for i, _ in _split(rows, config.data.val_size, config.seed)[1]}


@pytest.fixture(scope="module")
def selected(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> tuple[CompareConfig, list[Any], list[str]]:
    """A comparison with selection, run while any tokenization of a held-out row before selection
    has ended raises: the held-out rows are unreadable until the chosen settings are scored."""
    tmp = tmp_path_factory.mktemp("select")
    config = select_config(tmp, model_dir)
    forbidden = held_out_rows(config)
    real_tokenize = data_module.tokenize_rows
    module = sys.modules["peftkit.compare.run"]  # the attribute peftkit.compare is the function
    real_select = module.select_settings
    state = {"selecting": False, "held_out_read_after": 0}

    def guarded_tokenize(config: Any, tokenizer: Any, source: Any, rows: Any) -> Any:
        touched = forbidden & {i for i, _ in rows}
        if touched and state["selecting"]:
            raise AssertionError(f"selection read held-out rows {sorted(touched)}")
        state["held_out_read_after"] += bool(touched)
        return real_tokenize(config, tokenizer, source, rows)

    def watched_select(*args: Any, **kwargs: Any) -> Any:
        state["selecting"] = True
        try:
            return real_select(*args, **kwargs)
        finally:
            state["selecting"] = False

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data_module, "tokenize_rows", guarded_tokenize)
        patch.setattr(module, "select_settings", watched_select)
        lines: list[str] = []
        results = compare(config, log=lines.append)
    assert state["held_out_read_after"] > 0  # the final scoring did read them: the guard was live
    return config, results, lines


def test_the_held_out_rows_are_unread_until_the_choice_is_scored(selected) -> None:  # type: ignore[no-untyped-def]
    _, _, lines = selected
    assert lines[0].startswith("selecting lr and epochs on validation data")
    carve = next(line for line in lines if "data.dev_size" in line)
    assert f"the {HELD_OUT} held-out rows set aside" in carve and "10 validation rows" in carve


def test_every_trial_trains_on_the_carve_and_scores_every_epoch(selected) -> None:  # type: ignore[no-untyped-def]
    config, _, _ = selected
    out = Path(config.output_dir)
    trials = sorted((out / "select").iterdir())
    assert len(trials) == 2 * 3  # two methods x three rates
    per_epoch = steps_per_epoch(ROWS - HELD_OUT - 10, config)
    for folder in trials:
        job = yaml.safe_load((folder / "config.yaml").read_text())
        assert job["data"]["dev_size"] == 10 and job["train"]["epochs"] == 2
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["train_examples"] == ROWS - HELD_OUT - 10 and summary["val_examples"] == 10
        evals = [r["step"] for r in read_metrics(folder / "metrics.jsonl") if "eval_loss" in r]
        assert evals == [per_epoch, 2 * per_epoch]


def test_the_choice_is_the_best_validation_point(selected) -> None:  # type: ignore[no-untyped-def]
    config, results, _ = selected
    out = Path(config.output_dir)
    chosen = json.loads((out / "selection.json").read_text())
    assert [c["method"] for c in chosen] == ["lora", "prompt"]
    assert len({c["steps"] for c in chosen}) == 1  # equal budgets
    for choice in chosen:
        points = []  # read back from each trial's own files, not from the selection's record
        for folder in sorted((out / "select").glob(f"{choice['method']}-lr-*")):
            lr = yaml.safe_load((folder / "config.yaml").read_text())["train"]["lr"]
            for r in read_metrics(folder / "metrics.jsonl"):
                if "eval_loss" in r:
                    points.append((-r["eval_accuracy"], r["eval_loss"], lr, r["step"]))
        best = min(points)
        assert choice["lr"] == pytest.approx(best[2])
        assert choice["score"]["accuracy"] == pytest.approx(-best[0])
        # the final runs train with the choice on all the training rows, on the held-out split
        for seed in (1, 2):
            job = yaml.safe_load(
                (out / f"{choice['method']}-seed-{seed}" / "config.yaml").read_text()
            )
            assert job["train"]["lr"] == pytest.approx(choice["lr"])
            assert job["train"]["epochs"] == choice["epochs"]
            assert job["data"]["dev_size"] == 0 and job["data"]["val_size"] == HELD_OUT
            summary = json.loads(
                (out / f"{choice['method']}-seed-{seed}" / "summary.json").read_text()
            )
            assert (
                summary["train_examples"] == ROWS - HELD_OUT and summary["val_examples"] == HELD_OUT
            )
    assert [r.name for r in results] == ["base", "lora", "prompt"]


def test_the_report_shows_the_grid_the_choice_and_the_cost(selected) -> None:  # type: ignore[no-untyped-def]
    config, results, _ = selected
    out = Path(config.output_dir)
    report = (out / "report.md").read_text()
    assert (
        "## Selection on validation data" in report
        and "![Selection on validation data](selection.png)" in report
    )
    assert "every method 3 trial(s)" in report and "selection took" in report
    choice = json.loads((out / "selection.json").read_text())[0]
    row = next(line for line in report.splitlines() if line.startswith("| lora | 0.001 |"))
    assert f"lr {choice['lr']:.2g}, {choice['epochs']} epoch(s)" in row
    # held-out: chosen, the table's own score
    assert row.rstrip(" |").endswith(f"{results[1].accuracy:.3f}")
    assert (out / "selection.png").read_bytes()[:4] == b"\x89PNG"
    assert "Selection on validation data" in (out / "report.html").read_text()


def test_a_finished_selection_is_reused(selected, model_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config, results, _ = selected

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished trial or run was trained again")

    monkeypatch.setattr(sys.modules["peftkit.train"], "train", fail)
    monkeypatch.setattr(sys.modules["peftkit.compare.run"], "train", fail)  # bound at import there
    again = compare(config, log=lambda _: None)
    assert [r.accuracy for r in again] == [r.accuracy for r in results]


def test_choose_ranks_accuracy_then_loss_and_prefers_the_cheaper_tie() -> None:
    def trial(lr: float, *scores: tuple[float, float]) -> Trial:
        return Trial(
            lr,
            [
                {"epoch": e + 1, "step": 10 * (e + 1), "accuracy": a, "eval_loss": loss}
                for e, (a, loss) in enumerate(scores)
            ],
            1.0,
            10 * len(scores),
        )

    trials = [
        trial(1e-4, (0.6, 0.5), (0.7, 0.40)),
        trial(3e-4, (0.7, 0.30), (0.7, 0.35)),
        trial(1e-3, (0.5, 0.20), (0.55, 0.25)),
    ]
    best = choose("lora", 3e-4, trials, "accuracy", epochs=True)
    assert (best.lr, best.epochs) == (3e-4, 1)  # 0.7 three times; the lowest loss among them
    assert choose("lora", 3e-4, trials, "loss", epochs=True).lr == 1e-3
    last_only = choose("lora", 3e-4, trials, "accuracy", epochs=False)
    assert (last_only.lr, last_only.epochs, last_only.score["eval_loss"]) == (3e-4, None, 0.35)
    tied = [trial(1e-4, (0.7, 0.3)), trial(3e-4, (0.7, 0.3))]
    assert choose("lora", 3e-4, tied, "accuracy", epochs=True).lr == 1e-4
    assert best.steps == 60


def test_dev_size_carves_validation_from_the_training_rows_only(
    tmp_path: Path, model_dir: Path
) -> None:
    from peftkit.integrations.models import load_tokenizer

    path = sentiment_csv(tmp_path / "d.csv", n=40)
    tokenizer = load_tokenizer(str(model_dir))
    plain = load_task_data(DataConfig(path=str(path), **CLASSIFY), tokenizer, seed=3)
    carved = load_task_data(
        DataConfig(path=str(path), dev_size=0.25, **CLASSIFY), tokenizer, seed=3
    )
    assert len(carved.val) == round(0.25 * len(plain.train))
    # The carve and what is left are exactly the training examples: no held-out example among them.
    assert sorted(tuple(e.input_ids) for e in carved.train + carved.val) == sorted(
        tuple(e.input_ids) for e in plain.train
    )
    # A separate held-out file is not even opened.
    missing = DataConfig(
        path=str(path), dev_size=5, eval_path=str(tmp_path / "no-such-file.csv"), **CLASSIFY
    )
    assert len(load_task_data(missing, tokenizer, seed=3).val) == 5
    with pytest.raises(
        ConfigError,
        match=r"data.dev_size=-1 must be a share of the rows in \[0, 1\) or a whole count",
    ):
        from peftkit.train.config import JobConfig

        JobConfig(model=str(model_dir), data={"path": str(path), "dev_size": -1, **CLASSIFY})  # type: ignore[arg-type]


def test_bad_selections_are_reported_at_once(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(ConfigError) as err:
        select_config(
            tmp_path,
            model_dir,
            budget="5",
            select={
                "params": ["lr", "epoch"],
                "lr_factors": [0, 1],
                "max_epochs": 0,
                "metric": "f1",
                "val_size": 0,
            },
        )
    text = str(err.value)
    assert "select.val_size=0 must be a share of the rows in (0, 1)" in text
    assert "'epoch' cannot be selected" in text and "did you mean 'epochs'" in text.lower()
    assert (
        "select.lr_factors=[0, 1]" in text
        and "select.max_epochs=0" in text
        and "select.metric='f1'" in text
    )
    with pytest.raises(ConfigError, match=r"select\.baseline=.*no-such\.json.*results\.json"):
        select_config(
            tmp_path,
            model_dir,
            select={"params": ["lr"], "baseline": str(tmp_path / "no-such.json")},
        )
    with pytest.raises(ConfigError, match="remove budget"):
        select_config(tmp_path, model_dir, budget="5")
    with pytest.raises(ConfigError, match="held-out split"):
        select_config(tmp_path, model_dir, data={"path": "x.csv", **CLASSIFY, "val_size": 0})
    assert SelectConfig(params="lr, epochs").params == ["lr", "epochs"]  # type: ignore[arg-type]


def test_select_from_the_command_line(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "c"
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
            "{pos: positive, neg: negative}",
            "--data.val_size",
            "8",
            "--methods",
            "lora",
            "--budget",
            "2",
            "--select",
            "lr",
            "--select.lr_factors",
            "0.5",
            "2",
            "--select.val_size",
            "8",
            "--output-dir",
            str(out),
            "--train.progress",
            "false",
        ]
    )
    assert code == 0
    chosen = json.loads((out / "selection.json").read_text())[0]
    assert chosen["epochs"] is None and chosen["lr"] in (pytest.approx(5e-4), pytest.approx(2e-3))
    # lr only: every trial keeps the comparison's budget
    assert [t["steps"] for t in chosen["trials"]] == [2, 2]
    final = yaml.safe_load((out / "lora" / "config.yaml").read_text())
    assert final["train"]["lr"] == pytest.approx(chosen["lr"]) and final["train"]["max_steps"] == 2
