"""Reading config text (YAML files, JSON files, mapping flags) with bounded work and no silent
retyping.

Every scalar is read as the text the user wrote (YAML's ``BaseLoader``: no YAML 1.1 guessing), and
the typed schema turns it into a number, a boolean or empty where the field asks for one. So
``label_words: {pos: yes, neg: no}`` keeps the words ``yes`` and ``no``, exactly as the same text
given as a flag does. Untrusted input gets bounded work: a size limit, a limit on the nodes that
aliases expand to (a "billion laughs" file is refused, not expanded), a nesting limit, and duplicate
keys are an error instead of the last one silently winning.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

__all__ = ["MAX_CONFIG_BYTES", "parse_yaml", "read_config_file", "read_json_file"]

MAX_CONFIG_BYTES = 4 * 1024 * 1024
"""A config file larger than this is refused before parsing (real ones are a few KB)."""
MAX_NODES = 100_000
"""The most values a YAML document may expand to, counting each use of an alias."""
MAX_DEPTH = 64
"""The deepest nesting of mappings and lists accepted."""


class _Loader(yaml.BaseLoader):
    """Scalars stay text; a key given twice in one mapping is an error."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[str, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: a key must be plain text, not a "
                f"{type(key).__name__}"
            )
        if key in seen:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: {key!r} is given twice in the same mapping "
                f"(first on line {seen[key]}); YAML would silently keep only the last one. "
                "Merge the two into one."
            )
        seen[key] = key_node.start_mark.line + 1
    return {
        loader.construct_object(k, deep=True): loader.construct_object(v, deep=True)
        for k, v in node.value
    }


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _check_size(root: yaml.Node) -> None:
    """Count the values ``root`` expands to (an alias counts again at each use) and the nesting
    depth, without expanding anything, so an alias bomb is refused in microseconds."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(
                f"line {node.start_mark.line + 1}: values are nested more than {MAX_DEPTH} deep; "
                "a config is a few levels of mappings and lists"
            )
        children = (
            [c for pair in node.value for c in pair]
            if isinstance(node, yaml.MappingNode)
            else list(node.value)
            if isinstance(node, yaml.SequenceNode)
            else []
        )
        if done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_NODES:
                raise ConfigError(
                    f"the document expands to more than {MAX_NODES:,} values (aliases such as *a "
                    "repeat what they point to); a config this large is refused"
                )
        elif id(node) not in sizes:
            stack.append((node, depth, True))
            stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)


def parse_yaml(text: str, source: str | None = None) -> Any:
    """Parse YAML (or JSON) text into plain mappings, lists and strings.

    Raises:
        ConfigError: malformed YAML, a duplicate key, a non-text key, or a document too large or too
            deep.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"the text is {len(text):,} characters; config text above {MAX_CONFIG_BYTES:,} is "
            "refused",
            source=source,
        )
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError([f"not valid YAML: {_short(str(err))}"], source=source) from err
    except RecursionError as err:
        raise ConfigError([f"values are nested more than {MAX_DEPTH} deep"], source=source) from err
    except ConfigError as err:
        raise ConfigError(err.problems, source=source) from err
    finally:
        loader.dispose()


def _read_text(path: str | os.PathLike[str], what: str) -> str:
    """The file's text, refusing folders, huge files and non-UTF-8 bytes with a clear reason."""
    file = Path(path)
    if file.is_dir():
        raise ConfigError(
            [f"{what} {file} is a folder; pass the file itself (e.g. {file / 'job.yaml'})"]
        )
    try:
        size = file.stat().st_size
    except FileNotFoundError as err:
        raise ConfigError([f"{what} not found: {file}"]) from err
    except OSError as err:
        raise ConfigError([f"{what} {file} cannot be read: {err.strerror or err}"]) from err
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            [
                f"{what} {file} is {size:,} bytes; files above {MAX_CONFIG_BYTES:,} bytes are refused "
                "(a config is a few KB): check that this is the right file"
            ]
        )
    try:
        return file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            [f"{what} {file} is not UTF-8 text (byte {err.start}); re-save it as UTF-8"]
        ) from err
    except OSError as err:
        raise ConfigError([f"{what} {file} cannot be read: {err.strerror or err}"]) from err


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML config file's mapping (see the module docstring for what is refused)."""
    source = os.fspath(path)
    data = parse_yaml(_read_text(path, "config file"), source=source)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            ["the file must hold a mapping of fields (model:, data:, train:, ...)"], source=source
        )
    return data


def read_json_file(path: str | os.PathLike[str], what: str) -> Any:
    """A JSON file's value, with the same size and depth limits (``json`` itself recurses without
    bound)."""
    text = _read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError([f"{path} is not valid JSON: {err}"]) from err
    except RecursionError as err:
        raise ConfigError([f"{path} is nested too deeply to be a config"]) from err


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."
