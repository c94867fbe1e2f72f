"""Errors a user can fix.

Everything raised as :class:`KdiqaError` is an expected user error: the CLI prints it as one line
(``kdiqa: error: ...``) and exits with status 2. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class KdiqaError(Exception):
    """An error caused by the user's input (recipe, data, paths), reported in one line."""


class ConfigError(KdiqaError):
    """A recipe is malformed: unknown key, wrong type, missing value, bad override."""


class DataError(KdiqaError):
    """A dataset file or row is unusable; the message names the file and the row."""


class RegistryError(KdiqaError):
    """An unknown name was asked of a registry."""


class CheckpointError(KdiqaError):
    """A checkpoint or weights file is missing, corrupt or does not match the model."""


class OutputError(KdiqaError):
    """A file could not be written: a full disk, a read-only or missing folder, no permission.

    The message names the path and what was being written; nothing incomplete is left at that path.
    """


def first_line(exc: BaseException, with_type: bool = True) -> str:
    """The first line of an exception's message, as a one-line error shows a foreign library's failure.

    ``with_type`` prefixes the exception's class name (``OSError: ...``), which is what tells a user
    which library failed when the message alone does not.
    """
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if not with_type:
        return line or type(exc).__name__
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__
