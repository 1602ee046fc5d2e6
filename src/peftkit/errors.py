"""The error tree. Every error peftkit raises on purpose is a :class:`PeftkitError`.

Messages follow one rule: say what was wrong, what was expected, and how to fix it.
The CLI maps :class:`UserInputError` subclasses to exit code 2 and everything else to 1.
"""

from __future__ import annotations

import difflib
import os
import reprlib
import sys
import warnings
from collections.abc import Iterable

__all__ = [
    "AdapterFormatError",
    "AdapterNotFoundError",
    "AdapterStateError",
    "BrokenAdapterError",
    "ConfigError",
    "DataError",
    "HubError",
    "MergeError",
    "MissingKeysError",
    "ModelLoadError",
    "PeftWarning",
    "PeftkitError",
    "PromptAdapterError",
    "StorageError",
    "TargetNotFoundError",
    "TrainingError",
    "TrainingInterrupted",
    "UserInputError",
    "warn_caller",
]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn at the first line outside peftkit (the user's call), however deep inside peftkit the
    warning is raised: a fixed ``stacklevel`` points at peftkit's own code when a helper is reached
    by two paths."""
    frame = sys._getframe(1)
    level = 2  # warnings.warn's level of this function's caller
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


class PeftkitError(Exception):
    """Base class of every error peftkit raises deliberately."""

    exit_code = 1


class PeftWarning(UserWarning):
    """A warning PEFT gives under this name (its ``PeftWarning``): code filtering on it works the
    same."""


class MergeError(PeftkitError, RuntimeError):
    """The base layer cannot hold this merge (LoRA's bias on a layer without one); a
    ``RuntimeError`` as in PEFT."""


class UserInputError(PeftkitError, ValueError):
    """The input (a config, a file, a name) is wrong; the user can fix it."""

    exit_code = 2


class ConfigError(UserInputError):
    """A configuration value is missing, of the wrong type or out of range.

    Attributes:
        problems: every problem found, one line each, so they can be fixed at once.
    """

    def __init__(self, problems: str | list[str], *, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:
            msg = f"Invalid configuration{where}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            msg = f"Invalid configuration{where} ({len(self.problems)} problems):\n{lines}"
        super().__init__(msg)


class MissingKeysError(ConfigError, TypeError):
    """A config file lacks a required key (``peft_type``); a TypeError too, as PEFT raises it."""


class ConfigTypeError(ConfigError, TypeError):
    """A config field of the wrong kind where PEFT raises ``TypeError`` (``target_parameters`` as
    one string)."""


class TargetNotFoundError(UserInputError):
    """A ``target_modules`` entry matches no layer of the model."""


class AdapterFormatError(UserInputError):
    """An adapter folder or file is missing, unreadable, unsafe, or does not fit the model."""


class AdapterShapeError(AdapterFormatError, RuntimeError):
    """An adapter tensor's shape does not fit the model's layer; a RuntimeError too, as torch (and
    PEFT) raise it."""


class AdapterNotFoundError(UserInputError, KeyError):
    """An adapter name is not registered on the model."""

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0]) if self.args else ""


class AdapterStateError(PeftkitError, ValueError):
    """An adapter's state forbids the call (deleting an adapter that is merged into the weights)."""


class PromptAdapterError(PeftkitError, AttributeError):
    """A weight operation (merge, unload) asked of a prompt-learning adapter, which changes no
    weight.

    An ``AttributeError`` as in PEFT, where a prompt-learning model has no such method."""


class ModelLoadError(UserInputError):
    """A model name or path cannot be resolved or loaded."""


class DataError(UserInputError):
    """A data file is missing, malformed, or does not fit the template."""


class HubError(PeftkitError):
    """The Hugging Face Hub could not be reached or refused the request (offline, no token, no
    permission)."""


class TrainingError(PeftkitError):
    """Training failed at run time (for example a NaN loss)."""


class BrokenAdapterError(TrainingError, ValueError):
    """An adapter holds NaN or infinite values, so merging it would ruin the base weights for good
    (a ``ValueError`` as PEFT's ``safe_merge`` raises)."""


class TrainingInterrupted(PeftkitError):
    """Training stopped on request (Ctrl-C, SIGTERM, SIGHUP) after saving a checkpoint; ``--resume``
    continues it.

    The exit code is the shell's for the signal: 128 + its number (130 for Ctrl-C, 143 SIGTERM, 129
    SIGHUP).
    """

    exit_code = 130

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StorageError(PeftkitError):
    """A file could not be written (disk full, read-only, not a folder); what was there before is
    kept."""

    exit_code = 1


def short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages: a value can be huge (a 75 MB
    string, a 2**40000 rank whose ``repr`` Python itself refuses)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<a whole number of {value.bit_length()} bits>"
    text = reprlib.repr(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
