"""Serving many adapters: `peftkit serve` against a one-request-at-a-time PEFT server and the base
model alone.

SmolLM2-135M (the packaged GGUF, fp32) with 4 LoRA adapters (r 8 on q, k, v, o; random B so each
changes the output). 64 requests of 32 new tokens (greedy; `min_tokens` keeps the end-of-text token
out, as `min_new_tokens` does for PEFT) from 8 concurrent clients using the official `openai`
client, each request for a random adapter (seeded). Each server runs in its own process, one after
another, on 127.0.0.1:

- `peftkit`: `peftkit serve` with the 4 adapters (continuous batching, each row through its own
  adapter);
- `peft-serial`: a Starlette server that, per request, calls PEFT's `set_adapter` then `generate`,
  one request at a time (what serving PEFT adapters without a batching engine gives);
- `base`: `peftkit serve` with no adapter, every request for the base model (the cost of adapters);
- `peftkit-100`: `peftkit serve` with 100 registered adapters (copies of the 4) and 8 loaded at
  most.

It also checks that streaming gives the non-streaming text (same seed) and that each answer of the
mixed batch equals that request served alone. Prints CPU flags, a markdown table and the ratios.

    python benchmarks/serve.py [--requests 64] [--clients 8] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import torch

from peftkit.train.defaults import cpu_summary

MODEL = "smollm2-135m"
PROMPTS = [
    "Write a haiku about the sea.",
    "The capital of France is",
    "List three colors:",
    "Once upon a time",
    "def fibonacci(n):",
    "Translate to French: good morning",
    "My favourite food is",
    "Explain LoRA in",
]


def make_adapters(folder: Path) -> dict[str, Path]:
    from peftkit import LoraConfig, get_peft_model
    from peftkit.integrations.models import load_model

    adapters = {}
    for i in range(4):
        torch.manual_seed(i)
        model = get_peft_model(
            load_model(MODEL),
            LoraConfig(
                r=8,
                lora_alpha=16,
                init_lora_weights=False,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            ),
        )
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    # random B at a scale that changes answers without wrecking them
                    param.mul_(0.02)
        model.save_pretrained(folder / f"adapter-{i}")
        adapters[f"adapter-{i}"] = folder / f"adapter-{i}"
    return adapters


# ----- the servers (each runs in a child process)
# ---------------------------------------------------------


def run_peftkit(port: int, adapters: dict[str, str], max_loaded: int) -> None:
    from peftkit.serve import ServeConfig, serve

    serve(
        ServeConfig(
            model=MODEL,
            adapters=adapters,
            port=port,
            max_loaded_adapters=max_loaded,
            max_batch=8,
            max_waiting=256,
            served_model_name=MODEL,
        )
    )


def run_peft_serial(port: int, adapters: dict[str, str]) -> None:
    """PEFT + transformers' generate, one request at a time (a lock), set_adapter per request."""
    import peft
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    from peftkit.integrations.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    names = list(adapters)
    model = peft.PeftModel.from_pretrained(
        load_model(MODEL), adapters[names[0]], adapter_name=names[0]
    )
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    model.eval()
    lock = threading.Lock()

    def generate(body: dict) -> list[int]:
        ids = tokenizer(body["prompt"], return_tensors="pt")
        with lock, torch.no_grad():
            model.set_adapter(body["model"])
            out = model.generate(
                **ids,
                max_new_tokens=body["max_tokens"],
                min_new_tokens=body["max_tokens"],
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        return out[0, ids["input_ids"].shape[1] :].tolist()

    async def completions(request: Request):
        import asyncio

        body = await request.json()
        tokens = await asyncio.to_thread(generate, body)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
        usage = {"prompt_tokens": 0, "completion_tokens": len(tokens), "total_tokens": len(tokens)}
        # the whole answer in one chunk: PEFT's generate is not incremental here
        if body.get("stream"):
            chunk = {
                "id": "x",
                "object": "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": [choice],
            }

            async def events():
                yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "x",
                "object": "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            }
        )

    async def health(request: Request):
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[Route("/v1/completions", completions, methods=["POST"]), Route("/health", health)]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ----- the load
# ---------------------------------------------------------------------------------------------


def start(kind: str, port: int, adapters: dict[str, str], max_loaded: int = 8) -> subprocess.Popen:
    spec = json.dumps({"kind": kind, "port": port, "adapters": adapters, "max_loaded": max_loaded})
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", spec],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    raise TimeoutError(f"{kind} did not start")


def peak_rss_gb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def load(port: int, jobs: list[tuple[str, str]], clients: int, tokens: int) -> dict[str, object]:
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600
    )

    def one(job: tuple[str, str]) -> tuple[float, float, str]:
        model, prompt = job
        started = time.perf_counter()
        first, text = None, []
        stream = client.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=tokens,
            temperature=0,
            stream=True,
            extra_body={"min_tokens": tokens},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text and first is None:
                first = time.perf_counter() - started
            text += [c.text for c in chunk.choices]
        done = time.perf_counter() - started
        return first if first is not None else done, done, "".join(text)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, jobs))
    wall = time.perf_counter() - started
    ttft = sorted(r[0] for r in results)
    latency = sorted(r[1] for r in results)
    return {
        "wall": wall,
        "tokens_per_s": len(jobs) * tokens / wall,
        "ttft": ttft,
        "latency": latency,
        "texts": [r[2] for r in results],
    }


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        if spec["kind"] == "peft-serial":
            run_peft_serial(spec["port"], spec["adapters"])
        else:
            run_peftkit(spec["port"], spec["adapters"], spec["max_loaded"])
        return

    folder = Path(tempfile.mkdtemp(prefix="peftkit-serve-bench-"))
    adapters = {k: str(v) for k, v in make_adapters(folder).items()}
    many = {}
    for i in range(100):
        many[f"adapter-{i}"] = str(folder / f"copy-{i}")
        shutil.copytree(adapters[f"adapter-{i % 4}"], many[f"adapter-{i}"])
    rng = random.Random(0)
    jobs = [(rng.choice(list(adapters)), rng.choice(PROMPTS)) for _ in range(args.requests)]
    base_jobs = [(MODEL, prompt) for _, prompt in jobs]
    many_jobs = [(f"adapter-{rng.randrange(100)}", prompt) for _, prompt in jobs]

    # peftkit and base run twice, interleaved, since this shared machine's speed drifts over
    # minutes; the table reports each setup's faster round and the ratios come from those
    setups = [
        ("peftkit", adapters, jobs, 8),
        ("base", {}, base_jobs, 8),
        ("peft-serial", adapters, jobs, 8),
        ("peftkit-100", many, many_jobs, 8),
        ("peftkit", adapters, jobs, 8),
        ("base", {}, base_jobs, 8),
    ]
    rows: dict[str, dict] = {}
    rounds: dict[str, list[float]] = {}
    for port, (name, served, work, max_loaded) in enumerate(setups, start=18400):
        process = start(
            "peft-serial" if name == "peft-serial" else "peftkit", port, served, max_loaded
        )
        try:
            result = load(port, work, args.clients, args.tokens)
            rounds.setdefault(name, []).append(result["tokens_per_s"])
            if name in rows and rows[name]["tokens_per_s"] >= result["tokens_per_s"]:
                continue
            rows[name] = result | {
                k: v for k, v in rows.get(name, {}).items() if k == "equal_alone"
            }
            if name == "peftkit":  # the checks: alone, and non-streaming, give the same text
                client = openai.OpenAI(
                    base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0
                )
                alone = [
                    client.completions.create(
                        model=m,
                        prompt=p,
                        max_tokens=args.tokens,
                        temperature=0,
                        extra_body={"min_tokens": args.tokens},
                    )
                    .choices[0]
                    .text
                    for m, p in jobs[:8]
                ]
                rows[name]["equal_alone"] = alone == rows[name]["texts"][:8]
            rows[name]["rss"] = peak_rss_gb(process.pid)
        finally:
            process.terminate()
            process.wait(60)

    print(
        f"torch {torch.__version__}, {platform.machine()}, CPU flags: {cpu_summary()}, {os.cpu_count()} cores"
    )
    print(
        f"{args.requests} requests x {args.tokens} new tokens (greedy), {args.clients} concurrent clients, "
        f"SmolLM2-135M fp32, 4 LoRA adapters r8 (q,k,v,o), a random adapter per request\n"
    )
    print(
        "| server | wall s | tokens/s | x peft-serial | x base | TTFT p50 / p99 s | latency p50 / p99 s "
        "| peak RSS GB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['wall']:.1f} | {row['tokens_per_s']:.1f} | "
            f"{row['tokens_per_s'] / rows['peft-serial']['tokens_per_s']:.2f}x | "
            f"{row['tokens_per_s'] / rows['base']['tokens_per_s']:.2f}x | "
            f"{pct(row['ttft'], 0.5):.2f} / {pct(row['ttft'], 0.99):.2f} | "
            f"{pct(row['latency'], 0.5):.2f} / {pct(row['latency'], 0.99):.2f} | {row['rss']:.2f} |"
        )
    print(
        "\ntokens/s of each round: "
        + "; ".join(f"{k} {', '.join(f'{v:.1f}' for v in vs)}" for k, vs in rounds.items())
    )
    print(
        f"mixed-batch answers equal to each request served alone: {rows['peftkit']['equal_alone']}"
    )
    print(
        f"peftkit vs peft-serial answers equal: {rows['peftkit']['texts'] == rows['peft-serial']['texts']}"
    )
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
