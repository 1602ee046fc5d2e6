"""TRL's trainers take peftkit's configs and models as they take PEFT's, PEFT installed or not.

TRL recognises adapters through names it binds in its own modules at import time:
``is_peft_model`` (accelerate's ``isinstance(model, peft.PeftModel)``), ``is_peft_available``
(transformers'), and PEFT's ``PeftConfig``, ``PeftModel``, ``LoraConfig``, ``PrefixTuningConfig``,
``PromptLearningConfig``, ``BaseTunerLayer``, ``get_peft_model`` and three state-dict helpers,
imported under ``if is_peft_available():``. Every decision TRL makes about adapters (no second
model as DPO's or GRPO's reference, a frozen ``ref`` copy of a trained adapter, LoRA on ``lm_head``
refused, ``sync_ref_model`` refused, adapter-only checkpoints, merged weights sent to vLLM) reads
one of them.

:func:`install` (run by ``import peftkit``) rebinds those names in every ``trl`` module, the ones
already imported and each one TRL loads later (TRL loads lazily):

- the class names become classes whose ``isinstance``/``issubclass`` accept PEFT's class or
  peftkit's; calling one, or reading an attribute of it, uses PEFT's class where PEFT is installed
  and peftkit's where it is not, so a PEFT user's run does not change;
- ``get_peft_model`` and the state-dict helpers go to peftkit's function for peftkit's configs and
  models, and to PEFT's for PEFT's;
- ``is_peft_model`` also accepts peftkit's models; ``is_peft_available`` is true (peftkit provides the
  API); a module that reads ``peft.__version__`` sees PEFT's version, or, with PEFT absent, the
  version whose behaviour peftkit matches.

Nothing else of TRL changes. TRL then calls the model methods PEFT's model has (``add_adapter``,
``disable_adapter``, ``set_adapter``, ``merge_adapter``/``unmerge_adapter``, ``get_base_model``,
``enable_input_require_grads``, ``add_model_tags``), which peftkit's :class:`~peftkit.PeftModel` has
too. The patch is applied only for the TRL versions in :data:`TESTED_TRL`; on another version TRL is
left as it is (it refuses peftkit's configs loudly) and a warning says how to opt in
(``PEFTKIT_TRL_UNTESTED=1``). ``PEFTKIT_TRL=0`` turns the integration off.

This module imports nothing heavy: ``import peftkit`` stays cheap, and peftkit's classes are looked
up only once their modules are loaded (no peftkit object can exist before).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["COVERED", "PEFT_VERSION", "TESTED_TRL", "install", "patched", "peft_imports"]

TESTED_TRL: tuple[str, ...] = ("1.16",)
"""TRL release series (major.minor) the integration is tested with."""

PEFT_VERSION = "0.21.2"
"""The PEFT release whose behaviour peftkit's conformance run measures (what a TRL module reading
``peft.__version__`` sees when PEFT is not installed)."""

_OPT_IN = "PEFTKIT_TRL_UNTESTED"
_OFF = "PEFTKIT_TRL"  # "0": leave TRL alone (to tell whether a problem comes from this patch)


def _attr(module: str, name: str) -> Any:
    """``module.name`` if that module is already imported (else None: nothing of it exists yet)."""
    loaded = sys.modules.get(module)
    return getattr(loaded, name, None) if loaded is not None else None


def _peft_attr(module: str, name: str) -> Any:
    """PEFT's object, imported on demand; None where PEFT is not installed."""
    if not _peft_installed():
        return None
    return getattr(importlib.import_module(module), name)


@functools.cache
def _peft_installed() -> bool:
    """Once per process: a file-system lookup otherwise, on every stand-in construction."""
    return importlib.util.find_spec("peft") is not None


class _Either(type):
    """Metaclass of the stand-ins for PEFT's classes: an instance (or subclass) of PEFT's class or
    of peftkit's passes ``isinstance`` (``issubclass``); calls and attributes go to PEFT's class
    where PEFT is installed, else to peftkit's."""

    _peft: tuple[str, str]
    _ours: tuple[str, str]

    def _candidates(cls) -> Iterator[type]:
        for found in (_attr(*cls._peft), _attr(*cls._ours)):
            if isinstance(found, type):
                yield found

    def __instancecheck__(cls, obj: Any) -> bool:
        return any(isinstance(obj, c) for c in cls._candidates())

    def __subclasscheck__(cls, sub: type) -> bool:
        return any(issubclass(sub, c) for c in cls._candidates())

    def _preferred(cls) -> type:
        found = _peft_attr(*cls._peft)
        if found is None:
            found = getattr(importlib.import_module(cls._ours[0]), cls._ours[1])
        return found

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._preferred()(*args, **kwargs)

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(cls._preferred(), name)

    def __repr__(cls) -> str:
        return f"<PEFT's or peftkit's {cls.__name__}>"


def _either(name: str, peft_module: str, ours_module: str) -> type:
    return _Either(name, (), {"_peft": (peft_module, name), "_ours": (ours_module, name)})


_PEFT_MODEL = ("peftkit.peft_model.model", "PeftModel")
_PEFT_CONFIG = ("peftkit.config", "PeftConfig")

PeftConfig = _either("PeftConfig", "peft", "peftkit.config")
PeftModel = _either("PeftModel", "peft", "peftkit.peft_model.model")
LoraConfig = _either("LoraConfig", "peft", "peftkit.config")
PrefixTuningConfig = _either("PrefixTuningConfig", "peft", "peftkit.config")
PromptLearningConfig = _either("PromptLearningConfig", "peft", "peftkit.config")
BaseTunerLayer = _Either(
    "BaseTunerLayer",
    (),
    {
        "_peft": ("peft.tuners.tuners_utils", "BaseTunerLayer"),
        "_ours": ("peftkit.tuners.base", "AdapterLayer"),
    },
)


def _is_ours(obj: Any, where: tuple[str, str]) -> bool:
    cls = _attr(*where)
    return isinstance(cls, type) and isinstance(obj, cls)


def _peft_function(name: str) -> Callable[..., Any]:
    if not _peft_installed():
        raise ImportError(
            f"TRL called PEFT's {name} on an object that is not peftkit's, and PEFT is not "
            "installed: pass peftkit's config or model (peftkit.LoraConfig, peftkit.get_peft_model), "
            "or `pip install peft`."
        )
    return getattr(importlib.import_module("peft"), name)


def _ours_function(name: str) -> Callable[..., Any]:
    return getattr(importlib.import_module("peftkit"), name)


def get_peft_model(model: Any, peft_config: Any, *args: Any, **kwargs: Any) -> Any:
    """peftkit's ``get_peft_model`` for peftkit's configs, PEFT's for PEFT's."""
    name = "get_peft_model"
    pick = _ours_function if _is_ours(peft_config, _PEFT_CONFIG) else _peft_function
    return pick(name)(model, peft_config, *args, **kwargs)


def _by_model(name: str) -> Callable[..., Any]:
    """A state-dict helper that follows the model's library (peftkit's where PEFT is absent)."""

    def routed(model: Any, *args: Any, **kwargs: Any) -> Any:
        ours = _is_ours(model, _PEFT_MODEL) or not _peft_installed()
        return (_ours_function if ours else _peft_function)(name)(model, *args, **kwargs)

    routed.__name__ = routed.__qualname__ = name
    return routed


get_peft_model_state_dict = _by_model("get_peft_model_state_dict")
set_peft_model_state_dict = _by_model("set_peft_model_state_dict")
prepare_model_for_kbit_training = _by_model("prepare_model_for_kbit_training")


def is_peft_model(model: Any) -> bool:
    """accelerate's test (PEFT's ``PeftModel``/``PeftMixedModel``), or a peftkit model."""
    if _is_ours(model, _PEFT_MODEL):
        return True
    from accelerate.utils import is_peft_model as accelerate_is_peft_model

    return bool(accelerate_is_peft_model(model))


def is_peft_available() -> bool:
    """True: peftkit provides the PEFT API TRL asks for, PEFT installed or not."""
    return True


def _peft_module() -> Any:
    if _peft_installed():
        return importlib.import_module("peft")
    return types.SimpleNamespace(__name__="peft", __version__=PEFT_VERSION)


COVERED: dict[str, Any] = {
    "PeftConfig": PeftConfig,
    "PeftModel": PeftModel,
    "LoraConfig": LoraConfig,
    "PrefixTuningConfig": PrefixTuningConfig,
    "PromptLearningConfig": PromptLearningConfig,
    "BaseTunerLayer": BaseTunerLayer,
    "get_peft_model": get_peft_model,
    "get_peft_model_state_dict": get_peft_model_state_dict,
    "set_peft_model_state_dict": set_peft_model_state_dict,
    "prepare_model_for_kbit_training": prepare_model_for_kbit_training,
    "is_peft_model": is_peft_model,
    "is_peft_available": is_peft_available,
}
"""Each name TRL binds from PEFT, accelerate or transformers for its adapter decisions -> what a
patched TRL module holds under it (the module ``peft`` itself is handled apart)."""


def peft_imports(source: str) -> list[tuple[str, int, bool]]:
    """The names a module's source imports from ``peft`` (or ``peft.*``), with their line and
    whether the import is at module level (inside ``if``/``try`` included) or in a function.

    Names bound by ``import peft`` appear as ``"peft"``.
    """
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
            )
            if isinstance(child, ast.ImportFrom) and (child.module or "").split(".")[0] == "peft":
                found.extend((a.asname or a.name, child.lineno, top) for a in child.names)
            elif isinstance(child, ast.Import):
                found.extend(
                    (a.asname or "peft", child.lineno, top)
                    for a in child.names
                    if a.name.split(".")[0] == "peft"
                )
            visit(child, inner)

    visit(ast.parse(source), True)
    return found


def _module_source(module: types.ModuleType) -> str | None:
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def _patch(module: types.ModuleType) -> None:
    """Rebind the covered names in one TRL module (idempotent)."""
    space = vars(module)
    if space.get("__peftkit_patched__"):
        return
    space["__peftkit_patched__"] = True
    for name in ("is_peft_model", "is_peft_available"):
        if name in space and callable(space[name]):
            space[name] = COVERED[name]
    source = _module_source(module)
    if source is None or "peft" not in source:
        return
    for name, _line, top in peft_imports(source):
        if not top:
            continue  # a function's own import: see docs/trl.md (TRL's experimental trainers)
        if name == "peft":
            space[name] = _peft_module()
        elif name in COVERED:
            space[name] = COVERED[name]


def _trl_module(name: str) -> bool:
    return name == "trl" or name.startswith("trl.")


_state: dict[str, bool] = {}


def _allowed() -> bool:
    """The installed TRL is a tested version, or the user opted in; warns once otherwise."""
    if "allowed" not in _state:
        try:
            version = importlib.metadata.version("trl")
        except importlib.metadata.PackageNotFoundError:
            version = ""
        tested = ".".join(version.split(".")[:2]) in TESTED_TRL
        _state["allowed"] = tested or os.environ.get(_OPT_IN) == "1"
        if not tested:
            done = "patched anyway" if _state["allowed"] else "left it unpatched"
            warnings.warn(
                f"peftkit's TRL integration is tested with trl {', '.join(TESTED_TRL)}; trl "
                f"{version or '(unknown version)'} is installed, so peftkit {done}. Unpatched, TRL's "
                f"trainers accept PEFT's configs and models only; set {_OPT_IN}=1 to patch this "
                "version, or install a tested one.",
                stacklevel=2,
            )
    return _state["allowed"]


def patched(module: types.ModuleType) -> bool:
    """Whether the integration rebound the names in ``module`` (a TRL module)."""
    return bool(vars(module).get("__peftkit_patched__"))


class _PatchTRL(importlib.abc.MetaPathFinder):
    """Patch each ``trl`` module right after it executes: the path finder finds it, and its
    loader's ``exec_module`` is followed by :func:`_patch`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not _trl_module(fullname):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        load = spec.loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            load(module)
            if _allowed():
                _patch(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Patch the TRL modules already imported and put the finder that patches the later ones on
    ``sys.meta_path`` (idempotent; ``import peftkit`` calls it)."""
    if os.environ.get(_OFF) == "0" or any(isinstance(f, _PatchTRL) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _PatchTRL())
    loaded = [m for n, m in list(sys.modules.items()) if _trl_module(n) and m is not None]
    if loaded and _allowed():
        for module in loaded:
            _patch(module)
