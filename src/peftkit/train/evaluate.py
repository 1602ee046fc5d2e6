"""Evaluation: token loss and perplexity, and label-word accuracy for classification.

Works on a plain transformers model or a :class:`~peftkit.PeftModel` (prompt methods prepend virtual
tokens to the logits; the functions look at the last ``input_ids.shape[1]`` positions only).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..peft_model.model import PeftModel
from ..tuners.prompt.model import cache_keyword, forward_accepts, output_cache
from . import distributed
from .data import IGNORE_INDEX, Example, collate
from .distributed import Processes

__all__ = [
    "Metrics",
    "classification_scores",
    "evaluate",
    "evaluate_sharded",
    "row_losses",
    "target_loss",
    "token_loss",
]


@dataclass
class Metrics:
    """What one evaluation measured."""

    loss: float
    perplexity: float
    tokens: int
    accuracy: float | None = None
    predictions: list[int] | None = None

    def as_dict(self, prefix: str = "eval_") -> dict[str, float]:
        out = {f"{prefix}loss": self.loss, f"{prefix}perplexity": self.perplexity}
        if self.accuracy is not None:
            out[f"{prefix}accuracy"] = self.accuracy
        return out


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions, and how many there were.

    ``logits`` may be longer than ``labels`` (virtual tokens in front); the extra leading positions
    get ``IGNORE_INDEX`` labels, as PEFT does, so the last virtual token predicts the first real
    one.
    """
    losses, counts = _row_token_loss(logits, labels)
    return losses.sum(), int(counts.sum())


def _row_token_loss(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    extra = logits.shape[1] - labels.shape[1]  # virtual tokens of prompt methods
    if extra:
        labels = F.pad(labels, (extra, 0), value=IGNORE_INDEX)
    return _row_cross_entropy(logits[:, :-1], labels[:, 1:])


def _row_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed cross-entropy ``(B,)`` and per-row count of labelled positions ``(B,)``."""
    batch, length, vocab = logits.shape  # (B, T, V)
    loss = F.cross_entropy(
        logits.float().reshape(-1, vocab),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return loss.view(batch, length).sum(dim=1), (targets != IGNORE_INDEX).sum(dim=1)


def tokens_in_front(model: nn.Module, inputs: dict[str, Any] | None = None) -> int:
    """How many positions the model puts in front of each row of ``inputs``: prompt tuning's virtual
    tokens, or none when the batch is packed with slots that already hold them
    (``virtual_token_slots``)."""
    model = _unwrapped(model)
    if "virtual_token_slots" in (inputs or {}) or not isinstance(model, PeftModel):
        return 0
    return model.tokens_in_front


def prefix_length(model: nn.Module) -> int:
    """How many key/values prefix tuning puts in front of every row (0 for other adapters): a packed
    batch then needs a mask per example (see :attr:`PeftModel.prefix_in_cache`)."""
    model = _unwrapped(model)
    if not (isinstance(model, PeftModel) and model.prefix_in_cache):
        return 0
    return int(getattr(model.active_peft_config, "num_virtual_tokens", 0) or 0)


def _unwrapped(model: nn.Module) -> nn.Module:
    """``model`` without its DistributedDataParallel wrapper."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def _positions_in_front(model: nn.Module, inputs: dict[str, Any] | None = None) -> int | None:
    """:func:`tokens_in_front`, or None when the model's LM head cannot be run on chosen positions
    only (``logits_to_keep``)."""
    base = _unwrapped(model)
    base = base.get_base_model() if isinstance(base, PeftModel) else base
    return tokens_in_front(model, inputs) if forward_accepts(base, "logits_to_keep") else None


def target_loss(
    model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Summed next-token loss of ``labels`` under ``model``, computing the LM head only where it is
    needed.

    The vocabulary projection is a large share of a small model's compute (SmolLM2: 28M of 135M
    weights); completion and classification targets are a few tokens per example, so only the
    positions that predict a target in some row of the batch go through it. Same value as
    :func:`token_loss`.
    """
    losses, counts = row_losses(model, inputs, labels)
    return losses.sum(), int(counts.sum())


def row_losses(
    model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`target_loss` per row: summed loss ``(B,)`` and number of target tokens ``(B,)``."""
    front = _positions_in_front(model, inputs)
    if front is None:
        return _row_token_loss(model(**inputs).logits, labels)
    # (K,) predicting positions
    positions = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    logits = model(**inputs, logits_to_keep=positions + front).logits  # (B, K, V)
    return _row_cross_entropy(logits, labels[:, positions + 1])


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    examples: Sequence[Example],
    *,
    pad_id: int,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    candidate_ids: list[list[int]] | None = None,
    autocast: contextlib.AbstractContextManager[Any] | None = None,
    counted: int | None = None,
    progress: bool = False,
) -> Metrics:
    """Loss and perplexity over ``examples``; with ``candidate_ids``, also label-word accuracy.

    When every label word is one token, the forward pass that gives an example's loss gives its
    label scores too (the position that predicts the answer's first token), so each example runs
    once.

    Args:
        counted: only the first ``counted`` examples enter the metrics; the rest are run but not
            counted (distributed evaluation pads every process's share to the same length, so that
            processes that shard the model run the same number of forward passes).
        progress: show a progress bar (on a terminal).
    """
    counted = len(examples) if counted is None else counted
    one_pass = (
        bool(candidate_ids)
        and all(len(c) == 1 for c in candidate_ids or [])
        and all(e.prompt_ids and e.input_ids[: len(e.prompt_ids)] == e.prompt_ids for e in examples)
    )
    tokens = [c[0] for c in candidate_ids] if one_pass and candidate_ids else None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    scores = torch.empty(len(examples), len(candidate_ids or []))
    try:
        # less padding
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
        for chunk in _progress(_batches(order, batch_size), progress, len(examples), batch_size):
            inputs = {
                k: v.to(device) for k, v in collate([examples[i] for i in chunk], pad_id).items()
            }
            labels = inputs.pop("labels")
            answer_at = (
                torch.tensor([len(examples[i].prompt_ids) - 1 for i in chunk]) if tokens else None
            )
            with autocast or contextlib.nullcontext():
                losses, counts, picked = _losses_and_scores(
                    model, inputs, labels, answer_at, tokens
                )
            if picked is not None:
                scores[torch.tensor(list(chunk))] = picked
            keep = torch.tensor([i < counted for i in chunk], device=losses.device)
            total, count = total + float(losses[keep].sum()), count + int(counts[keep].sum())
        metrics = Metrics(
            loss=total / max(count, 1),
            perplexity=math.exp(min(total / max(count, 1), 50)),
            tokens=count,
        )
        if candidate_ids:
            if not one_pass:  # multi-token label words: each prompt runs once per word
                scores = classification_scores(
                    model,
                    [e.prompt_ids for e in examples],
                    candidate_ids,
                    pad_id=pad_id,
                    batch_size=batch_size,
                    device=device,
                    autocast=autocast,
                )
            predictions = scores.argmax(dim=1).tolist()[:counted]
            gold = [e.label_index for e in examples[:counted]]
            metrics.accuracy = sum(p == g for p, g in zip(predictions, gold, strict=True)) / max(
                len(gold), 1
            )
            metrics.predictions = predictions
    finally:
        model.train(was_training)
    return metrics


def evaluate_sharded(
    model: nn.Module, examples: Sequence[Example], procs: Processes, **options: Any
) -> Metrics:
    """:func:`evaluate` with each process taking its share of ``examples``; sums and predictions are
    gathered, so every process returns the metrics of the whole set. ``options`` are
    :func:`evaluate`'s."""
    indices, own = distributed.even_shard(len(examples), procs)
    part = evaluate(model, [examples[i] for i in indices], counted=own, **options)
    if not procs.distributed:
        return part
    loss_sum, tokens, correct = procs.sum(
        [part.loss * part.tokens, part.tokens, (part.accuracy or 0.0) * own]
    )
    loss = loss_sum / max(tokens, 1)
    metrics = Metrics(loss, math.exp(min(loss, 50)), int(tokens))
    if part.predictions is not None:
        metrics.accuracy = correct / len(examples)
        predictions = [0] * len(examples)
        for rank_indices, rank_predictions in procs.gather((indices, part.predictions)):
            # padding is past the predictions
            for i, p in zip(rank_indices, rank_predictions, strict=False):
                predictions[i] = p
        metrics.predictions = predictions
    return metrics


def _progress(batches: list[Sequence[int]], show: bool, total: int, size: int) -> Any:
    """The batches, counted on a progress bar in examples when ``show`` and stderr is a terminal."""
    import sys

    if not (show and sys.stderr.isatty()):
        return batches
    from tqdm.auto import tqdm

    return tqdm(
        batches,
        total=len(batches),
        desc=f"evaluating {total} examples",
        unit="batch",
        leave=False,
        unit_scale=False,
        postfix={"batch": size},
    )


def _losses_and_scores(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    answer_at: torch.Tensor | None,
    tokens: list[int] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-row summed loss and target count (:func:`row_losses`), and, when ``answer_at`` (each
    row's last prompt position) is given, the log-probabilities of ``tokens`` there: ``(B, K)``. One
    forward pass."""
    if answer_at is None or tokens is None:
        return (*row_losses(model, inputs, labels), None)
    front = _positions_in_front(model)
    # the LM head runs on every position: read both from the whole sequence's logits
    if front is None:
        logits = model(**inputs).logits  # (B, front + T, V)
        losses, counts = _row_token_loss(logits, labels)
        at = answer_at.to(logits.device) + logits.shape[1] - labels.shape[1]
    else:  # the LM head only where a target is predicted, and where each row's answer starts
        predicting = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (P,)
        positions, where = torch.unique(
            torch.cat([predicting, answer_at.to(predicting.device)]), return_inverse=True
        )  # (U,)
        logits = model(**inputs, logits_to_keep=positions + front).logits  # (B, U, V)
        losses, counts = _row_cross_entropy(
            logits[:, where[: len(predicting)]], labels[:, predicting + 1]
        )
        at = where[len(predicting) :].to(logits.device)
    picked = logits[torch.arange(len(answer_at), device=logits.device), at]  # (B, V)
    return losses, counts, torch.log_softmax(picked.float(), dim=-1)[:, tokens].cpu()


@torch.no_grad()
def classification_scores(
    model: nn.Module,
    prompts: Sequence[list[int]],
    candidate_ids: list[list[int]],
    *,
    pad_id: int,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager[Any] | None = None,
) -> torch.Tensor:
    """Log-probability of each candidate's tokens after each prompt: a ``(len(prompts), K)`` tensor.

    When every candidate is one token, one forward pass of the prompt scores them all; otherwise
    each prompt is run once per candidate with the candidate appended. Prompts are batched by
    length.
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    scores = _scores(
        [prompts[i] for i in order], candidate_ids, pad_id, batch_size, device, autocast, model
    )
    result = torch.empty_like(scores)
    result[torch.tensor(order, dtype=torch.long)] = scores
    return result


def _scores(
    prompts: Sequence[list[int]],
    candidate_ids: list[list[int]],
    pad_id: int,
    batch_size: int,
    device: torch.device | str,
    autocast: contextlib.AbstractContextManager[Any] | None,
    model: nn.Module,
) -> torch.Tensor:
    if all(len(c) == 1 for c in candidate_ids):
        return _single_token_scores(
            model, prompts, [c[0] for c in candidate_ids], pad_id, batch_size, device, autocast
        )
    if (
        not _uses_prompt(model)
        and _positions_in_front(model) == 0
        and forward_accepts(_inner(model), "position_ids")
    ):
        with autocast or contextlib.nullcontext():
            return torch.cat(
                [
                    _cached_scores(model, batch, candidate_ids, pad_id, device)
                    for batch in _batches(prompts, batch_size)
                ]
            )
    rows = []
    for cand in candidate_ids:
        seqs = [Example(list(p) + cand, [IGNORE_INDEX] * len(p) + cand) for p in prompts]
        scores = []
        for batch in _batches(seqs, batch_size):
            inputs = {key: v.to(device) for key, v in collate(batch, pad_id).items()}
            labels = inputs.pop("labels")
            # the LM head on the candidate's positions only
            with autocast or contextlib.nullcontext():
                losses, _ = row_losses(model, inputs, labels)
            scores.append(-losses.float().cpu())  # summed log-probability of the candidate's tokens
        rows.append(torch.cat(scores))
    return torch.stack(rows, dim=1)


def _uses_prompt(model: nn.Module) -> bool:
    """Whether a prompt adapter is active. The cached scoring serves none of them: prompt tuning and
    p-tuning put tokens in front of the row, and prefix tuning's forward drops position_ids (as
    PEFT's does), so left-padded rows would count their padding as positions, and a passed cache
    skips the prefix's attention mask."""
    inner = _unwrapped(model)
    return isinstance(inner, PeftModel) and inner.uses_prompt_adapter


def _inner(model: nn.Module) -> nn.Module:
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _cached_scores(
    model: nn.Module,
    prompts: Sequence[list[int]],
    candidate_ids: list[list[int]],
    pad_id: int,
    device: torch.device | str,
) -> torch.Tensor:
    """Multi-token label words from one pass of the prompts: ``(B, K)`` summed log-probabilities.

    The prompts are left-padded so that they end together; each candidate then continues from their
    key/value cache (positions counted over real tokens, as ``generate`` counts them), and the cache
    goes back to the prompts' before the next candidate.
    """
    width = max(len(p) for p in prompts)
    # (B, P)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    # The last position as an index, not logits_to_keep=1: that slices the hidden states without
    # copying, and PyTorch's CPU linear on a strided (B, 1, C) input copies the whole LM head B
    # times (over a second per batch in bf16 for SmolLM2's 49152 x 576 head; the gathered copy takes
    # milliseconds)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=torch.tensor([width - 1], device=device),
    )
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V): what follows each prompt
    cache = output_cache(out)
    saved = [(layer.keys, layer.values) for layer in cache.layers]
    keyword = cache_keyword(_inner(model))
    scores = []
    for cand in candidate_ids:
        score = first[:, cand[0]]  # (B,)
        if len(cand) > 1:
            rest = torch.tensor(cand[:-1], device=device).expand(len(prompts), -1)  # (B, L-1)
            # (B, L-1)
            positions = mask.sum(1, keepdim=True) + torch.arange(len(cand) - 1, device=device)
            logits = model(
                input_ids=rest,
                attention_mask=torch.cat([mask, torch.ones_like(rest)], dim=1),
                # (B, L-1, V)
                position_ids=positions,
                use_cache=True,
                **{keyword: cache},
            ).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            score = score + logprobs.gather(
                -1, torch.tensor(cand[1:], device=device).expand(len(prompts), -1).unsqueeze(-1)
            ).squeeze(-1).sum(dim=1)
            # back to the prompts' cache
            for layer, (keys, values) in zip(cache.layers, saved, strict=True):
                layer.keys, layer.values = keys, values
        scores.append(score.cpu())
    return torch.stack(scores, dim=1)


def _single_token_scores(
    model: nn.Module,
    prompts: Sequence[list[int]],
    token_ids: list[int],
    pad_id: int,
    batch_size: int,
    device: torch.device | str,
    autocast: contextlib.AbstractContextManager[Any] | None,
) -> torch.Tensor:
    out = []
    for batch in _batches(prompts, batch_size):
        inputs = collate([Example(list(p), list(p)) for p in batch], pad_id)
        last = inputs["attention_mask"].sum(dim=1) - 1  # (B,) each row's last prompt position
        kwargs: dict[str, Any] = {}
        front = _positions_in_front(model)
        if front is not None:
            # LM head on these positions only
            positions, column = torch.unique(last, return_inverse=True)
            kwargs["logits_to_keep"] = (positions + front).to(device)
        else:
            column = last
        with autocast or contextlib.nullcontext():
            logits = model(
                input_ids=inputs["input_ids"].to(device),
                attention_mask=inputs["attention_mask"].to(device),
                **kwargs,
            ).logits
        if not kwargs:
            logits = logits[:, -inputs["input_ids"].shape[1] :]  # drop virtual-token positions
        picked = logits[torch.arange(len(batch)), column.to(logits.device)]  # (B, V)
        out.append(torch.log_softmax(picked.float(), dim=-1)[:, token_ids].cpu())
    return torch.cat(out)
