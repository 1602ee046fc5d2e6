"""TRL's trainers with peftkit, as with PEFT: SFT, DPO, GRPO (with its vLLM weight sync) and
reward modelling, PEFT installed or not, ``trl`` imported before or after ``peftkit``.

The trainers run in fresh interpreters (``trl_scenarios.py``), one per environment; "without PEFT"
is a virtual environment that holds every package of this one except PEFT. The records are checked
here, against PEFT's run of the same scenario where PEFT is installed (same seed, data, fp32), and
the adapters the runs saved are loaded in PEFT in this process.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from peftkit.integrations import trl as integration

from ..conftest import char_tokenizer, tiny_model

pytest.importorskip("trl")
SCRIPT = Path(__file__).with_name("trl_scenarios.py")
ENVS = {  # name -> (PEFT installed, import order, libraries run)
    "peft/trl-first": (True, "trl-first", "peftkit,peft"),
    "peft/peftkit-first": (True, "peftkit-first", "peftkit"),
    "no-peft/trl-first": (False, "trl-first", "peftkit"),
    "no-peft/peftkit-first": (False, "peftkit-first", "peftkit"),
}
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}
WHOLE_MODEL_FILES = {"model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"}
TRL_SAYS = {
    "lm_head": "ValueError: Applying a PEFT adapter to `lm_head` is not supported",
    "sync_ref": "NotImplementedError: You passed `sync_ref_model=True` while using a PEFT model",
    "both": "ValueError: You passed a `PeftModel` instance together with a `peft_config`",
}


def _python_without_peft(root: Path) -> str:
    """A virtual environment whose site-packages links every entry of ours but PEFT's."""
    env = root / "no-peft-venv"
    python = env / "bin" / "python"
    if python.exists():
        return str(python)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    theirs = Path(sysconfig.get_paths()["purelib"])
    ours = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    for entry in theirs.iterdir():
        if entry.name == "peft" or entry.name.startswith("peft-"):
            continue
        (ours / entry.name).symlink_to(entry)
    return str(python)


def _models(root: Path) -> Path:
    folder = root / "models"
    if (folder / "llama-cls" / "config.json").exists():
        return folder
    tiny_model("llama").save_pretrained(folder / "llama")
    config = tiny_model("llama").config
    config.num_labels, config.pad_token_id = 1, 0  # a reward model: one score
    torch.manual_seed(0)
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(
        folder / "llama-cls"
    )
    for name in ("llama", "llama-cls"):
        char_tokenizer().save_pretrained(folder / name)
    return folder


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every xdist worker sees, so each environment runs once per session."""
    root = tmp_path_factory.getbasetemp().parent / "trl-integration"
    root.mkdir(exist_ok=True)
    return root


def _run(root: Path, env: str) -> dict[str, Any]:
    from filelock import FileLock

    out = root / f"{env.replace('/', '_')}.json"
    with FileLock(str(out) + ".lock"):
        if not out.exists():
            with_peft, order, libs = ENVS[env]
            with FileLock(str(root / "setup.lock")):  # two environments may start at once
                python = sys.executable if with_peft else _python_without_peft(root)
                models = _models(root)
            cmd = [python, str(SCRIPT), "--models", str(models), "--out", str(out)]
            cmd += ["--order", order, "--libs", libs]
            done = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=600,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            if done.returncode != 0:
                raise AssertionError(f"{env}: the scenario script failed\n{done.stderr[-4000:]}")
    record: dict[str, Any] = json.loads(out.read_text())
    assert record["peft_installed"] is ENVS[env][0]
    return record


@pytest.fixture(scope="session", params=list(ENVS))
def run(request: pytest.FixtureRequest, shared_root: Path) -> dict[str, Any]:
    return _run(shared_root, request.param)


@pytest.fixture(scope="session")
def beside_peft(shared_root: Path) -> dict[str, Any]:
    return _run(shared_root, "peft/trl-first")


def _scenario(record: dict[str, Any], name: str, lib: str = "peftkit") -> dict[str, Any]:
    result: dict[str, Any] = record[f"{lib}/{name}"]
    assert "crashed" not in result, result.get("crashed")
    return result


def _adapter_only(files: list[str]) -> None:
    assert set(files) >= ADAPTER_FILES
    assert not WHOLE_MODEL_FILES & {Path(f).name for f in files}, files


# -- the trainers ------------------------------------------------------------------------------------


def test_sft_from_a_folder_trains_the_adapter_alone(run: dict[str, Any]) -> None:
    sft = _scenario(run, "sft")
    assert sft["model_class"] == "peftkit.peft_model.model.PeftModelForCausalLM"
    assert sft["trainable"] and all(
        ".lora_A.default." in n or ".lora_B.default." in n for n in sft["trainable"]
    )
    assert sft["base_unchanged"]
    _adapter_only(sft["checkpoint_files"])


def test_sft_resumes_at_the_checkpoint_step(run: dict[str, Any]) -> None:
    sft = _scenario(run, "sft")
    assert sft["resumed_ran"] == [3, 4]  # checkpoint-2, then the two steps left
    assert sft["resumed_global_step"] == 4
    assert sft["resumed_losses"] == pytest.approx(sft["losses"], rel=1e-6, abs=0)


def test_sft_with_a_wrapped_model_and_gradient_checkpointing(run: dict[str, Any]) -> None:
    wrapped = _scenario(run, "sft_wrapped")
    assert wrapped["same_model"] and wrapped["checkpointing"]
    assert wrapped["adapter_changed"] == wrapped["trainable"]  # every adapter tensor got gradients
    assert wrapped["base_unchanged"]
    _adapter_only(wrapped["checkpoint_files"])


def test_dpo_needs_no_second_model(run: dict[str, Any]) -> None:
    dpo, sft = _scenario(run, "dpo"), _scenario(run, "sft")
    assert dpo["ref_model_is_none"]
    assert dpo["models_built"] == sft["models_built"]  # the reference is not another model
    assert dpo["disabled_calls"] > 0  # ... it is the model with its adapter switched off
    first = dpo["first"]
    assert first["rewards/margins"] == 0 and first["rewards/chosen"] == 0
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert dpo["base_unchanged"]
    _adapter_only(dpo["checkpoint_files"])


def test_dpo_from_a_trained_adapter_keeps_a_frozen_ref_copy(run: dict[str, Any]) -> None:
    result = _scenario(run, "dpo_from_adapter")
    assert result["adapters"] == ["default", "ref"]
    assert result["models_built"] == 0
    assert result["ref_trainable"] == [] and result["ref_unchanged"] and result["ref_equals_start"]
    assert result["default_changed"]
    assert result["first"]["rewards/margins"] == 0  # the reference starts as the adapter itself
    _adapter_only(result["checkpoint_files"])


def test_grpo_reference_is_the_adapter_switched_off(run: dict[str, Any]) -> None:
    grpo, sft = _scenario(run, "grpo"), _scenario(run, "sft")
    assert grpo["ref_model_is_none"] and grpo["models_built"] == sft["models_built"]
    assert grpo["disabled_calls"] > 0
    assert grpo["first"]["kl"] == 0 and grpo["first"]["grad_norm"] > 0
    assert grpo["base_unchanged"]
    _adapter_only(grpo["checkpoint_files"])


def test_dpo_evaluates_after_training(run: dict[str, Any]) -> None:
    evaluated = _scenario(run, "dpo")["eval"]
    assert math.isfinite(evaluated["eval_loss"]) and "eval_rewards/margins" in evaluated


def test_grpo_casts_the_lm_head_through_the_adapter_model(run: dict[str, Any]) -> None:
    result = _scenario(run, "grpo_fp32_head")
    assert result["head_dtype"] == "torch.float32" and result["embedding_dtype"] == "torch.bfloat16"
    assert result["loss_finite"]


def test_vllm_sync_sends_merged_weights_and_unmerges_bitwise(run: dict[str, Any]) -> None:
    sync = _scenario(run, "vllm_sync")
    assert (
        sync["sent_names"] == sync["expected_names"]
    )  # the base model's names, no lora_/base_layer
    assert sync["equal_to_merged"] == sync["sent_names"]
    assert sync["differs_from_base"] == [
        f"model.layers.{i}.self_attn.{p}.weight" for i in (0, 1) for p in ("q_proj", "v_proj")
    ]
    assert sync["unmerged_bitwise"]


def test_reward_model_trains_the_score_head(run: dict[str, Any]) -> None:
    result = _scenario(run, "reward")
    assert result["model_class"] == "peftkit.peft_model.model.PeftModelForSequenceClassification"
    assert "score" in result["modules_to_save"]
    assert "base_model.model.score.modules_to_save.default.weight" in result["trainable"]
    assert result["base_unchanged"]
    _adapter_only(result["checkpoint_files"])


def test_refused_as_for_peft(run: dict[str, Any]) -> None:
    refused = _scenario(run, "refusals")
    assert refused["sft_lm_head"].startswith(TRL_SAYS["lm_head"])
    assert refused["dpo_lm_head"].startswith(TRL_SAYS["lm_head"])
    assert refused["dpo_sync_ref"].startswith(TRL_SAYS["sync_ref"])
    assert refused["wrapped_and_config"].startswith(TRL_SAYS["both"])


def test_no_peft_is_imported_where_peft_is_absent(run: dict[str, Any]) -> None:
    assert run["peft_imported"] is run["peft_installed"]


# -- side by side with PEFT (same seed, data and dtype) -----------------------------------------------


@pytest.mark.parametrize("name", ["sft", "dpo", "reward"])
def test_losses_equal_peft_per_step(beside_peft: dict[str, Any], name: str) -> None:
    ours, theirs = _scenario(beside_peft, name), _scenario(beside_peft, name, "peft")
    assert len(ours["losses"]) == 4
    assert ours["losses"] == pytest.approx(theirs["losses"], rel=0, abs=1e-5)


@pytest.mark.parametrize("name", ["dpo", "dpo_from_adapter", "grpo"])
def test_metrics_equal_peft(beside_peft: dict[str, Any], name: str) -> None:
    ours, theirs = (
        _scenario(beside_peft, name)["first"],
        _scenario(beside_peft, name, "peft")["first"],
    )
    assert sorted(ours) == sorted(theirs)
    timings = {k for k in ours if "time" in k or "per_second" in k}
    assert {k: v for k, v in ours.items() if k not in timings} == pytest.approx(
        {k: v for k, v in theirs.items() if k not in timings}, rel=0, abs=1e-5
    )


@pytest.mark.parametrize(
    "name", ["sft", "sft_wrapped", "dpo", "dpo_from_adapter", "grpo", "reward"]
)
def test_checkpoints_hold_what_peft_s_hold(beside_peft: dict[str, Any], name: str) -> None:
    ours, theirs = _scenario(beside_peft, name), _scenario(beside_peft, name, "peft")
    assert ours["checkpoint_files"] == theirs["checkpoint_files"]
    if "trainable" in ours:
        assert ours["trainable"] == theirs["trainable"]


def test_dpo_evaluation_equals_peft_s(beside_peft: dict[str, Any]) -> None:
    ours, theirs = (
        _scenario(beside_peft, "dpo")["eval"],
        _scenario(beside_peft, "dpo", "peft")["eval"],
    )
    assert sorted(ours) == sorted(theirs)
    assert ours == pytest.approx(theirs, rel=0, abs=1e-5)


def test_refusals_say_what_they_say_for_peft(beside_peft: dict[str, Any]) -> None:
    assert _scenario(beside_peft, "refusals") == _scenario(beside_peft, "refusals", "peft")


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("env", list(ENVS))
@pytest.mark.parametrize(
    ("name", "folder", "auto"),
    [
        ("sft", "llama", "AutoModelForCausalLM"),
        ("reward", "llama-cls", "AutoModelForSequenceClassification"),
    ],
)
def test_saved_adapter_loads_in_peft_with_equal_outputs(
    shared_root: Path, env: str, name: str, folder: str, auto: str
) -> None:
    peft = pytest.importorskip("peft")
    import peftkit

    saved = _scenario(_run(shared_root, env), name)["final"]
    ids = torch.randint(4, 99, (2, 9), generator=torch.Generator().manual_seed(0))
    base = getattr(transformers, auto)
    theirs = peft.PeftModel.from_pretrained(
        base.from_pretrained(shared_root / "models" / folder), saved
    )
    ours = peftkit.PeftModel.from_pretrained(
        base.from_pretrained(shared_root / "models" / folder), saved
    )
    plain = base.from_pretrained(shared_root / "models" / folder).eval()
    expected = _logits(theirs.eval(), ids)
    assert not torch.equal(expected, _logits(plain, ids))  # the adapter changes the outputs
    torch.testing.assert_close(_logits(ours.eval(), ids), expected, rtol=0, atol=0)


# -- the integration itself, in this process ------------------------------------------------------------


def _trl_root() -> Path:
    spec = importlib.util.find_spec("trl")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


# Imports of PEFT inside TRL's functions (not module level): the integration cannot rebind them.
# All are in experimental trainers; docs/trl.md lists them as not covered.
FUNCTION_LEVEL = {
    "experimental/async_distillation/async_distillation_trainer.py": {"BaseTunerLayer"},
    "experimental/async_grpo/async_grpo_trainer.py": {"BaseTunerLayer"},
    "experimental/sdft/teacher_sync.py": {"get_peft_model_state_dict", "set_peft_model_state_dict"},
    "experimental/sdpo/teacher_sync.py": {"get_peft_model_state_dict", "set_peft_model_state_dict"},
}


def _peft_attributes(source: str) -> set[str]:
    """``peft.<name>`` read through the module name (not rebindable by name)."""
    return {
        node.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "peft"
    }


def test_drift_every_peft_touchpoint_of_the_installed_trl_is_covered() -> None:
    """Scans the installed TRL: a name imported from PEFT that the integration does not rebind, a
    new import inside a function, or a new ``peft.<attribute>`` read fails here."""
    root = _trl_root()
    uncovered, inside, attributes = [], {}, set()
    for path in sorted(root.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if "peft" not in source:
            continue
        rel = str(path.relative_to(root))
        for name, line, top in integration.peft_imports(source):
            if not top:
                inside.setdefault(rel, set()).add(name)
            elif name != "peft" and name not in integration.COVERED:
                uncovered.append(f"{rel}:{line} imports {name} from peft")
        attributes |= _peft_attributes(source)
        if "is_peft_model" in source or "is_peft_available" in source:
            tree = ast.parse(source)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    for alias in node.names:
                        if alias.name in ("is_peft_model", "is_peft_available") and alias.asname:
                            uncovered.append(f"{rel}:{node.lineno} renames {alias.name}")
    assert not uncovered, uncovered
    assert inside == FUNCTION_LEVEL
    assert attributes <= {"__version__"}, attributes


TRAINERS = [
    "trl.trainer.sft_trainer",
    "trl.trainer.dpo_trainer",
    "trl.trainer.grpo_trainer",
    "trl.trainer.reward_trainer",
    "trl.trainer.rloo_trainer",
    "trl.trainer.kto_trainer",
    "trl.trainer.base_trainer",
    "trl.trainer.utils",
    "trl.generation.vllm_generation",
]


@pytest.mark.parametrize("name", TRAINERS)
def test_loaded_trl_modules_hold_the_integration_s_names(name: str) -> None:
    module = importlib.import_module(name)
    assert integration.patched(module)
    space = vars(module)
    bound = {n for n in integration.COVERED if n in space}
    assert bound, f"{name} binds none of the covered names: the scan above should say why"
    for n in bound:
        assert space[n] is integration.COVERED[n], n


def test_either_class_accepts_both_libraries_and_builds_peft_s_where_installed() -> None:
    peft = pytest.importorskip("peft")
    import peftkit

    ours, theirs = peftkit.LoraConfig(r=2), peft.LoraConfig(r=2)
    assert isinstance(ours, integration.PeftConfig) and isinstance(theirs, integration.PeftConfig)
    assert isinstance(ours, integration.LoraConfig) and not isinstance(
        ours, integration.PrefixTuningConfig
    )
    assert issubclass(peftkit.PrefixTuningConfig, integration.PromptLearningConfig)
    assert not isinstance(object(), integration.PeftModel)
    assert type(integration.LoraConfig(r=2)) is peft.LoraConfig  # a PEFT user's run is unchanged
    layer = peftkit.get_peft_model(
        tiny_model("llama"), peftkit.LoraConfig(r=2, target_modules=["q_proj"])
    )
    q = layer.get_base_model().model.layers[0].self_attn.q_proj
    assert isinstance(q, integration.BaseTunerLayer)
    assert not isinstance(
        layer.get_base_model().model.layers[0].self_attn.k_proj, integration.BaseTunerLayer
    )
    assert integration.is_peft_model(layer) and not integration.is_peft_model(tiny_model("llama"))


def test_get_peft_model_follows_the_config_s_library() -> None:
    peft = pytest.importorskip("peft")
    import peftkit

    ours = integration.get_peft_model(
        tiny_model("llama"), peftkit.LoraConfig(r=2, target_modules=["q_proj"])
    )
    theirs = integration.get_peft_model(
        tiny_model("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"])
    )
    assert isinstance(ours, peftkit.PeftModel) and isinstance(theirs, peft.PeftModel)
    state = integration.get_peft_model_state_dict(ours)
    assert state.keys() == peftkit.get_peft_model_state_dict(ours).keys()


def test_untested_trl_version_is_left_alone_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(integration, "_state", {})
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.1.0")
    monkeypatch.delenv("PEFTKIT_TRL_UNTESTED", raising=False)
    with pytest.warns(
        UserWarning,
        match=r"tested with trl 1\.16; trl 9\.1\.0 is installed, so peftkit left it unpatched",
    ):
        assert not integration._allowed()
    monkeypatch.setattr(integration, "_state", {})
    monkeypatch.setenv("PEFTKIT_TRL_UNTESTED", "1")
    with pytest.warns(UserWarning, match="patched anyway"):
        assert integration._allowed()
    monkeypatch.setattr(integration, "_state", {})
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.16.3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert integration._allowed()
