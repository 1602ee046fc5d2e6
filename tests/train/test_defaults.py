"""What `auto` means: dtype and packing decided from the hardware and the method, with the reason
shown."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from peftkit.errors import ConfigError
from peftkit.train import defaults, train
from peftkit.train.config import JobConfig
from peftkit.train.defaults import bf16_hardware, choose_dtype, choose_packing
from tests.conftest import tiny_model
from tests.train.test_loop import job

CPU = torch.device("cpu")
AVX2 = {"fpu", "sse2", "avx", "avx2", "fma"}
SAPPHIRE_RAPIDS = AVX2 | {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}


def _job(method: str = "lora", **fields: object) -> JobConfig:
    adapter = (
        {"num_virtual_tokens": 4}
        if method in ("prompt_tuning", "p_tuning", "prefix_tuning")
        else {}
    )
    return JobConfig(method=method, adapter=adapter, data={"path": "any.csv"}, **fields)  # type: ignore[arg-type]


@pytest.mark.skipif(
    __import__("platform").machine() != "x86_64", reason="CPU flags are read on x86-64 only"
)
def test_bf16_hardware_is_read_off_the_cpu_flags() -> None:
    assert bf16_hardware(CPU, AVX2) is None
    assert bf16_hardware(CPU, AVX2 | {"avx512_bf16"}) == "avx512_bf16"
    assert bf16_hardware(CPU, SAPPHIRE_RAPIDS) == "amx_bf16"
    assert bf16_hardware(torch.device("meta"), SAPPHIRE_RAPIDS) is None


@pytest.mark.skipif(
    __import__("platform").machine() != "x86_64", reason="CPU flags are read on x86-64 only"
)
def test_dtype_auto_is_a_bf16_base_only_where_bf16_is_native() -> None:
    fast = choose_dtype(_job(), CPU, flags=SAPPHIRE_RAPIDS)
    assert (
        fast.value,
        "amx_bf16" in fast.reason,
        "adapter and optimizer stay fp32" in fast.reason,
    ) == ("bfloat16", True, True)
    slow = choose_dtype(_job(), CPU, flags=AVX2)
    assert slow.value == "float32" and "neither avx512_bf16 nor AMX" in slow.reason
    # weights would lose updates
    assert choose_dtype(_job("full"), CPU, flags=SAPPHIRE_RAPIDS).value == "float32"
    # measured the same
    assert choose_dtype(_job("prefix_tuning"), CPU, flags=SAPPHIRE_RAPIDS).value == "bfloat16"
    assert choose_dtype(_job("p_tuning"), CPU, flags=SAPPHIRE_RAPIDS).value == "float32"
    assert choose_dtype(_job("prompt_tuning"), CPU, flags=SAPPHIRE_RAPIDS).value == "bfloat16"
    # a loaded model keeps its dtype
    given = choose_dtype(_job(), CPU, model_dtype=torch.bfloat16, flags=AVX2)
    assert given.value == "bfloat16" and "passed in already loaded" in given.reason
    assert (
        choose_dtype(_job(), CPU, model_dtype=torch.float32, flags=SAPPHIRE_RAPIDS).value
        == "float32"
    )
    told = choose_dtype(
        _job(dtype="bfloat16"), CPU, model_dtype=torch.float32, flags=SAPPHIRE_RAPIDS
    )
    assert told.value == "float32" and "dtype bfloat16 is not applied" in told.reason


def test_a_dtype_set_in_the_job_is_kept() -> None:
    chosen = choose_dtype(_job(dtype="bfloat16"), CPU, flags=SAPPHIRE_RAPIDS)
    assert (chosen.value, chosen.reason) == ("bfloat16", "set in the job")
    assert choose_dtype(_job(dtype="float32"), CPU, flags=SAPPHIRE_RAPIDS).value == "float32"


def test_packing_auto_follows_the_method_and_the_model() -> None:
    def fails() -> None:
        raise ConfigError(
            "train.packing: GPT2 takes no position ids, so packed examples would attend; set false"
        )

    def never() -> None:
        raise AssertionError("not checked")

    assert choose_packing(_job(), lambda: None).value == "on"
    off = choose_packing(_job(), fails)
    assert (
        off.value == "off"
        and off.reason == "GPT2 takes no position ids, so packed examples would attend"
    )
    # each example masked to the prefix and itself
    prefix = choose_packing(_job("prefix_tuning"), lambda: None)
    assert prefix.value == "on" and prefix.reason.startswith(
        "prefix_tuning on this model packs exactly"
    )
    # its tokens fill slots per example
    assert choose_packing(_job("prompt_tuning"), lambda: None).value == "on"
    assert choose_packing(_job(train={"packing": False}), never).value == "off"
    # asked for: an error, not a fallback
    with pytest.raises(ConfigError, match="takes no position ids"):
        choose_packing(_job(train={"packing": True}), fails)


@pytest.mark.parametrize("text, value", [("auto", "auto"), ("true", True), ("off", False)])
def test_packing_flag_text(text: str, value: object) -> None:
    assert _job(train={"packing": text}).train.packing == value


def test_packing_flag_text_that_means_nothing_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"train\.packing='maybe' must be true, false or auto"):
        _job(train={"packing": "maybe"})


def test_a_default_job_trains_packed_and_records_what_it_chose(
    tmp_path: Path, chars, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(defaults, "cpu_flags", lambda: AVX2)
    lines: list[str] = []
    config = job(tmp_path, epochs=1)
    assert (config.dtype, config.train.packing) == ("auto", "auto")
    train(config, model=tiny_model("llama"), tokenizer=chars, log=lines.append)
    banner = next(line for line in lines if line.startswith("defaults: "))
    assert "packing: on (lora on this model packs exactly" in banner
    assert "dtype: float32 (the model was passed in already loaded" in banner
    recorded = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert (recorded["dtype"], recorded["train"]["packing"]) == ("float32", True)


def test_a_model_that_cannot_pack_trains_unpacked_and_says_why(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    lines: list[str] = []
    config = job(tmp_path, epochs=1, max_steps=2)
    config.adapter["target_modules"] = ["query_key_value"]
    train(config, model=tiny_model("bloom"), tokenizer=chars, log=lines.append)
    banner = next(line for line in lines if line.startswith("defaults: "))
    assert "packing: off (BloomForCausalLM takes no position ids" in banner


def test_inspect_shows_the_defaults_and_their_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "cpu_flags", lambda: AVX2)
    text = defaults.describe(CPU)
    if sys.platform == "linux" and __import__("platform").machine() == "x86_64":
        assert (
            "dtype: auto -> float32 for adapter methods (this CPU has neither avx512_bf16 nor AMX"
            in text
        )
    assert (
        "train.packing: auto -> on for every method when the model's attention honours position restarts"
        in text
    )
    assert text.endswith("off on a GPU and under torchrun")


@pytest.mark.skipif(
    __import__("platform").machine() != "x86_64", reason="CPU flags are read on x86-64 only"
)
def test_half_precision_asked_for_on_an_emulating_cpu_is_warned_about() -> None:
    chosen = choose_dtype(_job(dtype="bfloat16"), CPU, flags=AVX2)
    assert (
        chosen.value == "bfloat16"
        and "WARNING: this CPU has neither avx512_bf16 nor AMX" in chosen.reason
    )
    assert "WARNING" not in choose_dtype(_job(dtype="bfloat16"), CPU, flags=SAPPHIRE_RAPIDS).reason
    precision = defaults.choose_precision(_job(train={"precision": "bf16"}), CPU, flags=AVX2)
    assert (
        precision.value == "bf16" and "on one core and ~100x slower than fp32" in precision.reason
    )


@pytest.mark.skipif(
    __import__("platform").machine() != "x86_64", reason="CPU flags are read on x86-64 only"
)
def test_generation_decodes_in_fp32_on_any_cpu_unless_asked() -> None:
    # batch-1 decoding measured slower in bf16 than fp32 on an AMX CPU
    # (benchmarks/results/generation-dtype-cpu.md)
    assert defaults.generation_dtype("auto", CPU, flags=SAPPHIRE_RAPIDS).value == "float32"
    assert defaults.generation_dtype("auto", CPU, flags=AVX2).value == "float32"
    assert defaults.generation_dtype("bfloat16", CPU, flags=SAPPHIRE_RAPIDS).value == "bfloat16"


def test_evaluation_uses_bf16_weights_only_where_native() -> None:
    assert defaults.inference_dtype("auto", CPU, flags=SAPPHIRE_RAPIDS).value == "bfloat16"
    assert defaults.inference_dtype("auto", CPU, flags=AVX2).value == "float32"
    assert defaults.inference_dtype("float32", CPU, flags=SAPPHIRE_RAPIDS).value == "float32"
