"""Sizes checked before allocating: a rank or token count typed wrong (``r: 2**40``) must give a
clear error at once, not an attempt to allocate terabytes that ends in the kernel's OOM killer."""

from __future__ import annotations

import os

from ..errors import ConfigError

__all__ = ["available_bytes", "check_allocation"]


def available_bytes() -> int:
    """Memory the process can still use: ``MemAvailable`` where Linux reports it, else the physical
    memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 2**62  # unknown: do not refuse


def check_allocation(nbytes: int, what: str, fix: str) -> None:
    """Raise :class:`ConfigError` when ``nbytes`` (``what`` is being created) exceeds the available
    memory."""
    free = available_bytes()
    if nbytes > free:
        raise ConfigError(
            f"{what} would take {nbytes / 2**30:,.1f} GiB, and this machine has "
            f"{free / 2**30:,.1f} GiB available; {fix}"
        )
