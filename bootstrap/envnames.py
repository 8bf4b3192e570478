"""Which environment names carry which fields of the registration, for a server that reads other names.

The seed's server reads ``KEYCLOAK_CLIENT_ID`` and ``KEYCLOAK_CLIENT_SECRET``; FastMCP's introspection
verifier, Spring or Quarkus read their own. ``DCR_ENV_NAMES`` maps fields to names
(``client_id=OAUTH_CLIENT_ID,client_secret=OAUTH_CLIENT_SECRET,introspection_endpoint=OAUTH_INTROSPECT``)
for the env file (``DCR_ENV_FILE``) and ``dcr-bootstrap env``. A name is an environment name of letters,
digits and underscores that none of ours and none that changes how a process starts: a mapping can never
inject a setting of this tool or hijack the program that sources the file.
"""

from __future__ import annotations

import re

from .models import SavedRegistration

FIELDS = ("client_id", "client_secret", "issuer", "token_endpoint", "introspection_endpoint")
DEFAULT = "client_id=KEYCLOAK_CLIENT_ID,client_secret=KEYCLOAK_CLIENT_SECRET"
EnvNames = tuple[tuple[str, str], ...]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Names that change how a shell, the dynamic linker or a runtime starts the program that reads the file.
_HIJACKING = frozenset(
    {
        "PATH", "HOME", "SHELL", "ENV", "BASH_ENV", "IFS", "PS4", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT",
        "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONINSPECT", "NODE_OPTIONS", "NODE_PATH",
        "JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS", "PERL5OPT", "RUBYOPT",
    }
)  # fmt: skip


def _ours(name: str) -> bool:
    upper = name.upper()
    return upper.startswith(("DCR_", "KEYCLOAK_ADMIN_")) or upper in {"USE_DCR", "KEYCLOAK_CLIENT_SECRET_FILE"}


def parse(value: str) -> EnvNames:
    """``field=NAME,...`` checked: known fields, each once, safe and distinct names; ValueError says which."""
    pairs: list[tuple[str, str]] = []
    for item in (part.strip() for part in value.split(",")):
        field, sep, name = item.partition("=")
        field, name = field.strip(), name.strip()
        if not sep or field not in FIELDS:
            raise ValueError(f"must be field=NAME pairs with fields among {', '.join(FIELDS)}")
        if not _NAME.fullmatch(name) or _ours(name) or name.upper() in _HIJACKING:
            raise ValueError(
                "each NAME must be letters, digits and '_' (not starting with a digit), and neither a setting "
                "of dcr-bootstrap (DCR_*, USE_DCR, KEYCLOAK_ADMIN_*) nor one that changes how a program starts "
                "(PATH, LD_PRELOAD, PYTHONPATH, NODE_OPTIONS, ...)"
            )
        pairs.append((field, name))
    fields, names = [f for f, _ in pairs], [n for _, n in pairs]
    if len(set(fields)) != len(fields) or len(set(names)) != len(names):
        raise ValueError("names each field once, and each NAME once")
    return tuple(pairs)


def values(registration: SavedRegistration, names: EnvNames) -> list[tuple[str, str]]:
    """(NAME, value) for each mapped field; a field the registration lacks is an empty value."""
    out = []
    for field, name in names:
        value = getattr(registration, field)
        plain = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        out.append((name, plain or ""))
    return out
