"""Boot a throw-away copy of the cached Debian 12 root with systemd-nspawn and run commands in it.

There is no host systemd and no machined here, so nothing is registered: the container is
found through the PID of its systemd (the child of the nspawn process) and entered with
``nsenter --all``. Each container gets cgroup directories of its own (systemd and unified
hierarchies, or the single v2 tree), named after the owning test process, so two containers
never manage the same tree and a run killed half-way is cleaned up by the next one.
Every wait has a timeout; ``destroy()`` always leaves no process, cgroup or copy behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

CGROUP_FS = Path("/sys/fs/cgroup")
WORK_PARENT = Path("/var/tmp")
NAME_PREFIX = "facusync-test-"
T = TypeVar("T")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The root has Debian's PostgreSQL and Redis (for the README walkthrough). In a container that
# shares the host's network they must not start: they would take the host's ports.
HOST_NETWORK_MASKS = ("postgresql.service", "postgresql@15-main.service", "redis-server.service")


class ContainerError(RuntimeError):
    """The container did not boot, or a command in it failed."""


def cgroup_roots() -> list[Path]:
    """Where a container's own cgroup directories go: v2 alone, or v1 name=systemd plus v2."""
    if (CGROUP_FS / "cgroup.controllers").exists():
        return [CGROUP_FS]
    roots = [CGROUP_FS / "systemd", CGROUP_FS / "unified"]
    return [r for r in roots if (r / "cgroup.procs").exists()]


def _tree_pids(top: Path) -> set[int]:
    pids: set[int] = set()
    for procs in top.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in procs.read_text().split())
    return pids


def _remove_cgroup(top: Path, timeout: float = 10.0) -> None:
    """Kill what is left in a cgroup tree and remove its directories, deepest first."""
    deadline = time.monotonic() + timeout
    while top.exists():
        for pid in _tree_pids(top):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        dirs = sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: len(d.parts),
                      reverse=True)
        for d in [*dirs, top]:
            with contextlib.suppress(OSError):
                d.rmdir()
        if not top.exists():
            return
        if time.monotonic() > deadline:
            raise ContainerError(f"cannot remove cgroup {top}: processes {_tree_pids(top)}")
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> None:
    """Remove containers left by test processes that died without cleaning up."""
    for root in cgroup_roots():
        for top in root.glob(NAME_PREFIX + "*"):
            owner = top.name[len(NAME_PREFIX):].split("-")[0]
            if owner.isdigit() and not _alive(int(owner)):
                _remove_cgroup(top)
    for work in WORK_PARENT.glob(NAME_PREFIX + "*"):
        owner = work.name[len(NAME_PREFIX):].split("-")[0]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(work, ignore_errors=True)


class Container:
    """One booted container: a private copy of the image, its nspawn process and cgroups."""

    _count = 0

    def __init__(self, image: Path, *, binds_ro: Mapping[Path, str] | None = None,
                 binds: Mapping[Path, str] | None = None, private_network: bool = False) -> None:
        Container._count += 1
        self.image = image
        self.name = f"{NAME_PREFIX}{os.getpid()}-{Container._count}"
        self.binds_ro = dict(binds_ro or {})
        self.binds = dict(binds or {})
        # Its own network namespace (loopback only): its servers use Debian's default ports.
        self.private_network = private_network
        self.workdir = Path(tempfile.mkdtemp(prefix=self.name + "-", dir=WORK_PARENT))
        self.root = self.workdir / "root"
        self.console = self.workdir / "console.log"
        self.cgroups = [r / self.name for r in cgroup_roots()]
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid = 0  # the container's systemd, as seen from the host

    # -- life cycle ---------------------------------------------------------------------

    def boot(self, timeout: float = 90.0) -> None:
        """Copy the image, start systemd in it and wait until the boot has finished."""
        subprocess.run(["cp", "-a", "--reflink=auto", str(self.image), str(self.root)],
                       check=True, timeout=300)
        for d in self.cgroups:
            d.mkdir()
        procs = [d / "cgroup.procs" for d in self.cgroups]

        def enter_own_cgroups() -> None:  # runs in the child, just before exec
            for p in procs:
                p.write_text(str(os.getpid()))

        cmd = ["systemd-nspawn", "--register=no", "--keep-unit", "--console=read-only", "--boot",
               f"--directory={self.root}", f"--machine={self.name}", "--hostname=facusync-test"]
        cmd += [f"--bind-ro={src}:{dst}" for src, dst in self.binds_ro.items()]
        cmd += [f"--bind={src}:{dst}" for src, dst in self.binds.items()]
        if self.private_network:
            cmd.append("--private-network")
        else:  # arguments for the container's systemd, as on a kernel command line
            cmd += [f"systemd.mask={unit}" for unit in HOST_NETWORK_MASKS]
        with open(self.console, "wb") as out:
            self.nspawn = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT, preexec_fn=enter_own_cgroups,
                                           start_new_session=True)
        deadline = time.monotonic() + timeout
        self.pid = self._find_init(deadline)
        state = ""
        while time.monotonic() < deadline:
            left = max(1.0, deadline - time.monotonic())
            res = self.run("systemctl", "is-system-running", "--wait", check=False,
                           timeout=left)
            state = res.stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.2)
        raise ContainerError(f"boot did not finish within {timeout}s (state {state!r}); "
                             f"console:\n{self.console_tail()}")

    def _find_init(self, deadline: float) -> int:
        assert self.nspawn is not None
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited with {self.nspawn.returncode}:\n"
                                     f"{self.console_tail()}")
            for child in _children(self.nspawn.pid):
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return child
            time.sleep(0.05)
        raise ContainerError(f"no systemd started in the container:\n{self.console_tail()}")

    def shutdown(self, timeout: float = 30.0) -> None:
        """Power off cleanly (so the services get their SIGTERM); kill after the timeout."""
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        with contextlib.suppress(ContainerError, subprocess.TimeoutExpired):
            self.run("systemctl", "poweroff", "--no-block", check=False, timeout=10)
        try:
            self.nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            self.nspawn.kill()
            self.nspawn.wait(10)

    def destroy(self) -> None:
        """Stop everything and remove the copy and the cgroups; safe to call twice."""
        try:
            self.shutdown()
        finally:
            if self.nspawn is not None and self.nspawn.poll() is None:
                self.nspawn.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.nspawn.wait(10)
            for d in self.cgroups:
                _remove_cgroup(d)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- commands -----------------------------------------------------------------------

    def run(self, *cmd: str, check: bool = True, timeout: float = 60.0, input: str | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (as root) and capture its output."""
        if not self.pid:
            raise ContainerError("container not booted")
        envs = [f"{k}={v}" for k, v in {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root",
                                          "TERM": "dumb", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0",
                                          **(env or {})}.items()]
        full = ["nsenter", f"--target={self.pid}", "--all", "--", "env", "-i", *envs, *cmd]
        res = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise ContainerError(f"{' '.join(cmd)} exited with {res.returncode}\n"
                                 f"stdout: {res.stdout[-3000:]}\nstderr: {res.stderr[-3000:]}")
        return res

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run a shell snippet (set -e) inside the container."""
        return self.run("sh", "-ec", script, **kwargs)  # type: ignore[arg-type]

    def write(self, path: str, text: str) -> None:
        """Write a file in the container through stdin (secrets never reach a command line);
        an existing file keeps its owner and mode."""
        self.run("sh", "-ec", 'mkdir -p "$(dirname "$1")"; cat > "$1"', "sh", path, input=text)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """`systemctl show` properties of a unit as a dict."""
        out = self.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def destroy_showing_journal(self) -> None:
        """destroy(), after printing the facusync units' journal (what a failure needs)."""
        try:
            if self.pid and self.nspawn and self.nspawn.poll() is None:
                logs = self.run("journalctl", "--no-pager", "-n", "150", "-u", "facusync*",
                                check=False, timeout=20)
                print("--- journal of the facusync units ---\n" + logs.stdout)
        except Exception as exc:  # diagnostics only; the teardown below matters
            print(f"(journal not available: {exc})")
        finally:
            self.destroy()

    def console_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _children(pid: int) -> Iterator[int]:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                yield int(stat.parent.name)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.25,
             detail: Callable[[], object] | None = None) -> T:
    """Poll ``probe()`` until it returns something truthy; fail naming ``what`` (and showing
    ``detail()``, the state that was wrong)."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            shown = detail() if detail else last
            raise TimeoutError(f"{what}: not reached within {timeout}s (last: {shown!r})")
        time.sleep(interval)


__all__: Sequence[str] = ("Container", "ContainerError", "cleanup_stale", "wait_for")
