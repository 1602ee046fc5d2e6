"""Data pipeline: templates, masking by position, classification labels, chat spans, splits and
errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftkit.errors import DataError
from peftkit.train import DataConfig
from peftkit.train.data import (
    IGNORE_INDEX,
    Example,
    build_example,
    collate,
    detect_format,
    load_rows,
    load_task_data,
    render_template,
    split_label_template,
    template_fields,
)


def config(**fields: object) -> DataConfig:
    cfg = DataConfig(**fields)  # type: ignore[arg-type]
    problems: list[str] = []
    cfg._validate(problems)  # fills mode defaults, as JobConfig does
    assert not problems, problems
    return cfg


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_seed_templates_render_the_seed_strings() -> None:
    assert (
        render_template(
            "Act as a {act}. prompt: {prompt}", {"act": "Linux Terminal", "prompt": "ls"}
        )
        == "Act as a Linux Terminal. prompt: ls"
    )
    assert (
        render_template(
            "Sentence : {comment} Label : {label}", {"comment": "nice", "label": "not hate"}
        )
        == "Sentence : nice Label : not hate"
    )
    assert template_fields("{a} and {b} {{literal}}") == ["a", "b"]


def test_template_errors_name_the_problem() -> None:
    with pytest.raises(
        DataError, match="uses act, which the data does not have; columns are: prompt"
    ):
        render_template("{act}", {"prompt": "x"})
    with pytest.raises(DataError, match="malformed"):
        template_fields("{unclosed")
    with pytest.raises(DataError, match="plain column names"):
        template_fields("{0}")
    with pytest.raises(DataError, match="must end with"):
        split_label_template("{label} first")


def test_label_template_moves_trailing_space_onto_the_word() -> None:
    assert split_label_template("Sentence : {comment} Label : {label}") == (
        "Sentence : {comment} Label :",
        " ",
    )


def test_completion_masking_covers_exactly_the_prompt(chars) -> None:  # type: ignore[no-untyped-def]
    example = build_example(chars, [("Q: hi\nA:", False), (" yo", True)], add_eos=True)
    prompt_len = len(chars("Q: hi\nA:")["input_ids"])  # with BOS
    assert example.labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert example.labels[prompt_len:] == example.input_ids[prompt_len:]
    # the EOS target is kept, although EOS is also pad
    assert example.input_ids[-1] == chars.eos_token_id
    assert chars.decode(example.input_ids[prompt_len:-1]) == " yo"


def test_padding_is_masked_by_position_not_by_id(chars) -> None:  # type: ignore[no-untyped-def]
    a = build_example(chars, [("ab", False), ("c", True)], add_eos=True)
    b = build_example(chars, [("abcdef", False), ("g", True)], add_eos=True)
    batch = collate([a, b], pad_id=chars.pad_token_id)
    assert chars.pad_token_id == chars.eos_token_id
    row = batch["labels"][0].tolist()
    n = len(a.input_ids)
    assert row[n - 1] == chars.eos_token_id  # the real EOS is a target...
    # ...the padding after it is not
    assert row[n:] == [IGNORE_INDEX] * (batch["input_ids"].shape[1] - n)
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)


def test_classification_rows_and_label_words(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(
        tmp_path / "d.csv", "comment;isHate\nyou are kind;0.0\nawful people;0.9\nmeh;0.5\nok;0.1\n"
    )
    cfg = config(
        path=str(path),
        delimiter=";",
        mode="classification",
        label_column="isHate",
        template="Sentence : {comment} Label : {label}",
        label_threshold=0.5,
        label_words={"1": "hate", "0": "not hate"},
        val_size=0,
    )
    data = load_task_data(cfg, chars, seed=0)
    assert data.label_words == ["hate", "not hate"]
    assert data.candidate_ids == [
        chars(" hate", add_special_tokens=False)["input_ids"],
        chars(" not hate", add_special_tokens=False)["input_ids"],
    ]
    by_text = {chars.decode(e.prompt_ids, skip_special_tokens=True): e for e in data.train}
    assert set(by_text) == {
        f"Sentence : {c} Label :" for c in ("you are kind", "awful people", "meh", "ok")
    }
    assert by_text["Sentence : meh Label :"].label_index == 0  # 0.5 >= threshold: hate
    kind = by_text["Sentence : you are kind Label :"]
    assert kind.label_index == 1
    target = [t for t in kind.labels if t != IGNORE_INDEX]
    assert chars.decode(target) == " not hate</s>"
    assert kind.input_ids[: len(kind.prompt_ids)] == kind.prompt_ids


def test_unknown_label_is_an_error_with_file_and_line(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(tmp_path / "d.csv", "text,label\ngood,pos\nbad,neg\nplot,other\n")
    cfg = config(
        path=str(path), mode="classification", label_words={"pos": "yes", "neg": "no"}, val_size=0
    )
    with pytest.raises(
        DataError, match=r"d\.csv:4: label 'other' is not one of the label_words keys"
    ):
        load_task_data(cfg, chars)
    cfg.drop_unlabeled = True
    data = load_task_data(cfg, chars)
    assert len(data.train) == 2
    assert any("dropped 1 rows" in line for line in data.report)


def test_empty_cell_and_missing_column_errors(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(tmp_path / "d.csv", "text,label\ngood,pos\n,neg\n")
    cfg = config(
        path=str(path), mode="classification", label_words={"pos": "yes", "neg": "no"}, val_size=0
    )
    with pytest.raises(DataError, match=r"d\.csv:3: column 'text' is empty"):
        load_task_data(cfg, chars)
    cfg = config(path=str(path), mode="text", template="{body}", val_size=0)
    with pytest.raises(DataError, match="no column 'body'; columns are text, label"):
        load_task_data(cfg, chars)


def test_completion_mode_from_jsonl(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "d.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "completion": f" a{i}"}) + "\n" for i in range(5))
    )
    data = load_task_data(config(path=str(path), mode="completion", val_size=0), chars)
    for e in data.train:
        trained = chars.decode([t for t in e.labels if t != IGNORE_INDEX])
        prompt = chars.decode(
            [t for t, lab in zip(e.input_ids, e.labels, strict=True) if lab == IGNORE_INDEX],
            skip_special_tokens=True,
        )
        assert trained == " a" + prompt[1:] + "</s>"


def test_train_on_prompt_trains_every_token_and_keeps_the_prompt(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(tmp_path / "d.csv", "text,label\ngood film,pos\nbad film,neg\n")
    fields = {
        "path": str(path),
        "mode": "classification",
        "template": "Review: {text} Label: {label}",
        "label_words": {"pos": "yes", "neg": "no"},
        "val_size": 0,
    }
    plain = load_task_data(config(**fields), chars, seed=0).train
    whole = load_task_data(config(**fields, train_on_prompt=True), chars, seed=0).train
    for a, b in zip(plain, whole, strict=True):
        assert b.input_ids == a.input_ids and b.labels == b.input_ids
        # scoring is unchanged
        assert b.prompt_ids == a.prompt_ids and b.label_index == a.label_index
        assert IGNORE_INDEX in a.labels


def test_chat_mode_trains_on_assistant_turns_only(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "and?"},
        {"role": "assistant", "content": "ok"},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": messages}) + "\n")
    data = load_task_data(config(path=str(path), mode="chat", val_size=0), chars)
    (example,) = data.train
    assert (
        chars.decode(example.input_ids)
        == "<user>hi</s><assistant>yo</s><user>and?</s><assistant>ok</s>"
    )
    spans, current = [], []
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            spans.append(chars.decode(current))
            current = []
    spans += [chars.decode(current)] if current else []
    assert spans == ["yo</s>", "ok</s>"]


def test_truncation_keeps_the_target_and_is_counted(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(
        tmp_path / "d.csv",
        "text,label\n" + "".join(f"{'x' * (5 + 20 * i)},pos\n" for i in range(4)),
    )
    cfg = config(
        path=str(path), mode="classification", label_words={"pos": "yes"}, max_length=20, val_size=0
    )
    data = load_task_data(cfg, chars)
    assert any("truncated 3 of 4 examples to max_length=20" in line for line in data.report)
    for e in data.train:
        assert len(e.input_ids) <= 20
        assert chars.decode([t for t in e.labels if t != IGNORE_INDEX]) == " yes</s>"


def test_split_is_seeded_and_disjoint(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(tmp_path / "d.csv", "text\n" + "".join(f"row {i}\n" for i in range(50)))
    cfg = config(path=str(path), val_size=0.2)

    def texts(xs: list[Example]) -> list[str]:
        return [chars.decode(x.input_ids, skip_special_tokens=True) for x in xs]

    a, b, c = (load_task_data(cfg, chars, seed=s) for s in (1, 1, 2))
    assert texts(a.train) == texts(b.train) and texts(a.val) == texts(b.val)
    assert texts(a.val) != texts(c.val)
    assert len(a.val) == 10 and not set(texts(a.train)) & set(texts(a.val))
    # split_seed pins the split whatever the job's seed
    pinned = config(path=str(path), val_size=0.2, split_seed=1)
    assert texts(load_task_data(pinned, chars, seed=2).val) == texts(a.val)


@pytest.mark.parametrize("suffix", [".tsv", ".json", ".parquet"])
def test_formats_read_the_same_rows(tmp_path: Path, suffix: str) -> None:
    import pandas as pd

    frame = pd.DataFrame({"text": ["a", "b"], "label": [1, 0]})
    path = tmp_path / f"d{suffix}"
    if suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".json":
        frame.to_json(path, orient="records")
    else:
        frame.to_parquet(path)
    assert load_rows(path) == [{"text": "a", "label": 1}, {"text": "b", "label": 0}]


def test_unreadable_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        load_rows(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="cannot tell the format"):
        load_rows(write_csv(tmp_path / "d.txt", "a\n1\n"))
    with pytest.raises(DataError, match="cannot read it as json"):
        load_rows(write_csv(tmp_path / "d.json", "{not json"))


def test_seed_ethos_file_reads_with_its_semicolons(data_dir: Path, chars) -> None:  # type: ignore[no-untyped-def]
    cfg = config(
        path=str(data_dir / "ethos-binary.csv"),
        delimiter=";",
        mode="classification",
        template="Sentence : {comment} Label : {label}",
        label_column="isHate",
        label_threshold=0.5,
        label_words={"1": "hate", "0": "not hate"},
        val_size=0.1,
        max_length=256,
    )
    data = load_task_data(cfg, chars, seed=0)
    labels = [e.label_index for e in data.train + data.val]
    assert len(labels) == 998 and labels.count(0) == 433


@pytest.mark.parametrize("shape", ["dataset", "dict"])
def test_a_save_to_disk_folder_is_read_like_a_file(tmp_path: Path, shape: str) -> None:
    import datasets

    rows = [{"text": "a good film", "label": "pos"}, {"text": "a dull film", "label": "neg"}]
    data = datasets.Dataset.from_list(rows)
    (datasets.DatasetDict({"train": data, "test": data}) if shape == "dict" else data).save_to_disk(
        tmp_path / "d"
    )
    assert detect_format(tmp_path / "d") == "disk"
    assert load_rows(tmp_path / "d") == rows


def test_a_hub_dataset_id_offline_says_how_to_use_a_local_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError(
            "Couldn't reach 'fka/awesome-chatgpt-prompts' on the Hub (LocalEntryNotFoundError)"
        )

    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert detect_format("fka/awesome-chatgpt-prompts") == "hub"
    with pytest.raises(
        DataError, match=r"looks like a Hugging Face Hub dataset id.*save_to_disk\('folder'\)"
    ):
        load_rows("fka/awesome-chatgpt-prompts")


def test_a_plain_folder_is_not_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a folder, not a data file"):
        load_rows(tmp_path)


def test_reading_a_file_draws_no_progress_bar_off_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "d.csv").write_text("text,label\na,pos\nb,neg\n")
    assert len(load_rows(tmp_path / "d.csv")) == 2
    # datasets' bars are for terminals, not log files
    assert "Generating" not in capsys.readouterr().err
