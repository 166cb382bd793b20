"""The .deb on a real systemd: install, configure, run, misbehave, purge.

One Debian 12 container (see conftest.py) goes through the steps below in file order, as an
administrator would; each step states what it proves. The servers run on the host's
loopback, which the container shares. Run with `make test-system`.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from devstack.servers import PostgresServer, RedisServer, free_port
from tests.system.conftest import DEB_DIR_IN_CONTAINER, REPO
from tests.system.nspawn import Container, wait_for

ENV_FILE = "/etc/facusync/facusync.env"
SERVICES = ("facusync-producer.service", "facusync-consumer.service")
UNITS = (*SERVICES, "facusync-reconcile.service", "facusync-reconcile.timer")
ROWS = 120
METRICS_PORTS = {"producer": free_port(), "consumer": free_port()}
# Faster than production so the test is quick: restarts after 1 s, and for the consumer a
# 5 s watchdog (the loop feeds it about every second, so it only fires on a real hang).
DROPINS = {
    "facusync-producer.service": "[Service]\nRestartSec=1\n",
    "facusync-consumer.service": "[Service]\nRestartSec=1\nWatchdogSec=5\n",
}


def render_env(example: str, values: dict[str, str]) -> str:
    """The example env file with our values in place of its active lines (and the rest
    appended), so the shipped file's format is what systemd parses in this test."""
    out, seen = [], set()
    for line in example.splitlines():
        key = line.split("=", 1)[0]
        if "=" in line and not line.startswith("#") and key in values:
            line = f"{key}={values[key]}"
            seen.add(key)
        out.append(line)
    out += [f"{k}={v}" for k, v in values.items() if k not in seen]
    return "\n".join(out) + "\n"


def env_values(pg: PostgresServer, rds: RedisServer, standin: Any) -> dict[str, str]:
    return {
        **standin.env(),
        "PG_HOST": pg.host, "PG_PORT": str(pg.port), "PG_DATABASE": "facusync",
        "PG_USER": pg.user, "PG_PASSWORD": pg.password,
        "REDIS_HOST": rds.host, "REDIS_PORT": str(rds.port), "REDIS_PASSWORD": rds.password,
        "SYNC_INTERVAL": "1",
        "METRICS_PRODUCER_PORT": str(METRICS_PORTS["producer"]),
        "METRICS_CONSUMER_PORT": str(METRICS_PORTS["consumer"]),
    }


def pg_count(pg: PostgresServer) -> int:
    conn = psycopg2.connect(pg.dsn("facusync"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM datos_vista")
            row = cur.fetchone()
            return int(row[0]) if row else 0
    finally:
        conn.close()


def start(box: Container, *units: str) -> None:
    """Start units after clearing the failed state and start-limit counters of earlier steps."""
    box.run("systemctl", "reset-failed", *units, check=False)
    box.run("systemctl", "start", *units, timeout=120)


def wait_active(box: Container, unit: str, timeout: float = 30) -> dict[str, str]:
    def probe() -> dict[str, str] | None:
        props = box.show(unit, "ActiveState", "SubState", "MainPID", "NRestarts")
        return props if props["ActiveState"] == "active" and props["MainPID"] != "0" else None

    return wait_for(f"{unit} active", probe, timeout,
                    detail=lambda: box.show(unit, "ActiveState", "SubState", "Result"))


def journal(box: Container, *args: str) -> str:
    return box.run("journalctl", "--no-pager", *args, timeout=30).stdout


# -- install ------------------------------------------------------------------------------

def test_install_enables_the_units_but_starts_none(box: Container, deb_path: Path) -> None:
    box.run("apt-get", "install", "-y", f"{DEB_DIR_IN_CONTAINER}/{deb_path.name}",
            env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=300)
    for unit in (*SERVICES, "facusync-reconcile.timer"):
        assert box.run("systemctl", "is-enabled", unit).stdout.strip() == "enabled"
        assert box.run("systemctl", "is-active", unit, check=False).stdout.strip() == "inactive"
    for drop_unit, text in DROPINS.items():
        box.write(f"/etc/systemd/system/{drop_unit}.d/50-test.conf", text)
    box.run("systemctl", "daemon-reload")


def test_env_file_is_a_protected_conffile(box: Container) -> None:
    assert box.run("stat", "-c", "%a %U %G", ENV_FILE).stdout.split() == ["640", "root", "_facusync"]
    assert ENV_FILE in box.run("dpkg-query", "-W", "-f=${Conffiles}", "facusync").stdout
    user = box.run("getent", "passwd", "_facusync").stdout.split(":")
    assert user[5:7] == ["/nonexistent", "/usr/sbin/nologin\n"]
    files = box.run("dpkg", "-L", "facusync").stdout.split()
    for page in ("facusync.1.gz", "facusync-producer.1.gz", "facusync-consumer.1.gz"):
        assert f"/usr/share/man/man1/{page}" in files
    assert "/usr/share/facusync/sql/001_schema.sql" in files
    assert "/usr/share/doc/facusync/README.md.gz" in files


def test_units_pass_systemd_analyze_verify(box: Container) -> None:
    # --man=no: the minimal root has no man-db; the man pages' presence is checked above.
    res = box.run("systemd-analyze", "verify", "--man=no", *UNITS, check=False)
    assert (res.returncode, res.stdout + res.stderr) == (0, "")


@pytest.mark.parametrize("unit", [*SERVICES, "facusync-reconcile.service"])
def test_exposure_meets_the_target(box: Container, unit: str) -> None:
    out = box.run("systemd-analyze", "security", "--no-pager", unit).stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out)
    assert match, out[-500:]
    assert float(match.group(1)) <= 2.0, out


def test_placeholder_env_file_fails_fast_with_78_and_no_restart(box: Container) -> None:
    unit = "facusync-producer.service"
    res = box.run("systemctl", "start", unit, check=False, timeout=60)
    assert res.returncode != 0
    time.sleep(3)  # three RestartSec periods: a restart loop would show by now
    props = box.show(unit, "ActiveState", "ExecMainStatus", "NRestarts", "Result")
    assert props == {"ActiveState": "failed", "ExecMainStatus": "78", "NRestarts": "0",
                     "Result": "exit-code"}
    text = journal(box, "-u", unit, "-o", "cat")
    assert f"edit {ENV_FILE}" in text and "CHANGE_ME" in text


# -- configure, migrate, run ----------------------------------------------------------------

def test_configure_and_migrate(box: Container, pg: PostgresServer, rds: RedisServer,
                               standin: Any) -> None:
    text = render_env((REPO / "facusync.env.example").read_text(), env_values(pg, rds, standin))
    assert not [ln for ln in text.splitlines() if "CHANGE_ME" in ln and not ln.startswith("#")]
    box.write(ENV_FILE, text)  # keeps mode 0640 root:_facusync
    assert box.run("stat", "-c", "%a %U %G", ENV_FILE).stdout.split() == ["640", "root", "_facusync"]
    # The admin command reads the services' env file by default.
    out = box.run("facusync", "migrate", timeout=120).stdout
    assert "schema is up to date" in out
    # The service user can read its configuration (the group bit), e.g. for `facusync check`.
    box.run("runuser", "-u", "_facusync", "--", "facusync", "check", timeout=60)


def test_rows_flow_from_the_view_into_postgresql(box: Container, pg: PostgresServer,
                                                  standin: Any) -> None:
    standin.seed(ROWS)
    start(box, *SERVICES)
    for unit in SERVICES:
        wait_active(box, unit)
    wait_for(f"{ROWS} rows in datos_vista", lambda: pg_count(pg) == ROWS, timeout=90,
             detail=lambda: pg_count(pg))
    standin.insert([{"CONDUCE": "SYS-TEST-1", "CLIENTE": "system test"}])
    wait_for("the new row in datos_vista", lambda: pg_count(pg) == ROWS + 1, timeout=60)


def test_systemctl_status_shows_the_status_line(box: Container) -> None:
    for unit in SERVICES:
        def has_status(u: str = unit) -> str | None:
            out = box.run("systemctl", "status", "--no-pager", u, check=False).stdout
            return out if re.search(r'^\s+Status: ".+"$', out, re.M) else None

        out = wait_for(f"{unit} STATUS line", has_status, timeout=30)
        assert "Active: active (running)" in str(out)
    # The admin's view of the same, from the default env file.
    status = json.loads(box.run("facusync", "status", "--json", timeout=60).stdout)
    assert status["postgresql"]["rows"] == ROWS + 1


def test_metrics_endpoints_answer_from_the_sandboxed_services(box: Container, pg: PostgresServer) -> None:
    """The units' sandbox lets each daemon serve its metrics port (127.0.0.1 by default)."""
    for daemon, port in METRICS_PORTS.items():
        text = box.run("python3", "-c", "import sys, urllib.request; sys.stdout.write(urllib.request"
                       f".urlopen('http://127.0.0.1:{port}/metrics', timeout=10).read().decode())",
                       timeout=30).stdout
        assert f'facusync_ready{{daemon="{daemon}"}} 1.0' in text
    files = box.run("dpkg", "-L", "facusync").stdout.split()
    for example in ("facusync-alerts.yml", "facusync-alerts.test.yml", "prometheus.yml"):
        assert f"/usr/share/doc/facusync/examples/{example}" in files
    inserted = re.search(r'^facusync_consumer_rows_total\{result="inserted"\} (\S+)$', text, re.M)
    assert inserted and float(inserted.group(1)) == pg_count(pg) == ROWS + 1


def test_journal_holds_json_lines(box: Container) -> None:
    for unit in SERVICES:
        invocation = box.show(unit, "InvocationID")["InvocationID"]
        lines = journal(box, f"_SYSTEMD_UNIT={unit}", f"_SYSTEMD_INVOCATION_ID={invocation}",
                        "-o", "cat").splitlines()
        assert lines, f"no journal lines from {unit}"
        records = [json.loads(line) for line in lines]
        assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)


# -- misbehaviour -------------------------------------------------------------------------

def test_frozen_service_is_killed_by_the_watchdog_and_restarted(
        box: Container, pg: PostgresServer, standin: Any) -> None:
    unit = "facusync-consumer.service"
    before = wait_active(box, unit)
    box.run("systemctl", "kill", "--kill-who=main", "--signal=SIGSTOP", unit)

    def restarted() -> dict[str, str] | None:
        props = box.show(unit, "ActiveState", "MainPID", "NRestarts")
        ok = (int(props["NRestarts"]) > int(before["NRestarts"])
              and props["MainPID"] not in ("0", before["MainPID"])
              and props["ActiveState"] == "active")
        return props if ok else None

    wait_for("watchdog restart", restarted, timeout=40,
             detail=lambda: box.show(unit, "ActiveState", "SubState", "MainPID", "NRestarts",
                                     "Result"))
    wait_for("the watchdog in the journal",
             lambda: "Watchdog timeout" in journal(box, "-u", unit, "-o", "cat"), timeout=10)
    count = pg_count(pg)
    standin.insert([{"CONDUCE": "SYS-TEST-2", "CLIENTE": "after the watchdog"}])
    wait_for("a row after the restart", lambda: pg_count(pg) == count + 1, timeout=60)


def test_bad_env_file_exits_78_without_a_restart_loop(box: Container) -> None:
    unit = "facusync-producer.service"
    good = box.run("cat", ENV_FILE).stdout
    box.write(ENV_FILE, re.sub(r"(?m)^BATCH_SIZE=.*$", "BATCH_SIZE=0", good))
    try:
        res = box.run("systemctl", "restart", unit, check=False, timeout=60)
        assert res.returncode != 0
        time.sleep(3)
        props = box.show(unit, "ActiveState", "ExecMainStatus", "NRestarts")
        assert props == {"ActiveState": "failed", "ExecMainStatus": "78", "NRestarts": "0"}
        assert "BATCH_SIZE=0 is out of range" in journal(box, "-u", unit, "-o", "cat", "-n", "30")
    finally:
        box.write(ENV_FILE, good)
    start(box, unit)
    wait_active(box, unit)


def test_sigterm_stops_cleanly_within_the_timeout(box: Container) -> None:
    for unit in SERVICES:
        wait_active(box, unit)
        timeout_s = int(box.show(unit, "TimeoutStopUSec")["TimeoutStopUSec"].rstrip("s"))
        began = time.monotonic()
        box.run("systemctl", "stop", unit, timeout=timeout_s + 30)
        took = time.monotonic() - began
        props = box.show(unit, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
        assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainCode": "1",
                         "ExecMainStatus": "0"}, props
        assert took < timeout_s, f"{unit} took {took:.1f}s to stop"
        assert "stop requested" in journal(box, "-u", unit, "-o", "cat", "-n", "20")


def test_reconcile_runs_as_a_oneshot_from_its_timer(box: Container) -> None:
    start(box, "facusync-reconcile.timer")
    assert "facusync-reconcile.timer" in box.run("systemctl", "list-timers", "--all",
                                                 "--no-pager").stdout
    res = box.run("systemctl", "start", "facusync-reconcile.service", check=False, timeout=300)
    props = box.show("facusync-reconcile.service", "Result", "ExecMainStatus")
    assert (res.returncode, props) == (0, {"Result": "success", "ExecMainStatus": "0"}), \
        journal(box, "-u", "facusync-reconcile.service", "-o", "cat", "-n", "30")


# -- upgrade and uninstall ----------------------------------------------------------------

def test_upgrade_keeps_the_config_and_restarts_running_services(box: Container,
                                                                deb_path: Path) -> None:
    start(box, *SERVICES)
    before = {u: wait_active(box, u)["MainPID"] for u in SERVICES}
    config = box.run("sha256sum", ENV_FILE).stdout
    box.run("apt-get", "install", "--reinstall", "-y", f"{DEB_DIR_IN_CONTAINER}/{deb_path.name}",
            env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=300)
    assert box.run("sha256sum", ENV_FILE).stdout == config
    assert box.run("stat", "-c", "%a %U %G", ENV_FILE).stdout.split() == ["640", "root", "_facusync"]
    for unit, pid in before.items():
        assert wait_active(box, unit)["MainPID"] != pid, f"{unit} was not restarted"


# -- uninstall ----------------------------------------------------------------------------

def test_purge_removes_everything(box: Container) -> None:
    start(box, *SERVICES)  # running: the removal must stop them
    for drop_unit in DROPINS:  # ours, not the package's
        box.run("rm", "-r", f"/etc/systemd/system/{drop_unit}.d")
    purge = box.run("apt-get", "purge", "-y", "facusync",
                    env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=300)
    assert "crontab" not in purge.stdout + purge.stderr  # deluser's warning without cron
    for unit in UNITS:
        assert box.run("systemctl", "is-active", unit, check=False).stdout.strip() != "active"
    assert box.run("getent", "passwd", "_facusync", check=False).returncode == 2
    assert box.run("getent", "group", "_facusync", check=False).returncode == 2
    assert box.run("dpkg-statoverride", "--list", ENV_FILE, check=False).returncode != 0
    left = box.run("find", "/etc", "/lib/systemd", "/usr", "/var/lib/systemd", "-xdev",
                   "-name", "*facusync*").stdout.split()
    assert left == []
