"""Folders peftkit writes into: which entries are its own, and one writer at a time.

The rules (docs/reliability.md, "Output folders"):

- peftkit records the names it writes in a folder in ``.peftkit-files.json``. An entry it is about
  to write that already exists and is not recorded there belongs to the user, and the write is
  refused before anything changes. Other files in the folder are never touched.
- A whole folder is replaced (``peftkit merge OUT``) only when it is empty or everything in it was
  written by the same kind of peftkit command.
- ``.peftkit.lock`` holds the process id and host of the one writer; a second writer is refused
  while that process lives, and a lock left by a process that is gone is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import ConfigError, StorageError
from .files import write_json_atomic

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "OutputDirError",
    "check_replaceable",
    "claim",
    "clean_leftovers",
    "owned",
    "record",
    "remove_owned",
    "writer_lock",
]

MANIFEST_NAME = ".peftkit-files.json"
LOCK_NAME = ".peftkit.lock"
_OWN_FILES = frozenset({MANIFEST_NAME, LOCK_NAME})
_NOUNS = {"train": "run", "merge": "merged-model", "compare": "comparison"}


class OutputDirError(ConfigError):
    """An output folder holds the user's files where peftkit would write, or another run is writing
    to it."""


def _read_manifest(folder: Path) -> dict[str, object]:
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def owned(folder: str | os.PathLike[str], kind: str | None = None) -> set[str]:
    """The names that peftkit recorded as its own in ``folder`` (by a command of ``kind``, when
    given)."""
    data = _read_manifest(Path(folder))
    if kind is not None and data.get("kind") != kind:
        return set()
    files = data.get("files")
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()


def record(folder: str | os.PathLike[str], names: Iterable[str], kind: str) -> None:
    """Add ``names`` to the folder's manifest as written by a command of ``kind``."""

    path = Path(folder)
    previous = owned(path, kind)
    write_json_atomic(path / MANIFEST_NAME, {"kind": kind, "files": sorted(previous | set(names))})


def claim(folder: str | os.PathLike[str], names: Iterable[str], kind: str, what: str) -> list[str]:
    """Check that peftkit may write ``names`` into ``folder``, then record them as its own.

    Returns:
        The names that already exist from an earlier peftkit run of this kind (the caller decides
        whether replacing them is wanted).

    Raises:
        OutputDirError: an entry to be written exists and peftkit did not write it; nothing is
            changed.
    """
    path = Path(folder)
    names = list(names)
    mine = owned(path, kind)
    existing = [n for n in names if (path / n).exists() or (path / n).is_symlink()]
    foreign = [n for n in existing if n not in mine]
    if foreign:
        raise OutputDirError(
            f"{what} {path} already holds {', '.join(foreign)}, which peftkit did not write there; peftkit never "
            "overwrites files it did not write. Choose a new or empty folder, or move those files away."
        )
    path.mkdir(parents=True, exist_ok=True)
    record(path, names, kind)
    return existing


def check_replaceable(folder: str | os.PathLike[str], kind: str, what: str) -> None:
    """Refuse to replace ``folder`` as a whole unless it is missing, empty, or wholly peftkit's
    (``kind``)."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{what} {path} is a file; name a folder")
    if not path.is_dir():
        return
    mine = owned(path, kind) | _OWN_FILES
    # temporaries of peftkit's own interrupted writes
    leftovers = (".trash-", *(f".{n}." for n in mine))
    foreign = sorted(
        p.name for p in path.iterdir() if p.name not in mine and not p.name.startswith(leftovers)
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise OutputDirError(
            f"{what} {path} is not a peftkit {_NOUNS.get(kind, kind)} folder: it holds files peftkit did not write "
            f"({shown}), and it would be replaced as a whole. Choose a new or empty folder."
        )


def remove_owned(folder: str | os.PathLike[str], names: Iterable[str], kind: str) -> None:
    """Delete the entries of ``names`` that peftkit recorded in ``folder``; anything else stays."""
    path = Path(folder)
    mine = owned(path, kind)
    for name in names:
        target = path / name
        if name not in mine or not (target.exists() or target.is_symlink()):
            continue
        if target.is_dir() and not target.is_symlink():
            trash = path / f".trash-{name}-{os.getpid()}"
            # out of sight at once; a kill during rmtree leaves only hidden trash
            os.replace(target, trash)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            target.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextlib.contextmanager
def writer_lock(folder: str | os.PathLike[str], what: str = "output_dir") -> Iterator[None]:
    """Hold ``folder/.peftkit.lock`` while writing; a second writer gets :class:`OutputDirError`.

    A lock whose process is gone (killed, crashed) is stale and is taken over. A lock from another
    host cannot be checked, so it is refused with the command that removes it.
    """
    path = Path(folder) / LOCK_NAME
    host, me = socket.gethostname(), os.getpid()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _refuse_or_clear(path, host, what)
            continue
        except OSError as err:
            raise StorageError(
                f"cannot create {path}: {err.strerror or err}; choose a writable folder"
            ) from err
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": me, "host": host}, fh)
        break
    else:
        raise OutputDirError(f"could not take the lock {path}: another process keeps creating it")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if json.loads(path.read_text()).get("pid") == me:
                path.unlink()


def _refuse_or_clear(path: Path, host: str, what: str) -> None:
    try:
        holder = json.loads(path.read_text())
        pid, their_host = int(holder["pid"]), str(holder["host"])
    except (OSError, ValueError, KeyError, TypeError):
        pid, their_host = -1, host  # unreadable: a writer died mid-write, so the lock is stale
    if their_host != host:
        raise OutputDirError(
            f"{what} {path.parent} is locked by process {pid} on host {their_host}; if no run "
            f"is writing there any more, delete {path}"
        )
    if pid > 0 and _alive(pid):
        raise OutputDirError(
            f"another peftkit run (process {pid}) is writing to {what} {path.parent}; wait for it "
            "to finish or choose another folder. Two runs in one folder would overwrite each "
            "other's results."
        )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # stale: its process is gone


def clean_leftovers(folder: str | os.PathLike[str], names: Iterable[str]) -> list[str]:
    """Remove what killed writes left in ``folder``: the temporaries of atomic writes of ``names``
    (``.adapter_model.safetensors.*.tmp``, ``.model.*``), of checkpoints (``checkpoints/.step-*``)
    and half-deleted trash (``.trash-*``).

    Only call this while holding the folder's :func:`writer_lock`: another writer's temporaries look
    the same.
    """
    prefixes = (".trash-", *(f".{n}." for n in names))
    found = (
        [e for e in Path(folder).iterdir() if e.name.startswith(prefixes)]
        if Path(folder).is_dir()
        else []
    )
    checkpoints = Path(folder) / "checkpoints"
    if checkpoints.is_dir():
        found += [e for e in checkpoints.iterdir() if e.name.startswith((".step-", ".trash-"))]
    for entry in found:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
    return [e.name for e in found]
