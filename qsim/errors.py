"""The exceptions qsim raises for bad input, so that callers and the CLI can tell them apart.

Every error a user can cause derives from :class:`QsimError`; the CLI prints its message and
exits non-zero instead of showing a traceback. Subclasses also derive from the matching
built-in (``ValueError``, ``OverflowError``, ...) so that ordinary ``except`` clauses work.
"""

from __future__ import annotations

from typing import Any


class QsimError(Exception):
    """Base class of every error qsim reports for bad input or a missing tool."""


class ConfigError(QsimError, ValueError):
    """An accelerator configuration, scenario or option is invalid."""


class ProgramError(QsimError, ValueError):
    """A Program is malformed or does not fit the accelerator it targets."""


class QsimOverflowError(QsimError, OverflowError):
    """Values do not fit an integer format; ``overflows`` lists the first offenders."""

    def __init__(self, message: str, overflows: list[Any] | None = None, count: int = 0) -> None:
        super().__init__(message)
        self.overflows = overflows or []
        self.count = count


class ToolchainError(QsimError, RuntimeError):
    """A tool needed for RTL generation or simulation is missing or failed."""


class SimulationError(QsimError, RuntimeError):
    """The RTL simulation failed to run or did not finish in time."""
