"""Packing: several examples per row, kept apart by restarting positions, lose exactly what they
lose apart."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

from peftkit import train
from peftkit.errors import ConfigError
from peftkit.train.data import IGNORE_INDEX, Example, pack
from peftkit.train.evaluate import row_losses
from tests.conftest import tiny_model
from tests.train.test_loop import adapter_tensors, job, quiet


def examples(n: int = 7, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(3, 20)
        ids = [rng.randrange(4, 1000) for _ in range(length)]
        # loss on the tail only, as in completion and classification data
        prompt = rng.randint(1, length - 1)
        out.append(Example(input_ids=ids, labels=[IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def only(batch: list[Example], keep: int) -> list[Example]:
    """The batch with every example's labels ignored but ``keep``'s."""
    return [
        e if i == keep else Example(e.input_ids, [IGNORE_INDEX] * len(e.labels))
        for i, e in enumerate(batch)
    ]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_each_packed_example_loses_what_it_loses_alone(arch: str) -> None:
    model = tiny_model(arch).eval()
    batch = examples()
    packed = pack(batch, pad_id=0)
    assert packed["input_ids"].shape[0] < len(batch)  # rows really hold several examples
    with torch.no_grad():
        for k, example in enumerate(batch):
            alone = pack([example], pad_id=0)
            expected = row_losses(
                model,
                {
                    "input_ids": alone["input_ids"],
                    "position_ids": alone["position_ids"],
                    "use_cache": False,
                },
                alone["labels"],
            )[0].sum()
            inputs = pack(only(batch, k), pad_id=0)
            labels = inputs.pop("labels")
            got = row_losses(model, {**inputs, "use_cache": False}, labels)[0].sum()
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_pack_keeps_every_token_once_and_restarts_positions() -> None:
    batch = examples()
    packed = pack(batch, pad_id=0)
    width = max(len(e.input_ids) for e in batch)
    assert packed["input_ids"].shape[1] == width
    tokens = sorted(t for e in batch for t in e.input_ids)
    real = packed["input_ids"][packed["input_ids"] != 0]
    assert sorted(real.tolist()) == tokens
    targets = sum(sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in batch)
    # no first label of an example survives
    assert int((packed["labels"] != IGNORE_INDEX).sum()) == targets
    assert int((packed["position_ids"] == 0).sum()) >= len(batch)


def varied_csv(path: Path, n: int = 48) -> Path:
    rng = random.Random(1)
    lines = ["text,label"]
    for _ in range(n):
        positive = rng.random() < 0.5
        choices = ["good", "great"] if positive else ["bad", "poor"]
        words = " ".join(rng.choice(choices) for _ in range(rng.randint(1, 8)))
        lines.append(f"{words} film,{'pos' if positive else 'neg'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_training_with_packing_equals_training_without(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    runs = {}
    for packing in (False, True):
        config = job(
            tmp_path,
            f"packing-{packing}",
            dropout=0.0,
            packing=packing,
            epochs=1,
            split_by_length=False,
        )  # the reference: each batch as one padded pass
        config.data.path = str(varied_csv(tmp_path / "varied.csv"))
        runs[packing] = train(config, model=tiny_model("llama"), tokenizer=chars, log=quiet)
    plain, packed = (adapter_tensors(tmp_path / f"packing-{p}") for p in (False, True))
    assert plain.keys() == packed.keys()
    for name in plain:
        torch.testing.assert_close(packed[name], plain[name], atol=1e-5, rtol=1e-4)
    assert runs[True].after is not None and runs[False].after is not None
    assert runs[True].after.loss == pytest.approx(runs[False].after.loss, rel=1e-5)


def test_packing_is_refused_where_it_would_be_wrong(tmp_path: Path, chars, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def no_restarts(
        batch: list[Example], pad_id: int, width: int | None = None, reserve: int = 0
    ) -> dict[str, torch.Tensor]:
        out = pack(batch, pad_id, width, reserve)
        out["position_ids"] = (
            torch.arange(out["input_ids"].shape[1]).expand_as(out["input_ids"]).clone()
        )
        return out

    # a model that ignored the restarts would let packed examples see each other: the check must
    # notice
    monkeypatch.setattr(sys.modules["peftkit.train.packing"], "pack", no_restarts)
    model = tiny_model("llama")
    with torch.no_grad():  # sharper attention than at random init, so leaking context shows clearly
        for name, weight in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                weight.mul_(8)
    with pytest.raises(ConfigError, match="packed examples attend to each other"):
        train(job(tmp_path, packing=True), model=model, tokenizer=chars, log=quiet)


def test_packing_is_refused_on_a_model_without_position_ids(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    # BLOOM's attention (ALiBi) takes no position ids, so transformers cannot see where packed
    # examples end
    config = job(tmp_path, packing=True)
    config.adapter["target_modules"] = ["query_key_value"]
    with pytest.raises(ConfigError, match="BloomForCausalLM takes no position ids"):
        train(config, model=tiny_model("bloom"), tokenizer=chars, log=quiet)
