"""The one orchestrator: wait, discover, reload-or-register (or check static credentials), save.

Every network step shares one deadline (DCR_WAIT_TIMEOUT) and this module alone decides what is
retried (``RetryPolicy.call``). The credentials file is locked for the whole run and only ever
replaced atomically, after the server has answered with something usable and, for a new client,
after a token request proved it works. No client of ours is left behind by our hand: a new
registration is written to ``.pending`` the moment it exists, deleted again if the run fails, and
adopted by the next run if this one is killed. A saved client is called gone only when the server
rejects its credentials, never merely because its RFC 7592 token stopped working.

One run reads top-down here; each stage of a registration's life has its room: ``_context`` (what every
step shares), ``_new`` (a first registration, its intent and withdrawal), ``_existing`` (a saved client's
read, update and renewal), ``_rotation`` (rotation and retirement), ``_delete`` ('delete'). A server's admin
API reaches the run only as the ``admin.AdminFor`` capability the command layer passes in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from . import _delete, discovery, lifecycle, log, store
from ._context import (
    CLEANUP_TIMEOUT,
    EXIT_DELETE_TIMEOUT,
    Outcome,
    Run,
    policy_for,
    prove,
    save,
    transport_for,
    trusted,
    wanted_metadata,
)
from ._existing import quick_reload, reload
from ._new import adopt, named, register, resolve_intents, withdraw, withdraw_client, withdraw_on_failure
from ._parse import hostname
from ._rotation import retire
from .admin import AdminFor
from .errors import BootstrapError
from .models import SavedRegistration, ServerMetadata
from .settings import Settings
from .wait import Deadline

__all__ = [
    "CLEANUP_TIMEOUT",
    "EXIT_DELETE_TIMEOUT",
    "Outcome",
    "delete",
    "named",
    "policy_for",
    "retire",
    "run",
    "transport_for",
    "usable_as_is",
    "wait_for_server",
    "wanted_metadata",
    "withdraw",
    "withdraw_client",
    "withdraw_on_failure",
]

logger = log.get_logger()


async def wait_for_server(settings: Settings) -> ServerMetadata:
    settings.check_server()
    deadline = Deadline(settings.dcr_wait_timeout)
    async with transport_for(settings, deadline) as transport:
        return await policy_for(settings, deadline).call(
            "discovery", discovery.discover, transport, settings.expected_issuer
        )


async def run(settings: Settings, deadline: Deadline | None = None, admin: AdminFor | None = None) -> Outcome:
    """``deadline``: one begun earlier (the Kubernetes store waits for its Lease within the same one);
    ``admin``: the server's admin API, which the command layer gives when the settings hold its credentials."""
    settings.check()
    deadline = deadline or Deadline(settings.dcr_wait_timeout)
    policy = policy_for(settings, deadline)
    path, env_file = settings.dcr_client_file, settings.dcr_env_file
    transport = transport_for(settings, deadline)  # a bad DCR_CA_BUNDLE fails here, before the lock
    async with store.locked(path, deadline.remaining) as turn:
        store.sweep(path, env_file, store.pending_path(path))
        # Fail on an unwritable volume or unreadable file now: not after waiting, not after registering.
        store.probe_writable(path, env_file)
        found = _Found(
            store.load(path), store.load_pending(path), bool(store.load_intents(path)), bool(store.load_retired(path))
        )
        saved = found.saved
        if found.clean and saved is not None and turn.written_meanwhile(path) and usable_as_is(settings, saved):
            # The run we waited for wrote it moments ago, after the server confirmed it: no request needed.
            logger.info("Loaded registration for client", client_id=saved.client_id, waited=True)
            return Outcome("reloaded", saved)
        api = admin(transport, policy) if admin is not None else None
        return await _checked(
            Run(transport, settings, ServerMetadata(issuer=""), policy, wanted_metadata(settings), api), found
        )


@dataclass(frozen=True)
class _Found:
    """What the folder holds when the run takes its lock."""

    saved: SavedRegistration | None
    pending: SavedRegistration | None
    interrupted: bool  # intents of killed POSTs
    retiring: bool  # replaced registrations in their grace

    @property
    def clean(self) -> bool:
        return self.pending is None and not (self.interrupted or self.retiring)


async def _checked(unknown: Run, found: _Found) -> Outcome:
    """The run under the lock, from the server: a quick reload, else discovery and the full decision.

    ``unknown`` is the run's context before discovery (its ``server`` is not known yet).
    """
    saved, settings = found.saved, unknown.settings
    async with unknown.transport:
        if found.clean and saved is not None:
            reloaded = await quick_reload(unknown, saved)
            if isinstance(reloaded, Outcome):
                return reloaded
            saved = reloaded
        server = await unknown.policy.call("discovery", discovery.discover, unknown.transport, settings.expected_issuer)
        ctx = replace(unknown, server=trusted(settings, server))
        return await _discovered(ctx, saved, found.pending, interrupted=found.interrupted, retiring=found.retiring)


async def _discovered(
    ctx: Run, saved: SavedRegistration | None, pending: SavedRegistration | None, *, interrupted: bool, retiring: bool
) -> Outcome:
    """The run once the server is known: earlier runs' leftovers first, the decision, then retirements."""
    if interrupted:  # clients that killed POSTs left: before anything registers anew
        await resolve_intents(ctx, {r.client_id for r in (saved, pending) if r is not None})
    outcome = await _decide(ctx, saved, pending)
    if retiring or outcome.action == "replaced":
        await _retire_quietly(ctx, outcome.registration.client_id)
    return outcome


async def _retire_quietly(ctx: Run, in_use: str) -> None:
    """Replaced registrations past their grace go once this run's outcome is saved; a failure is only logged."""
    try:
        await retire(ctx, {in_use})
    except BootstrapError as exc:
        logger.warning("Could not delete a replaced registration; the next run tries again", error=exc.line())


async def _decide(ctx: Run, saved: SavedRegistration | None, pending: SavedRegistration | None) -> Outcome:
    """With the server discovered: static credentials, or adopt, reload or register."""
    if not ctx.settings.use_dcr:
        return await _static(ctx, saved)
    endpoint = discovery.require_registration_endpoint(ctx.server)
    logger.info("Discovered DCR endpoint", endpoint=endpoint, issuer=ctx.server.issuer)
    if pending is not None and (adopted := await adopt(ctx, pending)) is not None:
        return adopted
    if saved is not None and (reloaded := await _reload_or_set_aside(ctx, saved, endpoint)) is not None:
        return reloaded
    return await register(ctx, endpoint)


async def _reload_or_set_aside(ctx: Run, saved: SavedRegistration, endpoint: str) -> Outcome | None:
    """The saved client if it is still good; None to register (a file of another server is kept aside)."""
    if _belongs_to(saved, ctx.server, endpoint):
        return await reload(ctx, saved, endpoint)
    kept = store.backup(ctx.settings.dcr_client_file)
    logger.warning(
        "Saved registration is for another server or mode; kept it as a backup and registering anew",
        saved_issuer=saved.issuer,
        saved_mode=saved.mode,
        issuer=ctx.server.issuer,
        backup=str(kept),
    )
    return None


def _belongs_to(saved: SavedRegistration, server: ServerMetadata, endpoint: str) -> bool:
    if saved.mode != "dcr":
        return False
    if saved.issuer is not None:
        return saved.issuer.rstrip("/") == server.issuer.rstrip("/")
    # A file written by the seed's server has no issuer; its registration URI tells.
    return bool(saved.registration_client_uri and saved.registration_client_uri.startswith(endpoint))


def usable_as_is(settings: Settings, saved: SavedRegistration) -> bool:
    """Whether a registration another run saved moments ago (the one we waited for) serves these settings
    without a request: the same server and mode, the metadata asked for, nothing due."""
    return (
        settings.use_dcr
        and saved.mode == "dcr"
        and saved.issuer is not None
        and saved.issuer.rstrip("/") == settings.expected_issuer.rstrip("/")
        and saved.metadata_fingerprint == wanted_metadata(settings).fingerprint
        and not lifecycle.due(settings, saved)
    )


async def _static(ctx: Run, saved: SavedRegistration | None) -> Outcome:
    client_id, secret = ctx.settings.keycloak_client_id, ctx.settings.keycloak_client_secret
    assert client_id and secret  # Settings.check()
    static = SavedRegistration(
        client_id=client_id,
        client_secret=secret,
        registered_at=hostname(),
        issuer=ctx.server.issuer,
        token_endpoint=ctx.server.token_endpoint,
        introspection_endpoint=ctx.server.introspection_endpoint,
        token_endpoint_auth_method=ctx.settings.dcr_token_endpoint_auth_method,
        mode="static",
    )
    await prove(ctx, static)
    if saved is not None and (saved.mode != "static" or saved.issuer != ctx.server.issuer):
        kept = store.backup(ctx.settings.dcr_client_file)
        logger.warning("Kept the saved registration as a backup before writing static credentials", backup=str(kept))
    save(ctx, static)
    logger.info("Static credentials verified", client_id=client_id)
    return Outcome("static", static)


async def delete(settings: Settings, budget: float | None = None, admin: AdminFor | None = None) -> bool:
    """'delete': the saved client and its retired ones (``_delete``); True if the server had the saved one."""
    return await _delete.delete(settings, budget, admin)
