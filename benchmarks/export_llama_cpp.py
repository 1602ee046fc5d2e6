"""The demo's adapter after `peftkit export`, in llama.cpp: held-out accuracy and agreement with
peftkit.

Scores the demo's 200 held-out reviews (the same split, seed and label words as `make demo`) by the
log-probability of each label word after the prompt, with peftkit (the adapter on the dequantized
base, fp32) and with llama.cpp (llama-cpp-python) on: the packaged Q4_1 base alone, the Q4_1 base
with the GGUF LoRA file (`--to gguf-lora`), and the merged model exported as f16, q8_0 and q4_0
(`--to gguf`). "agree" is the share of reviews where llama.cpp picks the label peftkit picks.

    make demo && python benchmarks/export_llama_cpp.py [--adapter outputs/demo]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from peftkit import PeftModel
from peftkit.demo import demo_config
from peftkit.export import export_gguf, export_gguf_lora
from peftkit.integrations.models import load_model, load_tokenizer, packaged_gguf
from peftkit.train.data import load_task_data
from peftkit.train.defaults import cpu_summary
from peftkit.train.evaluate import classification_scores


def llama_cpp_scores(
    path: Path, prompts: list[list[int]], candidates: list[list[int]], lora: Path | None = None
) -> tuple[torch.Tensor, float]:
    """(len(prompts), K) summed log-probabilities of each candidate's tokens, and the seconds it
    took."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path),
        lora_path=str(lora) if lora else None,
        logits_all=True,
        n_ctx=512,
        n_threads=2,
        verbose=False,
    )

    # (count, V) for the last count positions
    def next_logprobs(ids: list[int], count: int) -> torch.Tensor:
        llm.reset()
        llm.eval(ids)
        return torch.log_softmax(
            torch.from_numpy(np.array(llm.scores[len(ids) - count : len(ids)])).float(), -1
        )

    start = time.perf_counter()
    scores = torch.empty(len(prompts), len(candidates))
    single = all(len(c) == 1 for c in candidates)
    for i, prompt in enumerate(prompts):
        if single:  # one pass of the prompt scores every one-token word
            scores[i] = next_logprobs(prompt, 1)[0, [c[0] for c in candidates]]
            continue
        for k, words in enumerate(candidates):
            logprobs = next_logprobs(prompt + words[:-1], len(words))
            scores[i, k] = logprobs[torch.arange(len(words)), torch.tensor(words)].sum()
    llm.close()
    return scores, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapter", default="outputs/demo")
    args = parser.parse_args()
    job = demo_config()
    tokenizer = load_tokenizer(job.model)
    data = load_task_data(job.data, tokenizer, seed=job.seed)
    prompts = [e.prompt_ids for e in data.val]
    truth = torch.tensor([e.label_index for e in data.val])
    model = PeftModel.from_pretrained(load_model(job.model), args.adapter).eval()
    start = time.perf_counter()
    with torch.no_grad():
        ours = classification_scores(
            model, prompts, data.candidate_ids, pad_id=tokenizer.pad_token_id or 0
        )
    rows: list[tuple[str, torch.Tensor, float, str]] = [
        ("peftkit, fp32 dequantized base + adapter", ours, time.perf_counter() - start, "")
    ]
    base_file = packaged_gguf(job.model)
    assert base_file is not None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_gguf_lora(model, folder / "lora.gguf")
        for encoding in ("f16", "q8_0", "q4_0"):
            fresh = PeftModel.from_pretrained(load_model(job.model), args.adapter)
            export_gguf(
                fresh,
                tokenizer,
                folder / f"merged-{encoding}.gguf",
                encoding=encoding,
                tokenizer_gguf=base_file,
            )
        runs = [
            ("llama.cpp, Q4_1 base alone (before)", base_file, None),
            ("llama.cpp, Q4_1 base + GGUF LoRA", base_file, folder / "lora.gguf"),
            *(
                (f"llama.cpp, merged {e}", folder / f"merged-{e}.gguf", None)
                for e in ("f16", "q8_0", "q4_0")
            ),
        ]
        for label, path, lora in runs:
            scores, seconds = llama_cpp_scores(path, prompts, data.candidate_ids, lora)
            size = f"{path.stat().st_size / 1e6:.0f} MB" + (
                f" + {lora.stat().st_size / 1e6:.1f} MB" if lora else ""
            )
            rows.append((label, scores, seconds, size))
    picks = ours.argmax(1)
    print(
        f"CPU: {platform.processor() or platform.machine()} ({cpu_summary()}), torch {torch.__version__}; "
        f"{len(prompts)} held-out reviews of the demo, label words {data.label_words}"
    )
    print("| run | accuracy | agree with peftkit | seconds | file |")
    print("|---|---|---|---|---|")
    for label, scores, seconds, size in rows:
        predicted = scores.argmax(1)
        accuracy = float((predicted == truth).float().mean())
        agree = float((predicted == picks).float().mean())
        print(f"| {label} | {accuracy:.3f} | {agree:.3f} | {seconds:.1f} | {size} |")


if __name__ == "__main__":
    main()
