"""argv -> Settings -> flow; each error class maps to one documented exit code (errors.ExitCode)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__, flow, keycloak, log, store
from ._http import Transport
from .errors import BootstrapError, ConfigError, ExitCode
from .settings import Settings, load_settings

logger = log.get_logger()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcr-bootstrap",
        description="Register an OAuth client by Dynamic Client Registration (or reload and check the saved "
        "one) and write its credentials. Configured by environment variables; see the README.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="wait, register or reload, write the credentials (the default)")
    sub.add_parser("wait", help="only wait until the server serves its metadata")
    sub.add_parser("show", help="print the saved registration, secrets redacted")
    sub.add_parser("delete", help="delete the client on the server (RFC 7592) and remove the file")
    mint = sub.add_parser(
        "initial-token",
        help="mint a Keycloak initial access token with admin credentials (KEYCLOAK_ADMIN_USERNAME/PASSWORD)",
    )
    mint.add_argument("--count", type=int, default=1, help="how many registrations it allows (default 1)")
    mint.add_argument("--expiration", type=int, default=3600, help="lifetime in seconds (default 3600)")
    mint.add_argument("--output", type=Path, help="write it to this file (mode 0600) instead of stdout")
    return parser


async def _run(settings: Settings, _: argparse.Namespace) -> None:
    outcome = await flow.run(settings)
    logger.info(
        "Credentials written",
        path=str(settings.dcr_client_file),
        client_id=outcome.registration.client_id,
        action=outcome.action,
    )


async def _wait(settings: Settings, _: argparse.Namespace) -> None:
    metadata = await flow.wait_for_server(settings)
    logger.info("Server ready", issuer=metadata.issuer)


async def _show(settings: Settings, _: argparse.Namespace) -> None:
    saved = store.load(settings.dcr_client_file)
    if saved is None:
        raise ConfigError(f"No saved registration at {settings.dcr_client_file}; run 'dcr-bootstrap' first.")
    print(json.dumps(saved.redacted(), indent=2))


async def _delete(settings: Settings, _: argparse.Namespace) -> None:
    await flow.delete(settings)


async def _initial_token(settings: Settings, args: argparse.Namespace) -> None:
    if not (settings.keycloak_url and settings.keycloak_realm):
        raise ConfigError("initial-token needs KEYCLOAK_URL and KEYCLOAK_REALM; set both.")
    if not (settings.keycloak_admin_username and settings.keycloak_admin_password):
        raise ConfigError(
            "initial-token needs KEYCLOAK_ADMIN_USERNAME and KEYCLOAK_ADMIN_PASSWORD "
            "(or KEYCLOAK_ADMIN_PASSWORD_FILE); set both."
        )
    log.register_secret(settings.keycloak_admin_password.get_secret_value())
    async with Transport(settings) as transport:
        admin = await keycloak.admin_token(
            transport,
            settings.keycloak_url,
            settings.keycloak_admin_username,
            settings.keycloak_admin_password.get_secret_value(),
        )
        token = await keycloak.mint_initial_access_token(
            transport,
            settings.keycloak_url,
            settings.keycloak_realm,
            admin,
            count=args.count,
            expiration=args.expiration,
        )
    log.register_secret(token)
    if args.output:
        store.write_private(args.output, (token + "\n").encode())
        logger.info(
            "Initial access token written",
            path=str(args.output),
            count=args.count,
            expiration=args.expiration,
        )
    else:
        sys.stdout.write(token + "\n")


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Awaitable[None]]] = {
    "run": _run,
    "wait": _wait,
    "show": _show,
    "delete": _delete,
    "initial-token": _initial_token,
}


async def _with_signals(coro: Awaitable[None]) -> None:
    """SIGTERM/SIGINT cancel the run cleanly: writes are atomic, so nothing half-done remains."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    await task


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log.configure()
    try:
        settings = load_settings()
        log.configure(settings.dcr_log_format, settings.dcr_log_level)
        asyncio.run(_with_signals(COMMANDS[args.command or "run"](settings, args)))
    except BootstrapError as exc:
        logger.error(str(exc), exit_code=int(exc.exit_code), error_type=type(exc).__name__)
        return int(exc.exit_code)
    except (asyncio.CancelledError, KeyboardInterrupt):
        logger.error("Interrupted; the credentials file was left as it was.", exit_code=int(ExitCode.INTERRUPTED))
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:  # a bug: say so in one line; the redaction processor still applies
        logger.error(
            f"Unexpected error ({type(exc).__name__}: {exc}); this is a bug, please report it with this log.",
            exit_code=int(ExitCode.INTERNAL),
        )
        return int(ExitCode.INTERNAL)
    return int(ExitCode.OK)


def main(argv: Sequence[str] | None = None) -> Any:
    sys.exit(run(argv))
