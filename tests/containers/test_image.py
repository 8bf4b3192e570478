"""The bootstrap image on its own (``docker run``), against the stack's Keycloak where it needs a server.

Runs after test_compose_stack.py (file order) and reuses its running stack; run alone, it brings the
stack up first. Each Keycloak test works in a realm of its own, so the stack's realm keeps one client.
"""

from __future__ import annotations

import posixpath
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from harness.docker import ComposeStack, Engine, docker
from harness.keycloak import Admin
from tests.containers.test_compose_stack import admin_of

IMAGE = "dcr-bootstrap:dev"


@pytest.fixture(scope="module")
def image(stack: ComposeStack) -> str:
    """The bootstrap image as compose builds it (a no-op after the stack's `up --build`)."""
    proc = stack.compose("build", "bootstrap", timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return IMAGE


@pytest.fixture(scope="module")
def admin(stack: ComposeStack) -> Admin:
    """The stack's Keycloak admin API; the stack is brought up when it is not running."""
    keycloak = stack.states().get("keycloak")
    if keycloak is None or keycloak["status"] != "running":
        stack.up("image-tests")
    return admin_of(stack)


@pytest.fixture
def realm(admin: Admin) -> Iterator[str]:
    """A realm of this test's own (Keycloak's default policies: anonymous registration needs Trusted Hosts)."""
    name = admin.create_realm()
    try:
        yield name
    finally:
        admin.delete_realm(name)


def run_against(
    engine: Engine, stack: ComposeStack, image: str, realm: str, *argv: str, token: str | None = None
) -> list[str]:
    """``docker run`` options (and the environment) to run the image on the stack's network against ``realm``."""
    return [
        "run",
        "--network",
        stack.network,
        "-e",
        "KEYCLOAK_URL=http://localhost:8080",
        "-e",
        "DCR_INTERNAL_URL=http://keycloak:8080",
        "-e",
        f"KEYCLOAK_REALM={realm}",
        "-e",
        "DCR_WAIT_TIMEOUT=60",
        # The token's value comes from the CLI's environment: it never appears in an argv.
        *(["-e", "DCR_INITIAL_ACCESS_TOKEN"] if token is not None else []),
        *argv,
        image,
    ]


def run_image(
    engine: Engine,
    stack: ComposeStack,
    image: str,
    realm: str,
    *argv: str,
    token: str | None = None,
    command: tuple[str, ...] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``docker run`` of the image (then ``command``) against ``realm``; the token is passed by the environment."""
    env = engine.env if token is None else {**engine.env, "DCR_INITIAL_ACCESS_TOKEN": token}
    return docker(env, *run_against(engine, stack, image, realm, *argv, token=token), *command, timeout=timeout)


def test_without_settings_the_image_exits_2_with_the_config_message(engine: Engine, image: str) -> None:
    """No settings at all: exit 2, and the last line names what is missing."""
    proc = docker(engine.env, "run", "--rm", image)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert "ConfigError" in out
    assert "KEYCLOAK_URL" in out


# Registrations Keycloak refuses, in a realm with its default policies: (the initial access token, what the
# image's last line names). Each exits 4.
REFUSED = [
    # Anonymous registration needs a Trusted Hosts policy that names the caller.
    pytest.param(None, "Trusted Hosts", id="no-token-names-trusted-hosts"),
    # A token Keycloak cannot decode.
    pytest.param("not-a-token", "initial access token", id="bad-token-names-the-token"),
]


@pytest.mark.parametrize(("token", "named"), REFUSED)
def test_a_refused_registration_makes_the_image_exit_4_naming_the_cause(
    engine: Engine, stack: ComposeStack, image: str, admin: Admin, realm: str, token: str | None, named: str
) -> None:
    """A registration Keycloak refuses: exit 4, and the last line names what to fix."""
    proc = run_image(engine, stack, image, realm, "--rm", token=token)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out[-2000:]
    assert named in out.splitlines()[-1]


def test_wrap_mode_starts_the_command_with_the_credentials_and_logs_no_secret(
    engine: Engine, stack: ComposeStack, image: str, admin: Admin, realm: str
) -> None:
    """entrypoint.sh CMD: the command runs with KEYCLOAK_CLIENT_ID/SECRET set; `docker logs` holds no secret."""
    token = admin.mint_initial_access_token(realm)
    name = f"dcrtest-wrap-{uuid.uuid4().hex[:8]}"
    command = 'test -n "$KEYCLOAK_CLIENT_SECRET" && echo "wrapped: client $KEYCLOAK_CLIENT_ID"'
    started = run_image(
        engine, stack, image, realm, "--name", name, token=token, command=("sh", "-c", command), timeout=180
    )
    try:
        logs = docker(engine.env, "logs", name)
        out = logs.stdout + logs.stderr
        assert started.returncode == 0, f"exit {started.returncode}: {out[-2000:]}"
        wrapped = [line for line in out.splitlines() if line.startswith("wrapped: client ")]
        assert len(wrapped) == 1, out[-2000:]
        client_id = wrapped[0].removeprefix("wrapped: client ")
        secret = admin.client_secret(realm, client_id)
        secret_logged = secret in out
        token_logged = token in out
        assert not secret_logged, "the client secret appears in docker logs"
        assert not token_logged, "the initial access token appears in docker logs"
    finally:
        docker(engine.env, "rm", "--force", name)


def test_image_runs_as_10001_without_compiler_or_pip_cache(engine: Engine, image: str) -> None:
    """The final image: user 10001:10001, no C compiler, no pip cache, no pip in the tool's virtualenv."""
    inspected = docker(engine.env, "image", "inspect", "--format", "{{.Config.User}}", image)
    assert inspected.stdout.strip() == "10001:10001"
    probe = (
        "for c in gcc cc c++ g++ clang tcc; do command -v $c; done; "
        "ls -d /root/.cache/pip /home/*/.cache/pip /tmp/pip-* /var/lib/dcr/.cache 2>/dev/null; "
        "ls -d /opt/dcr-bootstrap/bin/pip* /opt/dcr-bootstrap/lib/python3*/site-packages/pip 2>/dev/null; true"
    )
    found = docker(engine.env, "run", "--rm", "--user", "0", "--entrypoint", "sh", image, "-c", probe)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "", f"compiler or pip cache in the image: {found.stdout}"


def test_image_workdir_is_not_the_volume_and_not_writable_by_10001(engine: Engine, image: str) -> None:
    """WORKDIR is neither /var/lib/dcr nor writable by uid 10001, so no co-tenant can drop a .env there."""
    inspected = docker(engine.env, "image", "inspect", "--format", "{{.Config.WorkingDir}}", image)
    assert inspected.returncode == 0, inspected.stderr
    workdir = posixpath.normpath(inspected.stdout.strip() or "/")
    assert workdir != "/var/lib/dcr", "the image starts in the credentials volume"
    probe = "pwd; if test -w .; then echo writable; else echo read-only; fi"
    found = docker(engine.env, "run", "--rm", "--user", "10001:10001", "--entrypoint", "sh", image, "-c", probe)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [workdir, "read-only"], found.stdout
