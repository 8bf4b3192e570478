"""Each command, and the one place where an error becomes its documented exit code (errors.ExitCode).

Imported by ``cli`` only for the commands that need the network or the settings model.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

from . import backups, envfile, envnames, flow, hooks, keycloak, lifecycle, log, notices, quick, store
from ._dotenv import CREDENTIALS_FOLDER, ignored_env_files
from .errors import BootstrapError, ConfigError, ExitCode, NotRotated, StorageError
from .models import SavedRegistration
from .settings import Settings, load_settings
from .wait import Deadline

logger = log.get_logger()


async def _run(settings: Settings, _: argparse.Namespace) -> flow.Outcome:
    admin = keycloak.admin_for(settings)  # the server's admin API, as the one capability the flow may use
    if settings.dcr_k8s_secret:
        from . import k8s  # only when configured: the default path never imports it

        outcome = await k8s.run_shared(settings, admin)
    else:
        outcome = await flow.run(settings, admin=admin)
    logger.info(
        "Credentials written",
        path=str(settings.dcr_client_file),
        client_id=outcome.registration.client_id,
        action=outcome.action,
    )
    await notices.succeeded(settings, outcome.action, outcome.registration.client_id, outcome.why)
    return outcome


async def _rotate(settings: Settings, args: argparse.Namespace) -> None:
    """New credentials now, as DCR_ROTATE_AFTER would give them once the secret is old enough.

    Exit 0 only when the file holds a new secret; anything else says that it was not rotated, and why.
    """
    try:
        outcome = await _run(settings.model_copy(update={"dcr_rotate_after": ROTATE_NOW}), args)
    except BootstrapError as exc:
        exc.add_note("The client secret was not rotated.")
        raise
    if outcome.action not in ROTATED:
        raise NotRotated(
            f"The secret of client {outcome.registration.client_id} was NOT rotated: "
            f"{outcome.why or _NOT_ROTATED.get(outcome.action, f'the run only {outcome.action} it')}; the saved "
            f"credentials are kept and still work. {_FIX.get(outcome.action, _FIX['reloaded'])}"
        )


# A rotation age that every secret has reached: 'rotate' is a run with its rotation due.
ROTATE_NOW = 1e-9
# The outcomes that leave a new secret in the file ('registered': the saved client was gone or absent).
ROTATED = frozenset({"rotated", "renewed", "replaced", "registered"})
_NOT_ROTATED = {"static": "static credentials (USE_DCR=false) are the operator's, not ours to rotate"}
_FIX = {
    "static": "Regenerate the secret in Keycloak and update KEYCLOAK_CLIENT_SECRET.",
    "reloaded": "Set KEYCLOAK_ADMIN_USERNAME and KEYCLOAK_ADMIN_PASSWORD to regenerate it through Keycloak's "
    "admin API, or run 'dcr-bootstrap delete', delete the client on the server, and run again to register anew.",
}


async def _watch(
    settings: Settings, args: argparse.Namespace, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> None:
    """Keep the credentials fresh (rotated tokens, renewed or rotated secrets), telling the app of a change.

    Paced so that it cannot storm: a renewal the server refuses is retried with an exponential backoff,
    and a round that registered a new client is followed by a full interval (one new client at most).
    """
    from . import metrics  # 'watch' only: a run that exits does not pay for prometheus_client's import

    monitor, listener = await metrics.start(settings)  # DCR_METRICS_ADDR: /metrics, /healthz, /readyz
    try:
        seen = _app_credentials(_saved_or_none(settings))
        behind = 0  # rounds in a row that left the renewal due
        while True:
            wait = settings.dcr_watch_interval
            monitor.round_started()
            try:
                outcome = await _run(settings, args)
                monitor.succeeded(outcome)
                behind = behind + 1 if lifecycle.due(settings, outcome.registration) else 0
                if outcome.action not in ("registered", "replaced"):
                    wait = lifecycle.next_check(settings, outcome.registration, wait, behind)
                now = _app_credentials(outcome.registration)
                if seen is not None and now != seen and settings.dcr_on_change:
                    monitor.hook_ran(await hooks.on_change(settings.dcr_on_change, settings.dcr_on_change_timeout))
                seen = now
            except BootstrapError as exc:
                # A sidecar that exits is restarted anyway; keep the last good file and try again later.
                monitor.failed(exc)
                logger.error(exc.line(), exit_code=int(exc.exit_code), error_type=type(exc).__name__)
                await notices.round_failed(settings, exc.line())
            monitor.sleeping(wait)
            await sleep(wait)
    except asyncio.CancelledError:
        logger.info("Stopping watch")
        if settings.dcr_delete_on_exit:
            await _delete_on_exit(settings)
    finally:
        if listener is not None:
            await listener.stop()


def _app_credentials(saved: SavedRegistration | None) -> tuple[str, str | None] | None:
    """What the app uses: a rotated registration access token alone is no change for it."""
    if saved is None:
        return None
    return saved.client_id, saved.client_secret.get_secret_value() if saved.client_secret else None


def _saved_or_none(settings: Settings) -> SavedRegistration | None:
    try:
        return store.load(settings.dcr_client_file)
    except StorageError:
        return None


async def _delete_on_exit(settings: Settings) -> None:
    """A per-Pod client dies with its Pod; a failure here is logged, the Pod stops anyway."""
    try:
        await flow.delete(settings, flow.EXIT_DELETE_TIMEOUT, keycloak.admin_for(settings))
    except StorageError:
        logger.info("No saved registration to delete on exit", path=str(settings.dcr_client_file))
    except BootstrapError as exc:
        logger.error(
            f"Could not delete the client on exit: {exc.line()}",
            exit_code=int(exc.exit_code),
            error_type=type(exc).__name__,
        )


def _saved(settings: Settings) -> SavedRegistration:
    saved = store.load(settings.dcr_client_file)
    if saved is None:
        raise StorageError(f"No saved registration at {settings.dcr_client_file}; run 'dcr-bootstrap' first.")
    return saved


async def _env(settings: Settings, _: argparse.Namespace) -> None:
    sys.stdout.write(quick.exports(envnames.values(_saved(settings), settings.env_names)))


async def _wait(settings: Settings, _: argparse.Namespace) -> None:
    metadata = await flow.wait_for_server(settings)
    logger.info("Server ready", issuer=metadata.issuer)


async def _show(settings: Settings, _: argparse.Namespace) -> None:
    retired = [
        r.registration.to_file() | {"retire_at": r.retire_at} for r in store.load_retired(settings.dcr_client_file)
    ]
    sys.stdout.write(quick.show_text(_saved(settings).to_file(), retired))


async def _delete(settings: Settings, _: argparse.Namespace) -> None:
    await flow.delete(settings, admin=keycloak.admin_for(settings))


async def _doctor(settings: Settings, args: argparse.Namespace) -> None:
    """Will a registration work? One line per finding on stdout (or --json); exit DOCTOR_BLOCKED if one blocks."""
    settings.check_server()
    from . import doctor, keycloak_doctor  # only for this command

    async with flow.transport_for(settings, Deadline(settings.dcr_wait_timeout)) as transport:
        checker = keycloak_doctor.checker_for(settings, keycloak.login_for(settings))
        findings = await doctor.diagnose(settings, transport, checker)
    sys.stdout.write(doctor.render(findings, args.json))
    sys.stdout.flush()
    if (blocked := doctor.blocked(findings)) is not None:
        raise blocked
    logger.info("No finding blocks a registration", warnings=sum(f.level == "warning" for f in findings))


async def _backup(settings: Settings, args: argparse.Namespace) -> None:
    await backups.backup(settings, args.dir)


async def _restore(settings: Settings, args: argparse.Namespace) -> None:
    await backups.restore(settings, args.file, force=args.force)


def _admin_access(settings: Settings, command: str) -> keycloak.AdminAccess:
    if not (settings.keycloak_url and settings.keycloak_realm):
        raise ConfigError(f"{command} needs KEYCLOAK_URL and KEYCLOAK_REALM; set both.")
    access = keycloak.access_from(settings)
    if access is None:
        raise ConfigError(
            f"{command} needs KEYCLOAK_ADMIN_USERNAME and KEYCLOAK_ADMIN_PASSWORD "
            "(or KEYCLOAK_ADMIN_PASSWORD_FILE); set both."
        )
    return access


async def _mint(settings: Settings, access: keycloak.AdminAccess, count: int, expiration: int) -> str:
    deadline = Deadline(settings.dcr_wait_timeout)
    async with flow.transport_for(settings, deadline) as transport:
        token = await keycloak.initial_access_token(
            transport, flow.policy_for(settings, deadline), access, count=count, expiration=expiration
        )
    return token  # masked and checked (VSCHAR, env-safe) by keycloak as it was parsed


async def _initial_token(settings: Settings, args: argparse.Namespace) -> None:
    access = _admin_access(settings, "initial-token")
    if args.output is not None:
        store.probe_writable(args.output)
    token = await _mint(settings, access, args.count, args.expiration)
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


# The static credentials the seed's server reads; 'setup' comments them out, 'to-static' writes them.
_STATIC = ("KEYCLOAK_CLIENT_ID", "KEYCLOAK_CLIENT_SECRET")


async def _setup(settings: Settings, args: argparse.Namespace) -> None:
    """The migration guide's static -> DCR step: mint an initial access token and switch the .env to DCR."""
    env = envfile.load(args.env_file)
    if env.get("USE_DCR") == "true" and env.get("DCR_INITIAL_ACCESS_TOKEN") and not args.renew:
        logger.info(
            "The .env is set up for DCR already; nothing changed (--renew mints a new token)", path=str(env.path)
        )
        return
    access = _admin_access(settings, "setup")
    token = await _mint(settings, access, args.count, args.expiration)
    text = env.edited({"USE_DCR": "true", "DCR_INITIAL_ACCESS_TOKEN": token}, comment_out=frozenset(_STATIC))
    kept = envfile.replace(env, text)
    logger.info("The .env now uses DCR", path=str(env.path), backup=str(kept), count=args.count)


async def _to_static(settings: Settings, args: argparse.Namespace) -> None:
    """The migration guide's DCR -> static step: keep the current client, as static credentials in the .env."""
    env = envfile.load(args.env_file)
    path = settings.dcr_client_file
    async with store.locked(path, Deadline(settings.dcr_wait_timeout).remaining):
        saved = store.load(path)
        if saved is None:
            if env.get("USE_DCR") == "false" and all(env.get(key) for key in _STATIC):
                logger.info("The .env holds static credentials already; nothing changed", path=str(env.path))
                return
            raise StorageError(
                f"No saved registration at {path} to keep; set DCR_CLIENT_FILE to the file the server uses."
            )
        secret = saved.client_secret.get_secret_value() if saved.client_secret else ""
        if not (store.env_safe(saved.client_id) and store.env_safe(secret)):
            raise StorageError(
                "The client's id or secret has characters a .env line cannot carry unquoted; nothing was changed."
            )
        values = {"USE_DCR": "false", "KEYCLOAK_CLIENT_ID": saved.client_id, "KEYCLOAK_CLIENT_SECRET": secret}
        kept = envfile.replace(env, env.edited(values, comment_out=frozenset({"DCR_INITIAL_ACCESS_TOKEN"})))
        store.remove(path, settings.dcr_env_file)
    logger.info(
        "The .env now holds the client as static credentials; the registration file is removed",
        path=str(env.path),
        backup=str(kept),
        client_id=saved.client_id,
    )


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Awaitable[object]]] = {
    "run": _run,
    "rotate": _rotate,
    "wait": _wait,
    "watch": _watch,
    "env": _env,
    "show": _show,
    "delete": _delete,
    "doctor": _doctor,
    "backup": _backup,
    "restore": _restore,
    "initial-token": _initial_token,
    "setup": _setup,
    "to-static": _to_static,
}


async def _with_signals(coro: Awaitable[object]) -> None:
    """SIGTERM/SIGINT cancel the run cleanly: writes are atomic, so nothing half-done remains."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    await task


def _warn_ignored() -> list[tuple[str, str]]:
    """Log each .env we did not read, once; return them for the last line of a configuration error."""
    ignored = list(ignored_env_files)
    ignored_env_files.clear()
    for path, reason in ignored:
        logger.warning(f"Ignored {path}: it {reason}; settings come from the environment only", path=path)
    return ignored


def _ignored_hint(ignored: list[tuple[str, str]]) -> str:
    """The .env files we did not read, and how to read one: a missing setting may be in it."""
    hints = []
    for path, reason in ignored:
        fix = f"pass --env-file {path} to read it" if reason == CREDENTIALS_FOLDER else "fix that to have it read"
        hints.append(f" Note: {path} was ignored (it {reason}); {fix}.")
    return "".join(hints)


def execute(command: str, args: argparse.Namespace) -> int:
    log.configure()
    settings: Settings | None = None
    ignored: list[tuple[str, str]] = []
    try:
        settings = load_settings(env_file=getattr(args, "settings_file", None))
        log.configure(settings.dcr_log_format, settings.dcr_log_level)
        ignored = _warn_ignored()
        asyncio.run(_with_signals(COMMANDS[command](settings, args)))
    except BootstrapError as exc:
        if settings is None:
            ignored = _warn_ignored()
        message = exc.line() + (_ignored_hint(ignored) if isinstance(exc, ConfigError) else "")
        if hint := keycloak.hint_for(exc, settings.keycloak_url if settings else None):
            message = f"{message} Keycloak: {hint}"
        logger.error(message, exit_code=int(exc.exit_code), error_type=type(exc).__name__)
        notices.run_failed(settings, message)  # the termination message and an Event: where operators look
        return int(exc.exit_code)
    except BrokenPipeError:
        raise  # the CLI ends quietly: the reader ('show | head') went away
    except (asyncio.CancelledError, KeyboardInterrupt):
        logger.error("Interrupted; the credentials file was left as it was.", exit_code=int(ExitCode.INTERRUPTED))
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:  # a bug: say so in one line; the redaction processor still applies
        notes = "".join(f" {note}" for note in getattr(exc, "__notes__", ()))
        message = (
            f"Unexpected error ({type(exc).__name__}: {exc}); this is a bug, please report it with this log.{notes}"
        )
        logger.error(message, exit_code=int(ExitCode.INTERNAL))
        notices.run_failed(settings, message)
        return int(ExitCode.INTERNAL)
    return int(ExitCode.OK)
