"""The engine's parts on their own: sampling, text release, caches joining and leaving, adapter
kinds."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from peftkit.serve.engine import (
    Request,
    Sampling,
    _concat_caches,
    _emit_text,
    _sample,
    _select_cache,
    _stop_at,
)
from peftkit.serve.registry import Kind

from .conftest import Models, make_engine


def test_sampling_greedy_top_p_and_seeds() -> None:
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9])
    generator = torch.Generator()
    assert _sample(logits, Sampling(temperature=0), generator) == 1
    assert {_sample(logits, Sampling(temperature=1, top_p=0.01), generator) for _ in range(20)} == {
        1
    }
    draws = {_sample(logits, Sampling(temperature=1, top_p=0.9), generator) for _ in range(200)}
    assert draws == {1, 3}  # token 2 lies outside the top 0.9 of the mass, token 0 too
    first = [
        _sample(logits, Sampling(temperature=2), torch.Generator().manual_seed(7)) for _ in range(5)
    ]
    assert first == [
        _sample(logits, Sampling(temperature=2), torch.Generator().manual_seed(7)) for _ in range(5)
    ]


def test_text_is_held_back_while_it_may_become_a_stop_string() -> None:
    sent: list[str] = []
    request = Request([1], None, Sampling(stop=("END",)), lambda e: sent.append(e.text))
    request.text = "abcE"
    _emit_text(request, final=False)
    assert sent == ["abc"]  # "E" could still be the start of "END"
    request.text = "abcEN\ufffd"  # and an unfinished character is never sent
    _emit_text(request, final=False)
    assert sent == ["abc"]
    request.text = "abcENx"
    _emit_text(request, final=False)
    assert sent == ["abc", "ENx"]
    request.text = "abcENxEND!"
    assert _stop_at(request) == "stop" and request.text == "abcENx"
    _emit_text(request, final=True)
    assert "".join(sent) == "abcENx"


def _cache(batch: int, length: int, fill: float) -> DynamicCache:
    cache = DynamicCache()
    for layer in range(2):
        cache.update(
            torch.full((batch, 2, length, 4), fill), torch.full((batch, 2, length, 4), -fill), layer
        )
    return cache


def test_caches_join_left_padded_and_leave_without_dead_columns() -> None:
    lane = _cache(2, 5, 1.0)
    joined = _concat_caches(lane, 5, _cache(1, 3, 2.0), 3, 5)
    keys = joined.layers[0].keys  # (3, 2, 5, 4)
    assert keys.shape == (3, 2, 5, 4)
    assert torch.equal(keys[2, :, :2], torch.zeros(2, 2, 4)) and torch.equal(
        keys[2, :, 2:], torch.full((2, 3, 4), 2.0)
    )
    # only the short row stays: its padding columns go
    _select_cache(joined, torch.tensor([2]), start=2)
    assert torch.equal(joined.layers[1].values, torch.full((1, 2, 3, 4), -2.0))


def test_each_method_decodes_where_it_can(models: Models) -> None:
    registry = make_engine(models).registry
    kinds = {name: registry.acquire(name, in_use=set()) for name in registry.names}
    assert kinds == {
        "lora-a": Kind.MIXED,
        "lora-b": Kind.MIXED,
        "head": Kind.MIXED,
        "prompt": Kind.PROMPT,
        "prefix": Kind.PROMPT,
        "ia3": Kind.SOLO,
        "dora": Kind.SOLO,
    }
    assert registry.acquire(None, in_use=set()) is Kind.BASE
