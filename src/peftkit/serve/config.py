"""What ``peftkit serve`` serves and how: the config every way of starting a server reads (YAML
file, flags, Python), importable without the server's packages so the CLI can build its flags from
it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..common.configfile import read_config_file
from ..common.schema import coerce, field_types, typecheck
from ..errors import ConfigError

__all__ = ["API_KEY_ENV", "FLAG_FIELDS", "ServeConfig"]

API_KEY_ENV = "PEFTKIT_API_KEY"


@dataclass
class ServeConfig:
    """What ``peftkit serve`` serves and how (the YAML file's fields; flags override them)."""

    model: str = ""
    """The base model: an alias (``smollm2-135m``), a folder, a ``.gguf`` file or a hub id."""
    adapters: dict[str, str] = field(default_factory=dict)
    """Adapter name -> folder; clients choose one with the request's ``model`` field."""
    host: str = "127.0.0.1"
    """The address to listen on; the default takes no connections from other machines."""
    port: int = 8000
    """The TCP port."""
    api_key: str | None = None
    """Required as ``Authorization: Bearer <key>`` on every route but /health and the page (also
    read from the PEFTKIT_API_KEY environment variable)."""
    served_model_name: str | None = None
    """The base model's name in the API (default: ``model`` as given)."""
    max_loaded_adapters: int = 8
    """Adapters kept in memory; the others load when a request needs one, the least recently used
    out."""
    max_batch: int = 8
    """Sequences decoded together; more requests wait."""
    max_waiting: int = 64
    """Requests allowed to wait; beyond it the server answers 429 with Retry-After."""
    drain_seconds: float = 30.0
    """On SIGTERM, how long requests in flight may take to finish before the server exits anyway."""
    dtype: str | None = None
    """The model's dtype (``float32``, ``bfloat16``); default float32."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        typecheck(self, "", problems)
        if not self.model:
            problems.append(
                "model is required: an alias such as smollm2-135m, a folder, a .gguf file or a hub id"
            )
        for name in ("max_loaded_adapters", "max_batch", "max_waiting"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be at least 1")
        if not 0 <= self.port < 65536:
            problems.append(f"port={self.port} must be from 0 to 65535")
        if self.drain_seconds < 0:
            problems.append(f"drain_seconds={self.drain_seconds} must be >= 0")
        if problems:
            raise ConfigError(problems)

    @classmethod
    def from_values(cls, values: dict[str, Any], source: str | None = None) -> ServeConfig:
        """A config from text values (YAML, flags), each turned into its field's type."""
        hints = field_types(cls)
        unknown = sorted(set(values) - set(hints))
        if unknown:
            raise ConfigError(
                [f"unknown field {k!r}; expected {', '.join(hints)}" for k in unknown],
                source=source,
            )
        try:
            return cls(**{k: coerce(v, hints[k]) for k, v in values.items()})
        except ConfigError as err:
            raise ConfigError(err.problems, source=source) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None, overrides: dict[str, Any]) -> ServeConfig:
        """The YAML file at ``path`` (if any) with ``overrides`` on top; the API key from the
        environment when neither gives one."""
        from_file = dict(read_config_file(path)) if path else {}
        adapters = {**(from_file.get("adapters") or {}), **(overrides.get("adapters") or {})}
        values = from_file | {
            k: v for k, v in overrides.items() if v is not None and k != "adapters"
        }
        if adapters:
            values["adapters"] = adapters
        if values.get("api_key") is None and os.environ.get(API_KEY_ENV):
            values["api_key"] = os.environ[API_KEY_ENV]
        return cls.from_values(values, source=str(path) if path else None)


FLAG_FIELDS = tuple(name for name in field_types(ServeConfig) if name not in ("model", "adapters"))
"""The fields ``peftkit serve`` takes as ``--flags`` (the model and the adapters have their own
arguments)."""
