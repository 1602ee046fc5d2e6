"""``peftkit serve``: load the model and adapters, start the engine, run the HTTP server until
SIGTERM."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn

from ..errors import PeftkitError
from ..integrations.models import load_model, load_tokenizer
from .app import create_app
from .config import ServeConfig
from .engine import Engine
from .registry import AdapterRegistry
from .vllm import vllm_problems

__all__ = ["ServeConfig", "build_engine", "serve"]


def build_engine(config: ServeConfig, log: Callable[[str], None] = print) -> Engine:
    """Load the model and register the adapters (the first ``max_loaded_adapters`` are loaded now);
    an adapter that fails is reported and left out, and the others are served."""
    model = load_model(config.model, dtype=config.dtype)
    tokenizer = load_tokenizer(config.model)
    registry = AdapterRegistry(
        model, tokenizer, config.served_model_name or config.model, config.max_loaded_adapters
    )
    for name, path in config.adapters.items():
        try:
            registry.register(
                name, Path(path), load=len(registry.loaded) < config.max_loaded_adapters
            )
        except (PeftkitError, OSError) as err:
            log(f"peftkit serve: adapter {name!r} refused: {err}")
            continue
        problems = vllm_problems(registry.config(name))
        log(
            f"  adapter {name}: {'vLLM would refuse it: ' + ' '.join(problems) if problems else 'vLLM serves it too'}"
        )
    return Engine(registry, max_batch=config.max_batch, max_waiting=config.max_waiting)


class _Server(uvicorn.Server):
    """uvicorn's server, exiting 0 after a drain: uvicorn raises the stop signal again once it has
    shut down, so the process would end as if killed by SIGTERM although it did all that SIGTERM
    asks."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            getattr(self, "_captured_signals", []).clear()


def serve(config: ServeConfig, log: Callable[[str], None] = print) -> None:
    """Serve until SIGTERM or Ctrl-C; requests in flight then get ``drain_seconds`` to finish."""
    engine = build_engine(config, log)
    registry = engine.registry
    log(
        f"serving {registry.model_name} with adapters: {', '.join(registry.names) or 'none'} "
        f"(loaded: {', '.join(registry.loaded) or 'none'}) on http://{config.host}:{config.port}"
    )
    engine.start()
    app = create_app(engine, api_key=config.api_key)
    server = _Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="info",
            timeout_graceful_shutdown=math.ceil(config.drain_seconds),
        )
    )
    try:
        server.run()
    finally:
        engine.stop()
