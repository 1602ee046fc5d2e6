"""Writing files so that nothing is lost: atomic replacement, and disk errors that say what went
wrong."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from ..errors import StorageError

__all__ = [
    "atomic_directory",
    "atomic_write",
    "is_write_failure",
    "write_failure_reason",
    "write_json_atomic",
    "write_text_atomic",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    On any error the temporary file is removed and ``path`` is left as it was. Operating-system
    errors (a full disk, a read-only or missing folder) become :class:`StorageError` naming the
    file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes 0600 files; give the permissions open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows it
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException as err:
        _remove(tmp)
        if is_write_failure(err):
            raise StorageError(
                f"cannot write {path}: {write_failure_reason(err, folder)}. The previous "
                f"{os.path.basename(path)}, if any, is unchanged"
            ) from err
        raise


def is_write_failure(err: BaseException) -> bool:
    """Whether ``err`` means "the bytes could not be written": an OS error, safetensors' own error
    type, or torch.save's writer failing (a full disk or ``ulimit -f`` shows up as ``[enforce fail
    at inline_container.cc]``, with no file name and no errno)."""
    return isinstance(err, (OSError, SafetensorError)) or (
        isinstance(err, RuntimeError)
        and ("PytorchStreamWriter" in str(err) or "inline_container" in str(err))
    )


def write_failure_reason(err: BaseException, folder: str | os.PathLike[str]) -> str:
    """Why a write into ``folder`` failed, in words: the disk is full, a file-size limit, or the
    OS's reason."""
    import resource
    import shutil

    reasons = [err.strerror] if isinstance(err, OSError) and err.strerror else []
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(folder).free
        if free < 64 * 2**20 or getattr(err, "errno", None) == 28:
            reasons.append(
                f"the disk is full ({free / 2**20:.1f} MiB free on the disk of {folder})"
            )
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        reasons.append(f"this process may write files of at most {limit:,} bytes (ulimit -f)")
    # torch's "[enforce fail at inline_container.cc]" says nothing a user can act on
    if not reasons:
        reasons.append(
            str(err).splitlines()[0]
            if isinstance(err, (OSError, SafetensorError))
            else "the file could not be written (a full disk, a quota or a file-size limit)"
        )
    return "; ".join(reasons) + f". Free some space or choose another folder than {folder}"


def _remove(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            os.remove(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (an old one is
    removed).

    On any error the temporary folder is deleted and ``path`` is left as it was.
    """
    import shutil

    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    except OSError as err:
        raise StorageError(
            f"cannot create {final}: {err.strerror or err}; choose a writable folder"
        ) from err
    try:
        try:
            yield tmp
        except StorageError:
            raise
        except BaseException as err:
            if is_write_failure(err):
                raise StorageError(
                    f"cannot write {final}: {write_failure_reason(err, final.parent)}. The previous "
                    f"{final.name}, if any, is unchanged"
                ) from err
            raise
        # mkdtemp makes 0700 folders; give the permissions mkdir would
        os.chmod(tmp, 0o777 & ~_umask())
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
