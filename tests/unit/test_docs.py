"""The documentation: the reference site builds without a broken link, and the README's links resolve."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_reference_site_builds_strictly(tmp_path: Path) -> None:
    """mkdocs --strict: a page missing from the nav, a broken link or anchor fails the build."""
    mkdocs = Path(sys.executable).with_name("mkdocs")
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_relative_link_in_the_front_pages_names_a_file() -> None:
    """README, CONTRIBUTING and CHANGELOG link only to files that exist (mkdocs checks docs/ itself)."""
    broken = []
    for page in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md"):
        for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)", (ROOT / page).read_text()):
            if "://" not in target and not (ROOT / target).exists():
                broken.append(f"{page}: {target}")
    assert not broken


def test_the_readme_stays_a_front_page() -> None:
    """The README is a front page (what it is, the quick start, the deployment shapes, links): about 200 lines."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
