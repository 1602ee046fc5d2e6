"""``peftkit compare --select``: each method's learning rate and training length, chosen on
validation data.

Selection never sees the held-out (test) split. Every trial is an ordinary training job whose data
sets ``dev_size``: it trains on the training rows less a seeded validation carve and is scored on
that carve after every epoch, while the held-out rows are dropped before they are tokenized. Each
method tries the same grid (its preset learning rate times ``lr_factors``) for the same number of
steps, so the budgets are equal, and the best point (rate, epoch) by validation score wins.
:func:`~peftkit.compare.compare` then retrains every method with its chosen rate and epoch count on
all the training rows, once per seed, and only those runs are scored on the held-out split.

Why a plain grid and not Optuna: three rates by a few epochs is nine points that one run per rate
already covers (every epoch is scored on the way), so a sampler has nothing to sample and a pruner
little to stop; a grid also gives every method the same budget, which is what makes the comparison
fair.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..common import outputs
from ..common.files import write_json_atomic
from ..common.schema import choice, is_number, positive, split_size, typecheck
from ..errors import ConfigError, did_you_mean
from ..train.config import JobConfig, TrainingConfig
from ..train.data import load_task_data
from ..train.report import read_metrics
from ..train.rundir import same_job
from .report import Section

__all__ = [
    "SELECTABLE",
    "SelectConfig",
    "Selection",
    "Trial",
    "choose",
    "select_settings",
    "selection_section",
    "write_selection",
]

SELECTABLE = ("lr", "epochs")
"""What selection can choose per method."""
METRICS = ("auto", "accuracy", "loss")


@dataclass
class SelectConfig:
    """How ``peftkit compare`` chooses each method's settings on validation data (the ``select:``
    section)."""

    params: list[str] = field(default_factory=list)
    """What to choose for every method: lr, epochs or both (``--select lr,epochs``); empty: the
    presets."""
    lr_factors: list[float] = field(default_factory=lambda: [1 / 3, 1.0, 3.0])
    """The learning rates tried: the method's preset rate (or its ``lr:`` entry) times each factor.
    """
    max_epochs: int = 3
    """With epochs: every trial trains this many epochs and is scored on validation after each one.
    """
    val_size: float = 0.2
    """The validation split carved from the training rows (seeded like the held-out split): a share
    below 1, or a count."""
    metric: str = "auto"
    """What "best" means: accuracy (ties go to the lower loss), loss, or auto: accuracy for
    classification, loss otherwise."""
    baseline: str | None = None
    """The results.json of the same comparison run with the presets; the report shows its scores
    beside the chosen settings' (read after selection, for the report only)."""

    def __post_init__(self) -> None:
        if isinstance(self.params, str):  # --select lr,epochs
            self.params = [p.strip() for p in self.params.split(",") if p.strip()]

    def validate(self, problems: list[str]) -> None:
        """Append every problem with this section to ``problems``."""
        typecheck(self, "select.", problems)
        for name in self.params:
            if name not in SELECTABLE:
                problems.append(
                    f"select.params: {name!r} cannot be selected; choose from "
                    f"{', '.join(SELECTABLE)}.{did_you_mean(str(name), SELECTABLE)}"
                )
        if len(set(self.params)) != len(self.params):
            problems.append(f"select.params={self.params!r} names a setting twice")
        if not self.lr_factors or not all(is_number(f) and f > 0 for f in self.lr_factors):
            problems.append(
                f"select.lr_factors={self.lr_factors!r} must be numbers > 0, e.g. [0.333, 1, 3]"
            )
        positive(problems, "select.max_epochs", self.max_epochs, integer=True)
        split_size(problems, "select.val_size", self.val_size, zero=False)
        choice(problems, "select.metric", self.metric, METRICS)
        if self.baseline:  # checked now, not after an hour of trials
            try:
                _baseline_scores(self.baseline)
            except ConfigError as err:
                problems += err.problems

    def grid(self) -> list[float]:
        """The learning-rate factors tried, smallest first (one, x1, when the rate is not selected)."""
        return sorted(set(self.lr_factors)) if "lr" in self.params else [1.0]


class CompareConfig(Protocol):
    """What selection reads of a :class:`peftkit.compare.CompareConfig` (a protocol, so that the
    comparison can import this module and not the other way round)."""

    methods: list[str]
    seed: int
    seeds: list[int]
    output_dir: str
    train: TrainingConfig
    select: SelectConfig

    def job(self, name: str, seed: int | None = None) -> JobConfig: ...


@dataclass
class Trial:
    """One learning rate's run on the validation carve."""

    lr: float
    scores: list[dict[str, Any]]
    """After every epoch (or at the end, when epochs are not selected): epoch, step, eval_loss,
    accuracy."""
    seconds: float
    """Wall-clock time of the whole trial, evaluations included."""
    steps: int


@dataclass
class Selection:
    """What selection chose for one method, and the evidence."""

    method: str
    preset_lr: float
    lr: float
    epochs: int | None
    """The chosen epoch count; None when epochs were not selected (the comparison's length stands).
    """
    metric: str
    """accuracy or loss: what the choice maximized (accuracy) or minimized (loss)."""
    score: dict[str, Any]
    """The chosen point's validation scores."""
    trials: list[Trial]
    seconds: float
    steps: int
    """Optimizer steps over all the method's trials: the same for every method."""
    train_examples: int
    """Training examples the trials trained on (the training rows less the validation carve)."""
    val_examples: int
    """Validation examples they were scored on."""


def select_settings(
    config: CompareConfig, tokenizer: Any, log: Callable[[str], None] = print
) -> list[Selection]:
    """Run every method's trials on the validation carve and choose its learning rate and epoch
    count.

    Returns:
        One :class:`Selection` per method of ``config``, in order. Trials run in
        ``<output_dir>/select/``; a trial folder that already holds a finished run of the same job
        is reused.
    """
    carved = load_task_data(
        _trial_data(config, config.job(config.methods[0])), tokenizer, seed=config.seed
    )
    for line in carved.report:
        log(f"  {line}")
    metric = config.select.metric
    if metric == "auto":
        metric = "accuracy" if carved.label_words else "loss"
    per_epoch = steps_per_epoch(len(carved.train), config)
    choices = []
    for name in config.methods:
        trials = [
            _run_trial(config, name, factor, per_epoch, tokenizer, log)
            for factor in config.select.grid()
        ]
        choice = choose(
            name, config.job(name).train.lr, trials, metric, "epochs" in config.select.params
        )
        choice.train_examples, choice.val_examples = len(carved.train), len(carved.val)
        log(
            f"  {name}: chose lr {choice.lr:.3g}"
            + (f", {choice.epochs} epoch(s)" if choice.epochs else "")
            + f" (validation {metric} {choice.score[_key(metric)]:.4f}; {choice.seconds:.0f} s)"
        )
        choices.append(choice)
    return choices


def steps_per_epoch(train_examples: int, config: CompareConfig) -> int:
    """Optimizer steps in one pass over ``train_examples``."""
    batches = math.ceil(train_examples / config.train.batch_size)
    return max(1, math.ceil(batches / config.train.grad_accum))


def _trial_data(config: CompareConfig, job: JobConfig) -> Any:
    data = job.data
    return dataclasses.replace(
        data,
        dev_size=config.select.val_size,
        split_seed=config.seed if data.split_seed is None else data.split_seed,
    )


def trial_job(config: CompareConfig, name: str, factor: float, per_epoch: int) -> JobConfig:
    """Method ``name``'s job at ``factor`` times its rate, trained on the carve and scored on
    validation."""
    job = config.job(name)
    settings: dict[str, Any] = {"lr": job.train.lr * factor, "eval_before": False}
    if "epochs" in config.select.params:
        settings.update(
            epochs=float(config.select.max_epochs),
            max_steps=None,
            max_minutes=None,
            eval_every=per_epoch,
        )
    folder = Path(config.output_dir) / "select" / f"{name}-lr-{job.train.lr * factor:.3g}"
    return dataclasses.replace(
        job,
        data=_trial_data(config, job),
        output_dir=str(folder),
        train=dataclasses.replace(job.train, **settings),
    )


def resolve_dtype(job: JobConfig) -> tuple[JobConfig, str]:
    """``job`` with ``dtype: auto`` resolved as training would resolve it here, and the choice with
    its reason. Done before a saved run is reused, so that a run made in another dtype (an older
    ``auto`` policy, another machine) is never taken for this one."""
    from ..train.defaults import choose_dtype, with_choices
    from ..train.kernels import pick_device

    choice = choose_dtype(job, pick_device(job.train.device))
    return with_choices(job, [choice]), str(choice)


def load_base(job: JobConfig, choice: str, log: Callable[[str], None]) -> Any:
    """The base model of ``job`` (its dtype resolved by :func:`resolve_dtype`), the ``choice``
    logged: a comparison loads the model itself, so that it can measure the run's memory, and
    training only sees a model passed in."""
    import torch

    from ..integrations.models import load_model

    log(f"  base model {choice}")
    return load_model(job.model, task="CAUSAL_LM", dtype=getattr(torch, job.dtype))


def _run_trial(
    config: CompareConfig,
    name: str,
    factor: float,
    per_epoch: int,
    tokenizer: Any,
    log: Callable[[str], None],
) -> Trial:
    from ..train import train

    job, choice = resolve_dtype(trial_job(config, name, factor, per_epoch))
    folder = Path(job.output_dir)
    done = folder / "trial.json"
    # before loading the model: reuse is free
    if done.is_file() and same_job(folder / "config.yaml", job):
        log(f"  {folder} already holds this trial; reusing it")
        return Trial(**json.loads(done.read_text()))
    outputs.check_replaceable(folder, "train", "a selection trial's folder")
    outputs.remove_owned(folder, [done.name], "train")
    model = load_base(job, choice, log)
    log(f"  {name}: trying lr {job.train.lr:.3g}")
    started = time.perf_counter()
    result = train(job, model=model, tokenizer=tokenizer, log=lambda line: log(f"    {line}"))
    scores = [
        {
            "epoch": round(r["step"] / per_epoch, 2),
            "step": r["step"],
            "eval_loss": r["eval_loss"],
            "accuracy": r.get("eval_accuracy"),
        }
        for r in read_metrics(folder / "metrics.jsonl")
        if "eval_loss" in r
    ]
    trial = Trial(job.train.lr, scores, time.perf_counter() - started, result.steps)
    write_json_atomic(done, dataclasses.asdict(trial))
    outputs.record(folder, [done.name], "train")
    return trial


def _key(metric: str) -> str:
    return "accuracy" if metric == "accuracy" else "eval_loss"


def choose(
    name: str, preset_lr: float, trials: list[Trial], metric: str, epochs: bool
) -> Selection:
    """The best point of ``trials``: the highest validation accuracy (ties: the lower loss) or the
    lowest loss, over every epoch when ``epochs`` is chosen, else over each trial's last score.
    Exact ties go to the smaller rate and the fewer epochs, the cheaper setting."""
    points = [(t, s) for t in trials for s in (t.scores if epochs else t.scores[-1:])]
    if not points:
        raise ValueError(f"{name}: no trial was scored on validation data")

    def rank(point: tuple[Trial, dict[str, Any]]) -> tuple[float, ...]:
        score = point[1]
        return (
            (-score["accuracy"], score["eval_loss"])
            if metric == "accuracy"
            else (score["eval_loss"],)
        )

    # min keeps the first of equals: trials run smallest rate first
    best_trial, best = min(points, key=rank)
    return Selection(
        name,
        preset_lr,
        best_trial.lr,
        round(best["epoch"]) if epochs else None,
        metric,
        best,
        trials,
        sum(t.seconds for t in trials),
        sum(t.steps for t in trials),
        0,
        0,
    )


# ----- the report's section
# ----------------------------------------------------------------------------------


def write_selection(folder: Path, selections: list[Selection]) -> str | None:
    """selection.json and selection.png in ``folder``, once, when selection is over; the image's
    name, or None without matplotlib."""
    write_json_atomic(folder / "selection.json", [dataclasses.asdict(s) for s in selections])
    return "selection.png" if selection_plot(selections, folder / "selection.png") else None


def selection_section(
    config: CompareConfig, selections: list[Selection], results: list[Any], image: str | None
) -> Section:
    """The report's account of selection: the grid, each point's validation score, the choice, the
    cost, and (with ``select.baseline``) the presets' held-out scores beside the chosen
    settings'."""
    first = selections[0]
    metric = first.metric
    what = "accuracy (ties: the lower loss)" if metric == "accuracy" else "loss"
    factors = ", ".join(f"{f:.3g}" for f in config.select.grid())
    epochs = "epochs" in config.select.params
    rows_in_all = first.train_examples + first.val_examples
    lines = [
        f"chosen on {first.val_examples} validation rows carved from the {rows_in_all} training rows "
        f"(seed {config.seed}); the held-out split was first read after selection, to score the chosen settings",
        f"grid: each method's preset learning rate x {factors}"
        + (
            f", each trained {config.select.max_epochs} epoch(s) and scored after every epoch"
            if epochs
            else ""
        )
        + f"; best by validation {what}",
        f"equal budgets: every method {len(first.trials)} trial(s), {first.steps} optimizer steps in all; then "
        "retrained with its chosen settings on all the training rows"
        + (f", once per seed ({', '.join(map(str, config.seeds))})" if config.seeds else ""),
        f"selection took {_duration(sum(s.seconds for s in selections))} for all methods together "
        "(wall clock, trials and their validation passes)",
    ]
    baseline = _baseline_scores(config.select.baseline)
    header = [
        "method",
        "preset lr",
        f"validation {metric} per lr tried" + (" (after each epoch)" if epochs else ""),
        "chosen",
        "selection time",
        *(["held-out: preset"] if baseline else []),
        "held-out: chosen",
    ]
    rows = []
    scored = {r.name: r for r in results}
    key = _key(metric)  # the validation scores' key, and the report rows' attribute
    for s in selections:
        tried = "; ".join(
            f"{t.lr:.2g}: " + " / ".join(_fmt(p.get(key)) for p in t.scores) for t in s.trials
        )
        chosen = f"lr {s.lr:.2g}" + (f", {s.epochs} epoch(s)" if s.epochs is not None else "")
        preset = [_fmt(baseline.get(s.method, {}).get(key))] if baseline else []
        rows.append(
            [
                s.method,
                f"{s.preset_lr:.2g}",
                tried,
                chosen,
                _duration(s.seconds),
                *preset,
                _fmt(getattr(scored[s.method], key)) if s.method in scored else "-",
            ]
        )
    if baseline:
        lines.append(
            f"held-out: preset is the score of `{config.select.baseline}` (the same comparison with the "
            "presets; mean over its seeds); held-out: chosen is this report's"
        )
    return Section("Selection on validation data", lines, header, rows, image)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _baseline_scores(path: str | None) -> dict[str, dict[str, Any]]:
    """Each method's row of a comparison's results.json, by name (empty without one)."""
    if not path:
        return {}
    try:
        rows = json.loads(Path(path).read_text())["results"]
        return {r["name"]: r for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"select.baseline={path!r}: cannot read a comparison's results.json there ({err}); "
            "point it at the results.json of the same comparison run with the presets"
        ) from err


def selection_plot(selections: list[Selection], path: Path) -> bool:
    """selection.png: one small panel per method, validation score against learning rate (log
    scale), a line per epoch, the chosen point ringed. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    columns = min(4, len(selections))
    rows = math.ceil(len(selections) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    for ax, s in zip(axes.flat, selections, strict=False):
        key = _key(s.metric)
        for epoch in range(max(len(t.scores) for t in s.trials)):
            points = [(t.lr, t.scores[epoch][key]) for t in s.trials if epoch < len(t.scores)]
            ax.plot(
                *zip(*points, strict=True),
                marker="o",
                label=f"epoch {s.trials[0].scores[epoch]['epoch']:g}",
            )
        ax.plot([s.lr], [s.score[key]], marker="o", markersize=14, fillstyle="none", color="black")
        ax.set_xscale("log")
        ax.minorticks_off()  # the rates tried are the ticks; log minor labels would overlap them
        ax.set_xticks([t.lr for t in s.trials], [f"{t.lr:.2g}" for t in s.trials])
        ax.set_title(s.method, fontsize=10)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(selections) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.supylabel(f"validation {selections[0].metric}")
    fig.supxlabel("learning rate (log scale); ringed: chosen")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(path)
    plt.close(fig)
    return True
