"""The package's layering: no import cycles between peftkit's modules, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import peftkit

ROOT = Path(peftkit.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The peftkit modules ``name`` imports anywhere in its body (function-level and TYPE_CHECKING
    too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            out |= set(subs) if subs or not node.module else {target}
            if not node.module and len(subs) < len(node.names):
                out.add(target)  # `from . import name` of a name the package itself defines
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
    return out - {name}


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    cycles = sorted(f"{a} -> {b}" for a in graph for b in graph[a] if reaches(b, a))
    assert not cycles, "import cycles: " + "; ".join(cycles)


ADAPTER_TENSOR_NAMES = (
    "lora_A",
    "lora_B",
    "lora_embedding_A",
    "lora_embedding_B",
    "lora_magnitude_vector",
    "ia3_l",
)


def _code_strings(tree: ast.AST) -> list[ast.Constant]:
    """String constants that are not docstrings (of modules, classes, functions or fields)."""
    docs = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
    ]


def _matches_a_tensor_name(text: str) -> bool:
    """A key or a pattern (``lora_A``, ``.lora_A.``), not prose that mentions the name."""
    return any(text == t or f".{t}" in text or f"{t}." in text for t in ADAPTER_TENSOR_NAMES)


def test_only_the_layers_spell_their_tensor_names() -> None:
    """Marking trainable, exporting, key mapping and conversions ask the layers; no string matching
    elsewhere."""
    found = []
    for name, path in _modules().items():
        if name.startswith("peftkit.tuners"):
            continue
        for node in _code_strings(ast.parse(path.read_text())):
            if _matches_a_tensor_name(node.value):
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert not found, "adapter tensor names spelled outside tuners/: " + "; ".join(found)


def test_configs_change_only_in_config_py() -> None:
    """Resolution returns new configs; only ``config.adopt`` writes into the object a user passed."""
    from peftkit.config import (
        IA3Config,
        LoraConfig,
        PeftConfig,
        PrefixTuningConfig,
        PromptEncoderConfig,
    )

    fields = {
        f
        for cls in (PeftConfig, LoraConfig, IA3Config, PrefixTuningConfig, PromptEncoderConfig)
        for f in cls.__dataclass_fields__
    }
    found = []
    for name, path in _modules().items():
        if name == "peftkit.config":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, (ast.AugAssign, ast.AnnAssign))
                else []
            )
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr in fields
                    and isinstance(target.value, ast.Name)
                    and "config" in target.value.id
                ):
                    found.append(f"{path.name}:{node.lineno} {target.value.id}.{target.attr}")
    assert not found, "adapter config fields assigned outside config.py: " + "; ".join(found)


# The modules that are one method's (or one method family's) home; everything else is generic and
# asks the method registry (peftkit.methods) or the layers' own methods instead of testing a
# method's classes.
METHOD_HOMES = {
    "peftkit.config": "the config classes themselves",
    "peftkit.methods": "the registry",
    "peftkit.tuners.prompt.model": "the prompt methods' inputs, caches and modules",
    "peftkit.surgery.inject": "placing each layer method's layers (their inject functions)",
    "peftkit.surgery.combine": "LoRA and IA3 weighted combinations, layer by layer",
    "peftkit.surgery.tying": "LoRA's tied adapters (ensure_weight_tying)",
    "peftkit.peft_model.weighted": "LoRA and IA3 weighted combinations",
    "peftkit.helpers": "PEFT's LoRA helpers (rescale_adapter_scale)",
    "peftkit.export.gguf_lora": "LoRA adapters for llama.cpp",
    "peftkit.serve.vllm": "LoRA adapters for vLLM",
    "peftkit.train.optimizers": "LoRA+ (LoRA's B factors get their own learning rate)",
}


def _method_classes() -> set[str]:
    from peftkit.config import PeftConfig
    from peftkit.tuners.base import AdapterLayer

    def subclasses(cls: type) -> set[type]:
        return {c for sub in cls.__subclasses__() for c in {sub, *subclasses(sub)}}

    return {
        c.__name__
        for c in subclasses(PeftConfig) | subclasses(AdapterLayer)
        if c.__module__.startswith("peftkit")
    }


def test_generic_modules_dispatch_on_no_method_class() -> None:
    """Adding a method touches its own files and one register_method call: no isinstance chain
    elsewhere."""
    classes, found = _method_classes(), []
    for name, path in _modules().items():
        if name in METHOD_HOMES or name.startswith("peftkit.tuners"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "isinstance"
                and len(node.args) == 2
            ):
                kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                used = {k.id for k in kinds if isinstance(k, ast.Name)} & classes
                found += [f"{path.name}:{node.lineno} {kind}" for kind in sorted(used)]
    assert not found, "method classes tested outside their homes: " + "; ".join(found)


def test_adapter_tensors_are_reached_through_the_layers_methods() -> None:
    """Outside tuners/, code asks a layer (``factors(name)``, ``vector(name)``,
    ``adapter_parameters(name)``) instead of reading its containers (``layer.lora_A[name]``), so a
    layer may store its tensors as it likes."""
    found = []
    for name, path in _modules().items():
        if name.startswith("peftkit.tuners"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ADAPTER_TENSOR_NAMES:
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert not found, "adapter containers read outside tuners/: " + "; ".join(found)
