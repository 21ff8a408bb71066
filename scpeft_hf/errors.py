"""Errors that mean "your input is wrong, here is how to fix it": the CLI prints these as one line.

Every other exception is a bug and keeps its traceback. Each subclass also inherits the builtin a Python user
would catch (`ValueError`, `FileNotFoundError`, ...), so `except ValueError` keeps working.
"""

from __future__ import annotations


class ScpeftUserError(Exception):
    """Base class of every error caused by the user's input, files, network or credentials."""


class InvalidInputError(ScpeftUserError, ValueError):
    """The data, a flag or an argument has a value that cannot work (no gene overlap, a missing column...)."""


class MissingKeyError(ScpeftUserError, KeyError):
    """A column, layer or key the user named is not in the data."""

    def __str__(self) -> str:  # KeyError quotes its message; a user error reads as a sentence
        return str(self.args[0]) if self.args else ""


class MissingFileError(ScpeftUserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputExistsError(ScpeftUserError, FileExistsError):
    """The output exists and may not be replaced (no --overwrite, or not a folder this tool wrote)."""


class HubAccessError(ScpeftUserError, PermissionError):
    """The Hugging Face Hub refused the request (token, permissions, private repository)."""


class HubConnectionError(ScpeftUserError, ConnectionError):
    """The Hugging Face Hub (or a package registry) could not be reached."""


class MissingDependencyError(ScpeftUserError, ImportError):
    """An optional extra is needed: the message names the `pip install` that provides it."""
