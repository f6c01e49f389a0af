"""Errors the CLI turns into exit codes: bad input is the user's to fix (exit 2), the rest ours (exit 1)."""

from __future__ import annotations


class WinbackError(Exception):
    """Something went wrong that is not the user's input."""


class BadInputError(WinbackError):
    """Input the user can fix: a bad file, row, field or option. Its message says where and what."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def __str__(self) -> str:
        lines = [self.args[0], *(f"  {p}" for p in self.problems)]
        return "\n".join(lines)
