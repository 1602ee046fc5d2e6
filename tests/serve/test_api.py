"""The server through the official ``openai`` client over 127.0.0.1: every answer equals generating
alone."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from ..conftest import char_tokenizer
from .conftest import ADAPTERS, MAX_TOKENS, Models, Server, make_engine

PROMPT = "Hello wor"
MODELS = [None, *ADAPTERS]


def client(server: Server, api_key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=120)


def complete(
    server: Server, adapter: str | None, prompt: str = PROMPT, **options: object
) -> openai.types.Completion:
    settings = {"max_tokens": MAX_TOKENS, "temperature": 0} | options
    return client(server).completions.create(
        model=adapter or "tiny-llama", prompt=prompt, **settings
    )


def test_models_lists_the_base_and_every_adapter(server: Server, models: Models) -> None:
    listed = {m.id: m for m in client(server).models.list().data}
    assert set(listed) == {"tiny-llama", *ADAPTERS}
    assert listed["lora-a"].model_extra["parent"] == "tiny-llama"


@pytest.mark.parametrize("adapter", MODELS)
def test_each_adapter_answers_as_it_does_alone(
    server: Server, models: Models, adapter: str | None
) -> None:
    answer = complete(server, adapter)
    assert answer.choices[0].text == models.alone(adapter, PROMPT)
    prompt_ids = char_tokenizer()(PROMPT)["input_ids"]
    assert answer.usage.prompt_tokens == len(prompt_ids)
    assert answer.usage.completion_tokens <= MAX_TOKENS
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_the_adapters_do_differ(models: Models) -> None:
    """Guards the test above: if the adapters all answered alike, routing a row wrongly would go
    unseen."""
    answers = [models.alone(name, PROMPT) for name in MODELS]
    assert len(set(answers)) == len(answers)


def test_concurrent_requests_share_batches_and_each_answers_as_alone(
    server: Server, models: Models
) -> None:
    jobs = [(name, prompt) for prompt in ("ab", "Hello wor", "xyz!") for name in MODELS]
    server.engine.peak_rows = 0
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: complete(server, *job).choices[0].text, jobs))
    assert answers == [models.alone(name, prompt) for name, prompt in jobs]
    assert server.engine.peak_rows > 2  # rows of several adapters decoded in one pass


def test_streaming_gives_the_non_streaming_text_for_the_same_seed(server: Server) -> None:
    settings = {"temperature": 1.0, "top_p": 0.9, "seed": 123, "max_tokens": 20}
    whole = complete(server, "lora-b", **settings)
    chunks = list(complete(server, "lora-b", stream=True, **settings))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert (
        complete(server, "lora-b", **settings | {"seed": 124}).choices[0].text
        != whole.choices[0].text
    )


def test_chat_renders_the_chat_template(server: Server, models: Models) -> None:
    messages = [{"role": "user", "content": "hi there"}]
    answer = client(server).chat.completions.create(
        model="prompt", messages=messages, max_tokens=MAX_TOKENS, temperature=0
    )
    ids = char_tokenizer().apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert answer.choices[0].message.content == models.alone("prompt", ids)
    assert answer.usage.prompt_tokens == len(ids)
    streamed = client(server).chat.completions.create(
        model="prompt", messages=messages, max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        == answer.choices[0].message.content
    )


def test_stop_strings_end_the_text_before_them(server: Server, models: Models) -> None:
    full = models.alone("lora-a", PROMPT, 30)
    stop = full[4:6]
    assert len(stop) == 2
    answer = complete(server, "lora-a", stop=[stop, "never-there"], max_tokens=30)
    assert answer.choices[0].text == full[: full.find(stop)]
    assert answer.choices[0].finish_reason == "stop"
    streamed = complete(server, "lora-a", stop=[stop], max_tokens=30, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[: full.find(stop)]


def test_n_choices_each_with_its_own_draw(server: Server) -> None:
    answer = complete(server, "lora-a", n=3, temperature=1.0, seed=5, max_tokens=16)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    singles = [
        complete(server, "lora-a", temperature=1.0, seed=5 + i, max_tokens=16) for i in range(3)
    ]
    # choice i draws with seed + i
    assert [c.text for c in answer.choices] == [s.choices[0].text for s in singles]
    assert len({c.text for c in answer.choices}) > 1
    assert answer.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
    # the prompt is counted once
    assert answer.usage.prompt_tokens == singles[0].usage.prompt_tokens


def test_bad_requests_get_openai_errors(server: Server) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        complete(server, "no-such-adapter")
    with pytest.raises(openai.BadRequestError, match="max_tokens=-1"):
        complete(server, "lora-a", max_tokens=-1)
    with pytest.raises(openai.BadRequestError, match="temperature=5"):
        complete(server, None, temperature=5)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 256"):
        complete(server, None, prompt="x" * 300)
    for body in (b"{not json", b"[1, 2]", b'{"model": "tiny-llama"}'):
        response = httpx.post(
            server.url + "/v1/completions",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(server.url + "/health").json()["status"] == "ok"  # still serving


def test_load_and_unload_adapters_while_serving(models: Models, tmp_path: object) -> None:
    with Server(make_engine(models, names=["lora-a"])) as server:
        load = {"lora_name": "lora-b", "lora_path": str(models.adapters["lora-b"])}
        assert httpx.post(server.url + "/v1/load_lora_adapter", json=load).status_code == 200
        assert complete(server, "lora-b").choices[0].text == models.alone("lora-b", PROMPT)
        broken = models.base.parent / "broken"
        broken.mkdir(exist_ok=True)
        (broken / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": -1}))
        refused = httpx.post(
            server.url + "/v1/load_lora_adapter",
            json={"lora_name": "bad", "lora_path": str(broken)},
        )
        assert refused.status_code == 400 and "r=-1" in refused.json()["error"]["message"]
        assert {m.id for m in client(server).models.list().data} == {
            "tiny-llama",
            "lora-a",
            "lora-b",
        }
        # the others go on
        assert complete(server, "lora-a").choices[0].text == models.alone("lora-a", PROMPT)
        assert (
            httpx.post(
                server.url + "/v1/unload_lora_adapter", json={"lora_name": "lora-b"}
            ).status_code
            == 200
        )
        with pytest.raises(openai.NotFoundError):
            complete(server, "lora-b")
        assert (
            httpx.post(
                server.url + "/v1/unload_lora_adapter", json={"lora_name": "lora-b"}
            ).status_code
            == 404
        )


def test_least_recently_used_adapters_make_room_and_answers_stay_right(models: Models) -> None:
    names = ["lora-a", "lora-b", "prompt", "ia3"]
    with Server(make_engine(models, names=names, max_loaded=2)) as server:
        for name in ["lora-a", "lora-b", "prompt", "lora-a", "ia3", "lora-b"]:
            assert complete(server, name).choices[0].text == models.alone(name, PROMPT)
            assert len(server.engine.registry.loaded) <= 2
        assert list(server.engine.registry.loaded) == ["ia3", "lora-b"]


def test_overload_gets_429_with_retry_after_and_the_server_goes_on(models: Models) -> None:
    with Server(make_engine(models, names=["lora-a"], max_batch=1, max_waiting=1)) as server:
        body = {"model": "lora-a", "prompt": PROMPT, "max_tokens": 200, "temperature": 0}
        with ThreadPoolExecutor(6) as pool:
            responses = list(
                pool.map(
                    lambda _: httpx.post(server.url + "/v1/completions", json=body, timeout=120),
                    range(6),
                )
            )
        busy = [r for r in responses if r.status_code == 429]
        assert busy and all(r.headers["retry-after"] == "1" for r in busy)
        assert busy[0].json()["error"]["code"] == "rate_limit_exceeded"
        assert any(r.status_code == 200 for r in responses)
        assert complete(server, "lora-a").choices[0].text == models.alone("lora-a", PROMPT)


def test_a_client_that_goes_away_frees_its_row(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(models, names=["lora-a"])
    step = engine.step
    # 250 slowed steps (12 s and more) outlast the client by far, even on a loaded machine
    monkeypatch.setattr(engine, "step", lambda: (time.sleep(0.05), step()))
    with Server(engine) as server:
        body = {
            "model": "lora-a",
            "prompt": "a",
            "max_tokens": 250,
            "min_tokens": 250,
            "stream": True,
        }
        with httpx.stream(
            "POST", server.url + "/v1/completions", json=body, timeout=60
        ) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
        # Wait for the cancellation itself: the first token is sent while the engine is still
        # admitting the request, so on a loaded machine `running` can read 0 before the row has even
        # joined.
        deadline = time.monotonic() + 60
        while (
            server.engine.running or not server.engine.cancelled
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        # freed, not run to its end
        assert server.engine.running == 0 and server.engine.cancelled >= 1


def test_the_api_key_guards_every_route_but_health(models: Models) -> None:
    with Server(make_engine(models, names=["lora-a"]), api_key="sekret") as server:
        with pytest.raises(openai.AuthenticationError):
            client(server, api_key="wrong").models.list()
        assert httpx.post(server.url + "/v1/load_lora_adapter", json={}).status_code == 401
        assert httpx.get(server.url + "/health").status_code == 200
        assert len(client(server, api_key="sekret").models.list().data) == 2


def test_min_tokens_keeps_the_end_of_text_token_out_as_min_new_tokens_does(
    server: Server, models: Models
) -> None:
    import torch

    from .conftest import base_model

    tokenizer = char_tokenizer()
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = base_model(models.base).generate(
            input_ids=ids,
            max_new_tokens=40,
            min_new_tokens=40,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    answer = complete(server, None, max_tokens=40, extra_body={"min_tokens": 40})
    assert answer.choices[0].text == expected and answer.usage.completion_tokens == 40


def test_an_adapter_whose_files_went_bad_is_refused_and_the_others_go_on(
    models: Models, tmp_path: Path
) -> None:
    shutil.copytree(models.adapters["lora-b"], tmp_path / "lora-b")
    engine = make_engine(models, names=["lora-a"], max_loaded=1)
    # registered, not loaded: memory holds one
    engine.registry.register("fragile", tmp_path / "lora-b")
    (tmp_path / "lora-b" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with Server(engine) as server:
        with pytest.raises(openai.BadRequestError, match=r"adapter_model\.safetensors"):
            complete(server, "fragile")
        assert complete(server, "lora-a").choices[0].text == models.alone("lora-a", PROMPT)
