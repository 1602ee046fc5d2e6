"""peftkit's own training loop: AdamW on the adapter, a warmup schedule, accumulation, clipping, autocast,
periodic evaluation and checkpoints, exact resume, metrics and a plot.

The data order is a pure function of the seed and the position (micro-batches consumed so far), and every
random state is saved with the checkpoint, so an interrupted run resumed from step k ends with the same
adapter as one that never stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..card import write_model_card
from ..data import IGNORE_INDEX, Example, TaskData, collate, load_task_data, pack
from ..errors import ConfigError, TrainingError, TrainingInterrupted
from ..files import atomic_write, write_json_atomic, write_text_atomic
from ..model import PeftModel, get_peft_model
from . import checkpoint as ckpt
from . import distributed, rundir
from .batches import Batches, total_steps
from .config import JobConfig, TrainingConfig
from .distributed import Processes
from .evaluate import Metrics, evaluate, row_losses
from .kernels import attention_kernel, autocast_for, pick_device, unfused_attention
from .report import MetricsLog, Trackers, plot_metrics

__all__ = ["TrainResult", "train"]

TRAINABLE_FILE = ckpt.TRAINABLE_FILE
@dataclass
class TrainResult:
    """What a finished run produced."""

    model: nn.Module
    """The trained model: a :class:`~peftkit.PeftModel`, or the base model itself after full fine-tuning."""
    tokenizer: Any
    data: TaskData
    output_dir: Path
    steps: int
    before: Metrics | None
    after: Metrics | None
    tokens_per_second: float


# ----- pieces --------------------------------------------------------------------------------------------


def lr_schedule(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int) -> Any:
    """transformers' schedule of that name (linear or cosine decay, or constant, after linear warmup from 0):
    the one a Trainer run with the same settings gets, so peftkit's runs and the peer's follow the same curve."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if kind == "constant" else kind
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)


# ----- the run -----------------------------------------------------------------------------------------------


class Run:
    """The state of one training run. Methods are the steps of :func:`train`."""

    def __init__(self, config: JobConfig, model: nn.Module, tokenizer: Any, data: TaskData,
                 log: Callable[[str], None], procs: Processes | None = None) -> None:
        cfg = config.train
        self.config, self.cfg, self.model, self.tokenizer = config, cfg, model, tokenizer
        self.data, self.log = data, log
        self.procs = procs or Processes()
        self.out = Path(config.output_dir)
        self.device = pick_device(cfg.device, self.procs)
        self.autocast, fp16 = autocast_for(cfg.precision, self.device)
        self.unfused_attention = unfused_attention(self.device, model, self.autocast)
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.batches = Batches(data.train, cfg.batch_size, config.seed, self.pad_id, cfg.group_by_length)
        self.total = total_steps(cfg, self.batches)
        self.forward_model = distributed.wrap(model, self.procs, self.device)  # parameters change under FSDP
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise TrainingError("the model has no trainable parameters; check the adapter config")
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = lr_schedule(self.optimizer, cfg.schedule, cfg.warmup_steps, self.total)
        self.step = 0
        self.position = 0
        self.before: dict[str, float] | None = None
        self.last_eval_step = -1
        self.tokens_seen = 0
        self.train_time = 0.0
        self.stop_signal = 0  # the signal that asked the run to stop (0: none)
        if cfg.packing:
            self.check_packing()

    # --- evaluation and checkpoints ---

    def evaluate(self) -> Metrics | None:
        """Metrics on the validation split; each process evaluates its share and the sums are reduced."""
        val = self.data.val
        if not val:
            return None
        indices, own = distributed.even_shard(len(val), self.procs)
        part = evaluate(self.model, [val[i] for i in indices], pad_id=self.pad_id, device=self.device,
                        batch_size=self.cfg.eval_batch_size or self.cfg.batch_size * 2,
                        candidate_ids=self.data.candidate_ids or None, autocast=self.autocast, counted=own,
                        progress=self.cfg.progress and self.procs.is_main)
        if not self.procs.distributed:
            return part
        correct = (part.accuracy or 0.0) * own
        loss_sum, tokens, correct = self.procs.sum([part.loss * part.tokens, part.tokens, correct])
        loss = loss_sum / max(tokens, 1)
        metrics = Metrics(loss, math.exp(min(loss, 50)), int(tokens))
        if part.predictions is not None:
            metrics.accuracy = correct / len(val)
            predictions = [0] * len(val)
            for rank_indices, rank_predictions in self.procs.gather((indices, part.predictions)):
                for i, p in zip(rank_indices, rank_predictions, strict=False):  # padding is past the predictions
                    predictions[i] = p
            metrics.predictions = predictions
        return metrics

    def save(self) -> None:
        """Write a checkpoint. Every process takes part (its RNG state, FSDP shards); rank 0 writes."""
        state = {"step": self.step, "micro_batches": self.position,
                 "optimizer": distributed.optimizer_state(self.model, self.optimizer, self.procs),
                 "scheduler": self.scheduler.state_dict(), "before": self.before or {},
                 "tokens_seen": self.tokens_seen, "train_time": self.train_time, "job": rundir.job_record(self.config)}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        rng_per_rank = self.procs.gather(ckpt.rng_state())
        if self.procs.distributed:
            state["rng_per_rank"] = rng_per_rank
        with distributed.full_parameters(self.model):
            if self.procs.is_main:
                folder = ckpt.save_checkpoint(self.out, self.step, _TrainableSaver(self.model), state,
                                              self.cfg.keep_checkpoints)
                self.log(f"checkpoint: {folder}")
            self.procs.barrier()

    def restore(self, folder: Path) -> None:
        from safetensors.torch import load_file

        ckpt.check_complete(folder)
        state = ckpt.load_state(folder)
        changed = rundir.resume_differences(state.get("job"), rundir.job_record(self.config))
        if changed:
            raise ConfigError(f"{folder} was written by a different job ({'; '.join(changed)}). --resume continues "
                              "the same job: change these back, or start a new output_dir")
        weights = load_file(str(folder / TRAINABLE_FILE))
        named = dict(self.model.named_parameters())
        missing = [k for k in weights if k not in named]
        if missing or len(weights) != len(self.params):
            raise ConfigError(f"{folder} was written for a different adapter ({len(weights)} tensors, this run "
                              f"trains {len(self.params)}); resume with the same config, or start a new output_dir")
        wrong = [k for k, t in weights.items() if t.shape != named[k].shape]
        if wrong:
            raise ConfigError(f"{folder} was written for a different adapter: {wrong[0]} has shape "
                              f"{tuple(weights[wrong[0]].shape)}, this run's is {tuple(named[wrong[0]].shape)}; "
                              f"resume with the same config, or start a new output_dir")
        with torch.no_grad():
            for key, tensor in weights.items():
                distributed.load_full(named[key], tensor)
        distributed.load_optimizer_state(self.model, self.optimizer, state["optimizer"], self.procs)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.position = int(state["step"]), int(state["micro_batches"])
        self.before = dict(state.get("before") or {}) or None
        self.tokens_seen, self.train_time = int(state.get("tokens_seen", 0)), float(state.get("train_time", 0.0))
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        if len(per_rank) != self.procs.world_size:
            self.log(f"{folder} was written by {len(per_rank)} process(es) and this run has "
                     f"{self.procs.world_size}: the data order is the same, dropout draws will differ")
        ckpt.set_rng_state(per_rank[self.procs.rank % len(per_rank)])
        self.log(f"resumed from {folder} at step {self.step} of {self.total}")

    # --- one optimizer step ---

    def inputs(self, examples: list[Example], width: int | None = None) -> tuple[dict[str, Any], torch.Tensor]:
        """The model inputs and labels of a micro-batch, packed with ``train.packing``."""
        if self.cfg.packing:
            batch: dict[str, Any] = pack(examples, self.pad_id, width)
            batch["use_cache"] = False  # transformers only reads position restarts as boundaries without a cache
        else:
            batch = collate(examples, self.pad_id)
        labels = batch.pop("labels").to(self.device)
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}, labels

    def check_packing(self) -> None:
        """Refuse packing on a model whose attention ignores position restarts: two examples packed into one
        row must lose what they lose apart."""
        from ..prompting import forward_accepts

        base = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        if not forward_accepts(base, "position_ids"):
            raise ConfigError(f"train.packing: {type(base).__name__} takes no position ids, so packed examples "
                              "would attend to each other; set train.packing: false")
        longest = sorted(self.data.train[:8], key=lambda e: len(e.input_ids))[-2:]
        pair = [Example(e.input_ids, list(e.input_ids)) for e in longest]  # every token a target: most sensitive
        if len(pair) < 2:
            return
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.autocast:
                apart = sum(float(row_losses(self.model, *self.inputs([e]))[0].sum()) for e in pair)
                width = sum(len(e.input_ids) for e in pair)
                together = float(row_losses(self.model, *self.inputs(pair, width))[0].sum())
        finally:
            self.model.train(was_training)
        exact = isinstance(self.autocast, contextlib.nullcontext) and all(
            p.dtype == torch.float32 for p in self.model.parameters())
        tolerance = 1e-4 if exact else 3e-2  # half precision rounds the two layouts differently
        if not math.isclose(apart, together, rel_tol=tolerance):
            raise ConfigError(f"train.packing: this model lets packed examples attend to each other (loss "
                              f"{together:.4f} packed against {apart:.4f} apart); set train.packing: false")

    def train_step(self) -> tuple[float, int]:
        """Forward and backward over ``grad_accum`` micro-batches, then one optimizer step.

        Each process runs its rows of every global micro-batch. Returns the mean token loss and the number
        of tokens processed, both over all processes.
        """
        micro = [self.batches.indices(self.position + i) for i in range(self.cfg.grad_accum)]
        self.position += self.cfg.grad_accum
        examples = self.data.train
        # Weight every target token of the global batch equally, across micro-batches and processes.
        n_targets = sum(_targets(examples[i]) for rows in micro for i in rows)
        tokens = sum(len(examples[i].input_ids) for rows in micro for i in rows)
        # DDP and FSDP average gradients over processes; the loss is scaled so that they add up instead.
        scale = self.procs.world_size / max(n_targets, 1)
        local_loss = 0.0
        for i, rows in enumerate(micro):
            mine = distributed.shard(rows, self.procs)
            # A process without rows still joins the gradient sync, with a zero-weight copy of a row.
            inputs, labels = self.inputs([examples[j] for j in (mine or rows[:1])])
            with (distributed.gradient_sync(self.forward_model, i == len(micro) - 1),
                  attention_kernel(self.model, inputs, self.unfused_attention)):
                with self.autocast:  # forward only: backward runs each op in the dtype its forward chose
                    losses, _ = row_losses(self.forward_model, inputs, labels)
                loss_sum = losses.sum() * (1.0 if mine else 0.0)
                loss = loss_sum * scale
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            local_loss += float(loss_sum.detach())
        total_loss = self.procs.sum([local_loss])[0]
        if not math.isfinite(total_loss):
            self.optimizer.zero_grad(set_to_none=True)  # the adapter stays as it was after the last good step
            self.position -= self.cfg.grad_accum
            latest = ckpt.find_latest(self.out)
            where = f"the last checkpoint, {latest}, is intact" if latest else "no checkpoint was written yet"
            raise TrainingError(f"the loss became {total_loss} at step {self.step + 1}; the step was not applied and "
                                f"{where}. Lower train.lr, set train.max_grad_norm, or use precision: fp32")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss / max(n_targets, 1), tokens


def _targets(example: Example) -> int:
    """Target tokens of one example, counted as the shifted loss sees them."""
    return sum(label != IGNORE_INDEX for label in example.labels[1:])


class _NoMetrics(MetricsLog):
    """Processes other than rank 0 write no metrics."""

    def __init__(self) -> None:
        pass

    def write(self, record: dict[str, Any]) -> None:
        pass

    def read(self) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        pass


class _TrainableSaver:
    """Saves the PEFT adapter (for users) and every trainable tensor (for an exact resume: p-tuning's
    adapter file holds the encoder's output, not the encoder)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def save_pretrained(self, folder: Path) -> None:
        from safetensors.torch import save_file

        if isinstance(self.model, PeftModel):  # after full fine-tuning, trainable.safetensors is the model
            self.model.save_pretrained(folder)
        tensors = {k: p.detach().cpu().contiguous() for k, p in self.model.named_parameters() if p.requires_grad}
        with atomic_write(folder / TRAINABLE_FILE) as tmp:  # the umask's permissions, like every other file
            save_file(tensors, tmp)


def _check_context(config: JobConfig, model: nn.Module, data: TaskData) -> None:
    """Every example (plus virtual tokens) must fit the model's position range."""
    peft = model if isinstance(model, PeftModel) else None
    model_config = getattr(peft.get_base_model() if peft else model, "config", None)
    limit = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    virtual = int(getattr(peft.active_peft_config, "num_virtual_tokens", 0) or 0) if peft else 0
    if not limit:
        return
    too_long = sum(len(e.input_ids) + virtual > limit for e in data.train + data.val)
    if too_long:
        extra = f" plus {virtual} virtual tokens" if virtual else ""
        raise ConfigError(f"{too_long} examples{extra} are longer than the model's context ({limit} positions); "
                          f"set data.max_length to {limit - virtual} or less (now {config.data.max_length})")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: JobConfig, model: nn.Module | None, device: torch.device) -> nn.Module:
    """The model to train: the base with the job's adapter, or the base itself for full fine-tuning."""
    from ..models import load_model

    if model is None:
        model = load_model(config.model, task="CAUSAL_LM", dtype=getattr(torch, config.dtype),
                           trust_remote_code=config.trust_remote_code, quantization=config.quantization)
    if config.quantization is not None:
        from ..quantization import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.train.gradient_checkpointing)
    peft_config = config.peft_config()
    if peft_config is None:  # full fine-tuning: the model itself, every weight trainable
        model.requires_grad_(True)
        peft_model: nn.Module = model
    else:
        peft_model = get_peft_model(model, peft_config)
    if config.train.gradient_checkpointing:
        peft_model.gradient_checkpointing_enable({"use_reentrant": False})  # type: ignore[operator]
    return peft_model.to(device)


def train(config: JobConfig, *, model: nn.Module | None = None, tokenizer: Any = None,
          log: Callable[[str], None] = print) -> TrainResult:
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
    cfg = config.train
    procs, created = distributed.setup(cfg.device, cfg.strategy, cfg.timeout_minutes)
    try:
        return _train(config, model, tokenizer, log if procs.is_main else _quiet, procs)
    finally:
        distributed.teardown(created)


def _quiet(_: str) -> None:
    pass


def _train(config: JobConfig, model: nn.Module | None, tokenizer: Any, log: Callable[[str], None],
           procs: Processes) -> TrainResult:
    seed_everything(config.seed)  # the same adapter initialization on every process
    rundir.check_writable(Path(config.output_dir))
    with rundir.own_output_dir(config, procs, log):
        return _train_owned(config, model, tokenizer, log, procs)


def _train_owned(config: JobConfig, model: nn.Module | None, tokenizer: Any, log: Callable[[str], None],
                 procs: Processes) -> TrainResult:
    from ..models import load_tokenizer

    resume_from = rundir.resume_folder(config, log)
    if procs.distributed:
        _check_batch(config.train, procs)
        log(f"training on {procs.world_size} processes ({procs.strategy}); global batch "
            f"{config.train.batch_size} x {config.train.grad_accum}")
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.model)
    data = load_task_data(config.data, tokenizer, seed=config.seed)
    for line in data.report:
        log(line)
    peft_model = build_model(config, model, pick_device(config.train.device, procs))
    _check_context(config, peft_model, data)
    if procs.distributed:
        torch.manual_seed(config.seed + procs.rank)  # independent dropout draws on each process
    run = Run(config, peft_model, tokenizer, data, log, procs)
    if procs.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run.out / "config.yaml", config.to_yaml())
    if resume_from is not None:
        run.restore(resume_from)
    with _stop_on_interrupt(run):
        return _run(run, config, log, resumed=resume_from is not None)


def _check_batch(cfg: TrainingConfig, procs: Processes) -> None:
    if cfg.batch_size < procs.world_size:
        raise ConfigError(f"train.batch_size={cfg.batch_size} is the global micro-batch, split over "
                          f"{procs.world_size} processes, so it must be at least {procs.world_size}; raise it "
                          f"(and lower train.grad_accum to keep the same global batch)")


def _run(run: Run, config: JobConfig, log: Callable[[str], None], resumed: bool) -> TrainResult:
    trackers = Trackers(config.train.report_to, run.out.name, run.out / "runs", config.to_dict()) \
        if run.procs.is_main and config.train.report_to else None
    metrics: MetricsLog = MetricsLog(run.out / "metrics.jsonl", resume_step=run.step if resumed else None,
                                     trackers=trackers) if run.procs.is_main else _NoMetrics()
    try:
        if run.before is None and config.train.eval_before:
            before = run.evaluate()
            if before is not None:
                run.before = before.as_dict()
                metrics.write({"step": 0, **run.before})
                log(_format_metrics("before training", run.before))
        _loop(run, metrics)
        return _finish(run, metrics)
    finally:
        metrics.close()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Ctrl-C, a scheduler's or ``kill``'s stop, a closed terminal: each asks for a checkpoint and a clean stop."""


@contextlib.contextmanager
def _stop_on_interrupt(run: Run) -> Iterator[None]:
    """The first stop signal asks the run to stop after the current step (with a checkpoint); a second one
    stops at once. Only in the main thread, where Python delivers signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if run.stop_signal:
            raise TrainingInterrupted(f"stopped at once by a second {name} at step {run.step}; the last checkpoint "
                                      f"in {ckpt.checkpoints_dir(run.out)} is intact: continue with --resume", signum)
        run.stop_signal = signum
        run.log(f"\n{name}: stopping after this step and saving a checkpoint (send it again to stop at once)")

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _loop(run: Run, metrics: MetricsLog) -> None:
    from tqdm.auto import tqdm

    cfg = run.cfg
    run.model.train()
    shown = cfg.progress and run.procs.is_main and sys.stderr.isatty()  # a log file gets the log lines only
    bar = tqdm(total=run.total, initial=run.step, disable=not shown, desc="training", unit="step")
    window_loss, window_steps, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
    while run.step < run.total and not _out_of_time(run):
        started = time.perf_counter()
        loss, tokens = run.train_step()
        run.train_time += time.perf_counter() - started
        run.tokens_seen += tokens
        run.step += 1
        window_loss, window_steps, window_tokens = window_loss + loss, window_steps + 1, window_tokens + tokens
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens / max(time.perf_counter() - started, 1e-9):.0f}")
        if run.step % cfg.log_every == 0 or run.step == run.total:
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            metrics.write({"step": run.step, "epoch": round(run.batches.epoch(run.position), 4),
                           "loss": window_loss / window_steps, "lr": run.scheduler.get_last_lr()[0],
                           "tokens_per_second": window_tokens / elapsed})
            window_loss, window_steps, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
        if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < run.total:
            _record_eval(run, metrics)
        if cfg.save_every and run.step % cfg.save_every == 0:
            run.save()
        if run.procs.distributed and run.procs.any(run.stop_signal != 0):  # every process stops at the same step
            run.stop_signal = run.stop_signal or signal.SIGTERM
        if run.stop_signal:
            bar.close()
            if not (cfg.save_every and run.step % cfg.save_every == 0):
                run.save()
            raise TrainingInterrupted(
                f"interrupted at step {run.step} of {run.total} ({signal.Signals(run.stop_signal).name}); "
                f"checkpoint saved in {ckpt.checkpoints_dir(run.out)}. Continue with the same config and --resume",
                run.stop_signal)
    bar.close()


def _out_of_time(run: Run) -> bool:
    if run.cfg.max_minutes is None:
        return False
    over = run.train_time >= run.cfg.max_minutes * 60
    if run.procs.distributed:
        over = run.procs.any(over)  # every process stops at the same step
    if over:
        run.log(f"train.max_minutes={run.cfg.max_minutes} reached at step {run.step} of {run.total}")
    return over


def _record_eval(run: Run, metrics: MetricsLog) -> Metrics | None:
    result = run.evaluate()
    if result is not None:
        metrics.write({"step": run.step, **result.as_dict()})
        run.log(_format_metrics(f"step {run.step}", result.as_dict()))
    run.last_eval_step = run.step
    return result


def _format_metrics(label: str, values: dict[str, float]) -> str:
    parts = [f"{k.removeprefix('eval_')} {v:.4f}" for k, v in values.items()]
    return f"{label}: " + ", ".join(parts)


def _finish(run: Run, metrics: MetricsLog) -> TrainResult:
    after = _record_eval(run, metrics)
    speed = run.tokens_seen / max(run.train_time, 1e-9)
    summary = {"steps": run.step, "train_examples": len(run.data.train), "val_examples": len(run.data.val),
               "tokens_per_second": speed, "train_seconds": run.train_time, "before": run.before,
               "after": after.as_dict() if after else None,
               "processes": run.procs.world_size}
    with distributed.full_parameters(run.model):
        if run.procs.is_main:
            _save_model(run)
            write_json_atomic(run.out / "summary.json", summary)
            if isinstance(run.model, PeftModel):
                write_model_card(run.out, run.model, training=_card_lines(run, summary))
            if run.cfg.plot:
                plot_metrics(metrics.read(), run.out / "plot.png")
        run.procs.barrier()
    run.log(f"adapter saved to {run.out} ({run.step} steps, {speed:.0f} tokens/s)")
    before = Metrics(run.before["eval_loss"], run.before["eval_perplexity"], 0, run.before.get("eval_accuracy")) \
        if run.before else None
    return TrainResult(run.model, run.tokenizer, run.data, run.out, run.step, before, after, speed)


def _save_model(run: Run) -> None:
    """The adapter in PEFT's format; after full fine-tuning, the whole model (and its tokenizer) in
    transformers' format under ``model/``, written to a temporary folder first."""
    if isinstance(run.model, PeftModel):
        run.model.save_pretrained(run.out)
        return
    from ..files import atomic_directory

    with atomic_directory(run.out / "model") as tmp:
        run.model.save_pretrained(tmp)  # type: ignore[operator]  # a transformers model
        run.tokenizer.save_pretrained(tmp)


def _card_lines(run: Run, summary: dict[str, Any]) -> list[str]:
    cfg = run.config
    lines = ["## Training", "", f"- base model: `{cfg.model}`", f"- method: {cfg.method}, "
             f"adapter settings: `{json.dumps(cfg.adapter)}`",
             f"- data: `{cfg.data.path}` ({cfg.data.mode}), {summary['train_examples']} training and "
             f"{summary['val_examples']} validation examples",
             f"- {summary['steps']} steps, batch {cfg.train.batch_size} x {cfg.train.grad_accum}, lr {cfg.train.lr}, "
             f"{cfg.train.schedule} schedule, seed {cfg.seed}"]
    for label in ("before", "after"):
        if summary[label]:
            values = ", ".join(f"{k.removeprefix('eval_')} {v:.4f}" for k, v in summary[label].items())
            lines.append(f"- validation {label} training: {values}")
    return [*lines, "", "The full settings are in `config.yaml`; the curves in `metrics.jsonl` and `plot.png`."]
