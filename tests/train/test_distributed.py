"""Data-parallel training under torchrun: 2 CPU processes with gloo, compared with one process.

Every run here is a real ``torchrun`` launch of ``python -m peftkit train``. The global batch is the
config's, split by rows between processes, so the adapter after K steps must equal a single
process's (to float rounding in the gradient all-reduce).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftkit import JobConfig, PeftModel, train
from peftkit.integrations.models import load_model
from peftkit.train.distributed import Processes, even_shard, shard
from tests.train.test_loop import sentiment_csv

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def job_file(
    tmp: Path,
    model_dir: Path,
    out: str,
    *,
    dropout: float = 0.0,
    steps: int = 6,
    method: str = "lora",
    **train: object,
) -> Path:
    data = sentiment_csv(tmp / "d.csv", n=71)
    fields = {
        "max_steps": steps,
        "batch_size": 6,
        "grad_accum": 2,
        "lr": 0.01,
        "progress": False,
        "plot": False,
        "log_every": 1,
        "eval_batch_size": 4,
        **train,
    }
    path = tmp / f"{out}.yaml"
    path.write_text(
        f"model: {model_dir}\nseed: 5\noutput_dir: {tmp / out}\n"
        # torchrun's workers read the real CPU flags: no bf16 base on an AMX machine
        "dtype: float32\n"
        + (
            f"adapter: {{r: 4, lora_alpha: 8, lora_dropout: {dropout}, target_modules: [q_proj, v_proj]}}\n"
            if method == "lora"
            else f"method: {method}\nadapter: {{num_virtual_tokens: 4}}\n"
        )
        + f"data: {{path: {data}, mode: classification, template: 'Review: {{text}} Label: {{label}}', "
        "label_words: {pos: yes, neg: no}, val_size: 15}\n"
        f"train: {json.dumps(fields)}\n"
    )
    return path


def torchrun(config: Path, *extra: str, nproc: int = 2) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "peftkit",
        "train",
        "--config",
        str(config),
        *extra,
    ]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )


def finish(proc: subprocess.Popen[bytes]) -> str:
    out, _ = proc.communicate(timeout=400)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    return text


def single_process(config: Path, chars) -> Path:  # type: ignore[no-untyped-def]
    job = JobConfig.from_yaml(config)
    train(job, tokenizer=chars, log=lambda _: None)
    return Path(job.output_dir)


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter_model.safetensors"))


def assert_same_adapter(a: Path, b: Path, atol: float = 1e-5) -> None:
    left, right = adapter(a), adapter(b)
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], atol=atol, rtol=0, msg=key)


def summary(out: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((out / "summary.json").read_text())


# ----- pure helpers
# ------------------------------------------------------------------------------------------


def test_rows_are_split_by_stride_and_cover_the_batch() -> None:
    rows = list(range(7))
    parts = [shard(rows, Processes(rank, 3)) for rank in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]


def test_evaluation_shares_are_padded_to_one_length() -> None:
    shares = [even_shard(5, Processes(rank, 2)) for rank in range(2)]
    # rank 1 repeats a row of its own, not counted
    assert shares == [([0, 2, 4], 3), ([1, 3, 1], 2)]


# ----- real launches
# -----------------------------------------------------------------------------------------


def test_ddp_on_two_processes_equals_one_process(tmp_path: Path, model_dir: Path, chars) -> None:  # type: ignore[no-untyped-def]
    two = torchrun(job_file(tmp_path, model_dir, "two"))
    one = single_process(job_file(tmp_path, model_dir, "one"), chars)
    log = finish(two)
    assert "training on 2 processes (ddp)" in log
    assert_same_adapter(tmp_path / "two", one)
    # Evaluation is sharded (15 rows: 8 + 7) and reduced: the same metrics as one process.
    for when in ("before", "after"):
        for key, value in summary(one)[when].items():
            assert summary(tmp_path / "two")[when][key] == pytest.approx(
                value, rel=1e-6, abs=1e-6
            ), (when, key)
    assert summary(tmp_path / "two")["processes"] == 2
    # Rank 0 alone wrote the metrics: one record per step, no duplicates.
    records = [
        json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_prefix_tuning_packed_on_two_processes_equals_one_process(
    tmp_path: Path, model_dir: Path, chars
) -> None:  # type: ignore[no-untyped-def]
    """Each process packs its share of the batch with a mask per example; DDP sums what one process
    computes."""
    two = torchrun(job_file(tmp_path, model_dir, "two", method="prefix_tuning"))
    one = single_process(job_file(tmp_path, model_dir, "one", method="prefix_tuning"), chars)
    log = finish(two)
    assert "training on 2 processes (ddp)" in log and "packing: on (prefix_tuning" in log
    assert_same_adapter(tmp_path / "two", one)


def test_killed_run_resumed_on_two_processes_ends_the_same(tmp_path: Path, model_dir: Path) -> None:
    steps = 40
    reference = torchrun(
        job_file(
            tmp_path, model_dir, "ref", dropout=0.1, steps=steps, save_every=3, eval_before=False
        )
    )
    finish(reference)

    config = job_file(
        tmp_path, model_dir, "killed", dropout=0.1, steps=steps, save_every=3, eval_before=False
    )
    proc = torchrun(config)
    target = tmp_path / "killed" / "checkpoints" / "step-000006"
    deadline = time.monotonic() + 300
    while not target.exists():
        assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
        assert time.monotonic() < deadline, "the run never reached its checkpoint"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers, without warning
    proc.wait()
    assert not (tmp_path / "killed" / "adapter_model.safetensors").exists()

    log = finish(torchrun(config, "--resume"))
    assert "resumed from" in log
    assert_same_adapter(tmp_path / "killed", tmp_path / "ref", atol=1e-6)


def test_fsdp_trains_like_one_process_and_its_adapter_loads_in_one(
    tmp_path: Path, model_dir: Path, chars
) -> None:  # type: ignore[no-untyped-def]
    sharded = torchrun(job_file(tmp_path, model_dir, "fsdp", strategy="fsdp", save_every=3))
    one = single_process(job_file(tmp_path, model_dir, "one"), chars)
    log = finish(sharded)
    assert "(fsdp)" in log
    assert_same_adapter(tmp_path / "fsdp", one)
    assert (tmp_path / "fsdp" / "checkpoints" / "step-000006" / "trainable.safetensors").is_file()

    inputs = chars(
        ["Review: great film Label:", "Review: awful film Label:"],
        return_tensors="pt",
        padding=True,
    )
    logits = []
    for folder in (tmp_path / "fsdp", one):
        model = PeftModel.from_pretrained(load_model(model_dir), folder).eval()
        with torch.no_grad():
            logits.append(model(**inputs).logits)
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=0)


def test_fsdp_resume_under_two_processes(tmp_path: Path, model_dir: Path) -> None:
    """A sharded run's checkpoint (optimizer state gathered from the shards) resumes under FSDP."""
    config = job_file(
        tmp_path,
        model_dir,
        "fsdp",
        strategy="fsdp",
        steps=4,
        save_every=2,
        schedule="constant",
        eval_before=False,
    )
    finish(torchrun(config))
    longer = job_file(
        tmp_path,
        model_dir,
        "fsdp",
        strategy="fsdp",
        steps=6,
        save_every=2,
        schedule="constant",
        eval_before=False,
    )
    ref = job_file(
        tmp_path,
        model_dir,
        "ref",
        strategy="fsdp",
        steps=6,
        save_every=2,
        schedule="constant",
        eval_before=False,
    )
    reference = torchrun(ref)
    log = finish(torchrun(longer, "--resume"))
    finish(reference)
    assert "resumed from" in log and "step 4 of 6" in log
    assert_same_adapter(tmp_path / "fsdp", tmp_path / "ref", atol=1e-6)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run(
        [sys.executable, "-m", "peftkit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_nproc_shortcut_launches_torchrun(tmp_path: Path, model_dir: Path) -> None:
    proc = run_cli(
        "train", "--nproc", "2", "--config", str(job_file(tmp_path, model_dir, "two", steps=2))
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "launching: torchrun --standalone --nproc-per-node=2 -m peftkit train --config"
        in proc.stderr
    )
    assert "training on 2 processes (ddp)" in proc.stdout
    assert summary(tmp_path / "two")["processes"] == 2


def test_batch_smaller_than_the_process_count_is_refused_before_launch(
    tmp_path: Path, model_dir: Path
) -> None:
    proc = run_cli(
        "train",
        "--nproc",
        "2",
        "--config",
        str(job_file(tmp_path, model_dir, "small", batch_size=1)),
    )
    assert proc.returncode == 2
    assert "launching" not in proc.stderr
    assert (
        "train.batch_size=1 is the global micro-batch, split over --nproc 2 processes"
        in proc.stderr
    )


def test_batch_smaller_than_the_process_count_is_refused_under_torchrun(
    tmp_path: Path, model_dir: Path
) -> None:
    proc = torchrun(job_file(tmp_path, model_dir, "small", batch_size=1))
    out = proc.communicate(timeout=300)[0].decode(errors="replace")
    assert proc.returncode != 0
    assert (
        "error (rank 0): Invalid configuration: train.batch_size=1 is the global micro-batch" in out
    )


def test_a_dead_worker_stops_the_run_instead_of_hanging(tmp_path: Path, model_dir: Path) -> None:
    config = job_file(tmp_path, model_dir, "dies", steps=400, save_every=2, eval_before=False)
    proc = torchrun(config)
    target = tmp_path / "dies" / "checkpoints" / "step-000002"
    deadline = time.monotonic() + 300
    while not target.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(workers) == 2
    os.kill(int(workers[1]), signal.SIGKILL)  # rank 1 dies without a word
    # the others stop, well before 400 steps
    out = proc.communicate(timeout=120)[0].decode(errors="replace")
    assert proc.returncode != 0
    assert "rank      : 1" in out and "Signal 9 (SIGKILL)" in out, out[-3000:]
    assert not (tmp_path / "dies" / "adapter_model.safetensors").exists()
