"""``PeftModel``: a base model plus named adapters, with Hugging Face PEFT's API.

The module tree mirrors PEFT's (``base_model.model.<path>.lora_A.<name>.weight``) so parameter
names, saved keys and Trainer checkpoints line up. This class is the facade: layer changes go
through :mod:`peftkit.surgery`, files through :mod:`peftkit.peft_model.adapter_io`, prompt methods
through :mod:`peftkit.tuners.prompt.model`, and what transformers reads from a model through
:mod:`peftkit.peft_model.wrapper`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from .. import surgery
from ..config import PeftConfig, PromptLearningConfig, TaskType, adopt
from ..errors import AdapterNotFoundError, AdapterStateError, ConfigError, PromptAdapterError
from ..inspection import count_parameters
from ..integrations import trainer as trainer_support
from ..integrations.quantization import is_quantized_model
from ..methods import method_for
from ..surgery import tying
from ..tuners.base import AdapterLayer
from ..tuners.prompt import model as prompting
from . import adapter_io, weighted
from .checks import (
    check_adapter_name,
    check_finite_weights,
    check_mixed_batch,
    check_new_adapter,
    check_unsupported_load_options,
    warn_base_rewriting_adapters,
)
from .holder import BaseModelHolder
from .status import get_layer_status, get_model_status
from .wrapper import ModelWrapper, is_transformers_model

__all__ = [
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForFeatureExtraction",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "get_peft_model",
]


class PeftModel(ModelWrapper):
    """A model with one or more adapters, one of them active.

    Args:
        model: the base model (a transformers ``PreTrainedModel`` or any ``nn.Module``).
        peft_config: the first adapter's config.
        adapter_name: the first adapter's name.

    Attributes:
        base_model: holder whose ``.model`` is the (modified in place) base model.
        peft_config: adapter name -> config.
        prompt_encoder: adapter name -> prompt module, for prompt-learning adapters.
        active_adapter: the adapter applied by ``forward`` and ``generate``.
    """

    task_type: TaskType | None = None

    def __init__(
        self, model: nn.Module, peft_config: PeftConfig, adapter_name: str = "default"
    ) -> None:
        super().__init__()
        self.base_model = BaseModelHolder(model, self)  # holds self weakly: no reference cycle
        self.peft_config: dict[str, PeftConfig] = {}
        self.prompt_encoder = nn.ModuleDict()
        self.active_adapter = adapter_name
        # adapters applied together with active_adapter (base_model.set_adapter)
        self._also_active: list[str] = []
        self._disabled = False
        # adapted layer names in the order adapters first reached them (PEFT's)
        self._targeted: list[str] = []
        # per adapter, what its method keeps between optimizer steps (AdaLoRA's rank allocator)
        self._step_state: dict[str, dict[str, Any]] = {}
        self.register_state_dict_post_hook(_drop_tied_aliases)
        # transformers.Trainer checkpoints and losses as for PEFT's models
        trainer_support.install(PeftModel)
        if _checkpointing(model):
            self.prepare_model_for_gradient_checkpointing(model)
        self.add_adapter(adapter_name, peft_config)
        self.set_adapter(adapter_name)

    def prepare_model_for_gradient_checkpointing(self, model: nn.Module) -> nn.Module:
        """Make the input embeddings' output require grads, so a checkpointed frozen model still
        backpropagates to the adapters (PEFT's method; quantized models are left alone, as
        there)."""
        if is_quantized_model(model):
            return model
        loose: Any = model  # a transformers model, or any module with these methods
        if hasattr(loose, "enable_input_require_grads"):
            loose.enable_input_require_grads()
        elif hasattr(loose, "get_input_embeddings"):
            loose.get_input_embeddings().register_forward_hook(
                lambda _m, _i, out: out.requires_grad_(True)
            )
        return model

    def __setstate__(self, state: dict[str, Any]) -> None:
        """After copy.deepcopy or unpickling, the copied holder answers for the copy, not the
        original."""
        super().__setstate__(state)
        self.base_model.bind(self)

    # ----- adapters
    # ----------------------------------------------------------------------------------

    @property
    def active_adapters(self) -> list[str]:
        """The adapters ``forward`` applies; empty once the last adapter is deleted
        (``active_adapter`` is then ``""``), as in PEFT."""
        if self.active_adapter not in self.peft_config:
            return []
        return [self.active_adapter, *self._also_active]

    @property
    def modules_to_save(self) -> set[str] | None:
        """The modules that some adapter trains in full (a copy per adapter), or None (PEFT's
        attribute)."""
        names = {m for c in self.peft_config.values() for m in (c.modules_to_save or [])}
        return names or None

    @property
    def has_active_enabled_adapter(self) -> bool:
        """False inside :meth:`disable_adapter` (or after ``base_model.disable_adapter_layers()``),
        else True."""
        return not self._disabled and surgery.disabled_states(self.get_base_model()) != {True}

    @property
    def active_peft_config(self) -> PeftConfig:
        return self.peft_config[self.active_adapter]

    def _require(self, adapter_name: str) -> PeftConfig:
        if adapter_name not in self.peft_config:
            raise AdapterNotFoundError(  # PEFT's words first, so code matching them still does
                f"Adapter {adapter_name} does not exist; this model has: {', '.join(self.peft_config) or 'none'}"
            )
        return self.peft_config[adapter_name]

    def add_adapter(
        self,
        adapter_name: str,
        peft_config: PeftConfig,
        low_cpu_mem_usage: bool = False,
        autocast_adapter_dtype: bool = True,
    ) -> None:
        """Add a new adapter (inactive until :meth:`set_adapter`).

        ``autocast_adapter_dtype=False`` keeps its tensors in the dtype of the layers it adapts
        (PEFT's option); ``low_cpu_mem_usage=True`` creates them on the meta device, to be filled by
        loading (as PEFT does).

        Raises:
            ConfigError: the name is taken, or the config's task does not fit this model.
        """
        check_adapter_name(adapter_name)
        check_new_adapter(adapter_name, peft_config, self.peft_config)
        config = peft_config
        if config.task_type is None and self.task_type is not None:
            config = config.replace(task_type=self.task_type)
        base = self.get_base_model()
        before = {name: p.requires_grad for name, p in self.named_parameters()}
        # the task's head trains in full (modules_to_save) before any layer is targeted: a target
        # list naming it then adapts nothing there, as in PEFT
        defaults = self._default_modules_to_save(base, config)
        if defaults:
            config = config.replace(
                modules_to_save=list(dict.fromkeys([*(config.modules_to_save or []), *defaults]))
            )
        # resolved against the model: a new config
        config = self._inject(base, config, adapter_name)
        if config.modules_to_save:
            modules = list(config.modules_to_save)
            surgery.add_modules_to_save(base, modules, adapter_name, tying.saved_ties(base, config))
        # as in PEFT, the object given is the config
        self.peft_config[adapter_name] = adopt(peft_config, config)
        self._targeted += [n for n in surgery.adapted_layer_names(base) if n not in self._targeted]
        if not autocast_adapter_dtype:
            surgery.cast_adapter_to_layers(base, adapter_name)
        # empty until loaded (load_adapter, set_peft_model_state_dict), as in PEFT
        if low_cpu_mem_usage:
            surgery.adapter_to_meta(base, adapter_name)
        # a new adapter stays inactive and frozen until chosen, and every other parameter keeps its
        # requires_grad, as in PEFT; when the active one was deleted (the model held no adapter),
        # the new one is all there is
        if self.active_adapter not in self.peft_config or self.active_adapter == adapter_name:
            self.set_adapter(adapter_name)
            return
        # the new layers learn which adapters are active
        surgery.set_active(base, self.active_adapters)
        for name, param in self.named_parameters():
            param.requires_grad_(before.get(name, False))

    def _inject(self, base: nn.Module, config: PeftConfig, adapter_name: str) -> PeftConfig:
        """Add the adapter's layers or prompt module, as its method does (:mod:`peftkit.methods`);
        returns the config resolved against ``base``."""
        method = method_for(config)
        if method.inject is not None:
            return cast(PeftConfig, method.inject(base, config, adapter_name))
        # the model's sizes filled in
        config = prompting.resolve(base, cast(PromptLearningConfig, config))
        self.prompt_encoder[adapter_name] = cast(Any, method.prompt_module)(base, config)
        return config

    def _default_modules_to_save(self, base: nn.Module, config: PeftConfig) -> list[str]:
        return []

    def set_adapter(self, adapter_name: str, inference_mode: bool = False) -> None:
        """Make ``adapter_name`` the adapter that ``forward`` applies; only its weights train (none
        with ``inference_mode``, as in PEFT)."""
        config = self._require(adapter_name)
        self.active_adapter = adapter_name
        self._also_active = []
        base = self.get_base_model()
        surgery.set_active(base, [adapter_name])
        surgery.mark_trainable(base, adapter_name, config)
        for name, module in self.prompt_encoder.items():
            module.requires_grad_(name == adapter_name)
        if inference_mode or config.inference_mode:
            self.requires_grad_(False)

    def set_requires_grad(self, adapter_names: str | list[str], requires_grad: bool = True) -> None:
        """Turn gradients on (or off) for the given layer adapters' tensors, whichever adapter is
        active (PEFT's method).

        Raises:
            TypeError: the active adapter is a prompt method (PEFT's words).
        """
        if self.active_peft_config.is_prompt_learning:
            raise TypeError(
                "Setting `requires_grad` is not supported for prompt learning methods like "
                f"{self.active_peft_config.peft_type_name}."
            )
        for name in [adapter_names] if isinstance(adapter_names, str) else adapter_names:
            self._require(name)
            for _, _, param in surgery.adapter_parameters(self.get_base_model(), name):
                param.requires_grad_(requires_grad)

    def _set_active_many(self, names: list[str]) -> None:
        """Several LoRA/IA3 adapters applied together (PEFT's ``base_model.set_adapter([...])``),
        all trainable."""
        for name in names:
            if self._require(name).is_prompt_learning:
                raise ConfigError(
                    f"{name!r} is a prompt-learning adapter; only layer adapters can be active together"
                )
        shared = surgery.shared_trainable_copies(self.get_base_model(), names)
        if shared:  # checked before any layer changes (PEFT's words)
            raise ConfigError(
                f"Only one adapter can be set at a time for ModulesToSaveWrapper: {shared} hold a full "
                f"copy for several of {names}, and copies cannot be combined"
            )
        self.set_adapter(names[0])
        self._also_active = list(names[1:])
        base = self.get_base_model()
        surgery.set_active(base, names)
        for name in names[1:]:
            surgery.mark_trainable(base, name, self.peft_config[name], freeze_others=False)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter. Deleting the active one activates another, if any remains.

        Raises:
            AdapterStateError: the adapter is merged into the weights (unmerge it first, as PEFT
                requires).
        """
        self._require(adapter_name)
        if adapter_name in surgery.merged_names(self.get_base_model()):
            raise AdapterStateError(
                f"Cannot delete adapter(s) {[adapter_name]} while they are merged. Please unmerge "
                "them first. Call unmerge_adapter(): deleting it now would leave its update in "
                "the weights"
            )
        surgery.delete_adapter(self.get_base_model(), adapter_name)
        if adapter_name in self.prompt_encoder:
            del self.prompt_encoder[adapter_name]
        del self.peft_config[adapter_name]
        self._step_state.pop(adapter_name, None)
        self._also_active = [n for n in self._also_active if n != adapter_name]
        if self.active_adapter == adapter_name and self.peft_config:
            self.set_adapter(next(iter(self.peft_config)))
        elif not self.peft_config:  # the model holds no adapter now: the base model's behaviour
            self.active_adapter, self._also_active = "", []

    def disable_adapter_layers(self) -> None:
        """Run the base model alone until :meth:`enable_adapter_layers` (PEFT's tuner method)."""
        self.base_model.disable_adapter_layers()

    def enable_adapter_layers(self) -> None:
        self.base_model.enable_adapter_layers()

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Within this context the model behaves as the base model (merged weights are unmerged).

        Afterwards the layers are as they were: still disabled if all were
        (``disable_adapter_layers``); when some were and some were not, PEFT's warning, and all are
        enabled again. Nothing trains meanwhile (PEFT).
        """
        states = surgery.disabled_states(self.get_base_model())
        if len(states) > 1:
            warnings.warn(
                "The model contains some adapter layers that are enabled and others that are disabled. "
                "This is most likely unintentional. After exiting the disable_adapter context, all "
                "adapters will be enabled",
                stacklevel=3,
            )
        was_disabled, trainable = self._disabled, [p for p in self.parameters() if p.requires_grad]
        surgery.set_disabled(self.get_base_model(), True)
        self.requires_grad_(False)
        self._disabled = True
        try:
            yield
        finally:
            if states != {True}:
                surgery.set_disabled(self.get_base_model(), False)
            for param in trainable:
                param.requires_grad_(True)
            self._disabled = was_disabled

    # ----- merging
    # -----------------------------------------------------------------------------------

    def _require_layer_adapters(self, names: list[str], action: str) -> None:
        prompt = [n for n in names if self._require(n).is_prompt_learning]
        if prompt:
            raise PromptAdapterError(
                f"cannot {action} prompt-learning adapter(s) {prompt}: they change no weight"
            )

    def add_weighted_adapter(
        self,
        adapters: list[str],
        weights: list[float],
        adapter_name: str,
        combination_type: str = "svd",
        svd_rank: int | None = None,
        density: float | None = None,
        majority_sign_method: str = "total",
    ) -> None:
        """Create LoRA adapter ``adapter_name`` (inactive) as a weighted combination of LoRA
        ``adapters``, one weight each (negative subtracts), as PEFT does: ``combination_type``
        ``linear``, ``cat``, ``svd`` (to ``svd_rank``), ``ties``, ``dare_*``, ``magnitude_prune``
        (and ``_svd`` forms) keeping a ``density`` share; ``majority_sign_method`` is how TIES
        elects signs. See :func:`peftkit.peft_model.weighted.plan`.

        Raises:
            ConfigError: unknown adapters or combination, mismatched weights or ranks, or non-LoRA
                adapters.
        """
        configs = [self._require(a) for a in adapters]
        if any(method_for(c).name == "adalora" for c in configs):
            raise TypeError("AdaLoraModel does not support add_weighted_adapter method.")  # PEFT's
        for name, c in zip(adapters, configs, strict=True):
            if getattr(c, "target_parameters", None):  # PEFT's refusal, in its words
                raise ConfigError(
                    f"add_weighted_adapter does not support targeting nn.Parameter (problematic adapter "
                    f"'{name}'): combine adapters of target_modules only"
                )
        weighted.check_no_shared_copies(
            surgery.shared_trainable_copies(self.get_base_model(), adapters)
        )
        if {method_for(c).name for c in configs} == {"ia3"}:  # PEFT's IA3 combination: sum(w * l)
            # PEFT leaves an existing adapter of that name alone
            if adapter_name not in self.peft_config:
                self.add_adapter(adapter_name, weighted.plan_ia3(configs, weights))
                surgery.combine_ia3(self.get_base_model(), adapters, list(weights), adapter_name)
            return
        plan = weighted.plan(
            configs, weights, combination_type, svd_rank, density, majority_sign_method
        )
        self.add_adapter(adapter_name, plan.config)
        surgery.combine_lora(
            self.get_base_model(),
            adapters,
            list(weights),
            adapter_name,
            plan.combination,
            plan.rank,
            density=plan.density,
            sign_method=majority_sign_method,
        )

    def merge_adapter(
        self, adapter_names: list[str] | None = None, safe_merge: bool = False
    ) -> None:
        """Fold the active adapter (or ``adapter_names``) into the base weights. Merging twice is a
        no-op.

        A NaN or infinite adapter is always refused before it reaches a weight; ``safe_merge``
        (PEFT's flag) also checks the merged weights. A copy of each changed weight is kept until
        :meth:`unmerge_adapter`, which puts it back bitwise (PEFT subtracts the update, which
        rounding makes inexact; TRL's vLLM sync merges and unmerges on every step). The copy costs
        the targeted weights' memory once while merged; :meth:`merge_and_unload` keeps none.
        """
        names = adapter_names or self.active_adapters
        self._require_layer_adapters(names, "merge")
        merged = surgery.merged_names(self.get_base_model())
        if merged and set(names) <= merged:
            # PEFT's words
            warnings.warn("All adapters are already merged, nothing to do.", stacklevel=2)
        # no names: each layer merges the adapters active in it (PEFT's rule; a layer can be told
        # several)
        surgery.merge(self.get_base_model(), adapter_names)
        if safe_merge:
            check_finite_weights(self.get_base_model())

    def unmerge_adapter(self) -> None:
        """Restore the base weights from before any merge, bitwise (:meth:`merge_adapter` keeps a
        copy of each weight it changes until then)."""
        surgery.unmerge(self.get_base_model())

    def merge_and_unload(
        self,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        """Merge the active adapter (or ``adapter_names``, only those) and return the plain base
        model."""
        names = adapter_names or [self.active_adapter]
        self._require_layer_adapters(names, "merge")
        base = self.get_base_model()
        surgery.untie_adapted_embeddings(base)
        surgery.unmerge(base)
        # only these: another active adapter must not reach the weights; no copies of the
        # original weights, as this merge is never undone
        surgery.merge(base, names, keep_original=False)
        if safe_merge:
            check_finite_weights(base)
        merged = surgery.unload(base, keep_merged=True)
        if surgery.record_untied_embeddings(merged):
            warnings.warn(
                "Input and output embeddings are no longer tied after merging. Setting "
                "`tie_word_embeddings=False` in the model config.",
                UserWarning,
                stacklevel=2,
            )  # PEFT's
        return merged

    def unload(self) -> nn.Module:
        """Return the base model without adapter layers and without merging (the original weights).

        Raises:
            PromptAdapterError: the active adapter is a prompt method (an ``AttributeError``, as in
                PEFT, whose prompt models have no ``unload``).
        """
        self._require_layer_adapters([self.active_adapter], "unload")
        return surgery.unload(self.get_base_model(), keep_merged=False)

    # ----- forward and generate
    # ----------------------------------------------------------------------

    @property
    def tokens_in_front(self) -> int:
        """How many positions the active adapter puts in front of the input's logits: the virtual
        tokens of prompt tuning and p-tuning; none for prefix tuning (its prefix lives in the cache)
        and none in an encoder-decoder model's output (the virtual tokens go in front of the encoder
        input)."""
        config = self.active_peft_config
        if self._prompt_module() is None or prompting.prefix_in_cache(config):
            return 0
        return (
            0
            if config.task_type == TaskType.SEQ_2_SEQ_LM
            else int(getattr(config, "num_virtual_tokens", 0) or 0)
        )

    @property
    def prefix_in_cache(self) -> bool:
        """True when the active, enabled adapter is prefix tuning: its key/values reach the model as
        a cache, so a packed batch needs a mask per example (``packed_segments``) rather than
        slots."""
        return self._prompt_module() is not None and prompting.prefix_in_cache(
            self.active_peft_config
        )

    @property
    def uses_prompt_adapter(self) -> bool:
        """True when the active, enabled adapter is a prompt method (prompt tuning, p-tuning or
        prefix)."""
        return self._prompt_module() is not None

    def _prompt_module(self) -> nn.Module | None:
        if self._disabled or self.active_adapter not in self.prompt_encoder:
            return None
        return self.prompt_encoder[self.active_adapter]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the base model with the active adapter, with the arguments it takes: a transformers
        model's (``input_ids``, ``attention_mask``, ``labels``, ...; positional ones read in that
        order), or a plain ``nn.Module``'s own, passed as given.

        ``adapter_names`` (a keyword, one name per row, ``"__base__"`` for none) runs a mixed batch:
        each row through its own LoRA adapter, in one pass (inference only).
        """
        adapter_names = kwargs.pop("adapter_names", None)
        with (
            self._mixed_batch(adapter_names)
            if adapter_names is not None
            else contextlib.nullcontext()
        ):
            outputs = self._run_base(args, kwargs)
        return self._add_loss_terms(outputs)

    def _add_loss_terms(self, outputs: Any) -> Any:
        """Add what a trainable adapter's method adds to the loss (AdaLoRA's orthogonality term),
        as PEFT does whenever the model returns a loss: through a task's model (``task_type``
        set); PEFT's plain ``PeftModel`` calls the base model directly and adds nothing."""
        loss = getattr(outputs, "loss", None)
        if not isinstance(loss, torch.Tensor) or self.task_type is None:
            return outputs
        extra = self.loss_terms()
        if extra is not None:
            outputs.loss = outputs.loss + extra
        return outputs

    def loss_terms(self) -> torch.Tensor | None:
        """What the trainable adapters' methods add to a training loss (AdaLoRA's orthogonality
        term), or None. A loop that computes its own loss from the logits adds this once per
        optimizer step (peftkit's does)."""
        total: torch.Tensor | None = None
        for name, config in self.peft_config.items():
            term = method_for(config).loss_term
            if term is not None and not config.inference_mode:
                extra = term(self.get_base_model(), config, name)
                if extra is not None:
                    total = extra if total is None else total + extra
        return total

    def step_state(self) -> dict[str, dict[str, Any]]:
        """What the methods keep between optimizer steps, per adapter (AdaLoRA's scores and kept
        ranks): plain tensors, lists and numbers, for a training checkpoint."""
        return self._step_state

    def load_step_state(self, state: dict[str, dict[str, Any]]) -> None:
        """Put back :meth:`step_state` from a checkpoint."""
        self._step_state = {name: dict(held) for name, held in state.items()}

    def update_and_allocate(self, global_step: int) -> None:
        """After each optimizer step, before ``zero_grad()``: what the trainable adapters' methods
        do then (AdaLoRA scores its ranks and prunes them to the step's budget). peftkit's loop
        calls it; PEFT's code calls ``model.base_model.update_and_allocate(step)``, which lands
        here. A no-op for methods that need nothing."""
        for name, config in self.peft_config.items():
            hook = method_for(config).after_step
            if hook is not None and not config.inference_mode:
                state = self._step_state.setdefault(name, {})
                hook(self.get_base_model(), config, name, global_step, state)

    def _run_base(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        prompt, base = self._prompt_module(), self.get_base_model()
        # a plain nn.Module: model(x, y) means base(x, y)
        if prompt is None and not is_transformers_model(base):
            return base(*args, **kwargs)
        named = dict(zip(FORWARD_ARGUMENTS, args, strict=False))
        inputs = {k: v for k, v in named.items() if v is not None} | kwargs
        if prompt is not None:
            inputs = prompting.prepare_inputs(
                prompt,
                base,
                inputs,
                self._task(),
                cast(PromptLearningConfig, self.active_peft_config),
            )
        return base(**inputs)

    def _task(self) -> TaskType:
        return TaskType(self.active_peft_config.task_type or self.task_type or TaskType.CAUSAL_LM)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``generate`` of the base model with the active adapter applied.

        ``adapter_names=[...]`` (one per row, ``"__base__"`` for none) generates a mixed batch, each
        row with its own LoRA adapter.
        """
        adapter_names = kwargs.pop("adapter_names", None)
        base: Any = self.get_base_model()
        if adapter_names is not None:
            beams = kwargs.get("num_beams")
            with self._mixed_batch(
                adapter_names, beams if isinstance(beams, int) and beams > 1 else 1
            ):
                return base.generate(*args, **kwargs)
        prompt = self._prompt_module()
        if prompt is None:
            return base.generate(*args, **kwargs)
        if args:  # generate(input_ids) positionally, as transformers allows
            kwargs["input_ids"] = args[0]
        config = cast(PromptLearningConfig, self.active_peft_config)
        return prompting.generate(prompt, base, self._task(), config, **kwargs)

    def _mixed_batch(
        self, adapter_names: list[str], beams: int = 1
    ) -> contextlib.AbstractContextManager[None]:
        """Route each row through its adapter; with beam search, each row's name is repeated once
        per beam for the decoder (generate expands the batch), while an encoder sees the original
        rows, as in PEFT."""
        check_mixed_batch(
            self.training,
            adapter_names,
            list(self.peft_config),
            list(self.prompt_encoder),
            self._prompt_module() is not None,
        )
        expanded = [n for n in adapter_names for _ in range(beams)]
        return surgery.rows_through_adapters(
            self.get_base_model(), expanded, encoder_names=list(adapter_names)
        )

    # ----- files
    # -------------------------------------------------------------------------------------

    def adapter_state_dict(
        self, adapter_name: str, state_dict: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """The tensors that :meth:`save_pretrained` writes for ``adapter_name``, under PEFT's keys
        (read from ``state_dict``, a whole model's, when given)."""
        self._require(adapter_name)
        return adapter_io.adapter_state_dict(self, adapter_name, state_dict)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        selected_adapters: list[str] | None = None,
        is_main_process: bool = True,
        path_initial_model_for_weight_conversion: str | os.PathLike[str] | None = None,
        safe_serialization: bool = True,
        save_embedding_layers: str | bool = "auto",
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Write each adapter in PEFT's layout: ``default`` at the top, others in a subfolder of
        their name.

        Safetensors by default; ``safe_serialization=False`` writes PEFT's legacy
        ``adapter_model.bin`` (tensors only, read back with ``torch.load(weights_only=True)``). Each
        file is replaced atomically.

        Args:
            state_dict: the whole model's state dict to take the adapters' tensors from (Trainer
                passes one it gathered from FSDP or DeepSpeed shards); by default the model's own
                parameters.
            save_embedding_layers: also save the base model's embedding weights, as PEFT does:
                ``"auto"`` when an adapter adapts an embedding layer or the vocabulary was resized,
                ``True`` always.
            path_initial_model_for_weight_conversion: for a PiSSA/OLoRA adapter, the folder where it
                was saved right after initialization. The adapter is then written as a plain LoRA
                adapter of twice the rank that applies to the original base weights (``[A | A0]``,
                ``[B | -B0]``), as PEFT does.
        """
        if not self.peft_config:
            raise AdapterNotFoundError(
                f"nothing to save to {save_directory}: this model holds no adapter (the last "
                "one was deleted); add one with add_adapter or load one with load_adapter"
            )
        if is_main_process:
            adapter_io.save_pretrained(
                self,
                save_directory,
                selected_adapters or list(self.peft_config),
                path_initial_model_for_weight_conversion,
                save_embedding_layers,
                state_dict,
                safe_serialization,
            )

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str = "Upload adapter",
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
    ) -> Any:
        """Save the adapters and upload them to the Hugging Face Hub repository ``repo_id``
        (huggingface_hub).

        Raises:
            HubError: the hub cannot be reached (offline, no token, no permission); nothing is
                half-uploaded that was not already there.
        """
        return adapter_io.push_to_hub(
            self,
            repo_id,
            commit_message=commit_message,
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | os.PathLike[str],
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: PeftConfig | None = None,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        torch_device: str | None = None,
        ephemeral_gpu_offload: bool = False,
        key_mapping: dict[str, str] | None = None,
        ignore_mismatched_sizes: bool = False,
        **hub_kwargs: Any,
    ) -> PeftModel:
        """Attach the adapter saved at ``model_id`` (a folder written by peftkit or PEFT, or a hub
        id, with ``subfolder`` and ``revision`` in ``hub_kwargs``) to ``model``, the base model it
        was trained on.

        ``is_trainable=False`` freezes it for inference. ``config`` replaces the folder's config.
        ``autocast_adapter_dtype=False`` keeps it in the dtype of the layers it adapts;
        ``low_cpu_mem_usage`` creates it empty and fills it from the file;
        ``ignore_mismatched_sizes`` leaves out tensors whose shape does not fit, with a warning
        naming each (otherwise :class:`AdapterShapeError`). ``torch_device`` is accepted for PEFT's
        signature; ``ephemeral_gpu_offload`` and ``key_mapping`` only with their defaults.
        """
        check_unsupported_load_options(ephemeral_gpu_offload, key_mapping)
        folder, config = adapter_io.read_config(model_id, config, is_trainable, **hub_kwargs)
        model_cls = (
            cls
            if cls is not PeftModel or config.task_type is None
            else TASK_MODEL_CLASSES.get(TaskType(config.task_type), PeftModel)
        )
        peft_model = model_cls(model, config, adapter_name)
        if not autocast_adapter_dtype:
            surgery.cast_adapter_to_layers(peft_model.get_base_model(), adapter_name)
        # the file's tensors replace empty ones instead of being copied over random ones
        if low_cpu_mem_usage:
            surgery.adapter_to_meta(peft_model.get_base_model(), adapter_name)
        adapter_io.load_weights(peft_model, folder, adapter_name, ignore_mismatched_sizes)
        peft_model.set_adapter(adapter_name)
        if not is_trainable:
            peft_model.eval()  # inference: dropout off, as in PEFT
        return peft_model

    def load_adapter(
        self,
        model_id: str | os.PathLike[str],
        adapter_name: str,
        is_trainable: bool = False,
        torch_device: str | None = None,
        autocast_adapter_dtype: bool = True,
        ephemeral_gpu_offload: bool = False,
        low_cpu_mem_usage: bool = False,
        key_mapping: dict[str, str] | None = None,
        ignore_mismatched_sizes: bool = False,
        **hub_kwargs: Any,
    ) -> Any:
        """Load a saved adapter next to the existing ones (inactive until :meth:`set_adapter`), or
        new weights for one it holds (Trainer's resume). The options are :meth:`from_pretrained`'s.

        Returns:
            PEFT's load result: ``missing_keys`` and ``unexpected_keys`` (always empty: a mismatch
            raises :class:`AdapterFormatError` instead of loading part of an adapter).
        """
        check_unsupported_load_options(ephemeral_gpu_offload, key_mapping)
        folder, config = adapter_io.read_config(model_id, None, is_trainable, **hub_kwargs)
        new = adapter_name not in self.peft_config
        if new:
            warn_base_rewriting_adapters(config, self.peft_config)
        before = {name: p.requires_grad for name, p in self.named_parameters()}
        adapter_io.load_adapter(
            self,
            folder,
            config,
            adapter_name,
            ignore_mismatched_sizes,
            low_cpu_mem_usage=low_cpu_mem_usage,
            autocast_adapter_dtype=autocast_adapter_dtype,
        )
        if adapter_name == self.active_adapter:
            self.set_adapter(adapter_name)
        # as PEFT: the others keep their requires_grad (even a user's own choice), the new one
        # trains
        elif new:
            for name, param in self.named_parameters():  # only when loaded trainable, active or not
                param.requires_grad_(before.get(name, False))
            if is_trainable:
                for _, _, param in surgery.adapter_parameters(self.get_base_model(), adapter_name):
                    param.requires_grad_(True)
        if not is_trainable:
            self.eval()
        return _IncompatibleKeys([], [])

    def load_adapter_state(
        self,
        tensors: dict[str, torch.Tensor],
        adapter_name: str,
        source: str,
        any_bias: bool = False,
        ignore_mismatched_sizes: bool = False,
    ) -> None:
        """Copy an adapter's tensors, under the file's keys, into adapter ``adapter_name``.

        Biases load only where the adapter's config trains them, unless ``any_bias`` (PEFT's
        ``set_peft_model_state_dict`` loads every bias a state dict carries).

        Raises:
            AdapterFormatError: a tensor is missing, has no place, names a base weight, has another
                shape, or holds NaN or infinity (``source`` names where it came from).
        """
        adapter_io.load_adapter_state(
            self, tensors, adapter_name, source, any_bias, ignore_mismatched_sizes
        )

    # ----- what the model holds, in PEFT's words
    # -------------------------------------------------------

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable parameters, all parameters), shared weights counted once."""
        return count_parameters(self)

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / max(total, 1):.4f}"
        )

    @property
    def prefix(self) -> str:
        """The parameter-name prefix of the active method's tensors (``lora_``, ``ia3_``), as PEFT's
        tuner has."""
        prefix = method_for(self.active_peft_config).prefix
        if prefix is None:
            raise AttributeError(
                f"{self.active_peft_config.peft_type_name} adds no layer tensors, so has no prefix"
            )
        return prefix

    def get_layer_status(self) -> list[Any]:
        """PEFT's per-layer report: see :func:`peftkit.get_layer_status`."""
        return get_layer_status(self)

    def get_model_status(self) -> Any:
        """PEFT's whole-model report: see :func:`peftkit.get_model_status`."""
        return get_model_status(self)

    @property
    def targeted_module_names(self) -> list[str]:
        """The names of the base model's layers that hold an adapter, in the order the adapters
        first reached them (PEFT's attribute of the same name; layers of deleted adapters are left
        out)."""
        base = self.get_base_model()
        params = {n for n, m in base.named_modules() if _adapts_a_parameter(m)}
        held = [n for n in surgery.adapted_layer_names(base) if n not in params]
        return [n for n in self._targeted if n in held] + [
            n for n in held if n not in self._targeted
        ]

    @property
    def targeted_parameter_names(self) -> list[str]:
        """The raw parameters LoRA adapts (``target_parameters``), as ``<module>.<parameter>``
        (PEFT's attribute): in the model's order, each module's in the order it registered them."""
        found = []
        for name, module in self.get_base_model().named_modules():
            if _adapts_a_parameter(module) and not name.endswith("base_layer"):  # outermost
                wrapped, layer = set(), cast(nn.Module, module)
                while _adapts_a_parameter(layer):
                    wrapped.add(cast(AdapterLayer, layer).parameter_name)
                    layer = cast(nn.Module, layer.base_layer)
                found += [
                    f"{name}.{p}" for p, _ in layer.named_parameters(recurse=False) if p in wrapped
                ]
        return found


def _adapts_a_parameter(module: nn.Module) -> bool:
    """A layer that adapts a raw parameter of the module it wraps (``target_parameters``)."""
    return isinstance(module, AdapterLayer) and module.parameter_name is not None


def _checkpointing(model: nn.Module) -> bool:
    """Whether ``model`` checkpoints its layers; True for a model that cannot say (PEFT's default)."""
    # transformers' newer name first
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name) or name in vars(model):
            return bool(getattr(model, name))
    return True


FORWARD_ARGUMENTS = (
    "input_ids",
    "attention_mask",
    "inputs_embeds",
    "labels",
    "token_type_ids",
    "position_ids",
    "decoder_input_ids",
    "decoder_attention_mask",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
)
"""A transformers model's forward arguments, in the order positional ones are read."""


def _forward_signature() -> inspect.Signature:
    """``forward``'s signature as transformers' Trainer reads it to keep dataset columns: the named
    arguments (each defaulting to None), then ``**kwargs``."""
    named = [
        inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
        for n in FORWARD_ARGUMENTS
    ]
    rest = inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)
    return inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *named, rest]
    )


PeftModel.forward.__signature__ = _forward_signature()  # type: ignore[attr-defined]


def _drop_tied_aliases(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """Keep one name per tied tensor (e.g. embeddings shared with the LM head), as
    ``save_pretrained`` of transformers does, so ``transformers.Trainer`` can write a checkpoint of
    this model with safetensors. Loading still works: the tied tensor is filled through the name
    that is kept."""
    seen: set[tuple[Any, ...]] = set()
    for key in list(state_dict):
        value = state_dict[key]
        if not isinstance(value, torch.Tensor) or value.is_meta or value.numel() == 0:
            continue
        ident = (
            value.untyped_storage().data_ptr(),
            value.storage_offset(),
            tuple(value.shape),
            value.stride(),
        )
        if ident in seen:
            del state_dict[key]
        seen.add(ident)


class PeftModelForCausalLM(PeftModel):
    """Adapters on a causal language model (``AutoModelForCausalLM``)."""

    task_type = TaskType.CAUSAL_LM


class PeftModelForSeq2SeqLM(PeftModel):
    """Adapters on an encoder-decoder model (``AutoModelForSeq2SeqLM``)."""

    task_type = TaskType.SEQ_2_SEQ_LM


class PeftModelForSequenceClassification(PeftModel):
    """Adapters on a classifier; its head (``classifier`` or ``score``) trains in full, as in PEFT."""

    task_type = TaskType.SEQ_CLS

    def _default_modules_to_save(self, base: nn.Module, config: PeftConfig) -> list[str]:
        return [n for n in surgery.SEQ_CLS_HEADS if isinstance(getattr(base, n, None), nn.Module)]


class PeftModelForTokenClassification(PeftModelForSequenceClassification):
    """Adapters on a token classifier; its head trains in full."""

    task_type = TaskType.TOKEN_CLS


class PeftModelForQuestionAnswering(PeftModel):
    """Adapters on an extractive question-answering model; its span head (``qa_outputs``) trains in
    full, as in PEFT."""

    task_type = TaskType.QUESTION_ANS

    def _default_modules_to_save(self, base: nn.Module, config: PeftConfig) -> list[str]:
        return ["qa_outputs"] if isinstance(getattr(base, "qa_outputs", None), nn.Module) else []


class PeftModelForFeatureExtraction(PeftModel):
    """Adapters on an encoder used for embeddings (``AutoModel``)."""

    task_type = TaskType.FEATURE_EXTRACTION


TASK_MODEL_CLASSES: dict[TaskType, type[PeftModel]] = {
    TaskType.CAUSAL_LM: PeftModelForCausalLM,
    TaskType.SEQ_2_SEQ_LM: PeftModelForSeq2SeqLM,
    TaskType.SEQ_CLS: PeftModelForSequenceClassification,
    TaskType.TOKEN_CLS: PeftModelForTokenClassification,
    TaskType.QUESTION_ANS: PeftModelForQuestionAnswering,
    TaskType.FEATURE_EXTRACTION: PeftModelForFeatureExtraction,
}


def get_peft_model(
    model: nn.Module,
    peft_config: PeftConfig,
    adapter_name: str = "default",
    mixed: bool = False,
    autocast_adapter_dtype: bool = True,
    revision: str | None = None,
    low_cpu_mem_usage: bool = False,
) -> PeftModel:
    """Wrap ``model`` with a new adapter described by ``peft_config``.

    The task class (causal LM, seq2seq, classification, ...) follows ``peft_config.task_type``.
    The model is modified in place: its targeted layers become adapter layers.

    Args:
        mixed: PEFT's ``PeftMixedModel`` (adapters of different methods active together); not
            supported.
        autocast_adapter_dtype: True (PEFT's default): adapter weights are float32 whatever the
            base's dtype; False: they take the dtype of the layer they adapt.
        revision: the hub revision of the base model, recorded in the config.
        low_cpu_mem_usage: create the adapter on the meta device, to be filled by loading (as PEFT
            does).

    Example:
        >>> model = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
        >>> model.print_trainable_parameters()
    """
    if mixed:
        raise ConfigError(
            "mixed=True (PEFT's PeftMixedModel, adapters of different methods active at once) is not "
            "supported by peftkit; use one method per model, with add_adapter and set_adapter to switch"
        )
    if isinstance(model, PeftModel):
        raise ConfigError(
            "the model already has adapters; use model.add_adapter(name, config) to add another"
        )
    held = {
        n for _, layer in surgery.adapter_layers(model) for n in surgery.layer_adapter_names(layer)
    }
    if held:
        warnings.warn(
            "You are trying to modify a model with PEFT for a second time. If you want to reload the "
            "model with a different config, make sure to call `.unload()` before.",
            stacklevel=2,
        )
    kept: dict[str, torch.Tensor] = {}
    # PEFT re-initializes it; peftkit keeps the trained weights, or refuses
    if adapter_name in held:
        if surgery.planned_layout(model, peft_config) != surgery.held_layout(model, adapter_name):
            raise ConfigError(
                f"this model already holds an adapter named {adapter_name!r} from an earlier "
                "get_peft_model, with other layers or ranks; wrapping it again with this config would "
                "re-initialize its trained weights and leave its config disagreeing with them. Use the "
                "PeftModel you got then (add_adapter for another adapter), or call .unload() first"
            )
        kept = surgery.adapter_tensors(model, adapter_name)
    # PEFT records the base model's name in the config here (None for a model built from a config)
    recorded = {"base_model_name_or_path": model.__dict__.get("name_or_path") or None}
    old_name = peft_config.base_model_name_or_path
    if old_name is not None and old_name != recorded["base_model_name_or_path"]:
        warnings.warn(
            f"The PEFT config's `base_model_name_or_path` was renamed from '{old_name}' to "
            f"'{recorded['base_model_name_or_path']}'. Please ensure that the correct base model is loaded "
            # PEFT's words: the model's own name wins
            "when loading this checkpoint.",
            stacklevel=2,
        )
    adopt(
        peft_config,
        peft_config.replace(**recorded, **({"revision": revision} if revision is not None else {})),
    )
    task = TaskType(peft_config.task_type) if peft_config.task_type is not None else None
    model_cls = TASK_MODEL_CLASSES.get(task, PeftModel) if task is not None else PeftModel
    peft_model = model_cls(model, peft_config, adapter_name)
    if low_cpu_mem_usage and not kept:
        surgery.adapter_to_meta(model, adapter_name)
    if kept:  # the same adapter again: its weights, not fresh ones
        model.load_state_dict(kept, strict=False)
    if not autocast_adapter_dtype:
        surgery.cast_adapter_to_layers(model, adapter_name)
    return peft_model
