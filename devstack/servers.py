"""Throwaway PostgreSQL 15 and Redis 7 servers on free loopback ports, with passwords.

Used by the pytest fixtures, the demo and the benchmarks: real servers, never fakes. Each
server lives in its own temporary directory and is stopped by whoever started it.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from devstack.tlsca import KeyPair

PG_BIN = Path(os.environ.get("FACUSYNC_PG_BIN", "/usr/lib/postgresql/15/bin"))


def signal_processes(pids: list[int], signum: signal.Signals) -> list[int]:
    """Send `signum` to each process; one that has exited meanwhile (a backend whose client
    left) needs no signal and is skipped. Returns the pids that received it."""
    sent = []
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue
        sent.append(pid)
    return sent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts on 127.0.0.1:port (or fail clearly)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _as_postgres() -> tuple[list[str], int | None, int | None]:
    """initdb refuses root: when root, run PostgreSQL's tools as the postgres user."""
    if os.geteuid() != 0:
        return [], None, None
    pw = pwd.getpwnam("postgres")
    return ["runuser", "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid


class PostgresServer:
    """A private PostgreSQL cluster: password (scram) auth on 127.0.0.1 only.

    With `tls` it also speaks TLS (ssl=on, that certificate); `settings` adds server settings
    (ssl_min_protocol_version...); `client_ca` demands a client certificate signed by that CA;
    `tls_only` refuses every TCP connection that is not encrypted (pg_hba hostssl).
    """

    def __init__(self, *, durable: bool = False, port: int | None = None, tls: KeyPair | None = None,
                 settings: Mapping[str, str] | None = None, client_ca: Path | None = None,
                 tls_only: bool = False) -> None:
        self.durable = durable
        self.tls = tls
        self.tls_only = tls_only
        self.settings = dict(settings or {})
        self.client_ca = client_ca
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.user = "postgres"
        self.password = secrets.token_urlsafe(16)
        self.base = Path(tempfile.mkdtemp(prefix="facusync-pg-"))
        self.datadir = self.base / "data"
        self.logfile = self.base / "postgres.log"
        self._prefix, uid, gid = _as_postgres()
        if uid is not None and gid is not None:
            os.chown(self.base, uid, gid)

    def _run(self, *args: str) -> None:
        subprocess.run([*self._prefix, *args], check=True, capture_output=True, cwd=self.base)

    def start(self) -> PostgresServer:
        pwfile = self.base / "pw"
        pwfile.write_text(self.password)
        if self._prefix:
            shutil.chown(pwfile, "postgres")
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.datadir), "-U", self.user, "-E", "UTF8",
            "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
        )
        pwfile.unlink()
        self._install_tls()
        opts = [
            f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-k {self.base}",
            "-c max_connections=200", "-c shared_buffers=128MB", "-c timezone=UTC",
            *self._tls_options(),
        ]
        if not self.durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile), "-w",
            "-t", "60", "-o", " ".join(opts), "start",
        )
        return self

    def _install_tls(self) -> None:
        """Copy the certificate where the server user owns it (PostgreSQL refuses a shared key)."""
        if self.tls is None:
            return
        for source, name in ((self.tls.cert, "server.crt"), (self.tls.key, "server.key"),
                             (self.client_ca, "client-ca.crt")):
            if source is None:
                continue
            target = self.datadir / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            if self._prefix:
                shutil.chown(target, "postgres", "postgres")
        if self.client_ca is not None or self.tls_only:
            client_cert = " clientcert=verify-full" if self.client_ca is not None else ""
            hba = self.datadir / "pg_hba.conf"
            hba.write_text(f"local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256{client_cert}\n")

    def _tls_options(self) -> list[str]:
        if self.tls is None:
            return []
        opts = ["-c ssl=on", "-c ssl_cert_file=server.crt", "-c ssl_key_file=server.key"]
        if self.client_ca is not None:
            opts.append("-c ssl_ca_file=client-ca.crt")
        return opts + [f"-c {name}={value}" for name, value in self.settings.items()]

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; the data stays so that start_again() can bring it back."""
        if (self.datadir / "postmaster.pid").exists():
            subprocess.run(
                [*self._prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-m", mode,
                 "-w", "stop"],
                capture_output=True, cwd=self.base,
            )

    def start_again(self) -> None:
        """Restart a stopped server with the same data, port and password."""
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -c max_connections=200"
        opts = " ".join([opts, *self._tls_options()])
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off"
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile), "-w",
            "-t", "60", "-o", opts, "start",
        )

    def freeze(self) -> list[int]:
        """SIGSTOP the postmaster, then its children (backends, checkpointer, ...), as a paused
        VM would be: the postmaster first, so it forks nothing unfrozen meanwhile. Returns the
        pids to SIGCONT on thaw."""
        master = int((self.datadir / "postmaster.pid").read_text().split()[0])
        stopped = signal_processes([master], signal.SIGSTOP)
        children = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True,
                                  check=False).stdout.split()
        return stopped + signal_processes([int(pid) for pid in children], signal.SIGSTOP)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def dsn(self, database: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        return (
            f"host={self.host} port={self.port} dbname={database} "
            f"user={user or self.user} password={password or self.password}"
        )

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser through psql; returns its unaligned output."""
        env = {**os.environ, "PGPASSWORD": self.password}
        out = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.host,
             "-p", str(self.port), "-U", self.user, "-d", database, "-c", sql],
            check=True, capture_output=True, text=True, env=env,
        )
        return out.stdout.strip()


class RedisServer:
    """A private redis-server with requirepass; restartable with or without its data.

    With `tls` it also listens on `tls_port` with that certificate (plaintext stays on `port`
    for the fixtures' housekeeping unless `tls_only`); `tls_args` adds tls-* options, e.g.
    tls-protocols; `client_ca` demands client certificates signed by that CA.
    """

    def __init__(self, *, port: int | None = None, tls: KeyPair | None = None,
                 tls_args: tuple[str, ...] = (), client_ca: Path | None = None,
                 tls_only: bool = False) -> None:
        self.port = 0 if tls_only else port or free_port()
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.tls_args = tls_args
        self.client_ca = client_ca
        self.host = "127.0.0.1"
        self.password = secrets.token_urlsafe(16)
        self.base = Path(tempfile.mkdtemp(prefix="facusync-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.appendonly = False

    def start(self, *, appendonly: bool | None = None) -> RedisServer:
        if appendonly is not None:
            self.appendonly = appendonly
        args = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--requirepass", self.password, "--dir", str(self.base), "--save", "",
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
            "--daemonize", "no", "--logfile", str(self.base / "redis.log"),
            *self._tls_options(),
        ]
        # Own session: a Ctrl+C meant for the demo (or pytest) must not kill the server.
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        if self.port:
            wait_port(self.port, proc=self.proc)
        if self.tls_port is not None:
            wait_port(self.tls_port, proc=self.proc)
        return self

    def _tls_options(self) -> list[str]:
        if self.tls is None:
            return []
        ca = self.client_ca or self.tls.cert  # redis-server wants a CA file even without clients'
        auth = "yes" if self.client_ca else "no"
        return ["--tls-port", str(self.tls_port), "--tls-cert-file", str(self.tls.cert),
                "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(ca),
                "--tls-auth-clients", auth, *self.tls_args]

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, *, keep_data: bool) -> None:
        """Restart; keep_data=False simulates a Redis without persistence losing everything."""
        if keep_data:
            if not self.appendonly:
                raise ValueError("keep_data needs a server started with appendonly=True")
            self.stop()
            self.start()
        else:
            self.stop(kill=True)
            for f in self.base.glob("*"):
                if f.name != "redis.log":
                    if f.is_dir():
                        shutil.rmtree(f)
                    else:
                        f.unlink()
            self.start()

    def freeze(self) -> list[int]:
        """SIGSTOP the server's one process, if it runs (it then accepts connections and never
        answers). Returns the pids to SIGCONT on thaw."""
        running = [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []
        return signal_processes(running, signal.SIGSTOP)

    def destroy(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.base, ignore_errors=True)
