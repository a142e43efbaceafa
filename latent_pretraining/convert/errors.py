"""Errors the converters raise when they refuse their input (all `core.errors.UserError`: one line, exit status 2).

Each keeps a conventional base too, so code that catches ``ValueError`` / ``FileNotFoundError`` /
``FileExistsError`` / ``NotImplementedError`` still works.
"""

from __future__ import annotations

from core.errors import UserError


class ConversionError(UserError, ValueError):
    """The input checkpoint is inconsistent (config vs tensors, missing / extra / non-finite tensors, bad bytes)."""


class TruncatedStreamError(ConversionError):
    """A streaming-msgpack file ends in the middle of a record."""


class UnsupportedCheckpointError(ConversionError, NotImplementedError):
    """A valid checkpoint of a variant the converters do not handle (e.g. scaled RoPE)."""


class InputNotFoundError(UserError, FileNotFoundError):
    """The input file or directory does not exist or is not of the expected kind."""


class OutputExistsError(UserError, FileExistsError):
    """The output directory exists and is not empty, and overwriting was not asked for."""
