"""Training speed: peftkit's loop vs PEFT + transformers.Trainer, same model, data, method, steps
and seed.

The task is the seed's classification data (ETHOS from ``../shared/data``, template
``"Sentence : {comment} Label : {label}"``) on the packaged SmolLM2-135M, batch 8, with one method:
LoRA r8 on q,k,v,o (lr 1e-3), prompt tuning with 8 virtual tokens (lr 3e-2) or prefix tuning with 20
(lr 1e-2). Both libraries start the prompt methods at random, as PEFT does by default.
Every configuration runs in its own subprocess (so peak RSS is its own), one after another, and the
script prints a markdown table: useful tokens/s (loss-bearing, non-padding tokens of the batch),
ms/step, peak RSS and the mean training loss of the last 10 steps. peftkit's time is that of its
optimizer steps; the Trainer's is ``trainer.train()`` (its data loading and callbacks are part of
what it costs).

    python benchmarks/training.py [--steps 30] [--method lora|prompt|prefix]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ethos-binary.csv"
CONFIGS = [
    "peft-trainer-default",
    "peft-trainer-best",
    "peftkit-default",
    "peftkit-default-compiled",
    "peftkit-fp32-unpacked",
    "peftkit-packed",
    "peftkit-grouped",
    "peftkit-grouped-bf16-autocast",
    "peftkit-grouped-bf16-base",
    "peftkit-packed-bf16-base",
    "peftkit-default-base-only",
]
PROMPT_CONFIGS = [
    "peft-trainer-default",
    "peft-trainer-best",
    "peftkit-default",
    "peftkit-default-split",
    "peftkit-fp32-unpacked",
    "peftkit-grouped-bf16-base",
]
LR = {"lora": 1e-3, "prompt": 3e-2, "prefix": 1e-2, "loha": 1e-3, "lokr": 1e-3, "oft": 1e-3}
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
ADAPTERS: dict[str, dict[str, object]] = {
    "lora": LORA,
    "prompt": {"num_virtual_tokens": 8},
    "prefix": {"num_virtual_tokens": 20},
}
# the LyCORIS methods and OFT on the same layers as LoRA (issue 44), their PEFT defaults otherwise
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
ADAPTERS.update(
    {
        "loha": {"r": 8, "alpha": 16, "target_modules": QKVO},
        "lokr": {"r": 8, "alpha": 16, "target_modules": QKVO},
        "oft": {"r": 0, "oft_block_size": 32, "target_modules": QKVO},
    }
)
METHOD = {
    "lora": "lora",
    "prompt": "prompt_tuning",
    "prefix": "prefix_tuning",
    "loha": "loha",
    "lokr": "lokr",
    "oft": "oft",
}
PEFT_CLASSES = {"loha": "LoHaConfig", "lokr": "LoKrConfig", "oft": "OFTConfig"}
"""peftkit-default: what a job gets without flags (``dtype: auto`` and ``train.packing: auto``,
decided by peftkit.train.defaults: a bf16 base only where bf16 is native, packing for LoRA);
-fp32-unpacked: the defaults before issue 22 (fp32, shuffled, unpacked); -default-compiled: the
defaults plus train.torch_compile (its first step includes the compile); -packed: the same batches
packed into fewer rows (train.packing); -grouped: length-grouped batches as in the peer's best;
-bf16-autocast: precision bf16 (autocast over fp32 weights); -bf16-base: the frozen base stored in
bf16 (dtype: bfloat16) and the adapter in fp32, no autocast. Only the -default rows take
train.split_by_length's auto (sub-batches of similar length for unpacked batches on a CPU); the
others run each batch whole, as their names say; -default-split is the default with packing off
(each batch unpacked, in sub-batches of similar length). -default-base-only: the default row with
every LoRA layer returning its base layer's output (the adapter computes nothing, the backward still
runs to the inputs), the ceiling any adapter reaches on this pipeline: its MFU says what the frozen
model's own step allows."""


def data_config() -> dict[str, object]:
    return {
        "path": str(DATA),
        "delimiter": ";",
        "mode": "classification",
        "template": "Sentence : {comment} Label : {label}",
        "label_column": "isHate",
        "label_threshold": 0.5,
        "label_words": {"1": "hate", "0": "not hate"},
        "max_length": 256,
        "val_size": 0,
    }


def examples(tokenizer):  # type: ignore[no-untyped-def]
    from peftkit.train import DataConfig
    from peftkit.train.data import load_task_data

    cfg = DataConfig(**data_config())  # type: ignore[arg-type]
    problems: list[str] = []
    cfg._validate(problems)
    return load_task_data(cfg, tokenizer, seed=0).train


def peft_config(method: str):  # type: ignore[no-untyped-def]
    import peft

    if method == "prompt":
        return peft.PromptTuningConfig(task_type="CAUSAL_LM", **ADAPTERS["prompt"])  # type: ignore[arg-type]
    if method == "prefix":
        return peft.PrefixTuningConfig(task_type="CAUSAL_LM", **ADAPTERS["prefix"])  # type: ignore[arg-type]
    if method in PEFT_CLASSES:
        return getattr(peft, PEFT_CLASSES[method])(task_type="CAUSAL_LM", **ADAPTERS[method])
    return peft.LoraConfig(task_type="CAUSAL_LM", **LORA)  # type: ignore[arg-type]


def run_peft(name: str, steps: int, tmp: str, method: str) -> dict[str, float]:
    import peft
    import torch
    import transformers

    from peftkit import load_model, load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    rows = [
        {"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)}
        for e in examples(tokenizer)
    ]
    torch.manual_seed(0)
    model = peft.get_peft_model(load_model("smollm2-135m"), peft_config(method))
    best = name.endswith("best")
    native = torch.cuda.is_available() or native_bf16()
    args = transformers.TrainingArguments(
        output_dir=tmp,
        per_device_train_batch_size=8,
        max_steps=steps,
        learning_rate=LR[method],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        bf16=best and native,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        **({"train_sampling_strategy": "group_by_length"} if best else {}),
    )
    collator = transformers.DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    useful = {"tokens": 0}

    def counting(features):  # type: ignore[no-untyped-def]
        batch = collator(features)
        useful["tokens"] += int(batch["attention_mask"].sum())
        return batch

    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=rows, data_collator=counting
    )
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {
        "seconds": elapsed,
        "tokens": useful["tokens"],
        "loss": sum(losses[-10:]) / len(losses[-10:]),
    }


def peftkit_settings(name: str, steps: int, method: str) -> dict[str, object]:
    """The job a peftkit setup name stands for: its base dtype and its train section."""
    default = name.startswith("peftkit-default")
    parts = name.split("-")  # whole words: "unpacked" contains "packed"
    packing = (False if "split" in parts else "auto") if default else "packed" in parts
    return {
        "dtype": "auto" if default else "bfloat16" if name.endswith("bf16-base") else "float32",
        "train": {
            "max_steps": steps,
            "batch_size": 8,
            "lr": LR[method],
            "log_every": 1,
            "progress": False,
            "plot": False,
            "eval_before": False,
            "torch_compile": parts[-1] == "compiled",
            "precision": "bf16" if parts[-1] == "autocast" else "auto",
            "group_by_length": "grouped" in parts,
            "packing": packing,
            "split_by_length": "auto" if default else False,
        },
    }


def run_peftkit(name: str, steps: int, tmp: str, method: str) -> dict[str, float]:
    from peftkit import JobConfig, train

    settings = peftkit_settings(name, steps, method)
    job = JobConfig(
        model="smollm2-135m",
        seed=0,
        output_dir=tmp,
        method=METHOD[method],
        adapter=ADAPTERS[method],
        data=data_config(),
        **settings,
    )  # type: ignore[arg-type]
    train(job, log=lambda _: None)
    records = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    return {"loss": sum(losses[-10:]) / len(losses[-10:])}


def child(name: str, steps: int, method: str) -> None:
    import tempfile

    import torch

    tmp = tempfile.mkdtemp()
    start = time.perf_counter()
    if name.startswith("peftkit"):
        from peftkit.train import loop

        measured: dict[str, float] = {"tokens": 0.0, "seconds": 0.0}
        step_seconds: list[float] = []
        step_tokens: list[int] = []
        real_step = loop.Run.train_step

        def timed_step(self):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            loss, tokens = real_step(self)  # tokens: the non-padding tokens of the step's batches
            step_seconds.append(time.perf_counter() - t0)
            step_tokens.append(tokens)
            measured["seconds"] += step_seconds[-1]
            measured["tokens"] += tokens
            return loss, tokens

        loop.Run.train_step = timed_step  # type: ignore[method-assign]
        if name.endswith("base-only"):
            base_only()
        result = run_peftkit(name, steps, tmp, method)
        # after the run: the steps are recorded by then
        warm = min(WARM_STEPS, len(step_seconds) - 1)
        out = {
            **result,
            **measured,
            "first_step": step_seconds[0],
            "warm_steps": sum(step_seconds[:warm]),
            "steady_tps": sum(step_tokens[warm:]) / sum(step_seconds[warm:]),
        }
    else:
        out = run_peft(name, steps, tmp, method)
    out["wall"] = time.perf_counter() - start
    out["rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    out["torch"] = torch.__version__
    print("RESULT " + json.dumps(out))


def base_only() -> None:
    """Make every LoRA layer its base layer, and the embeddings' output need a gradient so backward
    still runs through every block to the inputs: the step the frozen model costs on its own."""
    import torch

    from peftkit.tuners.base import base_output
    from peftkit.tuners.lora import LoraLinear

    def plain(self, x, *args, **kwargs):  # type: ignore[no-untyped-def]
        return base_output(self.base_layer, x, *args, **kwargs)

    embed = torch.nn.Embedding.forward

    def needing_grad(self, ids):  # type: ignore[no-untyped-def]
        return embed(self, ids).requires_grad_()

    LoraLinear.forward = plain  # type: ignore[method-assign]
    torch.nn.Embedding.forward = needing_grad  # type: ignore[method-assign]


def device() -> str:
    """Where the rows train: a CUDA GPU when there is one (both libraries take it), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def native_bf16() -> bool:
    """Whether this machine computes bf16 natively (peftkit's own rule, peftkit.train.defaults)."""
    import torch

    from peftkit.train.defaults import bf16_hardware

    return bf16_hardware(torch.device(device())) is not None


WARM_STEPS = 5  # steps counted as warm-up (compile, allocator) in the steady-state column

PARAMS = 134_515_008  # SmolLM2-135M, tied embeddings counted once
PEAK_SIZE = {"cpu": 2048, "cuda": 8192}  # a square matmul large enough to reach each one's peak
LINEARS = [
    (576, 576),
    (576, 192),
    (576, 192),
    (576, 576),
    (576, 1536),
    (576, 1536),
    (1536, 576),
] * 30 + [(576, 49152)]
"""SmolLM2-135M's linear layers as (in, out): q, k, v, o, gate, up, down in each of 30 blocks, and
the head."""
SHAPE_ROWS = 512  # a training step's rows x tokens at batch 8 (ETHOS rows pack to about that many)


def seconds_per_call(fn: Callable[[], object], n: int) -> float:
    """Mean wall time of ``fn`` after two warm-up calls, waiting for the GPU where there is one."""
    import torch

    sync = torch.cuda.synchronize if device() == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - start) / n


def peak_flops(dtype: str) -> float:
    """Matmul FLOP/s of this machine at a large square size in ``dtype`` (the roofline the MFU
    column is against)."""
    import torch

    size = PEAK_SIZE[device()]
    a, b = (torch.randn(size, size, dtype=getattr(torch, dtype), device=device()) for _ in range(2))
    return 2 * size**3 / seconds_per_call(lambda: a @ b, 20)


def shape_flops(dtype: str, rows: int = SHAPE_ROWS) -> float:
    """Matmul FLOP/s of this machine at the model's own shapes in ``dtype``: every linear layer's
    forward ``(rows, in) @ (in, out)`` and its backward to the input ``(rows, out) @ (out, in)``,
    the work MFU counts. The roofline this model can reach: small matmuls (hidden 576) may run below
    the large-square rate."""
    import torch

    kind, seconds = getattr(torch, dtype), 0.0
    for i, o in sorted(set(LINEARS)):
        x, w, g = (
            torch.randn(*shape, dtype=kind, device=device())
            for shape in ((rows, i), (o, i), (rows, o))
        )

        def both(x: torch.Tensor = x, w: torch.Tensor = w, g: torch.Tensor = g) -> object:
            return x @ w.T, g @ w  # (rows, out), (rows, in)

        seconds += LINEARS.count((i, o)) * seconds_per_call(both, 5)
    return sum(4 * rows * i * o for i, o in LINEARS) / seconds


def print_peaks(dtypes: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """The large-square rate and the model-shape rate per dtype, printed and returned."""
    peak = {d: peak_flops(d) for d in dtypes}
    own = {d: shape_flops(d) for d in dtypes}
    size = PEAK_SIZE[device()]
    print(
        f"matmul peak on {device()} ({size}x{size}): "
        + ", ".join(f"{d} {v / 1e9:.0f} GFLOP/s" for d, v in peak.items())
    )
    print(
        f"matmul rate at SmolLM2-135M's own shapes ({SHAPE_ROWS} rows, forward and backward to the inputs): "
        + ", ".join(
            f"{d} {v / 1e9:.0f} GFLOP/s ({100 * v / peak[d]:.0f}% of {size}x{size})"
            for d, v in own.items()
        )
    )
    return peak, own


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--method", choices=sorted(LR), default="lora")
    parser.add_argument("--configs", help="comma-separated subset of the setups (default: all)")
    parser.add_argument("--child")
    parser.add_argument(
        "--peaks", action="store_true", help="only print the matmul rates MFU is measured against"
    )
    args = parser.parse_args()
    if args.peaks:
        from peftkit.train.defaults import cpu_summary

        print(f"CPU flags: {cpu_summary()}")
        print_peaks(["float32", "bfloat16"] if native_bf16() else ["float32"])
        return
    if args.child:
        child(args.child, args.steps, args.method)
        return
    rows = {}
    native = native_bf16()
    names = [
        n
        for n in (CONFIGS if args.method == "lora" else PROMPT_CONFIGS)
        if native or "bf16" not in n
    ]
    if args.configs:
        wanted = set(args.configs.split(",")) | {
            "peft-trainer-default",
            "peft-trainer-best",
            "peftkit-default",
        }
        # the ratio columns need the peer's two rows and the default
        names = [n for n in names if n in wanted]
    for name in names:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                name,
                "--steps",
                str(args.steps),
                "--method",
                args.method,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{name} failed")
        rows[name] = json.loads(line.removeprefix("RESULT "))
    base = rows["peft-trainer-default"]
    best = rows["peft-trainer-best"]
    title = {
        "lora": "LoRA r8 (q,k,v,o)",
        "prompt": "Prompt tuning (8 virtual tokens)",
        "prefix": "Prefix tuning (20 virtual tokens)",
        "loha": "LoHa r8 (q,k,v,o)",
        "lokr": "LoKr r8 (q,k,v,o)",
        "oft": "OFT blocks of 32 (q,k,v,o)",
    }[args.method]
    print(
        f"# {title} training, SmolLM2-135M on ETHOS, batch 8, lr {LR[args.method]:g}, {args.steps} steps, "
        "one run each"
    )
    from peftkit.train.defaults import cpu_summary

    print(
        f"torch {rows['peftkit-default']['torch']}, {platform.machine()}, CPU flags: {cpu_summary()}; "
        f"useful tokens = the non-padding tokens of each batch\n"
    )
    if not native:
        print(
            "This CPU has neither avx512_bf16 nor AMX: bf16 would be emulated (about 100x slower than fp32), so "
            "the bf16 rows are left out and PEFT's best is fp32 with length grouping.\n"
        )
    peak, own = print_peaks(["float32", "bfloat16"] if native else ["float32"])
    roof = "bfloat16" if native else "float32"
    print(
        f"MFU counts 4 x {PARAMS / 1e6:.0f}M FLOPs per useful token (forward, and the backward to the inputs; "
        f"the frozen weights need no weight gradient) against the {roof} peak\n"
    )
    print(
        "| setup | train time s | ms/step | useful tokens/s | x PEFT default | x PEFT best | peak RSS GB "
        f"| loss (last 10 steps) | MFU ({roof} peak) | MFU ({roof} at the model's shapes) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        speed = r["tokens"] / r["seconds"]
        flops = speed * 4 * PARAMS
        print(
            f"| {name} | {r['seconds']:.1f} | {1000 * r['seconds'] / args.steps:.0f} | {speed:.0f} | "
            f"{speed / (base['tokens'] / base['seconds']):.2f}x | {speed / (best['tokens'] / best['seconds']):.2f}x "
            f"| {r['rss_gb']:.2f} | {r['loss']:.4f} | {100 * flops / peak[roof]:.0f}% "
            f"| {100 * flops / own[roof]:.0f}% |"
        )
    if "peftkit-default-compiled" in rows:
        compile_table(rows["peftkit-default"], rows["peftkit-default-compiled"], args.steps)


def compile_table(eager: dict[str, float], compiled: dict[str, float], steps: int) -> None:
    """Whether train.torch_compile pays: its compile time against its steady-state gain, over a
    whole run."""
    print(
        f"\n## train.torch_compile on the default row: compile time against steady-state gain ({steps} steps)\n"
    )
    print(
        f"| setup | first step s | first {WARM_STEPS} steps s | steady useful tokens/s | train time s |"
    )
    print("|---|---|---|---|---|")
    for name, r in (("eager", eager), ("compiled", compiled)):
        print(
            f"| {name} | {r['first_step']:.1f} | {r['warm_steps']:.1f} | {r['steady_tps']:.0f} "
            f"| {r['seconds']:.1f} |"
        )

    # time beyond what the run's tokens cost at its steady speed
    def overhead(r: dict[str, float]) -> float:
        return r["seconds"] - r["tokens"] / r["steady_tps"]

    # seconds saved per useful token once compiled
    gain = 1 / eager["steady_tps"] - 1 / compiled["steady_tps"]
    cost = overhead(compiled) - overhead(eager)
    tokens_per_step = eager["tokens"] / steps
    if gain <= 0:
        print(
            f"\nCompiled steps are not faster once compiled ({compiled['steady_tps'] / eager['steady_tps']:.2f}x): "
            "no run length pays for the compile."
        )
    else:
        print(
            f"\nSteady state {compiled['steady_tps'] / eager['steady_tps']:.2f}x eager; the compile costs "
            f"{cost:.0f} s, paid back after ~{cost / gain / tokens_per_step:.0f} steps of this size."
        )


if __name__ == "__main__":
    main()
