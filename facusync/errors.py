"""Our own exception types and sysexits codes, so every boundary failure reaches the operator
as one actionable sentence and systemd can tell "retry" from "never going to start"."""

from __future__ import annotations

# sysexits.h: systemd's RestartPreventExitStatus=78 stops restart loops on bad config.
EX_OK = 0
EX_DECLINED = 1  # an operator command that did nothing: cancelled, or nothing by that name
# For monitoring: `status` degraded, `verify` found differences, a `nocodb-setup` check failed.
EX_DEGRADED = 1
EX_DOWN = 2  # `status`: the sync is down; `verify`: it could not compare
EX_REFUSED = 3  # `reconcile` refused to tombstone that many rows (the mass-delete guard)
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78
EX_INTERRUPTED = 130  # Ctrl+C, as a shell reports a process ended by SIGINT


class FacusyncError(Exception):
    """Base of every error we raise on purpose; its message is meant for an operator."""

    exit_code = EX_SOFTWARE


class ConfigError(FacusyncError):
    """The configuration cannot work; restarting will not help."""

    exit_code = EX_CONFIG

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" (edit {source})" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration{where}:\n{lines}")


class AccessError(FacusyncError):
    """The person or process running facusync may not do what it needs (read the env file,
    log in by peer authentication): fixed by running it as another user, not by editing."""

    exit_code = EX_NOPERM


class UnavailableError(FacusyncError):
    """A server we need did not answer or refused us; it may come back."""

    exit_code = EX_UNAVAILABLE

    def __init__(self, target: str, cause: str) -> None:
        self.target = target
        self.cause = cause
        super().__init__(f"{target}: {cause}")


class SourceError(UnavailableError):
    """SQL Server failed (unreachable, login refused, query error or timeout)."""

    def __init__(self, cause: str) -> None:
        super().__init__("SQL Server", cause)


class QueueError(UnavailableError):
    """Redis failed (unreachable, authentication, out of memory)."""

    def __init__(self, cause: str) -> None:
        super().__init__("Redis", cause)


class SinkError(UnavailableError):
    """PostgreSQL failed (unreachable, authentication, missing schema)."""

    def __init__(self, cause: str) -> None:
        super().__init__("PostgreSQL", cause)


class StateReadError(UnavailableError):
    """PostgreSQL failed while a daemon read the sync's state from it (the producer reading
    the committed low-water mark in sync_control), not while writing rows (SinkError)."""

    def __init__(self, cause: str) -> None:
        super().__init__("PostgreSQL", cause)


class SchemaError(FacusyncError):
    """The source view or the target tables do not have what the sync needs."""

    exit_code = EX_CONFIG


class UsageError(FacusyncError):
    """A command-line argument is wrong."""

    exit_code = EX_USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)
