"""TRL's trainers run with peftkit (and, for comparison, with PEFT) in a process of their own.

``tests/integrations/test_trl.py`` runs this script in a fresh interpreter, once per environment
(PEFT installed or not; ``trl`` imported before or after ``peftkit``), and checks the JSON it
writes: what each trainer built, what trained, what the checkpoints hold, the per-step losses and
metrics, the errors raised. A fresh process is the only honest way to test an import-time
integration and the absence of a package.

Usage: ``python trl_scenarios.py --models DIR --out FILE --order trl-first|peftkit-first --libs
peftkit[,peft] [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _import(order: str) -> None:
    if order == "trl-first":
        import trl  # noqa: F401
        from trl import DPOTrainer, GRPOTrainer, RewardTrainer, SFTTrainer  # noqa: F401
    import peftkit  # noqa: F401


def _lib(name: str) -> Any:
    import importlib

    return importlib.import_module(name)


def _args(cls: type, out: Path, **kw: Any) -> Any:
    base = dict(
        output_dir=str(out),
        max_steps=4,
        per_device_train_batch_size=2,
        save_steps=2,
        logging_steps=1,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        seed=0,
        save_only_model=False,
        disable_tqdm=True,
        bf16=False,  # fp32: TRL's configs default to bf16 autocast
    )
    base.update(kw)
    return cls(**base)


def _texts() -> Any:
    from datasets import Dataset

    words = ["apple", "river", "stone", "cloud", "lamp", "seed", "wind", "moss"]
    return Dataset.from_list([{"text": " ".join(words[i:] + words[:i])} for i in range(8)])


def _pairs(with_prompt: bool = True) -> Any:
    from datasets import Dataset

    rows = []
    for i, (good, bad) in enumerate([("kind", "rude"), ("calm", "loud"), ("warm", "cold")] * 3):
        row = {"chosen": f" a {good} answer {i}", "rejected": f" a {bad} reply {i}"}
        if with_prompt:
            row["prompt"] = f"question {i}:"
        rows.append(row)
    return Dataset.from_list(rows)


def _history(trainer: Any) -> list[dict[str, float]]:
    return [
        {k: float(v) for k, v in entry.items() if isinstance(v, (int, float))}
        for entry in trainer.state.log_history
        if "loss" in entry
    ]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _frozen(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def _same(before: dict[str, Any], model: Any) -> bool:
    now = dict(model.named_parameters())
    return all(now[n].detach().equal(t) for n, t in before.items())


class _Counter:
    """Counts transformers models constructed (every PreTrainedModel's __init__) and adapter
    switches off (``disable_adapter`` on peftkit's and PEFT's models)."""

    def __init__(self) -> None:
        self.models = 0
        self.disabled = 0

    @contextlib.contextmanager
    def watching(self, libs: list[str]) -> Iterator[None]:
        import transformers

        patches: list[tuple[Any, str, Any]] = []
        init = transformers.PreTrainedModel.__init__

        def counted_init(model: Any, *a: Any, **k: Any) -> None:
            self.models += 1
            init(model, *a, **k)

        patches.append((transformers.PreTrainedModel, "__init__", counted_init))
        for lib in libs:
            cls = _lib(lib).PeftModel
            original = cls.disable_adapter

            def counted_disable(model: Any, *a: Any, _original: Any = original, **k: Any) -> Any:
                self.disabled += 1
                return _original(model, *a, **k)

            patches.append((cls, "disable_adapter", counted_disable))
        saved = [(obj, name, obj.__dict__[name]) for obj, name, _ in patches]
        for obj, name, new in patches:
            setattr(obj, name, new)
        try:
            yield
        finally:
            for obj, name, old in saved:
                setattr(obj, name, old)


def _StepsRun() -> Any:
    """A callback that records the steps a trainer runs (not those it read from a checkpoint)."""
    from transformers import TrainerCallback

    class StepsRun(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.ran: list[int] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.ran.append(state.global_step)

    return StepsRun()


def _lora(lib: str, **kw: Any) -> Any:
    base: dict[str, Any] = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    base.update(kw)
    return _lib(lib).LoraConfig(task_type="CAUSAL_LM", **base)


# -- scenarios: each returns a JSON-able record ----------------------------------------------------


def sft(lib: str, models: Path, out: Path) -> dict[str, Any]:
    """SFTTrainer(model=<folder>, peft_config=...): what trains, what is saved, resume."""
    from trl import SFTConfig, SFTTrainer

    def make(folder: Path) -> Any:
        return SFTTrainer(
            model=str(models / "llama"),
            args=_args(SFTConfig, folder, max_length=32),
            train_dataset=_texts(),
            peft_config=_lora(lib),
        )

    counter = _Counter()
    with counter.watching([lib]):
        trainer = make(out / "run")
    model = trainer.model
    frozen = _frozen(model)
    trainer.train()
    trainer.save_model(str(out / "run" / "final"))
    resumed = make(out / "resumed")
    steps = _StepsRun()
    resumed.add_callback(steps)
    resumed.train(resume_from_checkpoint=str(out / "run" / "checkpoint-2"))
    return {
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "models_built": counter.models,
        "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
        "base_unchanged": _same(frozen, model),
        "checkpoint_files": _files(out / "run" / "checkpoint-2"),
        "final": str(out / "run" / "final"),
        "losses": [h["loss"] for h in _history(trainer)],
        "resumed_losses": [h["loss"] for h in _history(resumed)],
        "resumed_ran": steps.ran,
        "resumed_global_step": resumed.state.global_step,
    }


def sft_wrapped(lib: str, models: Path, out: Path) -> dict[str, Any]:
    """A model wrapped beforehand, with gradient checkpointing."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    model = _lib(lib).get_peft_model(
        AutoModelForCausalLM.from_pretrained(models / "llama"), _lora(lib)
    )
    args = _args(SFTConfig, out, max_length=32, gradient_checkpointing=True, max_steps=2)
    trainer = SFTTrainer(model=model, args=args, train_dataset=_texts())
    adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = _frozen(model)
    trainer.train()
    now = dict(model.named_parameters())
    return {
        "same_model": trainer.model is model,
        "checkpointing": bool(model.get_base_model().is_gradient_checkpointing),
        "adapter_changed": sorted(n for n, t in adapter.items() if not now[n].detach().equal(t)),
        "trainable": sorted(adapter),
        "base_unchanged": _same(frozen, model),
        "checkpoint_files": _files(out / "checkpoint-2"),
        "losses": [h["loss"] for h in _history(trainer)],
    }


def dpo(lib: str, models: Path, out: Path) -> dict[str, Any]:
    """DPOTrainer(ref_model=None, peft_config=...): no second model, the adapter-off reference."""
    from trl import DPOConfig, DPOTrainer

    counter = _Counter()
    with counter.watching([lib]):
        trainer = DPOTrainer(
            model=str(models / "llama"),
            ref_model=None,
            args=_args(DPOConfig, out, max_length=48, beta=0.1),
            train_dataset=_pairs(),
            eval_dataset=_pairs(),
            peft_config=_lora(lib),
        )
        built = counter.models
        frozen = _frozen(trainer.model)
        trainer.train()
        evaluated = trainer.evaluate()
    history = _history(trainer)
    return {
        "eval": {
            k: float(v) for k, v in evaluated.items() if "time" not in k and "per_second" not in k
        },
        "ref_model_is_none": trainer.ref_model is None,
        "models_built": built,
        "disabled_calls": counter.disabled,
        "base_unchanged": _same(frozen, trainer.model),
        "checkpoint_files": _files(out / "checkpoint-2"),
        "losses": [h["loss"] for h in history],
        "first": history[0],
        "metrics": sorted(history[0]),
    }


def dpo_from_adapter(lib: str, models: Path, out: Path) -> dict[str, Any]:
    """DPO from a trained adapter: TRL keeps a frozen copy named ``ref`` as the reference."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    model = _lib(lib).get_peft_model(
        AutoModelForCausalLM.from_pretrained(models / "llama"), _lora(lib)
    )
    with torch.no_grad():  # a "trained" adapter: B no longer zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    start = {n: p.detach().clone() for n, p in model.named_parameters() if ".default." in n}
    counter = _Counter()
    with counter.watching([lib]):
        trainer = DPOTrainer(
            model=model,
            ref_model=None,
            args=_args(DPOConfig, out, max_length=48, beta=0.1, max_steps=2),
            train_dataset=_pairs(),
        )
        built = counter.models
        trainer.train()
    params = dict(model.named_parameters())
    ref = {n.replace(".default.", ".ref."): t for n, t in start.items()}
    history = _history(trainer)
    return {
        "adapters": sorted(model.peft_config),
        "models_built": built,
        "ref_trainable": sorted(n for n in ref if params[n].requires_grad),
        "ref_unchanged": all(params[n].detach().equal(t) for n, t in ref.items()),
        "ref_equals_start": sorted(ref) == sorted(n for n in params if ".ref." in n),
        "default_changed": any(not params[n].detach().equal(t) for n, t in start.items()),
        "checkpoint_files": _files(out / "checkpoint-2"),
        "first": history[0],
    }


def _reward_ids(completions: list[Any], completion_ids: list[list[int]], **_: Any) -> list[float]:
    """A reward that differs between completions (so advantages, and gradients, are not zero;
    the tiny model's ids mostly decode to nothing, so the text cannot serve)."""
    return [float(sum(ids) % 7) for ids in completion_ids]


def grpo(lib: str, models: Path, out: Path) -> dict[str, Any]:
    """GRPOTrainer with beta > 0: the reference is the adapter switched off, no copy."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    prompts = Dataset.from_list([{"prompt": f"count {i}:"} for i in range(8)])
    counter = _Counter()
    with counter.watching([lib]):
        trainer = GRPOTrainer(
            model=str(models / "llama"),
            reward_funcs=_reward_ids,
            args=_args(
                GRPOConfig,
                out,
                beta=0.1,
                num_generations=2,
                max_completion_length=4,
                max_steps=2,
                per_device_train_batch_size=2,
                generation_batch_size=2,
            ),
            train_dataset=prompts,
            peft_config=_lora(lib),
        )
        built = counter.models
        frozen = _frozen(trainer.model)
        trainer.train()
    history = _history(trainer)
    return {
        "ref_model_is_none": trainer.ref_model is None,
        "models_built": built,
        "disabled_calls": counter.disabled,
        "base_unchanged": _same(frozen, trainer.model),
        "checkpoint_files": _files(out / "checkpoint-2"),
        "first": history[0],
    }


def grpo_fp32_head(lib: str, models: Path, out: Path) -> dict[str, Any]:
    """GRPO's ``cast_lm_head_to_fp32`` on a bf16 model: the head reached through the adapter model."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    model = _lib(lib).get_peft_model(
        AutoModelForCausalLM.from_pretrained(models / "llama", dtype=torch.bfloat16), _lora(lib)
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=_reward_ids,
        args=_args(
            GRPOConfig,
            out,
            beta=0.1,
            num_generations=2,
            max_completion_length=4,
            max_steps=1,
            per_device_train_batch_size=2,
            generation_batch_size=2,
            cast_lm_head_to_fp32=True,
            save_strategy="no",
        ),
        train_dataset=Dataset.from_list([{"prompt": f"count {i}:"} for i in range(4)]),
    )
    trainer.train()
    head = model.get_base_model().lm_head
    return {
        "head_dtype": str(head.weight.dtype),
        "embedding_dtype": str(model.get_base_model().model.embed_tokens.weight.dtype),
        "loss_finite": math.isfinite(_history(trainer)[0]["loss"]),
    }


class _FakeVLLMClient:
    """What GRPO's weight sync sends to a vLLM server, recorded."""

    def __init__(self) -> None:
        self.sent: dict[str, Any] = {}

    def update_named_params(self, metadata: list[Any], params: Iterator[tuple[str, Any]]) -> None:
        for name, tensor in params:
            self.sent[name] = tensor.detach().clone()

    def reset_prefix_cache(self) -> None:
        pass


def vllm_sync(lib: str, models: Path, out: Path) -> dict[str, Any]:
    """GRPO's vLLM weight sync (server mode) against a fake client: merged weights under the base
    model's names, the model unmerged bitwise afterwards."""
    import copy

    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM
    from trl.generation import vllm_generation

    torch.manual_seed(0)
    model = _lib(lib).get_peft_model(
        AutoModelForCausalLM.from_pretrained(models / "llama"), _lora(lib)
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    base = {  # the base weights under the names vLLM knows
        n.replace(".base_layer", ""): p.detach().clone()
        for n, p in model.get_base_model().named_parameters()
        if "lora_" not in n
    }
    merged = copy.deepcopy(model).merge_and_unload()
    expected = {n: p.detach() for n, p in merged.named_parameters()}
    client = _FakeVLLMClient()

    def fake_init(self: Any) -> None:
        self.vllm_client = client

    vllm_generation.VLLMGeneration._init_vllm = fake_init  # type: ignore[method-assign]
    generation = vllm_generation.VLLMGeneration(
        model=model, accelerator=Accelerator(cpu=True), processing_class=None, mode="server"
    )
    generation.sync_weights()
    after = dict(model.named_parameters())
    return {
        "sent_names": sorted(client.sent),
        "expected_names": sorted(expected),
        "equal_to_merged": sorted(
            n for n, t in client.sent.items() if n in expected and t.equal(expected[n])
        ),
        "differs_from_base": sorted(n for n, t in client.sent.items() if not t.equal(base[n])),
        "unmerged_bitwise": all(after[n].detach().equal(t) for n, t in before.items()),
    }


def reward(lib: str, models: Path, out: Path) -> dict[str, Any]:
    """RewardTrainer on a sequence-classification model: the score head in modules_to_save."""
    from trl import RewardConfig, RewardTrainer

    config = _lib(lib).LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS"
    )
    trainer = RewardTrainer(
        model=str(models / "llama-cls"),
        args=_args(RewardConfig, out, max_length=48),
        train_dataset=_pairs(with_prompt=False),
        peft_config=config,
    )
    frozen = _frozen(trainer.model)
    trainer.train()
    trainer.save_model(str(out / "final"))
    model = trainer.model
    return {
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
        "modules_to_save": sorted(model.peft_config["default"].modules_to_save or []),
        "base_unchanged": _same(frozen, model),
        "checkpoint_files": _files(out / "checkpoint-2"),
        "final": str(out / "final"),
        "losses": [h["loss"] for h in _history(trainer)],
    }


def _error(make: Callable[[], Any]) -> str:
    try:
        make()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return ""


def refusals(lib: str, models: Path, out: Path) -> dict[str, Any]:
    """What TRL refuses for PEFT, refused for peftkit the same way."""
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    head = _lora(lib, target_modules=["q_proj", "lm_head"])
    return {
        "sft_lm_head": _error(
            lambda: SFTTrainer(
                model=str(models / "llama"),
                args=_args(SFTConfig, out / "a", max_length=32),
                train_dataset=_texts(),
                peft_config=head,
            )
        ),
        "dpo_lm_head": _error(
            lambda: DPOTrainer(
                model=str(models / "llama"),
                args=_args(DPOConfig, out / "b", max_length=48),
                train_dataset=_pairs(),
                peft_config=_lora(lib, target_modules=["q_proj", "lm_head"]),
            )
        ),
        "dpo_sync_ref": _error(
            lambda: DPOTrainer(
                model=str(models / "llama"),
                args=_args(DPOConfig, out / "c", max_length=48, sync_ref_model=True),
                train_dataset=_pairs(),
                peft_config=_lora(lib),
            )
        ),
        "wrapped_and_config": _error(
            lambda: SFTTrainer(
                model=_lib(lib).get_peft_model(
                    AutoModelForCausalLM.from_pretrained(models / "llama"), _lora(lib)
                ),
                args=_args(SFTConfig, out / "d", max_length=32),
                train_dataset=_texts(),
                peft_config=_lora(lib),
            )
        ),
    }


SCENARIOS: dict[str, Callable[[str, Path, Path], dict[str, Any]]] = {
    f.__name__: f
    for f in (
        sft,
        sft_wrapped,
        dpo,
        dpo_from_adapter,
        grpo,
        grpo_fp32_head,
        vllm_sync,
        reward,
        refusals,
    )
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--order", choices=["trl-first", "peftkit-first"], required=True)
    parser.add_argument("--libs", default="peftkit")
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args(argv)
    _import(args.order)
    import importlib.util

    import torch

    torch.set_num_threads(1)
    record: dict[str, Any] = {"peft_installed": importlib.util.find_spec("peft") is not None}
    work = args.out.with_suffix(".runs")
    for lib in args.libs.split(","):
        for name, scenario in SCENARIOS.items():
            if args.only and name not in args.only:
                continue
            try:
                record[f"{lib}/{name}"] = scenario(lib, args.models, work / lib / name)
            except Exception as error:
                import traceback

                record[f"{lib}/{name}"] = {"crashed": traceback.format_exc(), "error": repr(error)}
    record["peft_imported"] = "peft" in sys.modules
    args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
