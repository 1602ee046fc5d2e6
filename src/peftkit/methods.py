"""The method registry: one registration is everything the package needs to know about a PEFT
method.

A :class:`Method` names the method once (``"lora"``; the CLI, training configs and ``compare`` use
this name), gives its ``adapter_config.json`` type (``"LORA"``), its config class, its adapter layer
classes and the prefix of its tensors' names, and says how it adapts a model: ``inject`` places
adapter layers in the model (LoRA, IA3), ``prompt_module`` builds the module that makes its virtual
tokens (prompt tuning, p-tuning, prefix tuning). Everything else (saving, loading, merging,
training, statuses, ``peftkit inspect``) works on the generic layer API of
:class:`~peftkit.tuners.base.AdapterLayer` and asks this registry for the rest.

Adding a method is a config class, a layer class and one :func:`register_method` call;
``docs/architecture.md`` walks through a complete one (``tests/test_methods.py`` registers it from
the test file alone and runs it through the whole package).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from . import surgery
from .config import CONFIG_CLASSES, PeftConfig, PeftType
from .errors import ConfigError, did_you_mean
from .tuners import adalora as adalora_hooks
from .tuners.adalora import AdaLoraLayer
from .tuners.base import AdapterLayer
from .tuners.ia3 import IA3Layer
from .tuners.loha import LoHaLayer
from .tuners.lokr import LoKrLayer
from .tuners.lora import LoraLayer
from .tuners.oft import OFTLayer
from .tuners.prompt import model as prompting
from .tuners.trainable_tokens import TrainableTokensLayer

__all__ = [
    "Method",
    "method_for",
    "method_named",
    "methods",
    "register_method",
    "unregister_method",
]

Inject = Callable[[nn.Module, Any, str], Any]
"""``inject(model, config, adapter_name) -> config``: place adapter ``adapter_name``'s layers in
``model`` (in place) and return ``config`` resolved against the model (targets listed), as its file
records it."""


@dataclass(frozen=True)
class Method:
    """One PEFT method, as the package sees it.

    Attributes:
        name: the one name users write (``"lora"``, ``"prompt_tuning"``): CLI flags, training
            configs, reports.
        peft_type: the method's ``peft_type`` in ``adapter_config.json`` (``"LORA"``), PEFT's
            spelling.
        config_class: its config (a :class:`~peftkit.config.PeftConfig` subclass whose ``peft_type``
            is this one).
        tuner_name: PEFT's name for the model-level tuner (``"LoraModel"``), as statuses report it;
            None for a prompt method (PEFT has no tuner for those).
        inject: how it places its layers (layer methods); None for a prompt method.
        prompt_module: how it builds its virtual-token module (prompt methods); None for a layer
            method.
        layer_classes: the adapter layers it places; "all-linear" re-targets a layer of these
            classes, and a layer of another method's classes is never shared.
        prefix: what its tensors' names start with (``"lora_"``); None for prompt methods.
        loss_term: a term the method adds to the model's loss while its adapter trains
            (``loss_term(base_model, config, adapter_name)``, None for nothing): AdaLoRA's
            orthogonality.
        after_step: what the method does after each optimizer step
            (``after_step(base_model, config, adapter_name, step, state)``, ``state`` a dict kept
            per adapter), run by :meth:`~peftkit.PeftModel.update_and_allocate`: AdaLoRA's rank
            allocation.
        to_file: ``to_file(config, tensors, adapter_name) -> (config, tensors)``, the adapter as
            its file holds it (AdaLoRA: the pruned ranks cut out).
        before_load: ``before_load(base_model, config, adapter_name)``, the layers reshaped to
            what a file holds before its tensors are copied in (AdaLoRA: cut to ``rank_pattern``).
    """

    name: str
    peft_type: str
    config_class: type[PeftConfig]
    tuner_name: str | None = None
    inject: Inject | None = None
    prompt_module: Callable[[nn.Module, Any], nn.Module] | None = None
    layer_classes: tuple[type[nn.Module], ...] = ()
    prefix: str | None = None
    loss_term: Callable[[nn.Module, Any, str], Any] | None = None
    after_step: Callable[[nn.Module, Any, str, int, dict[str, Any]], None] | None = None
    to_file: Callable[[Any, dict[str, Any], str], tuple[Any, dict[str, Any]]] | None = None
    before_load: Callable[[nn.Module, Any, str], None] | None = None

    @property
    def is_prompt(self) -> bool:
        """Whether it adds virtual tokens (a module beside the model) rather than adapter layers."""
        return self.prompt_module is not None


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make ``method`` known to the whole package (configs, files, CLI, training, statuses).

    Raises:
        ConfigError: the name or ``peft_type`` is taken by another method, the config class's
            ``peft_type`` is not the method's, or the method says neither how it injects nor how it
            builds its prompt.
    """
    problems = []
    for other in _REGISTRY.values():
        if other.name != method.name and other.peft_type == method.peft_type:
            problems.append(
                f"peft_type {method.peft_type!r} already belongs to method {other.name!r}"
            )
    held = _REGISTRY.get(method.name)
    if held is not None and held.config_class is not method.config_class:
        problems.append(f"method name {method.name!r} is taken by {held.config_class.__name__}")
    # PeftType is a str enum
    if getattr(method.config_class, "peft_type", None) != method.peft_type:
        problems.append(f"{method.config_class.__name__}.peft_type must be {method.peft_type!r}")
    if (method.inject is None) == (method.prompt_module is None):
        problems.append(
            "give exactly one of inject (a layer method) and prompt_module (a prompt method)"
        )
    if problems:
        raise ConfigError(problems, source=f"method {method.name!r}")
    _REGISTRY[method.name] = method
    CONFIG_CLASSES[method.peft_type] = method.config_class  # files name it by its peft_type
    return method


def unregister_method(name: str) -> None:
    """Forget method ``name`` (a plugin unloaded, a test done); configs and files of it are unknown
    again."""
    method = _REGISTRY.pop(name, None)
    if method is not None:
        CONFIG_CLASSES.pop(method.peft_type, None)


def methods() -> Iterator[Method]:
    """Every registered method, built-ins first."""
    return iter(list(_REGISTRY.values()))


def method_for(config: PeftConfig) -> Method:
    """The method of a config (its class, or the nearest registered base class).

    Raises:
        ConfigError: no registered method has this config class.
    """
    for cls in type(config).__mro__:
        for method in _REGISTRY.values():
            if method.config_class is cls:
                return method
    raise ConfigError(
        f"{type(config).__name__} is no registered method's config; register the method with "
        "peftkit.methods.register_method first"
    )


def method_named(name: str) -> Method:
    """The method called ``name`` (its name, or its ``peft_type`` in any case: ``"lora"``,
    ``"LORA"``).

    Raises:
        ConfigError: no such method, with the known names.
    """
    for method in _REGISTRY.values():
        if name in (method.name, method.peft_type) or name.upper() == method.peft_type:
            return method
    known = [m.name for m in _REGISTRY.values()]
    raise ConfigError(
        f"method {name!r} is unknown; expected one of {', '.join(known)}.{did_you_mean(name, known)}"
    )


def _register_builtins() -> None:
    from .tuners.lora.conv import LoraConv
    from .tuners.lora.embedding import LoraEmbedding

    lora_layers = (LoraLayer, LoraEmbedding, LoraConv)
    register_method(
        Method(
            "lora",
            PeftType.LORA.value,
            CONFIG_CLASSES[PeftType.LORA],
            "LoraModel",
            inject=surgery.inject_lora,
            layer_classes=lora_layers,
            prefix=LoraLayer.prefix,
        )
    )
    for name, peft_type in (
        ("prompt_tuning", PeftType.PROMPT_TUNING),
        ("p_tuning", PeftType.P_TUNING),
        ("prefix_tuning", PeftType.PREFIX_TUNING),
    ):
        register_method(
            Method(
                name,
                peft_type.value,
                CONFIG_CLASSES[peft_type],
                prompt_module=prompting.build_prompt_module,
            )
        )
    # the layer methods with one layer class each: name, type, PEFT's tuner, how it injects, layer
    single_layer: list[tuple[str, PeftType, str, Any, type[AdapterLayer]]] = [
        ("loha", PeftType.LOHA, "LoHaModel", surgery.inject_loha, LoHaLayer),
        ("lokr", PeftType.LOKR, "LoKrModel", surgery.inject_lokr, LoKrLayer),
        ("oft", PeftType.OFT, "OFTModel", surgery.inject_oft, OFTLayer),
        (
            "trainable_tokens",
            PeftType.TRAINABLE_TOKENS,
            "TrainableTokensModel",
            surgery.inject_trainable_tokens,
            TrainableTokensLayer,
        ),
        ("ia3", PeftType.IA3, "IA3Model", surgery.inject_ia3, IA3Layer),
    ]
    register_method(
        Method(
            "adalora",
            PeftType.ADALORA.value,
            CONFIG_CLASSES[PeftType.ADALORA],
            "AdaLoraModel",
            inject=surgery.inject_adalora,
            layer_classes=(AdaLoraLayer,),
            prefix=AdaLoraLayer.prefix,
            loss_term=adalora_hooks.loss_term,
            after_step=adalora_hooks.after_step,
            to_file=adalora_hooks.to_file,
            before_load=adalora_hooks.before_load,
        )
    )
    for name, peft_type, tuner, inject, layer in single_layer:
        register_method(
            Method(
                name,
                peft_type.value,
                CONFIG_CLASSES[peft_type],
                tuner,
                inject=inject,
                layer_classes=(layer,),
                prefix=getattr(layer, "prefix", ""),
            )
        )


_register_builtins()
