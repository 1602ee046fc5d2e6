"""train.split_by_length: each unpacked batch as sub-batches of similar length, learning what the
batch would."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch

from peftkit import train
from peftkit.train.batches import split_by_length
from peftkit.train.config import JobConfig
from peftkit.train.defaults import choose_split
from tests.conftest import tiny_model
from tests.train.test_loop import adapter_tensors, job, quiet
from tests.train.test_packing import varied_csv

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def cheapest_by_enumeration(lengths: list[int], overhead: int) -> int:
    """The lowest padded cost over every way to cut the sorted rows into runs: the reference the
    search must hit."""
    sizes = sorted(lengths)
    costs = []
    for cuts in itertools.product([False, True], repeat=len(sizes) - 1):
        bounds = [0] + [i + 1 for i, cut in enumerate(cuts) if cut] + [len(sizes)]
        costs.append(sum((b - a) * sizes[b - 1] + overhead for a, b in itertools.pairwise(bounds)))
    return min(costs)


@pytest.mark.parametrize("seed", range(6))
def test_the_split_covers_every_row_once_at_the_lowest_cost(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [
        rng.choice([rng.randint(5, 30), rng.randint(100, 300)]) for _ in range(rng.randint(1, 9))
    ]
    overhead = rng.choice([0, 16, 64, 500])
    groups = split_by_length(lengths, overhead)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    cost = sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)
    assert cost == cheapest_by_enumeration(lengths, overhead)


def test_rows_of_one_length_stay_one_pass_and_a_free_pass_splits_every_length() -> None:
    assert split_by_length([7] * 8) == [list(range(8))]
    groups = split_by_length([3, 9, 3, 9], overhead=0)
    assert sorted(map(sorted, groups)) == [[0, 2], [1, 3]]


@pytest.mark.parametrize("method", ["lora", "prefix_tuning"])
def test_training_split_by_length_equals_training_each_batch_whole(
    tmp_path: Path, chars, method: str
) -> None:  # type: ignore[no-untyped-def]
    passes = {}
    for split in (False, True):
        config = job(
            tmp_path,
            f"{method}-{split}",
            method=method,
            dropout=0.0,
            packing=False,
            epochs=1,
            split_by_length=split,
        )
        config.data.path = str(varied_csv(tmp_path / "varied.csv"))
        model = tiny_model("llama")
        calls = {"forward": 0}

        def count(module: torch.nn.Module, args: object, calls: dict[str, int] = calls) -> None:
            calls["forward"] += 1

        model.register_forward_pre_hook(count)
        result = train(config, model=model, tokenizer=chars, log=quiet)
        assert result.after is not None
        passes[split] = calls["forward"]
    whole, split_run = (adapter_tensors(tmp_path / f"{method}-{s}") for s in (False, True))
    assert whole.keys() == split_run.keys()
    for name in whole:
        torch.testing.assert_close(split_run[name], whole[name], atol=1e-5, rtol=1e-4)
    assert passes[True] > passes[False]  # the batches really ran as several passes


def test_auto_splits_unpacked_single_process_cpu_runs_only() -> None:
    auto = JobConfig(data={"path": "any"})  # type: ignore[arg-type]
    assert choose_split(auto, packed=False, device=CPU, processes=1).value == "on"
    assert choose_split(auto, packed=True, device=CPU, processes=1).value == "off"
    assert choose_split(auto, packed=False, device=CUDA, processes=1).value == "off"
    assert choose_split(auto, packed=False, device=CPU, processes=2).value == "off"
    off = JobConfig(data={"path": "any"}, train={"split_by_length": "off"})  # type: ignore[arg-type]
    assert choose_split(off, packed=False, device=CPU, processes=1).value == "off"
    on = JobConfig(data={"path": "any"}, train={"split_by_length": True})  # type: ignore[arg-type]
    assert choose_split(on, packed=False, device=CUDA, processes=1).reason == "set in the job"
