"""A real NocoDB for the acceptance test: the cached install, one process on loopback, its
metadata in a PostgreSQL database owned by a role of its own, and a small REST client.

NocoDB is installed by tests/nocodb/install.sh (`make test-nocodb` runs it) into a cache
outside the repository; FACUSYNC_NOCODB_HOME names that install.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from devstack.servers import PostgresServer, free_port

HERE = Path(__file__).resolve().parent


class NocoDBError(RuntimeError):
    """NocoDB did not start, or answered an API call with an error status."""

    def __init__(self, message: str, status: int = 0, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class NocoDB:
    """One NocoDB process; `start()` then `stop()` (safe twice). Records start time and memory."""

    def __init__(self, home: Path, pg: PostgresServer, workdir: Path) -> None:
        self.home = home
        self.pg = pg
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_email = "admin@facusync.test"
        self.admin_password = "Adm1n-" + secrets.token_urlsafe(12)
        self.meta_role = "nocodb_meta"
        self.meta_password = secrets.token_urlsafe(16)
        self.meta_db = "nocodb_meta"
        self.log_path = workdir / "nocodb.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0
        self.auth_token = ""  # xc-auth session of the admin

    def start(self, timeout: float = 120.0) -> NocoDB:
        # NocoDB keeps its metadata in a database its own role owns, apart from the data.
        self.pg.psql(f"CREATE ROLE {self.meta_role} LOGIN PASSWORD '{self.meta_password}'")
        self.pg.psql(f"CREATE DATABASE {self.meta_db} OWNER {self.meta_role}")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "NODE_PATH": str(self.home / "node_modules"),
            "NODE_ENV": "production",
            "PORT": str(self.port),
            "NC_DB": (f"pg://{self.pg.host}:{self.pg.port}?u={self.meta_role}"
                      f"&p={self.meta_password}&d={self.meta_db}"),
            "NC_AUTH_JWT_SECRET": secrets.token_urlsafe(32),
            "NC_ADMIN_EMAIL": self.admin_email,
            "NC_ADMIN_PASSWORD": self.admin_password,
            "NC_DISABLE_TELE": "true",
            "NC_DISABLE_ERR_REPORTS": "true",
            "TZ": "UTC",
        }
        # NocoDB reads its version from ./node_modules/nocodb and keeps uploads under ./nc:
        # run it in a scratch directory that links to the cached install.
        rundir = self.workdir / "nocodb-run"
        rundir.mkdir(exist_ok=True)
        if not (rundir / "node_modules").exists():
            (rundir / "node_modules").symlink_to(self.home / "node_modules")
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.home / "bin" / "node"), str(HERE / "server.js")], cwd=rundir,
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NocoDBError(f"NocoDB exited with {self.proc.returncode}: {self.log_tail()}")
            if b"NOCODB READY" in self.log_path.read_bytes():
                self.start_seconds = time.monotonic() - started
                self.auth_token = self.sign_in(self.admin_email, self.admin_password)
                return self
            time.sleep(0.1)
        self.stop()
        raise NocoDBError(f"NocoDB did not start within {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def rss_mb(self) -> float:
        """Resident memory of the NocoDB process, in MB."""
        if self.proc is None:
            return 0.0
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    # -- REST ---------------------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = None,
             anonymous: bool = False, check: bool = True) -> tuple[int, Any]:
        """One API call: with `token` as an API token (xc-token), else as the admin's session
        (xc-auth); `check` raises on an error status."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["xc-token"] = token
        elif not anonymous and self.auth_token:
            headers["xc-auth"] = self.auth_token
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = raw.decode(errors="replace")
        if check and status >= 300:
            raise NocoDBError(f"{method} {path} -> {status}: {answer}", status, answer)
        return status, answer

    def sign_in(self, email: str, password: str) -> str:
        _, answer = self.call("POST", "/api/v1/auth/user/signin",
                              {"email": email, "password": password}, anonymous=True)
        return str(answer["token"])

    def create_api_token(self, description: str) -> str:
        _, answer = self.call("POST", "/api/v1/tokens", {"description": description})
        return str(answer["token"])
