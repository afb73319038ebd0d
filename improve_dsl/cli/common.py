"""What every verb family of the command line shares: exit codes, the usage error, the error
printer, the argparse value types, and the type of the sub-command table."""

from __future__ import annotations

import argparse
import re
import sys
from typing import TypeAlias

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# The object ``add_subparsers`` returns; each family adds its verbs to it.
Verbs: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class UsageError(Exception):
    """A problem with the command line or the user's files: printed, exit 2."""


def err(message: str) -> None:
    """Print ``improve: error: MESSAGE`` on stderr."""
    print(f"improve: error: {message}", file=sys.stderr)


def device(value: str) -> str:
    """argparse type for --device: auto, cpu, cuda or cuda:N; CUDA only where there is one
    (refused here, before any run folder is made, rather than by a failed training run)."""
    match = re.fullmatch(r"auto|cpu|cuda(?::(\d+))?", value)
    if not match:
        raise argparse.ArgumentTypeError(f"'{value}' is not auto, cpu, cuda or cuda:N")
    if value.startswith("cuda"):
        import torch  # only when CUDA is asked for: `check` and `fmt` stay fast

        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"'{value}': CUDA is not available on this machine (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda or 'none'}); use --device cpu or auto"
            )
        index = int(match.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"'{value}': this machine has {torch.cuda.device_count()} CUDA device(s), "
                "numbered from 0"
            )
    return value


def seconds(value: str) -> float:
    """argparse type for --timeout: a positive number of seconds."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a number of seconds") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value} must be above 0")
    return number


def seed(value: str) -> int:
    """argparse type for --seed: a whole number from 0 to 2**31 - 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a whole number") from None
    if not 0 <= number < 2**31:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 2147483647")
    return number
