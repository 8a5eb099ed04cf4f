"""The error family every command maps to one line and exit code 2.

A message names the file and the problem; callers never let a library traceback reach the user.
"""
from __future__ import annotations

import os


class ValleExportError(Exception):
    """A user-facing failure: `str(err)` is the one line the CLI prints."""

    def __init__(self, problem: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class BadCheckpoint(ValleExportError):
    """Missing, corrupt or inconsistent checkpoint (names, shapes, config)."""


class UnsupportedModel(ValleExportError):
    """A valid checkpoint of a variant this tool refuses by name (v2 models, unsupported flags)."""


class BadInput(ValleExportError):
    """Bad user input other than a checkpoint: fixture files, token ids, options."""


class RefusedPass(ValleExportError):
    """A pass a backend cannot compute (not even approximately), with the reason and the alternatives.
    `kind` is the pass kind (ar, len, nar, nar_len)."""

    def __init__(self, problem: str, kind: str, path=None):
        self.kind = kind
        super().__init__(problem, path)


class Interrupted(BaseException):
    """SIGTERM / SIGHUP turned into an exception, so that every `finally` (the temp cleanup of
    `atomic_path` / `atomic_dir`) runs as it does for Ctrl-C. A BaseException: `except Exception` in a
    library cannot swallow it."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        super().__init__(signal.Signals(signum).name)


# A signal noted here is raised again before any atomic write commits: the handler's own exception can be
# swallowed where Python ignores exceptions (a `__del__` running when the signal lands), and the export must
# not then complete as if nothing happened.
PENDING_SIGNALS: list[int] = []


def raise_if_interrupted() -> None:
    if PENDING_SIGNALS:
        raise Interrupted(PENDING_SIGNALS[0])
