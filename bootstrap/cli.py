"""argv -> command. Light on purpose: 'env' and 'show' (run by entrypoint.sh on every start) are
answered by ``quick`` with the standard library; everything else loads ``commands``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from . import quick
from .errors import ExitCode

QUICK: dict[str, Callable[[], str | None]] = {"env": quick.env, "show": quick.show}


class _Version(argparse.Action):
    """--version, read from the installed package metadata only when asked."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from . import __version__

        print(f"{parser.prog} {__version__}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcr-bootstrap",
        description="Register an OAuth client by Dynamic Client Registration (or reload and check the saved "
        "one) and write its credentials. Configured by environment variables; see docs/configuration.md.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    parser.add_argument(
        "--env-file",
        dest="settings_file",
        type=Path,
        metavar="PATH",
        help="read settings from this file too (the environment wins): an operator's explicit choice, so it "
        "may sit beside the credentials file; it must be a regular file of ours or root's, writable by no one else",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="wait, register or reload, write the credentials (the default)")
    sub.add_parser("wait", help="only wait until the server serves its metadata")
    sub.add_parser(
        "rotate",
        help="give the client new credentials now (Keycloak's secret regeneration with admin credentials, "
        "else a new registration; the old one is retired after DCR_ROTATE_GRACE)",
    )
    sub.add_parser(
        "watch",
        help="sidecar mode: run, then re-check every DCR_WATCH_INTERVAL seconds until stopped",
    )
    sub.add_parser(
        "env",
        help="print 'export KEYCLOAK_CLIENT_ID=... KEYCLOAK_CLIENT_SECRET=...' for eval (entrypoint.sh uses it)",
    )
    sub.add_parser("show", help="print the saved registration, secrets redacted")
    sub.add_parser("delete", help="delete the client on the server (RFC 7592) and remove the file")
    doctor = sub.add_parser(
        "doctor",
        help="check, without registering anything, that a registration would work: reachability, discovery, "
        "the initial access token and (with admin credentials) Keycloak's registration policies and version",
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    backup = sub.add_parser("backup", help="copy the saved registration into DIR (mode 0600, a timestamped name)")
    backup.add_argument("dir", type=Path, metavar="DIR", help="the folder to copy it into (created 0700)")
    restore = sub.add_parser(
        "restore",
        help="make FILE (a backup) the saved registration, after checking it belongs to this issuer and the "
        "server still knows it as current (RFC 7592 read); a different client it replaces is retired",
    )
    restore.add_argument("file", type=Path, metavar="FILE", help="a backup written by 'backup'")
    restore.add_argument(
        "--force",
        action="store_true",
        help="restore it even if its client is gone, its token no longer works or it is older than the saved one",
    )
    mint = sub.add_parser(
        "initial-token",
        help="mint a Keycloak initial access token with admin credentials (KEYCLOAK_ADMIN_USERNAME/PASSWORD)",
    )
    _token_options(mint)
    mint.add_argument("--output", type=Path, help="write it to this file (mode 0600) instead of stdout")
    setup = sub.add_parser(
        "setup", help="static -> DCR: mint an initial access token and switch the .env to DCR (a backup first)"
    )
    setup.add_argument("--env-file", type=Path, help="the .env to edit (default: the global --env-file, else .env)")
    setup.add_argument("--renew", action="store_true", help="mint a new token even if the .env has one")
    _token_options(setup)
    static = sub.add_parser(
        "to-static", help="DCR -> static: keep the current client as KEYCLOAK_CLIENT_ID/SECRET in the .env"
    )
    static.add_argument("--env-file", type=Path, help="the .env to edit (default: the global --env-file, else .env)")
    return parser


def _token_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=1, help="how many registrations it allows (default 1)")
    parser.add_argument("--expiration", type=int, default=3600, help="lifetime in seconds (default 3600)")


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    # Edited by setup and to-static: theirs, else the file the settings come from, else ./.env.
    if getattr(args, "env_file", None) is None:
        args.env_file = args.settings_file or Path(".env")
    explicit = args.settings_file is not None  # it may name another DCR_CLIENT_FILE: no shortcut then
    try:
        if not explicit and command in QUICK and (text := QUICK[command]()) is not None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return int(ExitCode.OK)
        if command == "run" and not explicit:
            quick.take_lock()  # before the imports: runs started together then line up behind the first
        from . import commands  # the settings model, the network stack and the logger

        return commands.execute(command, args)
    except BrokenPipeError:
        # The reader went away ('show | head'): what it wanted it has; say nothing more on that pipe.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.OK)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    sys.exit(run(argv))
