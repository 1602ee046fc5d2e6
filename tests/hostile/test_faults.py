"""Faults during training, in real processes: kill -9 at a random step and Ctrl-C, then --resume.

Each run is a ``python -m peftkit train`` subprocess with one thread, so an interrupted-and-resumed
run can be compared bitwise with one that never stopped.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.test_loop import sentiment_csv

STEPS, SAVE_EVERY = 120, 3


def job_file(tmp: Path, model_dir: Path, out: str) -> Path:
    data = sentiment_csv(tmp / "d.csv", n=72)
    path = tmp / f"{out}.yaml"
    path.write_text(
        f"model: {model_dir}\nseed: 5\noutput_dir: {tmp / out}\n"
        "adapter: {r: 4, lora_alpha: 8, lora_dropout: 0.1, target_modules: [q_proj, v_proj]}\n"
        f"data: {{path: {data}, mode: classification, template: 'Review: {{text}} Label: {{label}}', "
        "label_words: {pos: yes, neg: no}, val_size: 8}\n"
        f"train: {{max_steps: {STEPS}, save_every: {SAVE_EVERY}, batch_size: 4, lr: 0.01, progress: false, "
        "plot: false, eval_before: false}\n"
    )
    return path


def start(config: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "peftkit", "train", "--config", str(config), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, (out + err).decode(errors="replace")


def wait_for_checkpoint(out: Path, step: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 240
    target = out / "checkpoints" / f"step-{step:06d}"
    while not target.exists():
        assert proc.poll() is None, finish(proc)[1]
        assert time.monotonic() < deadline, "the run never reached the checkpoint"
        time.sleep(0.005)


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter_model.safetensors"))


def assert_same_adapter(a: Path, b: Path) -> None:
    x, y = adapter(a), adapter(b)
    assert x.keys() == y.keys()
    for key in x:
        assert torch.equal(x[key], y[key]), key  # bitwise: same seed, CPU, one thread


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("faults")
    code, log = finish(start(job_file(tmp, model_dir, "full")))
    assert code == 0, log
    return tmp / "full"


def test_kill_9_at_a_random_step_then_resume(
    tmp_path: Path, model_dir: Path, uninterrupted: Path
) -> None:
    kill_after = random.randrange(SAVE_EVERY, STEPS - SAVE_EVERY, SAVE_EVERY)
    config = job_file(tmp_path, model_dir, "killed")
    proc = start(config)
    wait_for_checkpoint(tmp_path / "killed", kill_after, proc)
    proc.send_signal(signal.SIGKILL)
    code, _ = finish(proc)
    assert code == -signal.SIGKILL, f"the run ended before the kill (after checkpoint {kill_after})"
    code, log = finish(start(config, "--resume"))
    assert code == 0, log
    assert "resumed from" in log
    assert_same_adapter(uninterrupted, tmp_path / "killed")


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_same(
    tmp_path: Path, model_dir: Path, uninterrupted: Path
) -> None:
    config = job_file(tmp_path, model_dir, "stopped")
    proc = start(config)
    wait_for_checkpoint(tmp_path / "stopped", SAVE_EVERY * 2, proc)
    proc.send_signal(signal.SIGINT)
    code, log = finish(proc)
    assert code == 130, log
    assert "interrupted at step" in log and "--resume" in log and "Traceback" not in log
    code, log = finish(start(config, "--resume"))
    assert code == 0, log
    assert_same_adapter(uninterrupted, tmp_path / "stopped")


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["sigterm", "sighup"]
)
def test_sigterm_and_sighup_stop_like_ctrl_c(
    tmp_path: Path, model_dir: Path, uninterrupted: Path, sig: signal.Signals, code: int
) -> None:
    """Schedulers send SIGTERM and closed terminals SIGHUP: both must checkpoint, say so and exit
    128 + signal."""
    config = job_file(tmp_path, model_dir, "stopped")
    proc = start(config)
    wait_for_checkpoint(tmp_path / "stopped", SAVE_EVERY * 2, proc)
    proc.send_signal(sig)
    got, log = finish(proc)
    assert got == code, log
    assert f"({sig.name})" in log and "--resume" in log and "Traceback" not in log
    assert not (tmp_path / "stopped" / ".peftkit.lock").exists()
    got, log = finish(start(config, "--resume"))
    assert got == 0, log
    assert_same_adapter(uninterrupted, tmp_path / "stopped")
