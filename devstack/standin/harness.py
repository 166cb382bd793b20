"""StandIn: start/stop the stand-in server process, point clients at it, set its faults.

Tests, benchmarks and the demo drive the stand-in through this class; the data it
inherits from ``data.ViewData`` is changed straight in the SQLite file the process serves.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any

from . import schema
from .data import ViewData

REPO_ROOT = Path(__file__).resolve().parents[2]


def local_timezone() -> str:
    """The zone of this machine's wall clock, which the stand-in's GETDATE() follows (for
    SOURCE_TIMEZONE in demos and benchmarks)."""
    from zoneinfo import ZoneInfo

    candidates = [os.environ.get("TZ", "").lstrip(":")]
    with suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text().strip())
    with suppress(OSError):
        candidates.append(os.readlink("/etc/localtime").partition("zoneinfo/")[2])
    for name in candidates:
        if name:
            try:
                ZoneInfo(name)
            except (ValueError, OSError):
                continue
            return name
    return "UTC"


class StandIn(ViewData):
    """A stand-in SQL Server process plus direct access to its data (``ViewData``).

    Usable as a context manager; ``stop()`` is safe to call twice.
    """

    def __init__(
        self,
        workdir: Path | str,
        *,
        user: str = "facusync_ro",
        password: str | None = None,
        database: str = "g_FACU",
        host: str = "127.0.0.1",
        port: int = 0,
        packet_size: int | None = None,
        log_level: str = "INFO",
        encryption: str = "not_sup",
        certificate: tuple[Path, Path] | None = None,
        tls_versions: tuple[str, str] = ("1.2", "1.2"),
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(self.workdir / "standin.sqlite3")
        self.control_path = self.workdir / "standin-control.json"
        self.port_file = self.workdir / "standin.port"
        self.log_path = self.workdir / "standin.log"
        self.user = user
        # A fresh password per stand-in, as a real server would have its own.
        self.password = password or secrets.token_urlsafe(12)
        self.database = database
        self.host = host
        self.port = port
        self.packet_size = packet_size
        self.log_level = log_level
        # TLS: SQL Server's encryption setting ("not_sup", "off", "on"), the (cert, key)
        # files, and the lowest and highest TLS version the server accepts.
        self.encryption = encryption
        self.certificate = certificate
        self.tls_versions = tls_versions
        self.process: subprocess.Popen[bytes] | None = None

    # -- process ------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        """Spawn ``python -m devstack.standin serve`` and wait until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        self.port_file.unlink(missing_ok=True)
        self.control_path.unlink(missing_ok=True)
        self.clear_faults()
        cmd = [
            sys.executable, "-m", "devstack.standin", "serve",
            "--host", self.host, "--port", str(self.port), "--port-file", str(self.port_file),
            "--db", str(self.db_path), "--user", self.user, "--database", self.database,
            "--control", str(self.control_path), "--log-level", self.log_level,
        ]
        if self.packet_size:
            cmd += ["--packet-size", str(self.packet_size)]
        cmd += ["--encryption", self.encryption, "--tls-min", self.tls_versions[0],
                "--tls-max", self.tls_versions[1]]
        if self.certificate is not None:
            cmd += ["--cert", str(self.certificate[0]), "--key", str(self.certificate[1])]
        env = dict(os.environ)
        env["STANDIN_PASSWORD"] = self.password  # not on the command line (ps shows it)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        with open(self.log_path, "ab") as log:
            # Own session: a Ctrl+C meant for the demo (or pytest) must not kill the server.
            self.process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"stand-in exited with {self.process.returncode}; see {self.log_path}")
            if self.port_file.exists():
                self.port = int(self.port_file.read_text())
                try:
                    socket.create_connection((self.host, self.port), timeout=1).close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"stand-in did not start within {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        """Terminate the server process (kill if it lingers); safe to call twice."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (open connections see a reset)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=5)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> StandIn:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def connect_kwargs(self, **extra: Any) -> dict[str, Any]:
        """Arguments for ``pymssql.connect(**kwargs)``."""
        kwargs: dict[str, Any] = {"server": self.host, "port": self.port, "user": self.user,
                                  "password": self.password, "database": self.database}
        kwargs.update(extra)
        return kwargs

    def env(self, view: str = schema.VIEW) -> dict[str, str]:
        """facusync's MSSQL_* environment variables pointing at this stand-in."""
        return {"MSSQL_HOST": self.host, "MSSQL_PORT": str(self.port), "MSSQL_USER": self.user,
                "MSSQL_PASSWORD": self.password, "MSSQL_DATABASE": self.database, "MSSQL_VIEW": view}

    # -- faults ---------------------------------------------------------------

    def set_fault(self, *, refuse_logins: bool = False, delay: float = 0.0,
                  drop_after_rows: int | None = None, hang: bool = False,
                  clock_offset: float = 0.0) -> None:
        """Misbehave for new logins/queries, until changed or cleared.

        - ``refuse_logins``: logins fail with error 18456 (pymssql: OperationalError);
        - ``delay``: wait that many seconds before answering each login and batch;
        - ``drop_after_rows=N``: reset the connection once the N-th row of a result was
          sent (N=0: right after the column metadata); smaller results complete normally;
        - ``hang``: stop answering (the socket stays open); with ``drop_after_rows`` the
          stall starts after N rows instead of the reset. Clearing it resumes the answer;
        - ``clock_offset``: seconds added to the server's clock (GETDATE(), SYSDATETIME()...),
          e.g. -3600 for the repeated hour of a daylight-saving change.
        """
        data = self._control()
        data.update({"refuse_logins": refuse_logins, "delay": delay,
                     "drop_after_rows": drop_after_rows, "hang": hang,
                     "clock_offset": clock_offset})
        self._write_control(data)

    def _control(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.control_path.read_text() or "{}"))
        except FileNotFoundError:
            return {}

    def _write_control(self, data: dict[str, Any]) -> None:
        tmp = self.control_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.control_path)  # a new inode: the server notices at once

    def clear_faults(self) -> None:
        self.set_fault()

    def set_slow_reads(self, seconds: float) -> None:
        """Answer every batch that reads rows only after ``seconds`` (0: at once again);
        independent of set_fault/clear_faults."""
        data = self._control()
        data["slow_reads"] = seconds
        self._write_control(data)

    def rename_column(self, column: str, shown_as: str | None) -> None:
        """Show a view column under another name (the ERP team renamed it), or under its own
        again with ``None``. Only the server's answers change: queries naming the old name get
        SQL Server's error 207, and the data, the harness and the workload stay as they are."""
        data = self._control()
        renamed = dict(data.get("rename_columns") or {})
        if shown_as is None:
            renamed.pop(column.upper(), None)
        else:
            renamed[column.upper()] = shown_as
        data["rename_columns"] = renamed
        self._write_control(data)
