"""``peftkit serve``: many adapters behind one OpenAI-compatible endpoint, decoded together.

:mod:`.engine` batches requests (continuous batching, each row through its own adapter),
:mod:`.registry` keeps the adapters (least recently used out), :mod:`.app` speaks OpenAI's HTTP API,
:mod:`.server` starts it.
"""

from .app import create_app
from .engine import Engine, Event, QueueFull, Request, Sampling
from .registry import AdapterRegistry, Kind
from .server import ServeConfig, build_engine, serve
from .vllm import vllm_problems

__all__ = [
    "AdapterRegistry",
    "Engine",
    "Event",
    "Kind",
    "QueueFull",
    "Request",
    "Sampling",
    "ServeConfig",
    "build_engine",
    "create_app",
    "serve",
    "vllm_problems",
]
