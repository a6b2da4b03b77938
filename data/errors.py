"""One error type for bad user input, so CLIs can print a single clear line instead of a traceback."""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input: the message names the file or field and what was expected."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")
