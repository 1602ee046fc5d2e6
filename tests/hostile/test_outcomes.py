"""Hostile inputs whose right answer is not an error: what peftkit must do with them, checked by
what it wrote.

The corpus (test_corpus.py) holds the inputs that must be refused; these are the ones that must
work, and work as the user meant: strings stay strings, the user's files stay untouched, a dead
run's lock and leftovers are cleaned, and a resumed run may change only what does not change the
job.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from peftkit import JobConfig, LoraConfig, PeftModel, get_peft_model
from peftkit.cli import main
from peftkit.common.outputs import LOCK_NAME, MANIFEST_NAME, OutputDirError
from peftkit.train import checkpoint
from peftkit.train.data import load_task_data
from tests.conftest import char_tokenizer, tiny_model
from tests.hostile.test_corpus import GOOD_CSV, _merge_setup, _run_job


def _job_yaml(tmp: Path, words: str, csv: str = GOOD_CSV) -> JobConfig:
    (tmp / "d.csv").write_text(csv)
    (tmp / "job.yaml").write_text(
        f"data: {{path: {tmp / 'd.csv'}, mode: classification, label_words: {words}}}\n"
    )
    return JobConfig.from_yaml(tmp / "job.yaml")


def yaml_yes_no_stay_words(tmp: Path) -> None:
    assert _job_yaml(tmp, "{pos: yes, neg: no}").data.label_words == {"pos": "yes", "neg": "no"}


def yaml_on_off_null_stay_words(tmp: Path) -> None:
    job = _job_yaml(tmp, "{pos: on, neg: off, meh: null, ok: 'True'}")
    assert job.data.label_words == {"pos": "on", "neg": "off", "meh": "null", "ok": "True"}


def yaml_boolean_keys_stay_words(tmp: Path) -> None:
    csv = "text,label\n" + "".join(
        f"{w} film,{lab}\n" for w, lab in [("good", "yes"), ("bad", "no")] * 4
    )
    job = _job_yaml(tmp, "{yes: positive, no: negative}", csv)
    assert job.data.label_words == {"yes": "positive", "no": "negative"}
    data = load_task_data(job.data, char_tokenizer())
    assert sorted(e.label_index for e in data.train + data.val) == [0] * 4 + [1] * 4


def flag_and_yaml_agree(tmp: Path) -> None:
    from peftkit.cli import build_parser, job_from_args

    yaml_job = _job_yaml(tmp, "{pos: yes, neg: no}")
    args = build_parser().parse_args(
        [
            "train",
            "--data.path",
            str(tmp / "d.csv"),
            "--data.mode",
            "classification",
            "--data.label_words",
            "{pos: yes, neg: no}",
        ]
    )
    assert (
        job_from_args(args).data.label_words
        == yaml_job.data.label_words
        == {"pos": "yes", "neg": "no"}
    )


def yaml_numbers_typed_by_schema(tmp: Path) -> None:
    (tmp / "job.yaml").write_text(
        "data: {path: d.csv, max_length: 64, val_size: 0.25}\n"
        "train: {lr: 1e-4, progress: no, max_steps: 1_000}\nadapter: {r: 4, lora_alpha: 8}\n"
    )
    job = JobConfig.from_yaml(tmp / "job.yaml")
    assert (
        job.data.max_length,
        job.data.val_size,
        job.train.lr,
        job.train.progress,
        job.train.max_steps,
    ) == (64, 0.25, 1e-4, False, 1000)
    assert job.adapter == {"r": 4, "lora_alpha": 8.0}


def yaml_small_anchors_still_work(tmp: Path) -> None:
    (tmp / "job.yaml").write_text(
        "data: &d {path: d.csv, eval_path: null}\ntrain: {lr: &lr 0.01, weight_decay: *lr}\n"
    )
    job = JobConfig.from_yaml(tmp / "job.yaml")
    assert (job.data.path, job.data.eval_path, job.train.weight_decay) == ("d.csv", None, 0.01)


def label_na_is_a_label(tmp: Path) -> None:
    csv = "text,label\n" + "".join(
        f"{w} film,{lab}\n" for w, lab in [("good", "OK"), ("bad", "NA")] * 4
    )
    job = _job_yaml(tmp, "{OK: fine, NA: missing}", csv)
    data = load_task_data(job.data, char_tokenizer())
    assert sorted(e.label_index for e in data.train + data.val) == [0] * 4 + [1] * 4


def text_null_is_text(tmp: Path) -> None:
    (tmp / "d.csv").write_text("text\nnull\nNone\nN/A\n")
    job = JobConfig(data={"path": str(tmp / "d.csv"), "val_size": 0})
    assert len(load_task_data(job.data, char_tokenizer()).train) == 3


def truncated_examples_without_target_are_left_out(tmp: Path) -> None:
    long = "x" * 40
    (tmp / "d.csv").write_text(f"text,label\n{long},pos\nshort,neg\n")
    job = JobConfig(
        data={
            "path": str(tmp / "d.csv"),
            "val_size": 0,
            "mode": "completion",
            "template": "{text}",
            "completion_template": "{label}",
            "max_length": 10,
            "add_eos": False,
        }
    )
    data = load_task_data(job.data, char_tokenizer())
    assert len(data.train) == 2  # keep_end truncation: the target survives in both
    job = JobConfig(data={"path": str(tmp / "d.csv"), "val_size": 0, "max_length": 1})
    with pytest.raises(Exception, match="no training example keeps a token"):
        load_task_data(job.data, char_tokenizer())


def fixtures_train_on_the_words_they_name(tmp: Path) -> None:
    """The fault tests' job says {pos: yes, neg: no}: it must train on 'yes' and 'no', not on
    True/False."""
    from tests.hostile.test_faults import job_file

    job = JobConfig.from_yaml(job_file(tmp, tmp / "unused-model", "run"))
    assert job.data.label_words == {"pos": "yes", "neg": "no"}


def merge_twice_into_its_own_output(tmp: Path) -> None:
    model, adapter = _merge_setup(tmp)
    for _ in range(2):
        assert main(["merge", str(model), str(adapter), str(tmp / "merged")]) == 0
    assert (tmp / "merged" / "config.json").is_file() and (tmp / "merged" / MANIFEST_NAME).is_file()


def merge_into_empty_folder(tmp: Path) -> None:
    model, adapter = _merge_setup(tmp)
    (tmp / "empty").mkdir()
    assert main(["merge", str(model), str(adapter), str(tmp / "empty")]) == 0


def train_beside_user_files(tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")
    _run_job(tmp)
    assert (tmp / "out" / "notes.txt").read_text() == "mine"
    assert (tmp / "out" / "adapter_model.safetensors").is_file()


def overwrite_replaces_only_peftkit_files(tmp: Path) -> None:
    _run_job(tmp, save_every=1)
    (tmp / "out" / "notes.txt").write_text("mine")
    _run_job(tmp, overwrite=True, save_every=1, max_steps=1)
    assert (tmp / "out" / "notes.txt").read_text() == "mine"
    # the old ones are gone
    assert [p.name for p in checkpoint.list_checkpoints(tmp / "out")] == ["step-000001"]


def stale_lock_is_taken_over(tmp: Path) -> None:
    (tmp / "out").mkdir()
    dead = _dead_pid()
    (tmp / "out" / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    _run_job(tmp)
    assert not (tmp / "out" / LOCK_NAME).exists()


def lock_released_after_a_failed_run(tmp: Path) -> None:
    with pytest.raises(OutputDirError):
        (tmp / "out").mkdir()
        (tmp / "out" / "README.md").write_text("mine")
        _run_job(tmp)
    assert not (tmp / "out" / LOCK_NAME).exists()
    (tmp / "out" / "README.md").unlink()
    _run_job(tmp)


def leftovers_of_killed_writes_are_cleaned(tmp: Path) -> None:
    _run_job(tmp, save_every=1)
    out = tmp / "out"
    junk = [
        out / ".adapter_model.safetensors.x1.tmp",
        out / "checkpoints" / ".step-000003.abc",
        out / "checkpoints" / ".trash-step-000001",
        out / ".model.k2",
    ]
    for path in junk:
        path.mkdir() if "step" in path.name or "model" in path.name else path.write_text("half")
    _run_job(tmp, resume=True, max_steps=3, save_every=1)
    assert not [p for p in junk if p.exists()]


def pruning_killed_midway_leaves_no_listed_checkpoint(tmp: Path) -> None:
    real = shutil.rmtree
    calls: list[Path] = []

    def killed(path: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(Path(path))
        # a kill halfway through the delete
        (Path(path) / checkpoint.TRAINABLE_FILE).unlink(missing_ok=True)

    shutil.rmtree = killed  # type: ignore[assignment]
    try:
        _run_job(tmp, save_every=1, max_steps=3, keep_checkpoints=1)
    finally:
        shutil.rmtree = real
    assert calls and all(p.name.startswith(".trash-") for p in calls)
    assert [p.name for p in checkpoint.list_checkpoints(tmp / "out")] == ["step-000003"]


def files_get_umask_permissions(tmp: Path) -> None:
    _run_job(tmp, save_every=1, max_steps=1)
    mask = os.umask(0)
    os.umask(mask)
    for path in (tmp / "out" / "checkpoints" / "step-000001").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name


def resume_may_extend_the_run(tmp: Path) -> None:
    _run_job(tmp, save_every=1, max_steps=2)
    result = _run_job(tmp, resume=True, max_steps=3, log_every=1)
    assert result.steps == 3


def second_get_peft_model_under_another_name_warns(tmp: Path) -> None:
    base = tiny_model("llama")
    first = get_peft_model(
        base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    )
    before = {k: v.clone() for k, v in first.state_dict().items() if "lora_" in k}
    with pytest.warns(UserWarning, match="modify a model with PEFT for a second time"):
        get_peft_model(base, LoraConfig(r=2, target_modules=["v_proj"]), adapter_name="other")
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in before.items())


def second_get_peft_model_with_the_same_config_keeps_the_weights(tmp: Path) -> None:
    """PEFT warns and re-initializes the trained adapter; peftkit warns the same and keeps its
    weights."""
    base = tiny_model("llama")
    first = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, param in first.named_parameters():
            if "lora_" in name:
                param.normal_()  # "trained"
    inputs = torch.tensor([[5, 6, 7, 8]])
    expected = first(input_ids=inputs).logits
    with pytest.warns(UserWarning, match="modify a model with PEFT for a second time"):
        second = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    torch.testing.assert_close(second(input_ids=inputs).logits, expected)
    torch.testing.assert_close(first(input_ids=inputs).logits, expected)


def save_keeps_the_users_readme(tmp: Path) -> None:
    (tmp / "adapter").mkdir()
    (tmp / "adapter" / "README.md").write_text(
        "---\nmeta: hello\n---\n# my notes\n\nkept as written\n"
    )
    get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(
        tmp / "adapter"
    )
    header, body = (tmp / "adapter" / "README.md").read_text().split("---\n")[1:]
    # every word kept; PEFT's metadata added to the header
    assert body == "# my notes\n\nkept as written\n"
    assert "meta: hello" in header and "library_name: peft" in header
    assert PeftModel.from_pretrained(tiny_model("llama"), tmp / "adapter") is not None


def compare_beside_user_report(tmp: Path) -> None:
    from peftkit.compare import CompareConfig, compare

    (tmp / "cmp").mkdir()
    (tmp / "cmp" / "report.md").write_text("my report")
    (tmp / "d.csv").write_text(GOOD_CSV)
    config = CompareConfig(
        model=str(tmp / "no-model"),
        data={"path": str(tmp / "d.csv")},  # type: ignore[arg-type]
        methods=["lora"],
        output_dir=str(tmp / "cmp"),
    )
    with pytest.raises(OutputDirError, match=r"report\.md"):
        compare(config, log=lambda _: None)
    assert (tmp / "cmp" / "report.md").read_text() == "my report"


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


OUTCOMES: list[Callable[[Path], None]] = [
    yaml_yes_no_stay_words,
    yaml_on_off_null_stay_words,
    yaml_boolean_keys_stay_words,
    flag_and_yaml_agree,
    yaml_numbers_typed_by_schema,
    yaml_small_anchors_still_work,
    label_na_is_a_label,
    text_null_is_text,
    truncated_examples_without_target_are_left_out,
    fixtures_train_on_the_words_they_name,
    merge_twice_into_its_own_output,
    merge_into_empty_folder,
    train_beside_user_files,
    overwrite_replaces_only_peftkit_files,
    stale_lock_is_taken_over,
    lock_released_after_a_failed_run,
    leftovers_of_killed_writes_are_cleaned,
    pruning_killed_midway_leaves_no_listed_checkpoint,
    files_get_umask_permissions,
    resume_may_extend_the_run,
    second_get_peft_model_under_another_name_warns,
    second_get_peft_model_with_the_same_config_keeps_the_weights,
    save_keeps_the_users_readme,
    compare_beside_user_report,
]


@pytest.mark.parametrize("outcome", OUTCOMES, ids=[f.__name__.replace("_", "-") for f in OUTCOMES])
def test_hostile_outcome(outcome: Callable[[Path], None], tmp_path: Path) -> None:
    outcome(tmp_path)
