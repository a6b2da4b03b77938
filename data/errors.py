"""One error type for bad user input, so CLIs can print a single clear line instead of a traceback."""
from __future__ import annotations

import argparse


class InputError(ValueError):
    """Bad user input: the message names the file or field and what was expected."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one `error: ...` line (exit 2), like every other bad-input error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")
