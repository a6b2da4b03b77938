"""One error type for bad user input, so CLIs can print a single clear line instead of a traceback."""
from __future__ import annotations

import argparse
import csv
import stat
from pathlib import Path


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


def check_regular_file(path: Path, expected: str, missing: str = "file not found") -> None:
    """InputError unless `path` is a regular file (following links), naming what it is instead (a FIFO is not
    'a directory', and reading one would block)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(path, missing) from None
    except OSError as err:
        raise InputError(path, f"cannot read ({err.strerror}); expected {expected}") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "not a regular file")
        raise InputError(path, f"expected {expected}, found {kind}")


def check_unique_columns(path: Path, fold_case: bool = False) -> None:
    """InputError when a CSV header names a column twice: pandas would rename the second 'x.1' and the first would
    win silently, even where the two disagree. fold_case: 'Health' and ' health' count as the same column."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = [name.strip() for name in next(csv.reader(handle, skipinitialspace=True), [])]
    except (csv.Error, UnicodeDecodeError):  # not this check's business: the CSV reader names those faults
        return
    names = [name.lower() for name in header] if fold_case else header
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated is not None:
        where = ", ".join(str(i + 1) for i, name in enumerate(names) if name == repeated)
        how = ", case and spaces ignored" if fold_case else ""
        raise InputError(path, f"column {repeated!r} appears {names.count(repeated)} times (columns {where}{how}); "
                               "expected each column once")
