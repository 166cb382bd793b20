"""The admin connection of `facusync migrate --admin`: PostgreSQL's superuser, as Debian sets
it up, without a password.

Debian's PostgreSQL lets the role ``postgres`` in only by peer authentication over the local
socket: the operating-system user running the client must be ``postgres``. That user cannot
read the env file (it holds the other passwords), and root cannot log in as ``postgres``. So
``sudo facusync migrate --admin`` reads its configuration as root, then becomes the
operating-system user named PG_ADMIN_USER for good, as ``su postgres -c psql`` would, before
it connects. With PG_ADMIN_PASSWORD set (a remote or password-only server), it connects to
PG_ADMIN_HOST with that password instead and changes no user.
"""

from __future__ import annotations

import getpass
import os
import pwd
import sys

import psycopg2
import psycopg2.extensions

from facusync.config import Config, Secret
from facusync.errors import AccessError, SinkError
from facusync.pgconn import describe_pg_error


def _is_socket_dir(host: str) -> bool:
    return host.startswith("/")


def become(user: str) -> None:
    """Run as the operating-system user `user` from now on (root only; irreversible)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise AccessError(
            f"peer authentication as PostgreSQL role {user} needs an operating-system user "
            f"{user}, and there is none: set PG_ADMIN_USER to the superuser's name, or "
            "PG_ADMIN_PASSWORD to log in with a password") from None
    if os.geteuid() == entry.pw_uid:
        return
    if os.geteuid() != 0:
        raise AccessError(
            f"peer authentication as PostgreSQL role {user} works only for the operating-system "
            f"user {user}: run `sudo facusync migrate --admin ...` (as root it becomes {user} "
            "to connect), or set PG_ADMIN_PASSWORD")
    os.initgroups(user, entry.pw_gid)
    os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
    os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
    os.environ["HOME"] = entry.pw_dir  # libpq looks for ~/.pgpass there, not in root's home


def _password(cfg: Config) -> Secret:
    if cfg.pg_admin_password or _is_socket_dir(cfg.pg_admin_host) or not sys.stdin.isatty():
        return cfg.pg_admin_password
    return Secret(getpass.getpass(f"password of PostgreSQL role {cfg.pg_admin_user} "
                                  f"on {cfg.pg_admin_host}: "))


def connect_admin(cfg: Config, *, application: str) -> psycopg2.extensions.connection:
    """A connection to PG_DATABASE as PG_ADMIN_USER (peer or password, see the module)."""
    password = _password(cfg)
    if not password and _is_socket_dir(cfg.pg_admin_host):
        become(cfg.pg_admin_user)
    try:
        return psycopg2.connect(
            host=cfg.pg_admin_host,
            port=cfg.pg_port,
            dbname=cfg.pg_database,
            user=cfg.pg_admin_user,
            password=password.reveal() or None,
            connect_timeout=cfg.pg_connect_timeout,
            application_name=application,
        )
    except psycopg2.Error as exc:
        cause = describe_pg_error(exc)
        if "authentication failed" in cause:
            cause = ("authentication failed: check PG_ADMIN_USER and PG_ADMIN_PASSWORD "
                     "(or leave PG_ADMIN_PASSWORD empty for peer authentication over "
                     "PG_ADMIN_HOST's socket)")
        raise SinkError(f"{cause} (admin connection as {cfg.pg_admin_user} "
                        f"via {cfg.pg_admin_host})") from None
