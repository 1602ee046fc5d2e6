"""What ``peftkit eval``, ``peftkit generate`` and ``peftkit merge`` do, as library functions: the
CLI parses flags and prints; these load, run and write.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .common import outputs
from .common.files import atomic_directory
from .errors import ConfigError
from .integrations.models import load_model, load_tokenizer
from .peft_model.model import PeftModel
from .train import defaults
from .train.config import JobConfig
from .train.data import load_task_data
from .train.evaluate import Metrics, evaluate
from .train.kernels import pick_device

__all__ = ["evaluate_job", "generate_side_by_side", "load_for_inference", "merge_to_folder"]


def load_for_inference(
    model: str,
    adapter_path: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """A causal LM (alias, folder, GGUF file or hub id) with the adapter folder applied if given, in
    eval mode, and its tokenizer."""
    tokenizer = load_tokenizer(model)
    loaded = load_model(model, task="CAUSAL_LM", trust_remote_code=trust_remote_code, dtype=dtype)
    if adapter_path:
        loaded = PeftModel.from_pretrained(loaded, adapter_path)
    return loaded.eval(), tokenizer


def evaluate_job(
    job: JobConfig, adapter_path: str | None = None, all_rows: bool = False
) -> tuple[Metrics, int]:
    """Evaluate ``job.model`` (with the adapter folder, if given) on the job's validation split, or
    on every row with ``all_rows``; returns the metrics and how many examples they cover.

    Raises:
        ConfigError: there is nothing to evaluate (an empty validation split).
    """
    device = pick_device(job.train.device)
    dtype = defaults.inference_dtype(job.dtype, device)
    model, tokenizer = load_for_inference(
        job.model, adapter_path, dtype.value, job.trust_remote_code
    )
    data_config = job.data
    if all_rows:
        data_config = dataclasses.replace(
            data_config, val_size=0, max_train_samples=data_config.max_eval_samples
        )
    data = load_task_data(data_config, tokenizer, seed=job.seed)
    examples = data.train if all_rows else data.val
    if not examples:
        raise ConfigError(
            "nothing to evaluate: the validation split is empty; pass --all or set --data.val_size"
        )
    metrics = evaluate(
        model.to(device),
        examples,
        pad_id=tokenizer.pad_token_id or 0,
        device=device,
        batch_size=job.train.eval_batch_size or job.train.batch_size * 2,
        candidate_ids=data.candidate_ids or None,
        progress=job.train.progress,
    )
    return metrics, len(examples)


def generate_side_by_side(
    model: str,
    prompt: str,
    adapter_path: str | None = None,
    max_new_tokens: int = 48,
    chat: bool = False,
    dtype: str = "auto",
) -> dict[str, str]:
    """Greedy continuations of ``prompt`` by the base model and, with an adapter folder, by base +
    adapter: ``{"base": ..., "adapter": ...}`` (the chat template applied with ``chat``)."""
    chosen = defaults.generation_dtype(dtype, torch.device("cpu"))
    loaded, tokenizer = load_for_inference(model, adapter_path, dtype=chosen.value)
    text = prompt
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not chat)
    settings = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id,
    }

    def run() -> str:
        # no_grad still tracks versions and views: a few us per op at batch 1
        with torch.inference_mode():
            out = loaded.generate(**inputs, **settings)
        return str(
            tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        ).strip()

    if not adapter_path:
        return {"base": run()}
    with loaded.disable_adapter():
        base = run()
    return {"base": base, "adapter": run()}


def merge_to_folder(model: str, adapter_path: str, output_dir: str) -> Path:
    """Fold the adapter into the base model and write a plain transformers folder (model and
    tokenizer), replacing ``output_dir`` whole or not at all.

    Raises:
        ConfigError: ``output_dir`` is, or holds, the model or the adapter (writing would delete
            it).
        OutputDirError: ``output_dir`` holds files peftkit did not write.
    """
    _check_merge_target(output_dir, {"adapter": adapter_path, "model": model})
    outputs.check_replaceable(output_dir, "merge", "output folder")  # before the slow part
    loaded, tokenizer = load_for_inference(model, adapter_path)
    merged = loaded.merge_and_unload()
    with atomic_directory(output_dir) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        outputs.record(tmp, [p.name for p in tmp.iterdir()], "merge")
    return Path(output_dir)


def _check_merge_target(output_dir: str, inputs: dict[str, str]) -> None:
    """The merged model replaces ``output_dir`` as a whole, so it must not be, or hold, one of the
    inputs."""
    out = Path(output_dir).resolve()
    for what, given in inputs.items():
        path = Path(given).resolve()
        if Path(given).exists() and (path == out or out in path.parents):
            raise ConfigError(
                f"the output folder {output_dir} is (or holds) the {what} {given}; writing the merged "
                f"model there would delete it. Choose another output folder, e.g. {given}-merged"
            )
