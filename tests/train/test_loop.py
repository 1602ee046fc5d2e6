"""The training loop: exact resume, accumulation equivalence, schedules, checkpoints and outputs."""

from __future__ import annotations

import contextlib
import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftkit import JobConfig, PeftModel, train
from peftkit.errors import ConfigError, TrainingError
from peftkit.train import checkpoint as ckpt
from peftkit.train.kernels import UNFUSED_ATTENTION_SCORES, attention_kernel, unfused_attention
from peftkit.train.loop import Run, lr_schedule
from tests.conftest import outputs, tiny_model


def sentiment_csv(path: Path, n: int = 64, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = ["text,label"]
    for _ in range(n):
        positive = rng.random() < 0.5
        word = rng.choice(["good", "great", "fine"] if positive else ["bad", "awful", "poor"])
        lines.append(f"{word} film,{'pos' if positive else 'neg'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def job(
    tmp_path: Path,
    out: str = "out",
    method: str = "lora",
    dropout: float = 0.1,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    **train_fields: object,
) -> JobConfig:
    adapter = {"r": 4, "lora_alpha": 8, "lora_dropout": dropout, "target_modules": list(targets)}
    if method == "ia3":
        adapter = {}
    elif method != "lora":
        adapter = {"num_virtual_tokens": 4}
    return JobConfig(
        model="tiny-llama",
        method=method,
        adapter=adapter,
        seed=3,
        output_dir=str(tmp_path / out),
        data={
            "path": str(sentiment_csv(tmp_path / "data.csv")),
            "mode": "classification",
            "template": "Review: {text} Label: {label}",
            "label_words": {"pos": "yes", "neg": "no"},
            "val_size": 16,
        },
        train={
            "epochs": 2,
            "batch_size": 8,
            "lr": 5e-3,
            "progress": False,
            "plot": False,
            "log_every": 2,
            **train_fields,
        },
    )


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def quiet(_: str) -> None:
    pass


class Crash(Exception):
    pass


def crash_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the next run die just before optimizer step ``step`` + 1, as a killed process would."""
    original = Run.train_step

    def train_step(self: Run) -> tuple[float, int]:
        if self.step == step:
            raise Crash
        return original(self)

    monkeypatch.setattr(Run, "train_step", train_step)


def test_resumed_run_ends_with_the_same_adapter(tmp_path: Path, chars, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    full = train(
        job(tmp_path, "full", save_every=3), model=tiny_model("llama"), tokenizer=chars, log=quiet
    )
    assert full.steps == 12  # 48 examples / 8 per batch * 2 epochs

    # A run killed after step 5 (its last checkpoint is step 3), then resumed in a different RNG
    # state.
    stopped = job(tmp_path, "stopped", save_every=3)
    with monkeypatch.context() as patch, pytest.raises(Crash):
        crash_at(patch, 5)
        train(stopped, model=tiny_model("llama"), tokenizer=chars, log=quiet)
    assert [p.name for p in ckpt.list_checkpoints(stopped.output_dir)] == ["step-000003"]
    torch.manual_seed(1234)
    resumed = job(tmp_path, "stopped", save_every=3, resume=True)
    result = train(resumed, model=tiny_model("llama"), tokenizer=chars, log=quiet)
    assert result.steps == 12

    a, b = adapter_tensors(full.output_dir), adapter_tensors(result.output_dir)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    steps = [
        r["step"]
        for r in map(json.loads, (result.output_dir / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert steps == sorted(set(steps))  # the crashed tail (steps 4-5) was not logged twice


def test_accumulation_equals_a_bigger_batch(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    # No dropout: masks drawn for one batch of 8 and two of 4 differ.
    # Length grouping off: it would batch a window of 8 and of 4 differently.
    big = train(
        job(
            tmp_path,
            "big",
            dropout=0.0,
            batch_size=8,
            grad_accum=1,
            max_steps=4,
            eval_before=False,
            group_by_length=False,
        ),
        model=tiny_model("llama"),
        tokenizer=chars,
        log=quiet,
    )
    acc = train(
        job(
            tmp_path,
            "acc",
            dropout=0.0,
            batch_size=4,
            grad_accum=2,
            max_steps=4,
            eval_before=False,
            group_by_length=False,
        ),
        model=tiny_model("llama"),
        tokenizer=chars,
        log=quiet,
    )
    a, b = adapter_tensors(big.output_dir), adapter_tensors(acc.output_dir)
    for key in a:  # same examples per step, each target token weighted the same: the same updates
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


def test_compiled_training_ends_with_the_eager_adapter_and_hands_the_model_back_eager(  # type: ignore[no-untyped-def]
    tmp_path: Path, chars
) -> None:
    fields = {
        "dropout": 0.0,
        "max_steps": 3,
        "eval_before": False,
        "eval_every": None,
        "packing": True,
    }
    eager = train(
        job(tmp_path, "eager", **fields), model=tiny_model("llama"), tokenizer=chars, log=quiet
    )
    model = tiny_model("llama")
    torch._dynamo.reset()
    compiled = train(
        job(tmp_path, "compiled", torch_compile=True, **fields),
        model=model,
        tokenizer=chars,
        log=quiet,
    )
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    a, b = adapter_tensors(eager.output_dir), adapter_tensors(compiled.output_dir)
    # it trained
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in a.items() if "lora_B" in k)
    for key in a:  # the compiled steps updated the adapter as the eager ones did
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    assert model._compiled_call_impl is None  # the caller's model is eager again


def test_training_learns_and_writes_its_outputs(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    config = job(tmp_path, epochs=6, eval_every=6, plot=True, lr=3e-2)
    config.adapter["target_modules"] = "all-linear"
    result = train(config, model=tiny_model("llama"), tokenizer=chars, log=quiet)
    assert result.before is not None and result.after is not None
    # A random 1000-token model starts at ln(1000) = 6.9 and moves slowly; a clear drop shows it
    # optimizes.
    assert result.after.loss < result.before.loss - 0.4
    out = result.output_dir
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "config.yaml",
        "summary.json",
        "metrics.jsonl",
        "plot.png",
    } <= {p.name for p in out.iterdir()}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and "eval_accuracy" in records[0]
    assert [r["step"] for r in records if "eval_loss" in r] == [0, 6, 12, 18, 24, 30, 36]
    assert "## Training" in (out / "README.md").read_text()
    # the job as given, with what `auto` resolved to (tests/train/test_defaults.py)
    expected = config.to_dict()
    expected["dtype"], expected["train"]["packing"] = "float32", True
    expected["train"]["split_by_length"] = False  # packed rows have no padding to save
    assert JobConfig.from_yaml(out / "config.yaml").to_dict() == expected

    # The saved adapter reloads onto a fresh base and gives the trained model's logits.
    reloaded = PeftModel.from_pretrained(tiny_model("llama"), out)
    inputs = {"input_ids": torch.tensor([chars("Review: good film Label:")["input_ids"]])}
    torch.testing.assert_close(outputs(reloaded, inputs), outputs(result.model.eval(), inputs))


def fused_attention_log(model: torch.nn.Module) -> list[tuple[bool, bool]]:
    """(grad enabled, fused attention kernel allowed) at each forward of ``model``."""
    seen: list[tuple[bool, bool]] = []
    model.register_forward_pre_hook(
        lambda *_: seen.append((torch.is_grad_enabled(), torch.backends.cuda.flash_sdp_enabled()))
    )
    return seen


@pytest.mark.parametrize("how", ["autocast", "bf16 base"])
def test_bf16_training_stays_close_to_fp32(tmp_path: Path, chars, how: str) -> None:  # type: ignore[no-untyped-def]
    """bf16 (autocast, or a bf16 base with fp32 adapters) learns what fp32 learns, within bf16's
    precision."""
    # o_proj and down_proj read bf16 inputs under autocast (attention and MLP outputs), q_proj and
    # v_proj fp32
    fields = {
        "epochs": 4,
        "lr": 3e-2,
        "eval_before": True,
        "dropout": 0.0,
        "targets": ("q_proj", "v_proj", "o_proj", "down_proj"),
    }
    ref_model = tiny_model("llama")
    ref_kernels = fused_attention_log(ref_model)
    ref = train(job(tmp_path, "fp32", **fields), model=ref_model, tokenizer=chars, log=quiet)
    config = job(tmp_path, "bf16", **fields, precision="bf16" if how == "autocast" else "fp32")
    model = tiny_model("llama")
    if how == "bf16 base":
        model = model.to(torch.bfloat16)
    kernels = fused_attention_log(model)
    low = train(config, model=model, tokenizer=chars, log=quiet)
    # Half-precision training steps on CPU use the unfused attention kernel (its bf16 backward is
    # faster); evaluation, and fp32 training, keep the fused one.
    assert {fused for grad, fused in kernels if grad} == {False}
    assert {fused for grad, fused in kernels if not grad} == {True}
    assert {fused for _, fused in ref_kernels} == {True}
    assert ref.after is not None and low.after is not None and ref.before is not None
    assert ref.after.loss < ref.before.loss - 0.2  # fp32 moved
    drop, low_drop = ref.before.loss - ref.after.loss, ref.before.loss - low.after.loss
    assert low_drop == pytest.approx(drop, rel=0.1)  # and bf16 moved as far
    lora = [p for n, p in low.model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)  # adapters train in fp32 either way


def test_unfused_attention_only_while_its_scores_fit() -> None:
    """The unfused kernel stores (rows, heads, width, width) scores for backward: long batches stay
    fused."""
    model = tiny_model("llama").to(torch.bfloat16)
    budget = unfused_attention(torch.device("cpu"), model, contextlib.nullcontext())
    assert budget == UNFUSED_ATTENTION_SCORES
    assert (
        unfused_attention(torch.device("cpu"), tiny_model("llama"), contextlib.nullcontext()) == 0
    )  # fp32
    heads = model.config.num_attention_heads
    fits = math.isqrt(budget // (8 * heads))  # the widest batch of 8 rows that fits
    for width, fused in [(fits, False), (fits + 1, True)]:
        with attention_kernel(
            model, {"input_ids": torch.zeros(8, width, dtype=torch.long)}, budget
        ):
            assert torch.backends.cuda.flash_sdp_enabled() is fused


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "prefix_tuning", "ia3"])
def test_other_methods_train_and_resume(tmp_path: Path, chars, method: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    full = train(
        job(tmp_path, "full", method=method, save_every=2, lr=3e-2, max_steps=4),
        model=tiny_model("llama"),
        tokenizer=chars,
        log=quiet,
    )
    assert full.after is not None and full.before is not None and full.after.loss < full.before.loss
    with monkeypatch.context() as patch, pytest.raises(Crash):
        crash_at(patch, 3)
        train(
            job(tmp_path, "cut", method=method, save_every=2, lr=3e-2, max_steps=4),
            model=tiny_model("llama"),
            tokenizer=chars,
            log=quiet,
        )
    resumed = train(
        job(tmp_path, "cut", method=method, save_every=2, lr=3e-2, max_steps=4, resume=True),
        model=tiny_model("llama"),
        tokenizer=chars,
        log=quiet,
    )
    a, b = adapter_tensors(full.output_dir), adapter_tensors(resumed.output_dir)
    for key in a:  # p-tuning resumes its encoder, not just the saved embeddings
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_existing_checkpoints_are_not_overwritten_silently(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    train(
        job(tmp_path, save_every=2, max_steps=2),
        model=tiny_model("llama"),
        tokenizer=chars,
        log=quiet,
    )
    with pytest.raises(ConfigError, match=r"already holds checkpoints.*--resume"):
        train(
            job(tmp_path, save_every=2, max_steps=2),
            model=tiny_model("llama"),
            tokenizer=chars,
            log=quiet,
        )


def test_checkpoints_are_pruned_and_damaged_ones_refused(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    config = job(tmp_path, save_every=1, max_steps=4, keep_checkpoints=2)
    train(config, model=tiny_model("llama"), tokenizer=chars, log=quiet)
    found = ckpt.list_checkpoints(config.output_dir)
    assert [p.name for p in found] == ["step-000003", "step-000004"]
    (found[-1] / ckpt.STATE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="damaged"):
        ckpt.load_state(found[-1])


@pytest.mark.parametrize(
    ("kind", "warmup", "expected"),
    [
        # warmup from 0, then a straight line to 0
        ("linear", 2, {0: 0.0, 1: 0.5, 2: 1.0, 6: 0.5, 10: 0.0}),
        ("cosine", 0, {0: 1.0, 5: 0.5, 10: 0.0}),  # half a cosine
        ("constant", 2, {0: 0.0, 1: 0.5, 2: 1.0, 9: 1.0}),
    ],
)
def test_schedules(kind: str, warmup: int, expected: dict[int, float]) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule, seen = lr_schedule(optimizer, kind, warmup, total=10), {}
    for step in range(11):
        seen[step] = optimizer.param_groups[0]["lr"] / 2.0
        optimizer.step()
        schedule.step()
    assert {s: round(seen[s], 4) for s in expected} == expected


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_schedules_follow_transformers_step_for_step(kind: str) -> None:
    from transformers import get_scheduler

    for warmup, total in [(0, 1), (0, 10), (1, 5), (3, 10), (10, 10), (4, 3)]:
        ours = lr_schedule(
            torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), kind, warmup, total
        )
        name = "constant_with_warmup" if kind == "constant" else kind
        theirs = get_scheduler(
            name,
            torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
            num_warmup_steps=warmup,
            num_training_steps=total,
        )
        for step in range(total + 3):  # past the end too: a run resumed with more steps
            expected = theirs.lr_lambdas[0](step)
            assert ours.lr_lambdas[0](step) == pytest.approx(expected, abs=1e-12), (
                warmup,
                total,
                step,
            )


def test_training_imports_neither_the_peer_nor_bitsandbytes() -> None:
    """transformers.get_scheduler imports Trainer's utilities and, through them, PEFT and
    bitsandbytes."""
    import subprocess
    import sys

    code = (
        "import sys, torch; from peftkit.train.loop import lr_schedule, train; "
        "lr_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 'cosine', 1, 5); "
        "print(sorted(m for m in ('peft', 'bitsandbytes', 'transformers.trainer_utils') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_report_to_tensorboard_gets_the_metrics_of_metrics_jsonl(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(
        job(tmp_path, epochs=1, report_to=["tensorboard"]),
        model=tiny_model("llama"),
        tokenizer=chars,
        log=quiet,
    )
    records = [
        json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()
    ]
    events = EventAccumulator(
        str(next((result.output_dir / "runs").rglob("events.out.tfevents.*")).parent)
    )
    events.Reload()
    for key in ("loss", "eval_loss", "eval_accuracy"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        expected = [(r["step"], r[key]) for r in records if key in r]
        assert [s for s, _ in logged] == [s for s, _ in expected] and expected
        # stored as float32
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6)


def test_report_to_names_a_known_tracker(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.report_to"):
        job(tmp_path, report_to=["tensorbord"])


def test_adalora_resumes_with_its_scores_and_ranks(tmp_path: Path, chars, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The rank allocator's smoothed scores and kept ranks ride in the checkpoint: a run cut after
    step 3 and resumed from step 2 ends with the uninterrupted run's adapter and ranks."""
    import dataclasses

    def adalora(out: str, **fields: object) -> JobConfig:
        base = job(tmp_path, out, save_every=2, lr=1e-2, max_steps=6, **fields)
        adapter = {"init_r": 4, "target_r": 2, "total_step": 6, "tinit": 1, "tfinal": 2}
        return dataclasses.replace(
            base, method="adalora", adapter={**adapter, "target_modules": ["q_proj", "v_proj"]}
        )

    full = train(adalora("full"), model=tiny_model("llama"), tokenizer=chars, log=quiet)
    with monkeypatch.context() as patch, pytest.raises(Crash):
        crash_at(patch, 4)
        train(adalora("cut"), model=tiny_model("llama"), tokenizer=chars, log=quiet)
    resumed = train(
        adalora("cut", resume=True), model=tiny_model("llama"), tokenizer=chars, log=quiet
    )
    a, b = adapter_tensors(full.output_dir), adapter_tensors(resumed.output_dir)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    ranks = [
        json.loads((r.output_dir / "adapter_config.json").read_text())["rank_pattern"]
        for r in (full, resumed)
    ]
    assert ranks[0] == ranks[1] and ranks[0]
