"""The HTTP side: OpenAI's routes (and vLLM's adapter routes) on Starlette, over an :class:`Engine`."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request as HttpRequest
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from ..errors import AdapterNotFoundError, PeftkitError
from .engine import Engine, Event, QueueFull, Request, Sampling
from .requests import BadRequest, Completion, read_chat, read_completion

__all__ = ["create_app"]

OPEN_PATHS = ("/health", "/")
"""Routes without the API key: the health check, and the playground page (it asks for the key
itself)."""


def _error(err: BadRequest) -> JSONResponse:
    headers = {"Retry-After": "1"} if err.status == 429 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


class _ApiKey(BaseHTTPMiddleware):
    def __init__(self, app: Any, key: str) -> None:
        super().__init__(app)
        self.key = key

    async def dispatch(
        self, request: HttpRequest, call_next: Callable[[HttpRequest], Awaitable[Response]]
    ) -> Response:
        if request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), self.key.encode()):
                return _error(
                    BadRequest(
                        "Incorrect API key provided: pass it as 'Authorization: Bearer <key>'",
                        401,
                        "authentication_error",
                        code="invalid_api_key",
                    )
                )
        return await call_next(request)


class Api:
    """The routes' state: the engine and the tokenizer that turns text into ids."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.registry = engine.registry
        self.context = int(
            getattr(getattr(self.registry.base_model, "config", None), "max_position_embeddings", 0)
            or 1 << 30
        )

    # ----- models and adapters --------------------------------------------------------------------

    async def health(self, request: HttpRequest) -> Response:
        return JSONResponse(
            {"status": "ok", "running": self.engine.running, "waiting": self.engine.waiting.qsize()}
        )

    async def models(self, request: HttpRequest) -> Response:
        base = self.registry.model_name
        created = int(time.time())
        data = [
            {
                "id": base,
                "object": "model",
                "created": created,
                "owned_by": "peftkit",
                "root": base,
                "parent": None,
            }
        ]
        data += [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "peftkit",
                "root": path,
                # the engine may change it
                "parent": base,
            }
            for name, path in list(self.registry.paths.items())
        ]
        return JSONResponse({"object": "list", "data": data})

    async def load_adapter(self, request: HttpRequest) -> Response:
        body = await _json(request)
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise BadRequest("lora_name and lora_path are required strings")
        await self._on_engine(lambda: self.registry.register(name, path, load=True))
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_adapter(self, request: HttpRequest) -> Response:
        body = await _json(request)
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            raise BadRequest("lora_name is required")
        await self._on_engine(lambda: self.registry.unregister(name, self.engine.adapters_in_use()))
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def _on_engine(self, job: Callable[[], Any]) -> Any:
        try:
            return await asyncio.to_thread(self.engine.call, job)
        except AdapterNotFoundError as err:
            raise BadRequest(str(err), 404, code="model_not_found") from None
        except (PeftkitError, OSError) as err:
            raise BadRequest(str(err)) from None

    # ----- generation
    # --------------------------------------------------------------------------------

    async def completions(self, request: HttpRequest) -> Response:
        completion = read_completion(await _json(request))
        prompts = [self._ids(p) for p in completion.prompts]
        return await self._generate(request, completion, prompts, chat=False)

    async def chat(self, request: HttpRequest) -> Response:
        completion, messages = read_chat(await _json(request))
        tokenizer = self.registry.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise BadRequest(
                f"{self.registry.model_name}'s tokenizer has no chat template; use /v1/completions"
            )
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        return await self._generate(request, completion, [list(ids)], chat=True)

    def _ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        return list(self.registry.tokenizer(prompt)["input_ids"])

    def _adapter(self, model: str) -> str | None:
        if model == self.registry.model_name:
            return None
        if model not in self.registry.paths:
            served = ", ".join([self.registry.model_name, *self.registry.paths])
            raise BadRequest(
                f"The model `{model}` does not exist. Served: {served}",
                404,
                param="model",
                code="model_not_found",
            )
        return model

    async def _generate(
        self, http: HttpRequest, completion: Completion, prompts: list[list[int]], chat: bool
    ) -> Response:
        adapter = self._adapter(completion.model)
        vocab = len(self.registry.tokenizer)
        for ids in prompts:
            if not ids:
                raise BadRequest("the prompt is empty", param="prompt")
            if len(ids) + completion.sampling.max_tokens > self.context:
                raise BadRequest(
                    f"This model's maximum context length is {self.context} tokens. However, you "
                    f"requested {len(ids) + completion.sampling.max_tokens} tokens ({len(ids)} in the "
                    f"prompt, {completion.sampling.max_tokens} for the completion). Please reduce the "
                    "length of the prompt or max_tokens.",
                    param="messages" if chat else "prompt",
                )
            if any(not 0 <= t < vocab for t in ids):
                raise BadRequest(f"token ids must be from 0 to {vocab - 1}", param="prompt")
        run = _Run(self.engine, completion, prompts, adapter, asyncio.get_running_loop())
        try:
            run.submit()
        except QueueFull as err:
            raise BadRequest(
                f"The server is busy: {err}. Retry after a moment.",
                429,
                "rate_limit_exceeded",
                code="rate_limit_exceeded",
            ) from None
        kind = "chat.completion" if chat else "text_completion"
        if completion.stream:
            return _RunStream(run, run.stream(kind))
        try:
            body = await run.collect(kind, http)
        finally:
            run.cancel()
        if run.error:
            kind = "server_error" if run.status == 500 else "invalid_request_error"
            raise BadRequest(run.error, run.status, kind)
        return JSONResponse(body)


class _Run:
    """One HTTP request's choices: one engine request per choice and prompt, their events on one
    queue."""

    def __init__(
        self,
        engine: Engine,
        completion: Completion,
        prompts: list[list[int]],
        adapter: str | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.engine, self.completion, self.loop = engine, completion, loop
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        seed = completion.sampling.seed
        self.requests = [
            Request(
                ids,
                adapter,
                completion.sampling if seed is None else _with_seed(completion, seed + i),
                self._emitter(i),
            )
            for i, ids in enumerate(ids for ids in prompts for _ in range(completion.n))
        ]
        self.texts = [""] * len(self.requests)
        self.finish: list[str | None] = [None] * len(self.requests)
        self.usage = [(0, 0)] * len(self.requests)
        self.error: str | None = None
        self.status = 500

    def _emitter(self, index: int) -> Callable[[Event], None]:
        def emit(event: Event) -> None:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (index, event))

        return emit

    def submit(self) -> None:
        self.engine.submit_all(self.requests)

    def cancel(self) -> None:
        for request in self.requests:
            request.cancel()

    async def events_until_done(self) -> AsyncIterator[tuple[int, Event]]:
        pending = len(self.requests)
        while pending:
            index, event = await self.events.get()
            if event.error is not None:
                self.error, self.status = event.error, event.status
                pending -= 1
            elif event.finish_reason is not None:
                self.finish[index] = (
                    "stop" if event.finish_reason == "cancelled" else event.finish_reason
                )
                self.usage[index] = (event.prompt_tokens, event.completion_tokens)
                pending -= 1
            else:
                self.texts[index] += event.text
            yield index, event

    async def collect(self, kind: str, http: HttpRequest) -> dict[str, Any]:
        events = self.events_until_done()
        while True:
            task = asyncio.ensure_future(anext(events))
            while not task.done():
                await asyncio.wait([task], timeout=0.25)
                if not task.done() and await http.is_disconnected():
                    task.cancel()
                    self.cancel()
                    return {}
            try:
                task.result()
            except StopAsyncIteration:
                break
        choices = [self._choice(i, kind, final=True) for i in range(len(self.requests))]
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.completion.model,
            "choices": choices,
            "usage": self._usage(),
        }

    def _usage(self) -> dict[str, int]:
        prompt = sum(p for i, (p, _) in enumerate(self.usage) if i % self.completion.n == 0)
        done = sum(c for _, c in self.usage)
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    def _choice(
        self, index: int, kind: str, final: bool, text: str | None = None
    ) -> dict[str, Any]:
        text = self.texts[index] if text is None else text
        finish = self.finish[index] if final else None
        if kind == "text_completion":
            return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        if final and text is not None and kind == "chat.completion":
            return {
                "index": index,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
        return {
            "index": index,
            "delta": {"content": text} if text else {},
            "logprobs": None,
            "finish_reason": finish,
        }

    async def stream(self, kind: str) -> AsyncIterator[str]:
        chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else kind
        base = {
            "id": self.id,
            "object": chunk_kind,
            "created": self.created,
            "model": self.completion.model,
        }
        if kind == "chat.completion":  # the role first, as OpenAI sends it
            for i in range(len(self.requests)):
                yield _sse(
                    base
                    | {
                        "choices": [
                            {
                                "index": i,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ]
                    }
                )
        async for index, event in self.events_until_done():
            if event.error is not None:
                yield _sse(
                    {
                        "error": {
                            "message": event.error,
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                )
                continue
            final = event.finish_reason is not None
            choice = self._choice(index, chunk_kind, final, text="" if final else event.text)
            yield _sse(base | {"choices": [choice]})
        if self.completion.include_usage:
            yield _sse(base | {"choices": [], "usage": self._usage()})
        yield "data: [DONE]\n\n"


class _RunStream(StreamingResponse):
    """Server-sent events that free the run's rows however the response ends: finished, or stopped
    because the client went away. The response, not the event generator, does it: a generator
    stopped while Starlette awaits ``send`` is only closed when it is garbage-collected, which can
    be after the whole answer."""

    def __init__(self, run: _Run, chunks: AsyncIterator[str]) -> None:
        super().__init__(chunks, media_type="text/event-stream")
        self.run = run

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.cancel()


def _with_seed(completion: Completion, seed: int) -> Sampling:
    return replace(completion.sampling, seed=seed)


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def _json(request: HttpRequest) -> Any:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(f"the request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(body).__name__}")
    return body


async def _bad_request(request: HttpRequest, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    return _error(exc)


def _page() -> str:
    return resources.files("peftkit.serve").joinpath("playground.html").read_text(encoding="utf-8")


def create_app(engine: Engine, api_key: str | None = None) -> Starlette:
    """The ASGI app serving ``engine``; ``api_key`` (when given) is required on every route but
    /health and /."""
    api = Api(engine)
    page = _page()

    async def index(request: HttpRequest) -> Response:
        return HTMLResponse(page)

    routes = [
        Route("/", index),
        Route("/health", api.health),
        Route("/v1/models", api.models),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/load_lora_adapter", api.load_adapter, methods=["POST"]),
        Route("/v1/unload_lora_adapter", api.unload_adapter, methods=["POST"]),
    ]
    middleware = [Middleware(_ApiKey, key=api_key)] if api_key else []
    return Starlette(
        routes=routes, middleware=middleware, exception_handlers={BadRequest: _bad_request}
    )
