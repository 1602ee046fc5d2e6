"""Make ``import peft`` (and every ``peft.*`` submodule) resolve to peftkit, for running PEFT's own
tests.

Installed by the conftest that ``run_peft_tests.py`` writes next to PEFT's test files. A name
peftkit has is peftkit's object; a name it lacks becomes a placeholder class whose use raises
:class:`MissingAPI` naming it, so a test file still collects and each test that needs the name fails
on its own, counted as "missing API" rather than hiding the file's other tests. Only environment
probes (``peft.import_utils.is_*``, ``infer_device``) are answered here, never adapter behaviour.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys
import types
from functools import cache
from typing import Any

import peftkit

# Where PEFT keeps a name that peftkit has under another module or name.
ALIASES: dict[str, str] = {
    "BaseTunerLayer": "peftkit.tuners.base:AdapterLayer",
    "LoraLayer": "peftkit.tuners.lora:LoraLayer",
    "Linear": "peftkit.tuners.lora:LoraLinear",
    "Embedding": "peftkit.tuners.lora.embedding:LoraEmbedding",
    "Conv1d": "peftkit.tuners.lora.conv:LoraConv1d",
    "Conv2d": "peftkit.tuners.lora.conv:LoraConv2d",
    "Conv3d": "peftkit.tuners.lora.conv:LoraConv3d",
    "IA3Layer": "peftkit.tuners.ia3:IA3Layer",
    "LoHaLayer": "peftkit.tuners.loha:LoHaLayer",
    "LoKrLayer": "peftkit.tuners.lokr:LoKrLayer",
    "OFTLayer": "peftkit.tuners.oft:OFTLayer",
    "ParamWrapper": "peftkit.tuners.lora.param:LoraParam",
    "ModulesToSaveWrapper": "peftkit.tuners.modules_to_save:ModulesToSaveWrapper",
    "PromptEmbedding": "peftkit.tuners.prompt:PromptEmbedding",
    "PromptEncoder": "peftkit.tuners.prompt:PromptEncoder",
    "PrefixEncoder": "peftkit.tuners.prompt:PrefixEncoder",
    "INCLUDE_LINEAR_LAYERS_SHORTHAND": "=all-linear",
    "_find_minimal_target_modules": "peftkit.surgery:minimal_target_modules",
    "_get_submodules": "peftkit.surgery:get_submodules",
    "_get_module_names_tied_with_embedding": "peftkit.surgery.tying:module_names_tied_with_embedding",
    "check_target_module_exists": "peftkit.surgery:is_target",
    "check_if_peft_model": "peftkit.helpers:check_if_peft_model",
    "rescale_adapter_scale": "peftkit.helpers:rescale_adapter_scale",
    "inspect_matched_modules": "peftkit.helpers:inspect_matched_modules",
    "PeftWarning": "peftkit.errors:PeftWarning",
    "PEFT_TYPE_TO_CONFIG_MAPPING": "peftkit.mapping:PEFT_TYPE_TO_CONFIG_MAPPING",
    "PEFT_TYPE_TO_PREFIX_MAPPING": "peftkit.mapping:PEFT_TYPE_TO_PREFIX_MAPPING",
    "PEFT_TYPE_TO_TUNER_MAPPING": "peftkit.mapping:PEFT_TYPE_TO_TUNER_MAPPING",
    "MIN_TARGET_MODULES_FOR_OPTIMIZATION": "peftkit.surgery:MIN_TARGET_MODULES_FOR_OPTIMIZATION",
}


# PEFT modules that are one peftkit module, so that patching a module global
# (``peft.config.__version__``) reaches the code that reads it.
MODULE_ALIASES: dict[str, str] = {"peft.config": "peftkit.config"}


class MissingAPI(NotImplementedError):
    """A PEFT name that peftkit does not provide."""


def _missing(module: str, name: str) -> Any:
    """A stand-in for a name peftkit lacks. A function raises when called; a class can be
    instantiated (test tables build configs of every method at import time) and its instances raise
    when used."""

    def fail(*_: Any, **__: Any) -> Any:
        raise MissingAPI(f"{module}.{name} is not in peftkit")

    if not name[:1].isupper():
        fail.__name__ = name
        return fail

    class Meta(type):
        def __getattr__(cls, attr: str) -> Any:
            if attr.startswith("_"):  # introspection (inspect.signature looks for _partialmethod)
                raise AttributeError(attr)
            return fail()

    def instance_attr(self: Any, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return fail()

    return Meta(
        name,
        (),
        {
            "__module__": module,
            "__doc__": f"missing: {module}.{name}",
            "__init__": lambda self, *a, **k: None,
            "__getattr__": instance_attr,
        },
    )


@cache
def _peft_submodules() -> frozenset[str]:
    """Every module name in the real PEFT package, found on disk without importing it."""
    import os

    spec = importlib.util.find_spec("peft")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    root = next(iter(spec.submodule_search_locations))
    names = set()
    for folder, _, files in os.walk(root):
        rel = os.path.relpath(folder, root).replace(os.sep, ".")
        prefix = "peft" if rel == "." else f"peft.{rel}"
        if "__pycache__" in prefix:
            continue
        names.add(prefix)
        names.update(
            f"{prefix}.{f[:-3]}" for f in files if f.endswith(".py") and f != "__init__.py"
        )
    return frozenset(names)


def _environment(module: str, name: str) -> Any:
    """Answers to environment probes: which packages and versions are installed, and the device."""
    if name == "infer_device":
        return lambda: "cpu"
    found = re.fullmatch(r"is_transformers_ge_v(\d+)(?:_(\d+))?(?:_(\d+))?", name)
    if found:
        import transformers
        from packaging.version import Version

        wanted = Version(".".join(g or "0" for g in found.groups()))
        return cache(lambda: Version(transformers.__version__) >= wanted)
    found = re.fullmatch(r"is_(\w+)_available", name)
    if found:
        package = {"bnb": "bitsandbytes", "auto_gptq": "auto_gptq"}.get(
            found.group(1), found.group(1)
        )
        return cache(lambda: importlib.util.find_spec(package) is not None)
    return None


class ShimModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if f"{self.__name__}.{name}" in _peft_submodules():
            return importlib.import_module(f"{self.__name__}.{name}")
        if name in ALIASES:
            target = ALIASES[name]
            if target.startswith("="):
                return target[1:]
            module, _, attr = target.partition(":")
            return getattr(importlib.import_module(module), attr)
        if hasattr(peftkit, name) and not name.startswith("_"):
            return getattr(peftkit, name)
        found = _environment(self.__name__, name)
        if found is not None:
            return found
        return _missing(self.__name__, name)


class ShimFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "peft" or (fullname.startswith("peft.") and fullname in _peft_submodules()):
            return importlib.machinery.ModuleSpec(
                fullname, self, is_package=fullname not in MODULE_ALIASES
            )
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if spec.name in MODULE_ALIASES:
            return importlib.import_module(MODULE_ALIASES[spec.name])
        module = ShimModule(spec.name)
        module.__path__ = []
        # what PEFT's tests compare against; peftkit writes this version's format
        module.__version__ = "0.21.2"
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def install() -> None:
    _peft_submodules()  # read the real package's layout before the shim hides it
    for name in [m for m in sys.modules if m == "peft" or m.startswith("peft.")]:
        del sys.modules[name]
    sys.meta_path.insert(0, ShimFinder())
