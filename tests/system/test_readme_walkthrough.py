"""The README's Administration section, followed to the letter on a fresh Debian 12.

Every command of the README's ``sh walkthrough`` blocks is typed, in order, at a terminal in a
booted Debian 12 whose PostgreSQL 15 and Redis are Debian's, with Debian's defaults (peer
authentication for ``postgres``, Redis without a password), until ``facusync verify`` says
IN SYNC. Only the editor is not driven by keystrokes: the test writes the values the README
tells the operator to set. Run with `make test-system`.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.conftest import DEB_DIR_IN_CONTAINER, REPO
from tests.system.debian import (
    ENV_FILE,
    SERVICES,
    ContainedStandIn,
    debian_host,
    edit_env_file,
    pg_rows,
    psql,
)
from tests.system.nspawn import Container, wait_for
from tests.system.terminal import Typed, readme_commands, type_command

ROWS = 300
# Commands that report a state that is reached a moment after the services start: typed
# again (as an operator would) until they exit 0.
UNTIL_OK = ("facusync status", "facusync verify")
FOLLOW_SECONDS = 3.0  # `journalctl -f` runs this long before Ctrl+C


@pytest.fixture(scope="module")
def host(image: Path, deb_path: Path) -> Iterator[tuple[Container, ContainedStandIn]]:
    with debian_host(image, deb_path.parent) as pair:
        yield pair


def test_readme_blocks_are_found() -> None:
    commands = readme_commands(REPO / "README.md", "walkthrough")
    assert commands[0].startswith("sudo apt install ") and any("verify" in c for c in commands)
    assert readme_commands(REPO / "README.md", "upgrade")


def typed_until_ok(box: Container, command: str, timeout: float = 120) -> Typed:
    last: list[Typed] = []

    def attempt() -> Typed | None:
        last[:] = [type_command(box, command, cwd=DEB_DIR_IN_CONTAINER, timeout=120)]
        return last[0] if last[0].status == 0 else None

    return wait_for(f"`{command}` exiting 0", attempt, timeout, interval=3,
                    detail=lambda: last[0].output[-1500:] if last else None)


def test_the_administration_section_works_as_written(
        host: tuple[Container, ContainedStandIn], deb_path: Path) -> None:
    box, standin = host
    standin.seed(ROWS)
    sync_password = secrets.token_urlsafe(18)
    nocodb_password = secrets.token_urlsafe(18)
    # The values the README's "Configure" step names (SYNC_INTERVAL: quicker, for the test).
    values = {"MSSQL_HOST": standin.host, "MSSQL_PORT": str(standin.port),
              "MSSQL_USER": standin.user, "MSSQL_PASSWORD": standin.password,
              "MSSQL_DATABASE": standin.database, "PG_HOST": "localhost",
              "PG_PASSWORD": sync_password, "REDIS_PASSWORD": "", "SYNC_INTERVAL": "1"}
    answers = [(r"password for the NocoDB role \S+: $", nocodb_password), (r"again: $", nocodb_password),
               (r"\[Y/n\] $", "y")]
    transcript: list[Typed] = []
    for command in readme_commands(REPO / "README.md", "walkthrough"):
        if re.fullmatch(r"sudo editor /etc/facusync/facusync\.env", command):
            text = edit_env_file(box, values)
            assert "\nPG_USER=facusync_sync\n" in text  # the daemons' role, as shipped
            assert box.run("stat", "-c", "%a %U %G", ENV_FILE).stdout.split() == \
                ["640", "root", "_facusync"]
            continue
        if any(what in command for what in UNTIL_OK):
            typed = typed_until_ok(box, command)
        else:
            follow = " -f " in f"{command} "
            typed = type_command(box, command, cwd=DEB_DIR_IN_CONTAINER, answers=answers,
                                 interrupt_after=FOLLOW_SECONDS if follow else None)
            if follow:  # ended by Ctrl+C, having shown the daemon's JSON lines
                if not any(line.startswith("{") for line in typed.output.splitlines()):
                    # Hung up with nothing shown (see terminal.py): type it again, once.
                    typed = type_command(box, command, cwd=DEB_DIR_IN_CONTAINER,
                                         interrupt_after=FOLLOW_SECONDS)
                assert any(line.startswith("{") for line in typed.output.splitlines()), typed
                transcript.append(typed)
                continue
        transcript.append(typed)
        assert typed.status == 0, f"`{command}` exited {typed.status}:\n{typed.output[-3000:]}"
        assert "Traceback" not in typed.output, typed.output
    outputs = {t.command: t.output for t in transcript}
    assert not any(p in out for out in outputs.values() for p in (sync_password, nocodb_password))
    # The end state the README promises: both sides equal, the timer active.
    verify = next(out for cmd, out in outputs.items() if "facusync verify" in cmd)
    assert "verify: IN SYNC" in verify, verify
    assert pg_rows(box) == ROWS
    assert box.run("systemctl", "is-active", "facusync-reconcile.timer").stdout.strip() == "active"
    # The daemons log in as the least-privilege role, never as the superuser.
    users = psql(box, "SELECT DISTINCT usename FROM pg_stat_activity "
                      "WHERE application_name LIKE 'facusync%'")
    assert users.split() == ["facusync_sync"], users
    # The program says the installed package's version.
    version = box.run("dpkg-query", "-W", "-f=${Version}", "facusync").stdout
    assert box.run("facusync", "--version").stdout.strip() == f"facusync {version}"
    assert deb_path.name == f"facusync_{version}_all.deb"


def test_journal_filter_of_the_readme_finds_errors(host: tuple[Container, ContainedStandIn]) -> None:
    """The README's jq line selects the daemon's error lines (here: Redis stopped)."""
    box, _ = host
    command = next(c for c in readme_commands(REPO / "README.md", "walkthrough") if "| jq" in c)
    box.run("systemctl", "stop", "redis-server")
    try:
        def errors() -> list[dict[str, object]] | None:
            out = type_command(box, command, timeout=60)
            found = [json.loads(line) for line in out.output.splitlines() if line.startswith("{")]
            return [r for r in found if "Redis" in str(r.get("message"))] or None

        found = wait_for("an ERROR line about Redis through the README's filter", errors, 60,
                         interval=2)
        assert all(r["level"] == "ERROR" for r in found)
        assert all(re.search(r"[+-]\d\d:\d\d$", str(r["time"])) for r in found)  # a zone
    finally:
        box.run("systemctl", "start", "redis-server")
    for unit in SERVICES:
        assert box.run("systemctl", "is-active", unit, check=False).stdout.strip() == "active"


def test_a_user_without_sudo_is_told_it_is_a_permission_problem(
        host: tuple[Container, ContainedStandIn]) -> None:
    box, _ = host
    box.run("useradd", "--create-home", "ana")
    out = box.run("runuser", "-u", "ana", "--", "facusync", "status", check=False)
    assert out.returncode == 77, out
    assert "invalid configuration" not in out.stderr
    assert f"cannot read {ENV_FILE}: permission denied" in out.stderr
    assert "sudo facusync" in out.stderr and "group _facusync" in out.stderr
