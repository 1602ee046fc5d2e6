"""Stop signals during training: the first asks for a checkpoint and a clean stop, a second stops at
once."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import TrainingInterrupted

__all__ = ["STOP_SIGNALS", "stop_on_signal"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Ctrl-C, a scheduler's or ``kill``'s stop, a closed terminal: each asks for a checkpoint and a
clean stop."""


@contextlib.contextmanager
def stop_on_signal(
    request_stop: Callable[[int], None],
    stop_now: Callable[[int], TrainingInterrupted],
    requested: Callable[[], bool],
) -> Iterator[None]:
    """Within, the first stop signal calls ``request_stop(signum)`` (the run stops after its current
    step, with a checkpoint); one more raises ``stop_now(signum)``. Only in the main thread, where
    Python delivers signals; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if requested():
            raise stop_now(signum)
        request_stop(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
