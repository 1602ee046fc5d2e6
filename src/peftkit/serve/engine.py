"""The decoding engine: many requests, each with its own adapter, decoded together (continuous
batching).

One thread owns the model. Each step it admits waiting requests (a request's prompt is run alone,
with its adapter: its *prefill*), then advances every running request by one token in as few forward
passes as it can. Rows of LoRA adapters, of the base model and of prompt methods share one pass
through peftkit's mixed batch (each row through its own adapter, as if alone); a prompt method needs
no adapter after the prefill, since its virtual tokens or prefix are then in the row's key/value
cache. Adapters that cannot share a batch (IA3, DoRA, LoRA on embeddings) decode in a pass of their
own.

Why not transformers' continuous-batching engine: it schedules paged attention over one set of
weights and has no per-request adapter; peftkit's mixed batch needs the rows in an ordinary batched
forward. Rows join and leave a running batch by left-padding and slicing its key/value cache, as
``generate`` pads a batch.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TaskType
from ..errors import AdapterNotFoundError, PeftkitError
from ..surgery import rows_through_adapters, set_active
from ..tuners.prompt.model import cache_keyword, forward_accepts, output_cache, prepare_inputs
from ..tuners.rows import BASE_ROW
from .registry import AdapterRegistry, Kind

__all__ = ["Engine", "Event", "QueueFull", "Request", "Sampling"]


class QueueFull(PeftkitError):
    """More requests wait than the server accepts; the client should retry later."""


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens (OpenAI's parameters)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    """Go on past the end-of-text token (vLLM's option)."""
    min_tokens: int = 0
    """Tokens to generate before the end-of-text token may be chosen (vLLM's option, transformers'
    ``min_new_tokens``): a benchmark's fixed length."""


@dataclass(frozen=True)
class Event:
    """What the engine tells a request: new text, or the end (``finish_reason`` set), or an error."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    status: int = 500
    """The HTTP status an error maps to: 404 for an adapter no longer served, 400 for one that
    cannot run."""


@dataclass(eq=False)
class Request:
    """One sequence being generated. ``emit`` is called from the engine thread."""

    prompt_ids: list[int]
    adapter: str | None
    sampling: Sampling
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of ``text`` already emitted
    generator: torch.Generator = field(default_factory=torch.Generator)

    def cancel(self) -> None:
        """Free the request's row at the next step (a client that went away)."""
        self.cancelled.set()


@dataclass(eq=False)
class Lane:
    """Rows decoded in one forward pass: a batched key/value cache and its attention mask."""

    key: str
    rows: list[Request] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)  # the adapter each row goes through in the pass
    cache: Any = None
    mask: torch.Tensor | None = None  # (B, L): 1 for real positions, 0 for left padding


class Engine:
    """Continuous batching over a model whose adapters an :class:`AdapterRegistry` holds.

    Args:
        registry: the model, its tokenizer and the adapters.
        max_batch: rows decoded at once; more requests wait.
        max_waiting: requests allowed to wait; one more gets :class:`QueueFull`.
    """

    def __init__(
        self, registry: AdapterRegistry, max_batch: int = 8, max_waiting: int = 64
    ) -> None:
        self.registry, self.max_batch, self.max_waiting = registry, max_batch, max_waiting
        self.waiting: queue.Queue[Request] = queue.Queue()
        self.lanes: dict[str, Lane] = {}
        # model changes, run between steps
        self.jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self.peak_rows = 0  # the most rows decoded in one pass (how much batching happened)
        self.cancelled = 0  # requests whose client went away before the end
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----- the outside: called from the server's threads
    # -----------------------------------------------

    def submit_all(self, requests: list[Request]) -> None:
        """Queue all of ``requests`` or none: :class:`QueueFull` when they would not fit in the
        queue."""
        if self._stop.is_set():
            raise QueueFull("the server is shutting down")
        if self.waiting.qsize() + len(requests) > self.max_waiting:
            raise QueueFull(
                f"{self.waiting.qsize()} requests are waiting (the limit is {self.max_waiting})"
            )
        for request in requests:
            if request.sampling.seed is not None:
                request.generator.manual_seed(request.sampling.seed)
            else:
                request.generator.seed()
            self.waiting.put(request)
        self._wake.set()

    def call(self, job: Callable[[], Any]) -> Any:
        """Run ``job`` on the engine thread between steps (it owns the model) and return its result."""
        done: queue.Queue[tuple[bool, Any]] = queue.Queue()

        def run() -> None:
            try:
                done.put((True, job()))
            except Exception as err:
                done.put((False, err))

        self.jobs.put(run)
        self._wake.set()
        ok, value = done.get()
        if not ok:
            raise value
        return value

    @property
    def running(self) -> int:
        return sum(len(lane.rows) for lane in self.lanes.values())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="peftkit-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    # ----- the engine thread
    # -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._run_jobs()
            if not self.running and self.waiting.empty():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                self.step()
            except Exception as err:
                self._fail_all(f"{type(err).__name__}: {err}")

    def _run_jobs(self) -> None:
        while True:
            try:
                self.jobs.get_nowait()()
            except queue.Empty:
                return

    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting requests, then advance every running one by a token."""
        for lane in self.lanes.values():
            self._drop(lane, [r for r in lane.rows if r.cancelled.is_set()])
        while self.running < self.max_batch and not self.waiting.empty():
            request = self.waiting.get_nowait()
            if not request.cancelled.is_set():
                self._admit(request)
        for lane in list(self.lanes.values()):
            if lane.rows:
                self._decode(lane)

    def _admit(self, request: Request) -> None:
        try:
            kind = self.registry.acquire(request.adapter, in_use=self.adapters_in_use())
            logits, cache, mask = self._prefill(request, kind)
        except Exception as err:
            status = (
                404
                if isinstance(err, AdapterNotFoundError)
                else 400
                if isinstance(err, PeftkitError)
                else 500
            )
            request.emit(
                Event(
                    error=str(err) if status != 500 else f"{type(err).__name__}: {err}",
                    status=status,
                )
            )
            return
        if self._advance(request, logits[0]):
            key = request.adapter if kind is Kind.SOLO else "mixed"
            route = request.adapter if kind is Kind.MIXED else BASE_ROW
            self._join(
                self.lanes.setdefault(str(key), Lane(str(key))), request, str(route), cache, mask
            )

    def adapters_in_use(self) -> set[str]:
        return {
            r.adapter for lane in self.lanes.values() for r in lane.rows if r.adapter is not None
        }

    def _prefill(self, request: Request, kind: Kind) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """The request's prompt alone through its adapter: last logits ``(1, V)``, its cache and
        mask."""
        model = self.registry.base_model
        ids = torch.tensor([request.prompt_ids], device=self.registry.device)  # (1, T)
        inputs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "use_cache": True,
        }
        if kind is Kind.PROMPT:
            module, config = self.registry.prompt(str(request.adapter))
            inputs = prepare_inputs(module, model, inputs, TaskType.CAUSAL_LM, config)
        with self._routing(
            kind, [str(request.adapter) if kind is Kind.MIXED else BASE_ROW], request.adapter
        ):
            out = model(**inputs, **_last_logits_only(model))
        cache = output_cache(out)
        # virtual tokens too
        mask = torch.ones(1, _cache_length(cache), dtype=torch.long, device=ids.device)
        return out.logits[:, -1].float(), cache, mask

    def _decode(self, lane: Lane) -> None:
        model, rows = self.registry.base_model, lane.rows
        assert lane.mask is not None
        ids = torch.tensor([[r.output_ids[-1]] for r in rows], device=lane.mask.device)  # (B, 1)
        positions = lane.mask.sum(dim=1, keepdim=True)  # (B, 1): each row's real length so far
        mask = torch.cat([lane.mask, lane.mask.new_ones(len(rows), 1)], dim=1)  # (B, L+1)
        kind = Kind.SOLO if lane.key != "mixed" else Kind.MIXED
        with self._routing(kind, lane.routes, lane.key):
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{cache_keyword(model): lane.cache},
                **_last_logits_only(model),
            )
        lane.cache, lane.mask = output_cache(out), mask
        self.peak_rows = max(self.peak_rows, len(rows))
        logits = out.logits[:, -1].float()  # (B, V)
        done = [r for i, r in enumerate(rows) if not self._advance(r, logits[i])]
        self._drop(lane, done)

    @contextlib.contextmanager
    def _routing(self, kind: Kind, routes: list[str], adapter: str | None) -> Iterator[None]:
        """Which adapter each row goes through: per row in a mixed pass, one adapter in a solo pass."""
        model = self.registry.base_model
        set_active(model, [str(adapter)] if kind is Kind.SOLO else [])
        with (
            rows_through_adapters(model, routes) if kind is Kind.MIXED else contextlib.nullcontext()
        ):
            yield

    # ----- tokens
    # ------------------------------------------------------------------------------------

    def _advance(self, request: Request, logits: torch.Tensor) -> bool:
        """Pick the next token for ``request`` and emit its text; False when the request is
        finished."""
        tokenizer = self.registry.tokenizer
        if (
            len(request.output_ids) < request.sampling.min_tokens
            and tokenizer.eos_token_id is not None
        ):
            logits[tokenizer.eos_token_id] = -math.inf  # as transformers' min_new_tokens does
        token = _sample(logits, request.sampling, request.generator)
        finish = None
        if token == tokenizer.eos_token_id and not request.sampling.ignore_eos:
            finish = "stop"
        else:
            request.output_ids.append(token)
            request.text = tokenizer.decode(request.output_ids, skip_special_tokens=True)
            finish = _stop_at(request)
        if finish is None and len(request.output_ids) >= request.sampling.max_tokens:
            finish = "length"
        _emit_text(request, final=finish is not None)
        if finish is not None:
            request.emit(
                Event(
                    finish_reason=finish,
                    prompt_tokens=len(request.prompt_ids),
                    completion_tokens=len(request.output_ids),
                )
            )
        return finish is None

    # ----- rows joining and leaving a lane
    # ----------------------------------------------------------

    def _join(
        self, lane: Lane, request: Request, route: str, cache: Any, mask: torch.Tensor
    ) -> None:
        if not lane.rows:
            lane.rows, lane.routes, lane.cache, lane.mask = [request], [route], cache, mask
            return
        assert lane.mask is not None
        length = max(lane.mask.shape[1], mask.shape[1])
        lane.cache = _concat_caches(lane.cache, lane.mask.shape[1], cache, mask.shape[1], length)
        lane.mask = torch.cat(
            [
                F.pad(lane.mask, (length - lane.mask.shape[1], 0)),
                F.pad(mask, (length - mask.shape[1], 0)),
            ],
            dim=0,
        )  # (B+1, L)
        lane.rows.append(request)
        lane.routes.append(route)

    def _drop(self, lane: Lane, gone: list[Request]) -> None:
        if not gone:
            return
        keep = [i for i, r in enumerate(lane.rows) if r not in gone]
        for request in gone:
            if request.cancelled.is_set():
                self.cancelled += 1
                request.emit(
                    Event(
                        finish_reason="cancelled",
                        prompt_tokens=len(request.prompt_ids),
                        completion_tokens=len(request.output_ids),
                    )
                )
        if not keep:
            self.lanes.pop(lane.key, None)
            return
        assert lane.mask is not None
        index = torch.tensor(keep, device=lane.mask.device)
        lane.rows = [lane.rows[i] for i in keep]
        lane.routes = [lane.routes[i] for i in keep]
        mask = lane.mask.index_select(0, index)
        start = int((mask.sum(dim=0) > 0).nonzero()[0])  # columns only padding now: cut them
        lane.mask = mask[:, start:]
        _select_cache(lane.cache, index, start)

    def _fail_all(self, message: str) -> None:
        for lane in self.lanes.values():
            for request in lane.rows:
                request.emit(Event(error=message))
        self.lanes.clear()


# ----- helpers on tensors and caches
# ----------------------------------------------------------------


def _sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """Greedy at temperature 0; otherwise a draw from the tempered, top-p-truncated distribution."""
    if sampling.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / sampling.temperature, dim=-1)  # (V,)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        # keeps the token that crosses top_p
        outside = sorted_probs.cumsum(0) - sorted_probs > sampling.top_p
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def _stop_at(request: Request) -> str | None:
    """Cut ``request.text`` at the first stop string; ``"stop"`` when one was found."""
    hits = [i for i in (request.text.find(s) for s in request.sampling.stop if s) if i >= 0]
    if not hits:
        return None
    request.text = request.text[: min(hits)]
    return "stop"


def _emit_text(request: Request, final: bool) -> None:
    """Send what is new in ``request.text``, holding back what may still become a stop string or is
    an unfinished multi-byte character (decoded as U+FFFD until its last byte arrives)."""
    text, end = request.text, len(request.text)
    if not final:
        while end > request.sent and text[end - 1] == "\ufffd":
            end -= 1
        end -= max(
            (
                k
                for s in request.sampling.stop
                for k in range(1, len(s))
                if text[:end].endswith(s[:k])
            ),
            default=0,
        )
    if end > request.sent:
        request.emit(Event(text=text[request.sent : end]))
        request.sent = end


def _last_logits_only(model: nn.Module) -> dict[str, int]:
    """Ask for the last position's logits only where the model can (a prompt's full logits are
    large)."""
    return {"logits_to_keep": 1} if forward_accepts(model, "logits_to_keep") else {}


def _cache_length(cache: Any) -> int:
    return int(cache.layers[0].keys.shape[-2])


def _concat_caches(left: Any, left_len: int, right: Any, right_len: int, length: int) -> Any:
    """``left``'s rows then ``right``'s, each left-padded to ``length`` positions (in ``left``, in
    place)."""
    for a, b in zip(left.layers, right.layers, strict=True):
        a.keys = torch.cat(
            [
                F.pad(a.keys, (0, 0, length - left_len, 0)),
                F.pad(b.keys, (0, 0, length - right_len, 0)),
            ],
            dim=0,
        )  # (B+1, H, L, hd)
        a.values = torch.cat(
            [
                F.pad(a.values, (0, 0, length - left_len, 0)),
                F.pad(b.values, (0, 0, length - right_len, 0)),
            ],
            dim=0,
        )
    return left


def _select_cache(cache: Any, index: torch.Tensor, start: int) -> None:
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, index)[:, :, start:]
        layer.values = layer.values.index_select(0, index)[:, :, start:]
