"""The CLI through its entry point: every command, and bad input as exit codes with one clear
message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from peftkit import PeftModel
from peftkit.cli import main
from tests.conftest import outputs, tiny_model
from tests.train.test_loop import sentiment_csv


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train_flags(model_dir: Path, data: Path, out: Path) -> list[str]:
    return [
        "--model",
        str(model_dir),
        "--data.path",
        str(data),
        "--data.mode",
        "classification",
        "--data.template",
        "Review: {text} Label: {label}",
        "--data.label_words",
        "{pos: yes, neg: no}",
        "--data.val_size",
        "8",
        "--adapter.r",
        "4",
        "--adapter.target_modules",
        "q_proj",
        "v_proj",
        "--train.batch_size",
        "8",
        "--train.progress",
        "false",
        "--train.plot",
        "false",
        "--output-dir",
        str(out),
    ]


def test_train_eval_generate_merge(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = sentiment_csv(tmp_path / "d.csv", n=40), tmp_path / "run"
    code, stdout, _ = run(
        capsys,
        "train",
        *train_flags(model_dir, data, out),
        "--train.max_steps",
        "3",
        "--train.lr",
        "1e-2",
    )
    assert code == 0
    assert "accuracy" in stdout and "before" in stdout and "after" in stdout
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()

    code, stdout, err = run(
        capsys, "eval", *train_flags(model_dir, data, out), "--adapter-path", out
    )
    assert code == 0 and "accuracy" in stdout and "8 examples" in stdout, (stdout, err)

    code, stdout, _ = run(
        capsys,
        "generate",
        model_dir,
        "Review: good film Label:",
        "--adapter-path",
        out,
        "--max-new-tokens",
        "3",
    )
    assert code == 0 and "[base]" in stdout and "[adapter]" in stdout

    merged = tmp_path / "merged"
    code, stdout, _ = run(capsys, "merge", model_dir, out, merged)
    assert code == 0
    plain = transformers.AutoModelForCausalLM.from_pretrained(merged)
    adapted = PeftModel.from_pretrained(tiny_model("llama"), out)
    inputs = {"input_ids": torch.tensor([[1, 50, 60, 70]])}
    torch.testing.assert_close(
        outputs(plain, inputs), outputs(adapted, inputs), atol=1e-5, rtol=1e-5
    )
    assert (merged / "tokenizer.json").is_file()


def test_train_from_yaml_with_overrides_and_resume(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = sentiment_csv(tmp_path / "d.csv", n=40), tmp_path / "run"
    config = tmp_path / "job.yaml"
    config.write_text(
        f"model: {model_dir}\nadapter: {{r: 2}}\noutput_dir: {out}\n"
        f"data: {{path: {data}, mode: text, template: '{{text}} is {{label}}', val_size: 8}}\n"
        f"train: {{max_steps: 4, save_every: 2, progress: false, plot: false}}\n"
    )
    code, _, _ = run(capsys, "train", "--config", config, "--adapter.target_modules", "q_proj")
    assert code == 0
    code, _, err = run(capsys, "train", "--config", config, "--adapter.target_modules", "q_proj")
    assert code == 2 and "already holds checkpoints" in err
    code, stdout, _ = run(
        capsys, "train", "--config", config, "--adapter.target_modules", "q_proj", "--resume"
    )
    assert code == 0 and "resumed from" in stdout and "step 4 of 4" in stdout


def test_inspect_lists_targets_and_counts(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, _ = run(capsys, "inspect", model_dir)
    assert code == 0
    assert "q_proj" in stdout and "Default target_modules" in stdout
    for method in ("prompt tuning", "p-tuning", "prefix tuning"):
        assert method in stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "--data.path", "missing.csv", "--model", "{model}"],
            "data file not found: missing.csv",
        ),
        (
            ["train", "--data.path", "d.csv", "--train.lr", "fast", "--data.mode", "clasify"],
            "2 problems",
        ),
        (["train", "--config", "nope.yaml"], "config file not found"),
        (["eval", "--model", "no-such-model-alias", "--data.path", "d.csv"], "no-such-model-alias"),
        (["inspect", "/no/such/folder"], "/no/such/folder"),
        (["generate", "{model}", "hi", "--adapter-path", "/no/adapter"], "/no/adapter"),
    ],
)
def test_bad_input_exits_2_with_one_message(
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    sentiment_csv(tmp_path / "d.csv", n=10)
    code, _, err = run(capsys, *[a.replace("{model}", str(model_dir)) for a in argv])
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err and "peftkit: error:" in err


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    from peftkit.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "train", "--config", "nope.yaml"])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import peftkit

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert (
        info.value.code == 0 and capsys.readouterr().out.strip() == f"peftkit {peftkit.__version__}"
    )


def test_debug_works_after_the_command_too(tmp_path: Path) -> None:
    from peftkit.errors import ConfigError

    with pytest.raises(ConfigError, match="config file not found"):
        main(["train", "--config", str(tmp_path / "nope.yaml"), "--debug"])


def test_train_help_shows_defaults_plain_text_and_the_right_placeholders(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0
    # docstrings' markup does not reach the terminal
    assert "``" not in text and ":class:" not in text
    assert (
        "--adapter.rank_pattern {KEY: VALUE}" in text
        and "--adapter.layers_to_transform N [N ...]" in text
    )
    assert "(default: 0.0002)" in text and "[LoRA]" in text and "--resume [CHECKPOINT]" in text


def test_a_mapping_flag_is_read_as_yaml() -> None:
    import argparse

    from peftkit.cli import add_job_flags, job_from_args

    parser = argparse.ArgumentParser()
    add_job_flags(parser)
    args = parser.parse_args(
        [
            "--model",
            "m",
            "--data.path",
            "d.csv",
            "--adapter.rank_pattern",
            "{q_proj: 2}",
            "--adapter.alpha_pattern",
            "{v_proj: 0.5}",
        ]
    )
    adapter = job_from_args(args).peft_config()
    assert adapter.rank_pattern == {"q_proj": 2} and adapter.alpha_pattern == {"v_proj": 0.5}


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["train", "--help"]])
def test_the_cli_answers_version_and_help_without_loading_torch_where_it_can(
    argv: list[str],
) -> None:
    """``import peftkit`` is lazy (PEP 562) and the parser builds only the chosen command's schema
    flags, so ``--version`` and ``--help`` load no torch (it is what made them take seconds);
    ``train --help`` needs the job schema and may."""
    import subprocess
    import sys

    code = (
        "import sys, peftkit, peftkit.cli\n"
        "assert 'torch' not in sys.modules, 'import peftkit loaded torch'\n"
        f"try:\n    peftkit.cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == ("TORCH" if argv[0] == "train" else "NO-TORCH")


def test_the_lazy_package_exports_every_public_name() -> None:
    import peftkit

    for name in peftkit.__all__:
        assert getattr(peftkit, name) is not None, name
    assert (
        peftkit.PeftError is peftkit.PeftkitError
        and peftkit.methods.method_named("lora").name == "lora"
    )


def test_every_flag_comes_from_a_documented_schema_field() -> None:
    """Each argument of each command is a field of that command's options (peftkit.commands), of the
    job schema, or of ServeConfig, with the field's docstring as its help: no flag is written by
    hand in cli.py."""
    import argparse
    import dataclasses

    from peftkit.cli import TOP_LEVEL, build_parser
    from peftkit.commands import COMMAND_OPTIONS
    from peftkit.common.schema import field_docs

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMAND_OPTIONS)
    for name, command in sub.choices.items():
        options = {f.name for f in dataclasses.fields(COMMAND_OPTIONS[name])}
        docs = field_docs(COMMAND_OPTIONS[name])
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"peftkit {name} {action.option_strings or action.dest} has no help"
            if "." in action.dest or (
                action.dest in ("config", *TOP_LEVEL) and action.dest not in options
            ):
                continue  # --data.path, --train.lr, --model ...: the job schema's own flags
            if name == "serve" and action.dest not in options:
                from peftkit.serve.config import FLAG_FIELDS

                assert action.dest in FLAG_FIELDS
                continue
            assert action.dest in options, (
                f"peftkit {name}: {action.dest} is not a field of its options"
            )
            assert action.help.startswith(docs[action.dest].split()[0].replace("%", "%%"))


@pytest.mark.parametrize(
    ("method", "yaml_adapter", "flags", "peft_class"),
    [
        (
            "loha",
            "{r: 2, target_modules: [q_proj]}",
            ["--adapter.rank_dropout", "0.1"],
            "LoHaConfig",
        ),
        (
            "lokr",
            "{r: 2, target_modules: [q_proj]}",
            ["--adapter.decompose_both", "true"],
            "LoKrConfig",
        ),
        ("oft", "{target_modules: [q_proj]}", ["--adapter.oft_block_size", "4"], "OFTConfig"),
        (
            "adalora",
            "{init_r: 4, target_r: 2, total_step: 2, target_modules: [q_proj, v_proj]}",
            ["--adapter.orth_reg_weight", "0.1"],
            "AdaLoraConfig",
        ),
        (
            "trainable_tokens",
            "{token_indices: [4, 72, 75, 83, 87]}",  # characters of the training rows
            ["--adapter.init_weights", "true"],
            "TrainableTokensConfig",
        ),
    ],
)
def test_the_new_methods_train_from_yaml_and_flags_and_load_in_peft(
    method: str,
    yaml_adapter: str,
    flags: list[str],
    peft_class: str,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import peft

    data, out = sentiment_csv(tmp_path / "d.csv", n=24), tmp_path / "run"
    config = tmp_path / "job.yaml"
    config.write_text(
        f"model: {model_dir}\nmethod: {method}\nadapter: {yaml_adapter}\noutput_dir: {out}\n"
        f"data: {{path: {data}, mode: text, template: '{{text}} is {{label}}', val_size: 8}}\n"
        f"train: {{max_steps: 2, lr: 0.01, progress: false, plot: false}}\n"
    )
    code, _, err = run(capsys, "train", "--config", config, *flags)
    assert code == 0, err
    loaded = peft.PeftModel.from_pretrained(tiny_model("llama"), out)
    assert type(loaded.peft_config["default"]).__name__ == peft_class
    ours = PeftModel.from_pretrained(tiny_model("llama"), out)
    inputs = {"input_ids": torch.tensor([[1, 75, 83, 4, 87, 60]])}
    torch.testing.assert_close(outputs(loaded, inputs), outputs(ours, inputs), rtol=0, atol=1e-6)
    assert not torch.equal(outputs(ours, inputs), outputs(tiny_model("llama"), inputs))


def test_lora_on_expert_parameters_trains_from_yaml_and_loads_in_peft(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """target_parameters through the job: a tiny mixture-of-experts model's expert stacks."""
    import peft

    from tests.conftest import char_tokenizer
    from tests.interop.test_peft_target_parameters import moe

    folder = tmp_path / "moe"
    moe().save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    data, out = sentiment_csv(tmp_path / "d.csv", n=24), tmp_path / "run"
    config = tmp_path / "job.yaml"
    config.write_text(
        f"model: {folder}\nmethod: lora\noutput_dir: {out}\n"
        "adapter: {r: 2, target_modules: [], target_parameters: [mlp.experts.gate_up_proj]}\n"
        f"data: {{path: {data}, mode: text, template: '{{text}} is {{label}}', val_size: 8}}\n"
        f"train: {{max_steps: 2, lr: 0.01, progress: false, plot: false}}\n"
    )
    code, _, err = run(
        capsys,
        "train",
        "--config",
        config,
        "--adapter.target_parameters",
        "mlp.experts.gate_up_proj",
        "mlp.experts.down_proj",
    )
    assert code == 0, err
    loaded = peft.PeftModel.from_pretrained(moe(), out)
    assert sorted(loaded.peft_config["default"].target_parameters) == [
        "mlp.experts.down_proj",
        "mlp.experts.gate_up_proj",
    ]
    ours = PeftModel.from_pretrained(moe(), out)
    inputs = {"input_ids": torch.tensor([[1, 75, 83, 4, 87, 60]])}
    torch.testing.assert_close(outputs(loaded, inputs), outputs(ours, inputs), rtol=0, atol=1e-6)
    assert not torch.equal(outputs(ours, inputs), outputs(moe(), inputs))


def test_the_loop_applies_adaloras_term_and_budget(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """peftkit's loop adds AdaLoRA's orthogonality term to the loss and calls update_and_allocate
    after every step: the saved ranks meet the target budget, and the first step's loss is higher
    by about the term (fresh A and B: ||A A^T - I|| is about sqrt(r) each)."""
    data = sentiment_csv(tmp_path / "d.csv", n=24)
    first: dict[float, float] = {}
    for weight in (0.0, 0.5):
        out = tmp_path / f"run-{weight}"
        config = tmp_path / "job.yaml"
        config.write_text(
            f"model: {model_dir}\nmethod: adalora\noutput_dir: {out}\n"
            "adapter: {init_r: 4, target_r: 2, total_step: 4, tfinal: 1, "
            f"orth_reg_weight: {weight}, target_modules: [q_proj, v_proj]}}\n"
            f"data: {{path: {data}, mode: text, template: '{{text}} is {{label}}', val_size: 8}}\n"
            "train: {max_steps: 4, lr: 0.01, progress: false, plot: false, log_every: 1}\n"
        )
        code, _, err = run(capsys, "train", "--config", config)
        assert code == 0, err
        saved = json.loads((out / "adapter_config.json").read_text())
        kept = [sum(mask) for mask in saved["rank_pattern"].values()]
        assert len(kept) == 4 and sum(kept) == 2 * 4  # target_r per layer, on average
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        first[weight] = next(r["loss"] for r in records if "loss" in r)
    assert first[0.5] - first[0.0] == pytest.approx(0.5 * 2.0, abs=0.1)
