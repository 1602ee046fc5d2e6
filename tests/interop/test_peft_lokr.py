"""LoKr against PEFT: the same draws give the same outputs (0.0 in fp32) on Llama and on a
convolutional model, for every way a factor is stored (whole, low-rank, CP core); files load both
ways; merged equals unmerged; a fresh adapter and a disabled one equal the base model; several
adapters; training in peftkit's loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from torch import nn

import peftkit
from peftkit.tuners.lokr import LoKrLayer, factorization
from tests.conftest import model_inputs, outputs, tiny_model


class ConvModel(nn.Module):
    """A 2-d and a 1-d convolution with wide kernels, then a linear head: (B, 4, 6, 6) -> (B, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.c2 = nn.Conv2d(4, 8, (3, 2), stride=(1, 2))
        self.c1 = nn.Conv1d(8, 12, 3, padding=1)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c2(x).mean(-1)  # (B, 8, 4)
        return self.head(self.c1(h).mean(-1))  # (B, 4)


X = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(3))


def _llama(lib: Any, init_weights: Any = False, **kwargs: Any) -> Any:
    torch.manual_seed(0)
    base = tiny_model("llama")
    torch.manual_seed(1)
    config = lib.LoKrConfig(
        target_modules=["q_proj", "v_proj", "down_proj"], init_weights=init_weights, **kwargs
    )
    return lib.get_peft_model(base, config)


def _conv(lib: Any, targets: tuple[str, ...] = ("c2", "c1", "head"), **kwargs: Any) -> Any:
    torch.manual_seed(0)
    base = ConvModel()
    torch.manual_seed(1)
    config = lib.LoKrConfig(target_modules=list(targets), init_weights=False, **kwargs)
    return lib.get_peft_model(base, config).eval()


def test_factorization_is_lycoris_rule() -> None:
    from peft.tuners.lokr.layer import factorization as peft_factorization

    for dim in (1, 7, 12, 64, 96, 127, 128, 256, 1536):
        for factor in (-1, 2, 4, 5, 16):
            assert factorization(dim, factor) == peft_factorization(dim, factor), (dim, factor)
    assert factorization(128) == (8, 16) and factorization(128, 4) == (4, 32)


# every storage of the factors: W2 whole (r large), W2 low-rank (r small), W1 low-rank too
# (decompose_both), a chosen split (decompose_factor), CP cores for wide kernels
SETTINGS = [
    {"r": 2},
    {"r": 16},
    {"r": 1, "decompose_both": True},
    {"r": 2, "decompose_factor": 4},
    {"r": 2, "use_effective_conv2d": True},
    {"r": 1, "alpha": 3, "decompose_both": True, "use_effective_conv2d": True},
]
# a CP core on the Conv1d (r below half of W2's side): PEFT's forward raises there
PEFT_RAISES = {"r": 1, "alpha": 3, "decompose_both": True, "use_effective_conv2d": True}


@pytest.mark.parametrize(
    "settings", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items())
)
def test_lokr_equals_peft_for_the_same_draws(settings: dict[str, Any]) -> None:
    inputs = model_inputs("llama")
    ours = outputs(_llama(peftkit, **settings), inputs)
    assert not torch.allclose(ours, outputs(tiny_model("llama"), inputs))
    torch.testing.assert_close(ours, outputs(_llama(peft, **settings), inputs), rtol=0, atol=0)
    if settings == PEFT_RAISES:  # PEFT's conv layers raise here; see the test below
        return
    with torch.no_grad():
        ours_conv, theirs_conv = _conv(peftkit, **settings), _conv(peft, **settings)
        assert ours_conv.state_dict().keys() == theirs_conv.state_dict().keys()
        torch.testing.assert_close(ours_conv(X), theirs_conv(X), rtol=0, atol=0)
        expected = ours_conv(X)
        ours_conv.merge_adapter()
        torch.testing.assert_close(ours_conv(X), expected, rtol=0, atol=1e-5)


def test_rank_one_factors_on_convolutions_work_where_peft_raises() -> None:
    """A Conv1d's CP core (r, r, k, 1) rebuilds W2 with strides that PEFT's ``torch.kron`` cannot
    view (a RuntimeError in its forward); peftkit computes ``kron(W1, W2) * scaling`` there,
    checked against torch.kron on plain copies of the stored tensors and against the merged
    model."""
    with pytest.raises(RuntimeError, match="view size"):
        _conv(peft, **PEFT_RAISES)(X)
    model = _conv(peftkit, **PEFT_RAISES)
    # out 12 = 3 x 4, in 8 = 2 x 4: W1 (3, 2) split at r=1 (decompose_both), W2 from a core
    layer = model.get_base_model().c1
    t = {
        name: getattr(layer, name)["default"].detach()
        for name in layer.adapter_param_names
        if "default" in getattr(layer, name)
    }
    assert set(t) == {"lokr_w1_a", "lokr_w1_b", "lokr_t2", "lokr_w2_a", "lokr_w2_b"}
    w1 = (t["lokr_w1_a"] @ t["lokr_w1_b"]).clone()  # (a, c)
    w2 = torch.einsum("ijkl,ip,jr->prkl", t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    # the reference: torch.kron on fresh copies with plain strides, times alpha / r = 3
    w2 = torch.empty(w2.shape).copy_(w2)
    expected = torch.kron(torch.empty((*w1.shape, 1, 1)).copy_(w1[:, :, None, None]), w2)
    expected = expected.reshape(layer.weight.shape) * 3.0
    torch.testing.assert_close(layer.delta_weight("default"), expected, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        unmerged = model(X)
        model.merge_adapter()
        torch.testing.assert_close(model(X), unmerged, rtol=0, atol=1e-5)


def test_lycoris_start_and_rank_dropout_match_peft_in_training() -> None:
    """``init_weights="lycoris"`` zeroes W2 instead of W1; with a training step's dropouts drawn
    from the same seed, the outputs are PEFT's."""
    inputs = model_inputs("llama")
    for lib_settings in ({"rank_dropout": 0.5, "rank_dropout_scale": True}, {"rank_dropout": 0.5}):
        models = [
            _llama(lib, init_weights=False, **lib_settings).train() for lib in (peftkit, peft)
        ]
        results = []
        for model in models:
            torch.manual_seed(5)
            results.append(outputs(model, inputs))
        torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    base = outputs(tiny_model("llama"), inputs)
    fresh = _llama(peftkit, init_weights="lycoris")
    torch.testing.assert_close(outputs(fresh, inputs), base, rtol=0, atol=0)
    torch.testing.assert_close(
        fresh.state_dict(), _llama(peft, init_weights="lycoris").state_dict(), rtol=0, atol=0
    )


def test_a_fresh_lokr_adapter_is_the_base_model_and_disabled_is_too() -> None:
    inputs = model_inputs("llama")
    base = outputs(tiny_model("llama"), inputs)
    torch.testing.assert_close(
        outputs(_llama(peftkit, init_weights=True), inputs), base, rtol=0, atol=0
    )
    model = _llama(peftkit)
    with model.disable_adapter():
        torch.testing.assert_close(outputs(model, inputs), base, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("writer", "reader"), [(peftkit, peft), (peft, peftkit)], ids=["to-peft", "from-peft"]
)
def test_lokr_files_load_both_ways(writer: Any, reader: Any, tmp_path: Path) -> None:
    inputs = model_inputs("llama")
    model = _llama(writer, rank_pattern={"down_proj": 2}, alpha_pattern={"q_proj": 4})
    expected = outputs(model, inputs)
    model.save_pretrained(tmp_path)
    loaded = reader.PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    torch.testing.assert_close(outputs(loaded, inputs), expected, rtol=0, atol=0)
    saved = (tmp_path / "adapter_config.json").read_text()
    assert '"peft_type": "LOKR"' in saved
    # a CP core on the Conv2d only: PEFT's Conv1d cores raise (see above)
    conv = _conv(writer, ("c2", "head"), r=1, use_effective_conv2d=True)
    conv.save_pretrained(tmp_path / "conv")
    torch.manual_seed(0)
    loaded_conv = reader.PeftModel.from_pretrained(ConvModel(), tmp_path / "conv").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded_conv(X), conv(X), rtol=0, atol=0)


def test_lokr_merged_equals_unmerged_with_two_adapters_and_unmerges_back() -> None:
    inputs = model_inputs("llama")
    model = _llama(peftkit)
    model.add_adapter(
        "other", peftkit.LoKrConfig(target_modules=["q_proj"], r=4, init_weights=False)
    )
    model.base_model.set_adapter(["default", "other"])
    weight = model.get_base_model().model.layers[0].self_attn.q_proj.weight.detach().clone()
    expected = outputs(model, inputs)
    model.merge_adapter()
    torch.testing.assert_close(outputs(model, inputs), expected, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(
        model.get_base_model().model.layers[0].self_attn.q_proj.weight, weight, atol=1e-6, rtol=0
    )
    model.set_adapter("other")
    merged = model.merge_and_unload()
    assert not any(isinstance(m, LoKrLayer) for m in merged.modules())


def test_bad_lokr_configs_are_refused_with_every_problem() -> None:
    with pytest.raises(peftkit.ConfigError) as err:
        peftkit.LoKrConfig(r=0, init_weights="kaiming", decompose_factor=0, rank_dropout=1.5)
    text = str(err.value)
    for expected in ("r=0", "init_weights='kaiming'", "decompose_factor=0", "rank_dropout=1.5"):
        assert expected in text


def test_lokr_trains_in_the_loop_from_a_job(tmp_path: Path, chars: Any) -> None:
    from tests.train.test_loop import sentiment_csv

    config = peftkit.JobConfig(
        model="tiny-llama",
        method="lokr",
        seed=3,
        output_dir=str(tmp_path / "out"),
        adapter={"target_modules": ["q_proj", "v_proj"], "r": 2, "rank_dropout": 0.1},
        data={
            "path": str(sentiment_csv(tmp_path / "data.csv")),
            "mode": "classification",
            "template": "Review: {text} Label: {label}",
            "label_words": {"pos": "yes", "neg": "no"},
            "val_size": 16,
        },
        train={"epochs": 2, "batch_size": 8, "lr": 1e-2, "progress": False, "plot": False},
    )
    result = peftkit.train(config, model=tiny_model("llama"), tokenizer=chars, log=lambda _: None)
    assert result.before is not None and result.after is not None
    assert result.after.loss < result.before.loss
    reloaded = peft.PeftModel.from_pretrained(tiny_model("llama"), result.output_dir)
    assert isinstance(reloaded.peft_config["default"], peft.LoKrConfig)
    inputs = {"input_ids": torch.tensor([chars("Review: good film Label:")["input_ids"]])}
    torch.testing.assert_close(
        outputs(reloaded, inputs), outputs(result.model.eval(), inputs), rtol=0, atol=1e-5
    )


def test_kron_equals_torch_kron_element_for_element() -> None:
    from peftkit.tuners.lokr import kron

    g = torch.Generator().manual_seed(0)
    for x_shape, y_shape in [((2, 3), (4, 5)), ((2, 3, 1, 1), (4, 5, 3, 2)), ((2, 3), (4, 5, 3))]:
        x, y = torch.randn(x_shape, generator=g), torch.randn(y_shape, generator=g)
        torch.testing.assert_close(kron(x, y), torch.kron(x, y), rtol=0, atol=0)


def test_lokr_cp_core_on_a_conv2d_equals_peft() -> None:
    """r=1 stores the Conv2d's W2 as a CP core (1, 1, 3, 2) with W2a, W2b: the same draws give
    PEFT's outputs, merged and unmerged."""
    with torch.no_grad():
        ours, theirs = (
            _conv(lib, ("c2", "head"), r=1, use_effective_conv2d=True) for lib in (peftkit, peft)
        )
        assert "default" in ours.get_base_model().c2.lokr_t2
        torch.testing.assert_close(ours(X), theirs(X), rtol=0, atol=0)
        ours.merge_adapter()
        torch.testing.assert_close(ours(X), theirs(X), rtol=0, atol=1e-5)
