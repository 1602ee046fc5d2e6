"""``peftkit compare``: train several methods on the same task, budget and seed, and report side by
side.

Each method is an ordinary :func:`~peftkit.train.train` job in ``<output_dir>/<method>/`` (so its
adapter, metrics and plot are there as usual), built from one :class:`CompareConfig` and the
method's preset: adapter settings and a learning rate that suit it (prompt methods need rates
10-100x LoRA's). The base model is evaluated once on the same held-out split for the zero-shot row.
A method whose folder already holds a finished run of the same job is reused, so an interrupted
comparison continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..common import outputs
from ..common.files import write_json_atomic
from ..errors import ConfigError, did_you_mean
from ..inspection import count_parameters
from ..integrations.models import load_model, load_tokenizer
from ..train import train
from ..train.config import (
    DataConfig,
    JobConfig,
    TrainingConfig,
    apply_overrides,
    build_sections,
    choice,
    coerce,
    field_types,
    read_yaml,
    validate_sections,
)
from ..train.data import IGNORE_INDEX, load_task_data
from ..train.defaults import inference_dtype
from ..train.evaluate import classification_scores, evaluate
from ..train.kernels import pick_device
from ..train.report import read_metrics
from ..train.rundir import same_job
from .report import MethodResult, ReportContext, write_report
from .select import (
    SelectConfig,
    Selection,
    load_base,
    resolve_dtype,
    select_settings,
    selection_section,
    write_selection,
)

__all__ = ["DEFAULT_METHODS", "PRESETS", "CompareConfig", "MethodResult", "SelectConfig", "compare"]


@dataclass(frozen=True)
class Preset:
    """How a method is trained by default in a comparison."""

    method: str
    """The job's method."""
    lr: float
    """Its default learning rate."""
    adapter: dict[str, Any]
    """Its default adapter settings."""
    label: str
    """How the report names it."""


PRESETS: dict[str, Preset] = {
    "full": Preset("full", 5e-5, {}, "full fine-tuning"),
    "lora": Preset(
        "lora", 1e-3, {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}, "LoRA r8"
    ),
    "dora": Preset(
        "lora",
        1e-3,
        {"r": 8, "lora_alpha": 16, "target_modules": "all-linear", "use_dora": True},
        "DoRA r8",
    ),
    "ia3": Preset("ia3", 1e-2, {}, "IA3"),
    # the LyCORIS methods and OFT: starting rates at alpha = r (tune them with --select lr)
    "loha": Preset("loha", 1e-3, {"r": 8, "alpha": 8, "target_modules": "all-linear"}, "LoHa r8"),
    "lokr": Preset("lokr", 1e-3, {"r": 8, "alpha": 8, "target_modules": "all-linear"}, "LoKr r8"),
    "oft": Preset(
        "oft", 1e-3, {"oft_block_size": 32, "target_modules": "all-linear"}, "OFT blocks of 32"
    ),
    "prompt": Preset(
        "prompt_tuning",
        3e-2,
        {"num_virtual_tokens": 8, "prompt_tuning_init": "SAMPLE_VOCAB"},
        "prompt tuning (8 tokens)",
    ),
    "p_tuning": Preset(
        "p_tuning",
        3e-3,
        {"num_virtual_tokens": 20, "encoder_hidden_size": 128},
        "p-tuning (20 tokens)",
    ),
    "prefix": Preset(
        "prefix_tuning", 1e-2, {"num_virtual_tokens": 20}, "prefix tuning (20 tokens)"
    ),
}
"""The methods ``compare`` knows, with the settings each is trained with unless the config overrides
them."""

DEFAULT_METHODS = ["full", "lora", "dora", "ia3", "prompt", "p_tuning", "prefix"]


REPORT_FILES = (
    "report.md",
    "report.html",
    "results.json",
    "config.yaml",
    "score.png",
    "curves.png",
    "selection.png",
    "selection.json",
)
"""What a comparison writes into its output_dir besides one folder per method run."""


@dataclass
class CompareConfig:
    """A comparison: one model, one task, several methods under the same budget and seed."""

    model: str = "smollm2-135m"
    """A packaged alias (smollm2-135m), a local folder, a .gguf file or a hub id."""
    data: DataConfig = field(default_factory=DataConfig)
    """The task, as in a training job (the held-out split is the same for every method)."""
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    """Which methods to train: full, lora, dora, ia3, prompt, p_tuning, prefix."""
    budget: str | None = None
    """The same for every method: optimizer steps ("200") or training minutes ("10m"); empty:
    train.epochs."""
    train: TrainingConfig = field(default_factory=TrainingConfig)
    """Training settings shared by all methods (each method's lr comes from its preset unless lr is
    set)."""
    lr: dict[str, float] = field(default_factory=dict)
    """Per-method learning rates that replace the presets', e.g. {lora: 2e-3, prompt: 1e-2}."""
    epochs: dict[str, float] = field(default_factory=dict)
    """Per-method epoch counts that replace train.epochs, e.g. {lora: 2} (a budget, when set, still
    rules)."""
    select: SelectConfig = field(default_factory=SelectConfig)
    """Choose each method's learning rate and/or epoch count on validation rows carved from the
    training rows, never on the held-out split (``--select lr,epochs``); empty params: the presets
    as they are."""
    adapters: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-method adapter settings merged over the presets', e.g. {lora: {r: 16}}."""
    output_dir: str = "outputs/compare"
    """Where the report goes; each method's run is in a subfolder."""
    seed: int = 42
    """Seeds the split, the shuffling and initialization, identically for every method."""
    seeds: list[int] = field(default_factory=list)
    """Training seeds to repeat every method with, e.g. [42, 43, 44]: the split stays that of
    ``seed``, and the table shows each score's mean and range. Single runs of one config can differ
    by several accuracy points with the batch order alone. Empty: one run per method, with
    ``seed``."""
    examples: int = 4
    """How many held-out examples the report shows, each method's output next to the base model's.
    """
    dtype: str = "auto"
    """Base model weights: auto (each job's own rule: a bf16 frozen base where the hardware computes
    bf16 natively, fp32 elsewhere and for full fine-tuning), float32, bfloat16 or float16."""
    init_text: str | None = None
    """The text prompt and prefix tuning start from; empty: the classification question ("Answer
    hate or not hate:"), or for other tasks the template with each field named."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if isinstance(self.budget, int | float) and not isinstance(self.budget, bool):
            self.budget = str(self.budget)  # YAML reads `budget: 30` as a number
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        build_sections(self, problems, (("select", SelectConfig),))
        for name in self.methods:
            choice(problems, "methods", name, tuple(PRESETS))
        for section in ("lr", "epochs", "adapters"):
            for name in getattr(self, section):
                if name not in PRESETS:
                    problems.append(f"{section}.{name}: not a method.{did_you_mean(name, PRESETS)}")
        if isinstance(self.seeds, int) and not isinstance(self.seeds, bool):
            self.seeds = [self.seeds]
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in self.seeds) or len(
            set(self.seeds)
        ) != len(self.seeds):
            problems.append(
                f"seeds={self.seeds!r} must be distinct whole numbers, e.g. [42, 43, 44]"
            )
        if len(set(self.methods)) != len(self.methods) or not self.methods:
            problems.append(f"methods={self.methods!r} must name each method once, at least one")
        try:
            self.budget_steps_minutes()
        except ConfigError as err:
            problems += err.problems
        validate_sections(self, problems)
        self._check_select(problems)
        if not problems:
            for name in self.methods:  # each method's job must be valid on its own
                try:
                    self.job(name)
                except ConfigError as err:
                    problems += [f"{name}: {p}" for p in err.problems]
        if problems:
            raise ConfigError(problems, source="compare config")

    def _check_select(self, problems: list[str]) -> None:
        if not isinstance(self.select, SelectConfig):
            problems.append(f"select must be a mapping of its fields, not {self.select!r}")
            self.select = SelectConfig()
        self.select.validate(problems)
        if "epochs" in self.select.params and self.budget is not None:
            problems.append(
                f"select.params includes epochs, which sets each method's length, but budget="
                f"{self.budget!r} fixes it; remove budget (select.max_epochs bounds the trials) or "
                "select lr only"
            )
        if self.select.params and not (self.data.eval_path or self.data.val_size):
            problems.append(
                "select needs a held-out split to score the chosen settings on at the end; set "
                "data.val_size or data.eval_path"
            )

    def chosen(self, selections: list[Selection]) -> CompareConfig:
        """This comparison with each method's selected rate and epoch count in place of its
        preset's."""
        lr = {**self.lr, **{s.method: s.lr for s in selections}}
        epochs = {
            **self.epochs,
            **{s.method: float(s.epochs) for s in selections if s.epochs is not None},
        }
        return dataclasses.replace(self, lr=lr, epochs=epochs, select=SelectConfig())

    def budget_steps_minutes(self) -> tuple[int | None, float | None]:
        """The budget as (max_steps, max_minutes)."""
        if self.budget is None:
            return None, None
        text = str(self.budget).strip().lower()
        found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(steps?|m|min|minutes?|h|hours?)?", text)
        if not found:
            raise ConfigError(
                [f"budget={self.budget!r} must be steps (200) or minutes (10m, 1.5h)"]
            )
        amount, unit = float(found.group(1)), found.group(2) or "steps"
        if unit.startswith("step"):
            if amount != int(amount) or amount < 1:
                raise ConfigError([f"budget={self.budget!r}: a step budget is a whole number >= 1"])
            return int(amount), None
        return None, amount * (60 if unit.startswith("h") else 1)

    def job(self, name: str, seed: int | None = None) -> JobConfig:
        """The training job of method ``name``; with ``seed``, its run with that training seed, on
        the split of :attr:`seed`, in its own folder ``<name>-seed-<n>`` (beside, not inside, the
        single run's folder, which a changed job replaces)."""
        preset = PRESETS[name]
        steps, minutes = self.budget_steps_minutes()
        train = dataclasses.asdict(self.train)
        train.update(lr=self.lr.get(name, preset.lr), eval_before=False, plot=False)
        if name in self.epochs:
            train["epochs"] = self.epochs[name]
        if steps is not None:
            train["max_steps"] = steps
        if minutes is not None:
            train["max_minutes"] = minutes
        adapter = {**preset.adapter, **self._task_init(name), **self.adapters.get(name, {})}
        data = dataclasses.asdict(self.data)
        folder = Path(self.output_dir) / name
        if seed is not None:
            data["split_seed"] = self.seed if self.data.split_seed is None else self.data.split_seed
            folder = folder.with_name(f"{name}-seed-{seed}")
        # the method's own folder: an earlier, different run of it is replaced
        train["overwrite"] = True
        return JobConfig(
            model=self.model,
            method=preset.method,
            adapter=adapter,
            data=data,  # type: ignore[arg-type]
            train=train,  # type: ignore[arg-type]
            output_dir=str(folder),
            seed=self.seed if seed is None else seed,
            dtype=self.dtype,
        )

    def _task_init(self, name: str) -> dict[str, Any]:
        """Prompt and prefix tuning start from the task's own words (``start_text``) rather than
        from random vectors: on the seed's tasks that beat sampled vocabulary (prompt tuning,
        classification) and random key/values (prefix tuning, both tasks). Elsewhere the preset's
        init stands."""
        text = self.start_text()
        if name == "prompt" and (self.init_text or self.data.mode == "classification") and text:
            return {
                "prompt_tuning_init": "TEXT",
                "prompt_tuning_init_text": text,
                "tokenizer_name_or_path": self.model,
            }
        if name == "prefix":
            if text:
                return {"prefix_init_text": text, "tokenizer_name_or_path": self.model}
            # no words to start from: at least start where the base model is
            return {"init_weights": "zero"}
        return {}

    def start_text(self) -> str | None:
        """``init_text``, else the classification question ("Answer hate or not hate:"), else the
        template with each field replaced by its name ("Act as a act. prompt:")."""
        if self.init_text:
            return self.init_text
        if self.data.mode == "classification" and self.data.label_words:
            words = " or ".join(dict.fromkeys(str(w) for w in self.data.label_words.values()))
            return f"Answer {words}:"
        if self.data.template:
            return (
                re.sub(
                    r"\{(\w+)\}", lambda m: m.group(1).replace("_", " "), self.data.template
                ).strip()
                or None
            )
        return None

    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike[str] | None, overrides: dict[str, Any]
    ) -> CompareConfig:
        """Read a YAML file (or nothing), apply dotted ``overrides``, validate."""
        data = read_yaml(path) if path is not None else {}
        problems: list[str] = []
        hints = field_types(cls)
        merged = apply_overrides(data, overrides)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in merged:
            if key not in known:
                problems.append(f"{key} is not a known field.{did_you_mean(str(key), known)}")
        if problems:
            raise ConfigError(problems, source=os.fspath(path) if path else "command line")
        try:
            return cls(**{k: coerce(v, hints[k]) for k, v in merged.items()})
        except ConfigError as err:
            raise ConfigError(
                err.problems, source=os.fspath(path) if path else "command line"
            ) from err


# ----- running
# --------------------------------------------------------------------------------------------


class PeakMemory:
    """The peak memory of this process while inside the ``with`` block: CUDA's allocator when
    training on a GPU, else resident memory sampled every 20 ms (``/proc``; the lifetime peak where
    there is none)."""

    def __init__(self, device: str) -> None:
        self.cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.peak = int(torch.cuda.max_memory_allocated())
            return
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, _rss())
            if self._stop.wait(0.02):
                return


def _rss() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _saved_size(folder: Path) -> int:
    """Bytes of what the run saved for users: the adapter files, or the whole model after full
    fine-tuning."""
    if (folder / "model").is_dir():
        return sum(
            p.stat().st_size for p in (folder / "model").iterdir() if p.suffix == ".safetensors"
        )
    return sum(
        (folder / n).stat().st_size
        for n in ("adapter_model.safetensors", "adapter_config.json")
        if (folder / n).is_file()
    )


def _curve(folder: Path) -> list[tuple[int, float]]:
    """The training loss by step, from the run's metrics.jsonl."""

    return [
        (int(r["step"]), float(r["loss"]))
        for r in read_metrics(folder / "metrics.jsonl")
        if "loss" in r
    ]


def compare(config: CompareConfig, *, log: Callable[[str], None] = print) -> list[MethodResult]:
    """Train every method of ``config``, evaluate each on the same held-out split, and write the
    report.

    With ``config.select``, each method's learning rate and epoch count are first chosen on
    validation rows carved from the training rows (:func:`~peftkit.compare.select.select_settings`);
    the held-out split is read only afterwards, to score the chosen settings.

    Returns:
        One :class:`MethodResult` per method, the base model's zero-shot row first (name ``base``).
    """
    from collections import Counter

    out = Path(config.output_dir)
    outputs.claim(out, REPORT_FILES, "compare", "output_dir")
    tokenizer = load_tokenizer(config.model)
    chosen, selections, image = config, [], None
    if config.select.params:
        log(
            f"selecting {' and '.join(config.select.params)} on validation data (the held-out split stays unread)"
        )
        selections = select_settings(config, tokenizer, log)
        image = write_selection(out, selections)
        chosen = config.chosen(selections)
    reference = chosen.job(chosen.methods[0])
    # the split every method gets
    data = load_task_data(reference.data, tokenizer, seed=config.seed)
    gold = Counter(e.label_index for e in data.val)
    context = ReportContext(
        len(data.train),
        len(data.val),
        max(gold.values()) / len(data.val) if data.label_words and data.val else None,
        examples_text(tokenizer, data, config.examples),
        config.model,
        _facts(config, len(data.train), len(data.val)),
        _yaml(config),
    )
    results = [_base_row(chosen, reference, tokenizer, data, log)]
    total = len(config.methods)
    for index, name in enumerate(config.methods, 1):
        log(f"[{index}/{total}] {PRESETS[name].label}")
        if config.seeds:
            runs = []
            for seed in config.seeds:
                log(f"  seed {seed}")
                runs.append(_run_method(name, chosen.job(name, seed), tokenizer, chosen, log))
            results.append(combine_seeds(runs, config.seeds))
        else:
            results.append(_run_method(name, chosen.job(name), tokenizer, chosen, log))
        if selections:
            context.sections = [selection_section(config, selections, results, image)]
        # after every method, so a partial comparison is readable
        write_report(out, context, results)
        log(f"[{index}/{total}] {name} done: {_headline(results[-1])}")
    log(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return results


def _facts(config: CompareConfig, train_examples: int, val_examples: int) -> list[str]:
    """The report's lines above the table: model, data, split, budget, seeds."""
    steps, minutes = config.budget_steps_minutes()
    budget = (
        f"{steps} steps"
        if steps
        else f"{minutes:g} minutes"
        if minutes
        else f"{config.train.epochs:g} epoch(s)"
    )
    if "epochs" in config.select.params:
        budget = "each method's selected epoch count (see the selection below)"
    lines = [
        f"model: `{config.model}`; data: `{config.data.path}` ({config.data.mode}); {train_examples} "
        f"training and {val_examples} held-out examples (seed {config.seed})",
        f"budget per method: {budget}, batch {config.train.batch_size} x {config.train.grad_accum}",
    ]
    if config.seeds:
        lines.append(
            f"each method trained with seeds {', '.join(map(str, config.seeds))} on that split: "
            f"scores are the mean over seeds (lowest-highest), times and speeds the mean"
        )
    return lines


def _yaml(config: CompareConfig) -> str:
    import yaml

    return str(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False, allow_unicode=True))


def combine_seeds(runs: list[MethodResult], seeds: list[int]) -> MethodResult:
    """One row for a method trained once per seed: mean scores, times and speeds, the largest peak
    memory, and the first run's curve and example outputs."""
    from statistics import mean

    def mean_of(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else mean(v for v in values if v is not None)

    first = runs[0]
    return dataclasses.replace(
        first,
        train_seconds=mean(r.train_seconds for r in runs),
        tokens_per_second=mean(r.tokens_per_second for r in runs),
        peak_memory_bytes=max(r.peak_memory_bytes for r in runs),
        eval_loss=mean_of([r.eval_loss for r in runs]),
        accuracy=mean_of([r.accuracy for r in runs]),
        per_seed=[
            {"seed": seed, "eval_loss": r.eval_loss, "accuracy": r.accuracy}
            for seed, r in zip(seeds, runs, strict=True)
        ],
    )


def _headline(row: MethodResult) -> str:
    parts = [
        f"{row.trainable:,d} trainable ({row.trainable_percent:.3g}%)",
        f"{row.train_seconds:.0f} s",
    ]
    if row.accuracy is not None:
        parts.append(f"accuracy {row.accuracy:.3f}")
    if row.eval_loss is not None:
        parts.append(f"loss {row.eval_loss:.4f}")
    return ", ".join(parts)


def _base_row(
    config: CompareConfig, job: JobConfig, tokenizer: Any, data: Any, log: Callable[[str], None]
) -> MethodResult:
    device = pick_device(job.train.device)
    dtype = inference_dtype(config.dtype, device).value
    model = load_model(config.model, task="CAUSAL_LM", dtype=getattr(torch, dtype)).to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    metrics = (
        evaluate(
            model,
            data.val,
            pad_id=pad,
            device=device,
            candidate_ids=data.candidate_ids or None,
            batch_size=job.train.eval_batch_size or job.train.batch_size * 2,
        )
        if data.val
        else None
    )
    _, total = count_parameters(model)
    row = MethodResult(
        "base",
        "base model (zero-shot)",
        0,
        total,
        0,
        0.0,
        0.0,
        0,
        0,
        metrics.loss if metrics else None,
        metrics.accuracy if metrics else None,
    )
    row.outputs = _example_outputs(model, tokenizer, data, config.examples, device)
    log(f"base model: {_headline(row)}")
    return row


def _run_method(
    name: str, job: JobConfig, tokenizer: Any, config: CompareConfig, log: Callable[[str], None]
) -> MethodResult:
    job, choice = resolve_dtype(job)
    folder = Path(job.output_dir)
    done = folder / "compare-result.json"
    if done.is_file() and same_job(folder / "config.yaml", job):
        log(f"  {folder} already holds this run; reusing it")
        return MethodResult(**json.loads(done.read_text()))
    # a user's folder of that name
    outputs.check_replaceable(folder, "train", "the comparison's method folder")
    outputs.remove_owned(folder, [done.name], "train")  # train() replaces its own earlier files
    model = load_base(job, choice, log)
    with PeakMemory(job.train.device) as memory:
        result = train(job, model=model, tokenizer=tokenizer, log=lambda line: log(f"  {line}"))
    trainable, total = count_parameters(result.model)
    summary = json.loads((folder / "summary.json").read_text())
    row = MethodResult(
        name,
        PRESETS[name].label,
        trainable,
        total,
        _saved_size(folder),
        float(summary.get("train_seconds", 0.0)),
        float(summary["tokens_per_second"]),
        memory.peak,
        result.steps,
        result.after.loss if result.after else None,
        result.after.accuracy if result.after else None,
        _curve(folder),
    )
    row.outputs = _example_outputs(
        result.model,
        tokenizer,
        result.data,
        config.examples,
        next(result.model.parameters()).device,
    )

    write_json_atomic(done, dataclasses.asdict(row))
    outputs.record(folder, [done.name], "train")
    return row


@torch.no_grad()
def _example_outputs(
    model: torch.nn.Module, tokenizer: Any, data: Any, count: int, device: torch.device
) -> list[str]:
    """The model's answer to the first ``count`` held-out prompts: the chosen label word for
    classification, else a greedy continuation of the prompt (the example's untrained part)."""

    examples = data.val[:count]
    if not examples:
        return []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        if data.candidate_ids:
            scores = classification_scores(
                model,
                [e.prompt_ids for e in examples],
                data.candidate_ids,
                pad_id=pad,
                device=device,
            )
            return [data.label_words[i] for i in scores.argmax(dim=1).tolist()]
        return [_continue(model, tokenizer, prompt_of(e), device) for e in examples]
    finally:
        model.train(was_training)


def _continue(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: list[int],
    device: torch.device,
    new_tokens: int = 40,
) -> str:
    ids = torch.tensor([prompt], device=device)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),  # type: ignore[operator]
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)).strip()


def prompt_of(example: Any) -> list[int]:
    """The part of an example a model is asked to continue: the classification prompt, the untrained
    prefix of a completion, or (text mode, where every token trains) the first quarter, at most 16
    tokens."""

    if example.prompt_ids:
        return list(example.prompt_ids)
    untrained = next((i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), 0)
    if untrained:
        return list(example.input_ids[:untrained])
    return list(example.input_ids[: max(1, min(16, len(example.input_ids) // 4))])


def examples_text(tokenizer: Any, data: Any, count: int) -> list[tuple[str, str]]:
    """(prompt, reference answer) of the first ``count`` held-out examples, as text."""
    rows = []
    for e in data.val[:count]:
        prompt = prompt_of(e)
        if data.label_words:
            reference = data.label_words[e.label_index]
        else:
            reference = tokenizer.decode(
                e.input_ids[len(prompt) :], skip_special_tokens=True
            ).strip()
        rows.append((tokenizer.decode(prompt, skip_special_tokens=True).strip(), reference))
    return rows
