"""OpenAI request bodies read into typed values, every problem reported at once (HTTP 400)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .engine import Sampling

__all__ = ["BadRequest", "Completion", "read_chat", "read_completion"]

MAX_N = 8
"""Choices per request: each is a row of the batch, so a large ``n`` would starve other clients."""


class BadRequest(Exception):
    """A request the server refuses, with OpenAI's error fields."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.kind, self.param, self.code = (
            message,
            status,
            kind,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class Completion:
    """What a completion or chat request asks for, read and checked."""

    model: str
    prompts: list[str | list[int]]
    """One prompt per entry (text or token ids); a chat request has one, its messages rendered."""
    sampling: Sampling
    n: int
    stream: bool
    include_usage: bool


def _number(
    body: dict[str, Any], name: str, default: float, low: float, high: float, problems: list[str]
) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        problems.append(f"{name}={value!r} must be a number from {low} to {high}")
        return default
    return float(value)


def _integer(
    body: dict[str, Any], name: str, default: int | None, low: int, high: int, problems: list[str]
) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        problems.append(f"{name}={value!r} must be a whole number from {low} to {high}")
        return default
    return value


def _stop(body: dict[str, Any], problems: list[str]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        problems.append(f"stop={stop!r} must be a string or a list of up to 4 strings")
        return ()
    return tuple(s for s in stops if s)


def _common(
    body: Any, problems: list[str], max_tokens_names: tuple[str, ...]
) -> tuple[str, Sampling, int, bool, bool]:
    if not isinstance(body.get("model"), str) or not body["model"]:
        problems.append(
            "model is required: the base model's name or an adapter's (GET /v1/models lists them)"
        )
    max_tokens = next((body[k] for k in max_tokens_names if body.get(k) is not None), None)
    sampling = Sampling(
        max_tokens=_integer({"max_tokens": max_tokens}, "max_tokens", 16, 1, 1 << 20, problems)
        or 16,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0, problems),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, problems) or 1.0,
        stop=_stop(body, problems),
        seed=_integer(body, "seed", None, -(1 << 63), (1 << 63) - 1, problems),
        ignore_eos=body.get("ignore_eos") is True,
        min_tokens=_integer(body, "min_tokens", 0, 0, 1 << 20, problems) or 0,
    )
    n = _integer(body, "n", 1, 1, MAX_N, problems) or 1
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        problems.append(f"stream={stream!r} must be true or false")
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    return str(body.get("model")), sampling, n, stream is True, include_usage


def _check(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def read_completion(body: Any) -> Completion:
    """``POST /v1/completions``: ``prompt`` is a string, a list of strings, token ids or lists of
    them."""
    body, problems = _check(body), list[str]()
    model, sampling, n, stream, include_usage = _common(body, problems, ("max_tokens",))
    prompt = body.get("prompt")
    prompts: list[str | list[int]]
    if isinstance(prompt, str):
        prompts = [prompt]
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt)
    ):
        prompts = [list(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or _ids(p) for p in prompt):
        prompts = list(prompt)
    else:
        problems.append("prompt is required: a string, a list of strings, or token ids")
        prompts = []
    if problems:
        raise BadRequest("; ".join(problems))
    return Completion(model, prompts, sampling, n, stream, include_usage)


def _ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def read_chat(body: Any) -> tuple[Completion, list[dict[str, Any]]]:
    """``POST /v1/chat/completions``: the messages, to be rendered by the tokenizer's chat template."""
    body, problems = _check(body), list[str]()
    model, sampling, n, stream, include_usage = _common(
        body, problems, ("max_completion_tokens", "max_tokens")
    )
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), (str, list))
            for m in messages
        )
    ):
        problems.append("messages is required: a list of {role, content} objects")
        messages = []
    if problems:
        raise BadRequest("; ".join(problems))
    return Completion(model, [], sampling, n, stream, include_usage), [_plain(m) for m in messages]


def _plain(message: dict[str, Any]) -> dict[str, Any]:
    """A message whose content is a list of parts (OpenAI's newer form) as one text."""
    content = message["content"]
    if isinstance(content, list):
        content = "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return {"role": message["role"], "content": content}
