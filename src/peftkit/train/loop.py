"""peftkit's own training loop: AdamW on the adapter, a warmup schedule, accumulation, clipping,
autocast, periodic evaluation and checkpoints, exact resume, metrics and a plot.

The data order is a pure function of the seed and the position (micro-batches consumed so far), and
every random state is saved with the checkpoint, so an interrupted run resumed from step k ends with
the same adapter as one that never stopped. What is trained is :mod:`.target`'s; batches are
:mod:`.batches` and :mod:`.packing`'s; kernels and precision :mod:`.kernels`'; checkpoints
:mod:`.checkpoint`'s.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..common.files import write_json_atomic, write_text_atomic
from ..errors import ConfigError, TrainingError, TrainingInterrupted
from ..integrations.models import load_tokenizer
from . import checkpoint as ckpt
from . import distributed, rundir
from .batches import Batches, lr_schedule, split_by_length, total_steps
from .config import JobConfig
from .data import IGNORE_INDEX, Example, TaskData, load_task_data
from .defaults import (
    banner,
    choose_dtype,
    choose_packing,
    choose_precision,
    choose_split,
    with_choices,
)
from .distributed import Processes
from .evaluate import Metrics, evaluate_sharded, prefix_length, row_losses, tokens_in_front
from .kernels import attention_kernel, autocast_for, compiled, pick_device, unfused_attention
from .optimizers import loraplus_groups
from .packing import check_packing, model_inputs
from .report import MetricsLog, NoMetrics, Trackers, card_lines, format_metrics, plot_metrics
from .signals import stop_on_signal
from .target import TrainingTarget, build_target

__all__ = ["TrainResult", "lr_schedule", "train"]


@dataclass
class TrainResult:
    """What a finished run produced."""

    model: nn.Module
    """The trained model: a :class:`~peftkit.PeftModel`, or the base model itself after full
    fine-tuning."""
    tokenizer: Any
    data: TaskData
    output_dir: Path
    steps: int
    before: Metrics | None
    after: Metrics | None
    tokens_per_second: float


# ----- the run
# -----------------------------------------------------------------------------------------------


class Run:
    """The state of one training run. Methods are the steps of :func:`train`.

    ``job`` is the whole job; ``settings`` its ``train`` section.
    """

    def __init__(
        self,
        job: JobConfig,
        target: TrainingTarget,
        tokenizer: Any,
        data: TaskData,
        log: Callable[[str], None],
        procs: Processes | None = None,
    ) -> None:
        self.target, self.model = target, target.model
        self.tokenizer, self.data, self.log = tokenizer, data, log
        self.procs = procs or Processes()
        self.device = pick_device(job.train.device, self.procs)
        self.autocast, fp16 = autocast_for(job.train.precision, self.device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # prompt tuning's virtual tokens take slots in front of each packed example (none for other
        # methods)
        self.reserve = tokens_in_front(self.model)
        # prefix tuning: each packed example masked to itself
        self.segments = prefix_length(self.model) > 0
        self.packing = choose_packing(
            job,
            lambda: check_packing(
                self.model,
                target.base,
                data.train,
                self.pad_id,
                self.device,
                self.autocast,
                self.reserve,
                self.segments,
            ),
        )
        self.split = choose_split(
            job, self.packing.value == "on", self.device, self.procs.world_size
        )
        self.job = job = with_choices(job, [self.packing, self.split])
        self.settings = settings = job.train
        self.out = Path(job.output_dir)
        self.unfused_attention = unfused_attention(self.device, self.model, self.autocast)
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self.batches = Batches(
            data.train, settings.batch_size, job.seed, self.pad_id, settings.group_by_length
        )
        self.total = total_steps(settings, self.batches)
        # parameters change under FSDP
        self.forward_model = distributed.wrap(self.model, self.procs, self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise TrainingError("the model has no trainable parameters; check the adapter config")
        groups: Any = self.params
        # LoRA+: B (and 1-D tensors) at lr * ratio, as PEFT groups them
        if settings.loraplus_lr_ratio is not None:
            groups = [
                g
                for g in loraplus_groups(
                    self.model,
                    settings.lr,
                    settings.loraplus_lr_ratio,
                    weight_decay=settings.weight_decay,
                )
                if g["params"]
            ]
        self.optimizer = torch.optim.AdamW(
            groups, lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.scheduler = lr_schedule(
            self.optimizer, settings.schedule, settings.warmup_steps, self.total
        )
        self.step, self.position = 0, 0
        self.before: dict[str, float] | None = None
        self.tokens_seen, self.train_time = 0, 0.0
        self.stop_signal = 0  # the signal that asked the run to stop (0: none)

    # --- evaluation and checkpoints ---

    def evaluate(self) -> Metrics | None:
        """Metrics on the validation split; each process evaluates its share and the sums are
        reduced."""
        if not self.data.val:
            return None
        return evaluate_sharded(
            self.model,
            self.data.val,
            self.procs,
            pad_id=self.pad_id,
            device=self.device,
            batch_size=self.settings.eval_batch_size or self.settings.batch_size * 2,
            candidate_ids=self.data.candidate_ids or None,
            autocast=self.autocast,
            progress=self.settings.progress and self.procs.is_main,
        )

    def save(self) -> None:
        """Write a checkpoint. Every process takes part (its RNG state, FSDP shards); rank 0 writes."""
        state = {
            "step": self.step,
            "micro_batches": self.position,
            "optimizer": distributed.optimizer_state(self.model, self.optimizer, self.procs),
            "scheduler": self.scheduler.state_dict(),
            "before": self.before or {},
            "tokens_seen": self.tokens_seen,
            "train_time": self.train_time,
            "job": rundir.job_record(self.job),
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        step_state = getattr(self.model, "step_state", None)
        if callable(step_state) and step_state():
            state["method_state"] = step_state()  # AdaLoRA's scores and kept ranks
        rng_per_rank = self.procs.gather(ckpt.rng_state())
        if self.procs.distributed:
            state["rng_per_rank"] = rng_per_rank
        with distributed.full_parameters(self.model):
            if self.procs.is_main:
                folder = ckpt.save_checkpoint(
                    self.out, self.step, self.target, state, self.settings.keep_checkpoints
                )
                self.log(f"checkpoint: {folder}")
            self.procs.barrier()

    def restore(self, folder: Path) -> None:
        """Continue from checkpoint ``folder``: weights, optimizer, schedule, position and random
        states."""
        ckpt.check_complete(folder)
        state = ckpt.load_state(folder)
        changed = rundir.resume_differences(state.get("job"), rundir.job_record(self.job))
        if changed:
            raise ConfigError(
                f"{folder} was written by a different job ({'; '.join(changed)}). --resume continues "
                "the same job: change these back, or start a new output_dir"
            )
        ckpt.load_trainable(folder, self.model, len(self.params), distributed.load_full)
        distributed.load_optimizer_state(self.model, self.optimizer, state["optimizer"], self.procs)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if "method_state" in state:
            cast(Any, self.model).load_step_state(state["method_state"])
        self.step, self.position = int(state["step"]), int(state["micro_batches"])
        self.before = dict(state.get("before") or {}) or None
        self.tokens_seen, self.train_time = (
            int(state.get("tokens_seen", 0)),
            float(state.get("train_time", 0.0)),
        )
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        if len(per_rank) != self.procs.world_size:
            self.log(
                f"{folder} was written by {len(per_rank)} process(es) and this run has "
                f"{self.procs.world_size}: the data order is the same, dropout draws will differ"
            )
        ckpt.set_rng_state(per_rank[self.procs.rank % len(per_rank)])
        self.log(f"resumed from {folder} at step {self.step} of {self.total}")

    # --- one optimizer step ---

    def train_step(self) -> tuple[float, int]:
        """Forward and backward over ``grad_accum`` micro-batches, then one optimizer step.

        Each process runs its rows of every global micro-batch. Returns the mean token loss and the
        number of tokens processed, both over all processes.
        """
        micro = [self.batches.indices(self.position + i) for i in range(self.settings.grad_accum)]
        self.position += self.settings.grad_accum
        examples = self.data.train
        # Weight every target token of the global batch equally, across micro-batches and processes.
        n_targets = sum(_targets(examples[i]) for rows in micro for i in rows)
        tokens = sum(len(examples[i].input_ids) for rows in micro for i in rows)
        # DDP and FSDP average gradients over processes; the loss is scaled so that they add up
        # instead.
        scale = self.procs.world_size / max(n_targets, 1)
        local_loss, term_value = 0.0, 0.0
        passes = [part for rows in micro for part in self._passes(rows)]
        for i, (rows, weight) in enumerate(passes):
            batch = [examples[j] for j in rows]
            inputs, labels = model_inputs(
                batch,
                self.pad_id,
                self.settings.packing is True,
                self.device,
                reserve=self.reserve,
                segments=self.segments,
            )
            with (
                distributed.gradient_sync(self.forward_model, i == len(passes) - 1),
                attention_kernel(self.model, inputs, self.unfused_attention),
            ):
                # forward only: backward runs each op in the dtype its forward chose
                with self.autocast:
                    losses, _ = row_losses(self.forward_model, inputs, labels)
                loss_sum = losses.sum() * weight
                loss = loss_sum * scale
                if i == len(passes) - 1:  # a method's own term (AdaLoRA's), once per step
                    term = self._loss_terms()
                    if term is not None:
                        loss, term_value = loss + term, float(term.detach())
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            local_loss += float(loss_sum.detach())
        total_loss = self.procs.sum([local_loss])[0]
        if not math.isfinite(total_loss):
            self._refuse_step(total_loss)
        self._apply_step()
        return total_loss / max(n_targets, 1) + term_value, tokens

    def _loss_terms(self) -> torch.Tensor | None:
        terms = getattr(self.model, "loss_terms", None)
        return terms() if callable(terms) else None

    def _passes(self, rows: list[int]) -> list[tuple[list[int], float]]:
        """This process's forward passes for micro-batch ``rows``, as (examples, loss weight): its
        share, cut into sub-batches of similar length with ``train.split_by_length``. A process
        without rows still joins the gradient sync, with a zero-weight copy of a row."""
        mine = distributed.shard(rows, self.procs)
        if not mine:
            return [(rows[:1], 0.0)]
        if self.settings.split_by_length is not True:
            return [(mine, 1.0)]
        lengths = [len(self.data.train[j].input_ids) for j in mine]
        return [([mine[k] for k in group], 1.0) for group in split_by_length(lengths)]

    def _refuse_step(self, total_loss: float) -> None:
        # the adapter stays as it was after the last good step
        self.optimizer.zero_grad(set_to_none=True)
        self.position -= self.settings.grad_accum
        latest = ckpt.find_latest(self.out)
        where = (
            f"the last checkpoint, {latest}, is intact"
            if latest
            else "no checkpoint was written yet"
        )
        raise TrainingError(
            f"the loss became {total_loss} at step {self.step + 1}; the step was not applied and "
            f"{where}. Lower train.lr, set train.max_grad_norm, or use precision: fp32"
        )

    def _apply_step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.settings.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        # after the step, with the gradients still there: AdaLoRA scores and prunes its ranks
        update = getattr(self.model, "update_and_allocate", None)
        if callable(update):
            update(self.step)
        self.optimizer.zero_grad(set_to_none=True)

    # --- stopping ---

    def request_stop(self, signum: int) -> None:
        """A stop signal: stop after the current step, with a checkpoint."""
        self.stop_signal = signum
        self.log(
            f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint (send it again "
            "to stop at once)"
        )

    def stop_now(self, signum: int) -> TrainingInterrupted:
        """A second stop signal: the error that stops the run at once."""
        return TrainingInterrupted(
            f"stopped at once by a second {signal.Signals(signum).name} at step {self.step}; "
            f"the last checkpoint in {ckpt.checkpoints_dir(self.out)} is intact: continue "
            "with --resume",
            signum,
        )


def _targets(example: Example) -> int:
    """Target tokens of one example, counted as the shifted loss sees them."""
    return sum(label != IGNORE_INDEX for label in example.labels[1:])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train(
    config: JobConfig,
    *,
    model: nn.Module | None = None,
    tokenizer: Any = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Fine-tune ``config.model`` (or ``model``) with the configured adapter and data.

    Args:
        config: the job.
        model: a base model to use instead of loading ``config.model`` (it is modified in place).
        tokenizer: the tokenizer to use instead of loading ``config.model``'s.
        log: where progress lines go.

    Returns:
        The trained model, the data, and before/after metrics. The adapter, ``metrics.jsonl``,
        ``summary.json`` and ``plot.png`` are in ``config.output_dir``.
    """
    procs, created = distributed.setup(
        config.train.device, config.train.strategy, config.train.timeout_minutes
    )
    try:
        seed_everything(config.seed)  # the same adapter initialization on every process
        rundir.check_writable(Path(config.output_dir))
        with rundir.own_output_dir(config, procs, log):
            return _train_owned(config, model, tokenizer, log if procs.is_main else _quiet, procs)
    finally:
        distributed.teardown(created)


def _quiet(_: str) -> None:
    pass


def _floating_dtype(model: nn.Module | None) -> torch.dtype | None:
    """The dtype of a given model's floating-point weights (a quantized model's are its compute
    dtype's)."""
    if model is None:
        return None
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def _train_owned(
    config: JobConfig,
    model: nn.Module | None,
    tokenizer: Any,
    log: Callable[[str], None],
    procs: Processes,
) -> TrainResult:
    resume_from = rundir.resume_folder(config, log)
    if procs.distributed:
        distributed.check_global_batch(config.train.batch_size, procs)
        log(
            f"training on {procs.world_size} processes ({procs.strategy}); global batch "
            f"{config.train.batch_size} x {config.train.grad_accum}"
        )
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.model)
    data = load_task_data(config.data, tokenizer, seed=config.seed)
    for line in data.report:
        log(line)
    device = pick_device(config.train.device, procs)
    dtype = choose_dtype(config, device, model_dtype=_floating_dtype(model))
    config = with_choices(config, [dtype])
    target = build_target(config, model, device)
    target.check_context(data, config.data.max_length)
    if procs.distributed:
        torch.manual_seed(config.seed + procs.rank)  # independent dropout draws on each process
    run = Run(config, target, tokenizer, data, log, procs)
    log(banner([dtype, run.packing, run.split, choose_precision(config, device)]))
    config = run.job  # with every auto resolved: what config.yaml and checkpoints record
    if procs.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run.out / "config.yaml", config.to_yaml())
    if resume_from is not None:
        run.restore(resume_from)
    with (
        stop_on_signal(run.request_stop, run.stop_now, lambda: run.stop_signal != 0),
        compiled(run.target.base, run.settings.torch_compile),
    ):
        return _run(run, resumed=resume_from is not None)


def _run(run: Run, resumed: bool) -> TrainResult:
    job = run.job
    trackers = (
        Trackers(job.train.report_to, run.out.name, run.out / "runs", job.to_dict())
        if run.procs.is_main and job.train.report_to
        else None
    )
    metrics: MetricsLog = (
        MetricsLog(
            run.out / "metrics.jsonl", resume_step=run.step if resumed else None, trackers=trackers
        )
        if run.procs.is_main
        else NoMetrics()
    )
    try:
        if run.before is None and job.train.eval_before:
            before = run.evaluate()
            if before is not None:
                run.before = before.as_dict()
                metrics.write({"step": 0, **run.before})
                run.log(format_metrics("before training", run.before))
        _loop(run, metrics)
        return _finish(run, metrics)
    finally:
        metrics.close()


def _loop(run: Run, metrics: MetricsLog) -> None:
    from tqdm.auto import tqdm

    settings = run.settings
    run.model.train()
    # a log file gets the log lines only
    shown = settings.progress and run.procs.is_main and sys.stderr.isatty()
    bar = tqdm(total=run.total, initial=run.step, disable=not shown, desc="training", unit="step")
    window = _Window()
    while run.step < run.total and not _out_of_time(run):
        started = time.perf_counter()
        loss, tokens = run.train_step()
        run.train_time += time.perf_counter() - started
        run.tokens_seen += tokens
        run.step += 1
        window.add(loss, tokens)
        bar.update(1)
        bar.set_postfix(
            loss=f"{loss:.4f}", tok_s=f"{tokens / max(time.perf_counter() - started, 1e-9):.0f}"
        )
        if run.step % settings.log_every == 0 or run.step == run.total:
            metrics.write(
                {
                    "step": run.step,
                    "epoch": round(run.batches.epoch(run.position), 4),
                    "lr": run.scheduler.get_last_lr()[0],
                    **window.flush(),
                }
            )
        if settings.eval_every and run.step % settings.eval_every == 0 and run.step < run.total:
            _record_eval(run, metrics)
        _checkpoint_or_stop(run, bar)
    bar.close()


class _Window:
    """Loss and throughput since the last metrics line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss, self.steps, self.tokens, self.start = 0.0, 0, 0, time.perf_counter()

    def add(self, loss: float, tokens: int) -> None:
        self.loss, self.steps, self.tokens = self.loss + loss, self.steps + 1, self.tokens + tokens

    def flush(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        record = {
            "loss": self.loss / max(self.steps, 1),
            "tokens_per_second": self.tokens / elapsed,
        }
        self.reset()
        return record


def _checkpoint_or_stop(run: Run, bar: Any) -> None:
    """The periodic checkpoint; on a stop signal (on any process), a checkpoint and the stop."""
    every = run.settings.save_every
    if every and run.step % every == 0:
        run.save()
    # every process stops at the same step
    if run.procs.distributed and run.procs.any(run.stop_signal != 0):
        run.stop_signal = run.stop_signal or signal.SIGTERM
    if not run.stop_signal:
        return
    bar.close()
    if not (every and run.step % every == 0):
        run.save()
    raise TrainingInterrupted(
        f"interrupted at step {run.step} of {run.total} ({signal.Signals(run.stop_signal).name}); "
        f"checkpoint saved in {ckpt.checkpoints_dir(run.out)}. Continue with the same config and --resume",
        run.stop_signal,
    )


def _out_of_time(run: Run) -> bool:
    if run.settings.max_minutes is None:
        return False
    over = run.train_time >= run.settings.max_minutes * 60
    if run.procs.distributed:
        over = run.procs.any(over)  # every process stops at the same step
    if over:
        run.log(
            f"train.max_minutes={run.settings.max_minutes} reached at step {run.step} of {run.total}"
        )
    return over


def _record_eval(run: Run, metrics: MetricsLog) -> Metrics | None:
    result = run.evaluate()
    if result is not None:
        metrics.write({"step": run.step, **result.as_dict()})
        run.log(format_metrics(f"step {run.step}", result.as_dict()))
    return result


def _finish(run: Run, metrics: MetricsLog) -> TrainResult:
    after = _record_eval(run, metrics)
    speed = run.tokens_seen / max(run.train_time, 1e-9)
    summary = {
        "steps": run.step,
        "train_examples": len(run.data.train),
        "val_examples": len(run.data.val),
        "tokens_per_second": speed,
        "train_seconds": run.train_time,
        "before": run.before,
        "after": after.as_dict() if after else None,
        "processes": run.procs.world_size,
    }
    with distributed.full_parameters(run.model):
        if run.procs.is_main:
            run.target.save_result(run.out, run.tokenizer, card_lines(run.job, summary))
            write_json_atomic(run.out / "summary.json", summary)
            if run.settings.plot:
                plot_metrics(metrics.read(), run.out / "plot.png")
        run.procs.barrier()
    run.log(f"adapter saved to {run.out} ({run.step} steps, {speed:.0f} tokens/s)")
    before = (
        Metrics(
            run.before["eval_loss"],
            run.before["eval_perplexity"],
            0,
            run.before.get("eval_accuracy"),
        )
        if run.before
        else None
    )
    return TrainResult(run.model, run.tokenizer, run.data, run.out, run.step, before, after, speed)
