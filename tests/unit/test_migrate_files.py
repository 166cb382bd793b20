"""The migrator's file handling, rendering and password helpers, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from facusync import migrate
from facusync.cli import build_parser
from facusync.commands import migrate as command
from facusync.config import Config, Secret, config_from_mapping
from facusync.errors import ConfigError, SchemaError
from facusync.migrate import find_sql_dir, list_migrations, render
from facusync.roles import _saslprep, check_password, role_specs, scram_sha256_verifier

ENV = {"MSSQL_HOST": "h", "MSSQL_USER": "u", "MSSQL_PASSWORD": "p", "PG_HOST": "h",
       "PG_USER": "u", "PG_PASSWORD": "p"}


def cfg(**extra: str) -> Config:
    return config_from_mapping({**ENV, **extra})


def test_checkout_migrations_are_numbered_and_rendered_without_leftover_tokens() -> None:
    found = list_migrations()
    assert [m.version for m in found] == sorted({m.version for m in found})
    for m in found:
        text = render(m.path.read_text(encoding="utf-8"), cfg())
        assert "{{" not in text and "}}" not in text, m.path.name
        assert "BEGIN;" not in text.upper() and "COMMIT;" not in text.upper(), m.path.name


def test_installed_folder_is_used_when_there_is_no_checkout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = tmp_path / "usr-share"
    installed.mkdir()
    (installed / "001_schema.sql").write_text("SELECT 1;")
    monkeypatch.setattr(migrate, "SEARCH_PATH", (tmp_path / "no-checkout", installed))
    assert find_sql_dir() == installed
    monkeypatch.setattr(migrate, "SEARCH_PATH", (tmp_path / "none", tmp_path / "neither"))
    with pytest.raises(SchemaError, match="no migrations found"):
        find_sql_dir()


def test_duplicate_numbers_and_stray_files(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("")
    (tmp_path / "README.sql.txt").write_text("")
    (tmp_path / "notes.sql").write_text("")  # not NNN_name.sql: ignored
    assert [m.name for m in list_migrations(tmp_path)] == ["a"]
    (tmp_path / "0001_b.sql").write_text("")
    with pytest.raises(SchemaError, match="share number 1"):
        list_migrations(tmp_path)


def test_render_quotes_tables_and_checks_derived_names() -> None:
    text = "CREATE TABLE {{vista}} (); CREATE INDEX {{vista_name}}_x_idx ON {{seguimiento}} (a);"
    out = render(text, cfg(PG_TABLE_VISTA="Ventas", PG_TABLE_SEGUIMIENTO="planes"))
    assert out == 'CREATE TABLE "Ventas" (); CREATE INDEX Ventas_x_idx ON "planes" (a);'
    with pytest.raises(SchemaError, match="at most 57 characters"):
        render(text, cfg(PG_TABLE_VISTA="v" * 58))


def test_role_settings_have_defaults_and_passwords_stay_secret() -> None:
    c = cfg(PG_SYNC_ROLE_PASSWORD="s3cret-s3cret-s3cret")
    assert (c.pg_sync_role, c.pg_nocodb_role) == ("facusync_sync", "facusync_nocodb")
    assert "s3cret" not in repr(c)
    assert not c.pg_nocodb_role_password


def test_password_rules() -> None:
    assert check_password("sync", Secret("")) is not None
    assert "too short" in (check_password("nocodb", Secret("abc")) or "")
    assert check_password("sync", Secret("a-long-enough-one")) is None


def test_scram_verifier_format_and_saslprep() -> None:
    salt = b"0123456789abcdef"
    one = scram_sha256_verifier("pencil-pencil", salt=salt)
    assert one == scram_sha256_verifier("pencil-pencil", salt=salt)
    assert one.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert scram_sha256_verifier("pencil-pencil") != one  # random salt by default
    assert _saslprep("I\u00adX") == b"IX"            # soft hyphen maps to nothing
    assert _saslprep("a\u00a0b") == b"a b"           # non-ASCII space maps to space
    assert _saslprep("\u2168") == b"IX"              # NFKC
    assert _saslprep("a\u0007é") == "a\u0007é".encode()  # prohibited: raw bytes, as PostgreSQL


def test_migrate_help_documents_the_role_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["migrate", "--help"])
    out = capsys.readouterr().out
    for needle in ("--dry-run", "--create-roles", "--refresh-grants", "PG_SYNC_ROLE_PASSWORD",
                   "PG_NOCODB_ROLE_PASSWORD", "facusync_nocodb"):
        assert needle in out


def test_missing_passwords_are_asked_for_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["first-try-password", "typo", "sync-password-ok", "sync-password-ok"])
    monkeypatch.setattr(command.sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(command.getpass, "getpass", lambda prompt="": next(answers))
    filled = command._with_passwords(cfg(PG_NOCODB_ROLE_PASSWORD="nocodb-from-the-env"), set())
    assert filled.pg_sync_role_password.reveal() == "sync-password-ok"
    assert filled.pg_nocodb_role_password.reveal() == "nocodb-from-the-env"


def test_missing_passwords_without_a_terminal_fail_with_the_variable_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(command.sys.stdin, "isatty", lambda: False)
    with pytest.raises(ConfigError, match="PG_SYNC_ROLE_PASSWORD is missing") as info:
        command._with_passwords(cfg(), set())
    # Says where a password can come from; not "the repository" (issue 18).
    assert "repository" not in str(info.value)
    assert "env file or the environment, or run the command at a terminal" in str(info.value)
    # An existing role keeps its password: nothing to ask, nothing missing.
    kept = command._with_passwords(cfg(), {"facusync_sync", "facusync_nocodb"})
    assert not kept.pg_sync_role_password


def test_the_sync_roles_password_is_pg_password_when_pg_user_names_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The env file names the daemons' role and password once; --create-roles uses them."""
    monkeypatch.setattr(command.sys.stdin, "isatty", lambda: False)
    same = cfg(PG_USER="facusync_sync", PG_PASSWORD="the-daemons-password",
               PG_NOCODB_ROLE_PASSWORD="nocodb-from-the-env")
    assert role_specs(same)[0].password.reveal() == "the-daemons-password"
    command._with_passwords(same, set())  # nothing missing
    other = cfg(PG_USER="postgres", PG_PASSWORD="the-superusers-password")
    assert not role_specs(other)[0].password
