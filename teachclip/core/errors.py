"""The one base class of every error that input or on-disk state can cause.

A :class:`TeachclipError` is a problem the user can act on (a bad params file, a manifest line, a store
built from other inputs, a checkpoint that does not fit): its message is one line that names the file
or setting and the reason, and the ``teach`` CLI prints it and exits 1, with no traceback. Anything
else that escapes is a bug and keeps its traceback.

Each home defines its own subclass next to the code that raises it (``ManifestError`` in
:mod:`teachclip.core.manifest`, ``FramesStoreError`` in :mod:`teachclip.stores.frames`, ...). The two
mix-ins keep the standard meaning for callers that catch built-in exceptions: ``InputError`` is a
``ValueError`` (bad content), ``MissingFileError`` a ``FileNotFoundError`` (a path that is not there).
"""

from __future__ import annotations


class TeachclipError(Exception):
    """Base of every user-facing error of teachclip (the CLI's single handler catches it)."""


class InputError(TeachclipError, ValueError):
    """Input that cannot be used as it is: a value, a file's content, a combination of settings."""


class MissingFileError(TeachclipError, FileNotFoundError):
    """A file or directory that a command needs does not exist."""
