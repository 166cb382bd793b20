"""One version: debian/changelog's, which the package build writes into the program."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from facusync import __version__
from facusync.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def changelog_version() -> str:
    first = (REPO / "debian" / "changelog").read_text(encoding="utf-8").splitlines()[0]
    match = re.match(r"^facusync \(([^)]+)\) ", first)
    assert match, first
    return match.group(1)


def test_the_program_says_the_changelogs_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert __version__ == changelog_version()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.strip() == f"facusync {changelog_version()}"


def test_the_readme_installs_this_version() -> None:
    """The walkthrough runs the README's commands as written: they name this release's file."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"facusync_(\d[^_ ]*)_all\.deb", readme))
    assert named == {changelog_version()}
