"""``python -m harness.<name> COMMAND``: the one command-line shape of the harnesses.

A command's exit code is the process's; a HarnessError ends in one line naming the harness (exit 1); an
unknown command prints the usage (exit 2).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

from harness.process import HarnessError

# A command gets the arguments after its name.
Command = Callable[[list[str]], int]


def run_command(
    name: str, commands: Mapping[str, Command], usage: str, argv: list[str] | None = None, default: str = ""
) -> int:
    """Run the command ``argv`` names (``default`` without one) from ``commands``."""
    args = sys.argv[1:] if argv is None else argv
    command = commands.get(args[0] if args else default)
    if command is None:
        print(f"usage: python -m harness.{name} {usage}", file=sys.stderr)
        return 2
    try:
        return command(args[1:])
    except HarnessError as exc:
        print(f"{name} harness: {exc}", file=sys.stderr)
        return 1


def printing(make: Callable[[], object]) -> Command:
    """A command that prints what ``make`` returns (a path, a version) and exits 0."""

    def command(_args: list[str]) -> int:
        print(make())
        return 0

    return command
