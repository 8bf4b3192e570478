"""Generate the reference's configuration table and exit-code table from the code itself.

``python -m bootstrap._reference`` rewrites the marked sections of the pages in ``PAGES``; a unit test
fails when a page and the code disagree, so the documentation cannot drift.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pydantic import SecretStr

from .errors import ExitCode
from .settings import Settings


def config_table() -> str:
    rows = ["| Variable | Default | Description |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if default is None or field.annotation is SecretStr:
            shown = ""
        elif isinstance(default, list):
            shown = f"`{','.join(default)}`" if default else ""
        else:
            shown = f"`{str(default).lower() if isinstance(default, bool) else default}`"
        rows.append(f"| `{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows)


def exit_code_table() -> str:
    rows = ["| Code | Meaning |", "| --- | --- |"]
    rows += [f"| {int(code)} | {code.meaning} |" for code in ExitCode]
    return "\n".join(rows)


SECTIONS = {"config": config_table, "exit-codes": exit_code_table}


def render(readme: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.DOTALL)
        readme = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(2), readme)  # type: ignore[misc]
    return readme


# The pages that hold a generated section (``<!-- BEGIN name -->`` ... ``<!-- END name -->``).
PAGES = (Path("docs/configuration.md"), Path("docs/exit-codes.md"))


def main() -> int:
    for path in [Path(arg) for arg in sys.argv[1:]] or PAGES:
        path.write_text(render(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
