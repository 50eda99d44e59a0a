"""Four host processes on one PostgreSQL schema: the fleet's status tells the truth in every direction (a host
stops a plugin, a host fails it and recovers, a host is killed with SIGKILL and expires), a normal start logs
no warning, an operator's disable is acknowledged by every live host (and one that does not is named), and a
disable made after a silent outage (traffic dropped without a reset) reaches every host.

Each host is a real process (tests/integration/_fleet_host.py) with in-process plugins; the operator is this
test, through the CLI and a registry of its own.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _pg import Proxy, wait_for

from plugin_pool import PluginState
from plugin_pool.cli import main
from plugin_pool.registry import EventKind, HostLiveness
from plugin_pool.registry.postgres import PostgresPluginRegistry

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

S = PluginState
HOST_SCRIPT = Path(__file__).with_name("_fleet_host.py")
OPERATOR = "ops/alice"


class FleetHost:
    """One host process: send a command, read its answer; its stderr (JSON log lines) is collected."""

    def __init__(self, name: str, config: Path, env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(HOST_SCRIPT), str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        ready = self._line(timeout_s=60)
        assert ready == f"ready {name}", f"host {name} did not start: {ready!r}; log: {self.log}"

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def _line(self, timeout_s: float = 30) -> str:
        assert self.proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout_s)
        assert result, f"host {self.name} did not answer in {timeout_s} s; log: {self.log}"
        return result[0].strip()

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._line()

    def warnings(self) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in list(self.log) if line.startswith("{")]
        assert all("level" in r for r in records), records
        return [r for r in records if r["level"] in ("WARNING", "ERROR", "CRITICAL")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask("quit")
            except (AssertionError, OSError):
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass


@pytest.fixture
def fleet(server: str, schema: str, tmp_path: Path) -> Iterator[Callable[..., list[FleetHost]]]:
    """``fleet(n, dsn=..., heartbeat_s=...)``: n host processes on the test schema (migrated), named fleet-1..n."""
    started: list[FleetHost] = []

    def start(n: int = 4, *, dsn: str = server, heartbeat_s: float = 0.2, **registry: Any) -> list[FleetHost]:
        settings = {
            "backend": "postgres",
            "dsn": dsn,
            "schema": schema,
            "migrate_on_start": True,
            "heartbeat_s": heartbeat_s,
            "timeout_s": 1.0,
            "retry_max_s": 0.5,
            **registry,
        }
        hosts = []
        for i in range(1, n + 1):
            name = f"fleet-{i}"
            config = tmp_path / f"{name}.toml"
            lines = [f'[host]\nid = "{name}"\nactor = "{name}"\n', "[registry]"]
            lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
            config.write_text("\n".join(lines) + "\n")
            env = {**os.environ, "FLAKY_FLAG": str(tmp_path / f"{name}.fail"), "HOST_NAME": name}
            env.pop("PLUGIN_POOL_REGISTRY_DSN", None)
            host = FleetHost(name, config, env)
            started.append(host)
            hosts.append(host)
        return hosts

    yield start
    for host in reversed(started):
        host.stop()


@pytest.fixture
def operator(server: str, schema: str) -> Iterator[PostgresPluginRegistry]:
    """The operator's registry (it migrates the schema): it reads and switches plugins, never joins the fleet."""
    with PostgresPluginRegistry(server, schema=schema, migrate=True) as registry:
        yield registry


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--log-format", "none", *args], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def settle(hosts: list[FleetHost]) -> None:
    for host in hosts:
        assert host.ask("flush") == "flushed"


def test_the_fleet_status_tells_the_truth_in_every_direction(
    fleet: Callable[..., list[FleetHost]], operator: PostgresPluginRegistry, server: str, schema: str, tmp_path: Path
) -> None:
    hosts = fleet(4)
    settle(hosts)
    where = ["--dsn", server, "--schema", schema]

    # A normal start of four hosts: everything active everywhere, and not one warning logged.
    assert [h.warnings() for h in hosts] == [[], [], [], []]
    for plugin_id in ("scanner", "flaky"):
        record = operator.get_plugin(plugin_id)
        assert (record.status, record.fleet.summary()) == (S.ACTIVE, "active on 4 of 4 live hosts")
    assert {h.id: h.liveness for h in operator.list_hosts()} == {h.name: HostLiveness.LIVE for h in hosts}

    # A host stops a plugin: still active on the other three (the old status said "stopped").
    assert hosts[0].ask("stop scanner") == "stopped"
    settle(hosts[:1])
    record = operator.get_plugin("scanner")
    assert (record.status, record.fleet.summary()) == (S.ACTIVE, "active on 3 of 4 live hosts (1 stopped)")
    assert operator.is_active("scanner")

    # A host fails a plugin, then recovers: the failure shows while it lasts, and only then.
    (tmp_path / "fleet-2.fail").touch()
    assert hosts[1].ask("stop flaky") == "stopped"
    assert hosts[1].ask("start flaky") == "failed"
    settle(hosts[1:2])
    record = operator.get_plugin("flaky")
    assert record.status is S.ACTIVE
    assert record.fleet.failed_on == (("fleet-2", "start raised RuntimeError: flaky refuses to start on fleet-2"),)
    code, out, _ = cli("status", *where, "--plugin", "flaky")
    assert code == 1  # a plugin failed on a live host
    assert "active on 3 of 4 live hosts; failed on fleet-2: start raised RuntimeError" in out
    (tmp_path / "fleet-2.fail").unlink()
    assert hosts[1].ask("start flaky") == "active"
    settle(hosts[1:2])
    record = operator.get_plugin("flaky")
    assert (record.status, record.fleet.failed_on, record.fleet.active) == (S.ACTIVE, (), 4)

    # A host killed with SIGKILL: once it misses its heartbeats it is lost, and its instances stop counting.
    hosts[2].proc.send_signal(signal.SIGKILL)
    hosts[2].proc.wait(10)
    wait_for(lambda: {h.id: h.liveness for h in operator.list_hosts()}["fleet-3"] is HostLiveness.LOST)
    record = operator.get_plugin("scanner")
    assert (record.fleet.active, record.fleet.live, record.fleet.lost) == (2, 3, 1)
    assert record.fleet.summary() == ("active on 2 of 3 live hosts (1 stopped); 1 instance on lost hosts (not counted)")
    assert hosts[1].ask("stop scanner") == "stopped"
    assert hosts[3].ask("stop scanner") == "stopped"
    settle([hosts[1], hosts[3]])
    record = operator.get_plugin("scanner")
    assert (record.status, operator.is_active("scanner")) == (S.STOPPED, False)  # fleet-3's row still says active
    scanner_rows = {i.host_id: (i.state, i.host_liveness) for i in operator.list_instances(plugin_id="scanner")}
    assert scanner_rows["fleet-3"] == (S.ACTIVE, HostLiveness.LOST)

    # The CLI shows the same: the lost host on the fleet line, one row per host and plugin with --hosts.
    code, out, _ = cli("status", *where)
    assert code == 0
    assert out.splitlines()[0].startswith("fleet: 3 live hosts; lost: fleet-3 (last heartbeat ")
    code, out, _ = cli("status", *where, "--host", "fleet-3", "--json")
    document = json.loads(out)
    assert [(i["plugin_id"], i["host_liveness"], i["state"]) for i in document["instances"]] == [
        ("flaky", "lost", "active"),
        ("scanner", "lost", "active"),
    ]
    code, out, _ = cli("status", *where, "--hosts", "--plugin", "scanner")
    rows = [line.split()[:4] for line in out.splitlines()[2:]]
    assert rows == [
        ["scanner", "fleet-1", "live", "stopped"],
        ["scanner", "fleet-2", "live", "stopped"],
        ["scanner", "fleet-3", "lost", "active"],
        ["scanner", "fleet-4", "live", "stopped"],
    ]

    # Every move on every host was audited with the host that made it.
    activated = operator.list_events(plugin_id="scanner", event=EventKind.ACTIVATED)
    assert sorted(e.host for e in activated) == [h.name for h in hosts]


def test_a_disable_is_acknowledged_by_every_live_host_and_a_frozen_host_is_named(
    fleet: Callable[..., list[FleetHost]], operator: PostgresPluginRegistry, server: str, schema: str
) -> None:
    hosts = fleet(4, heartbeat_s=2.0)  # lost after 6 s: a host frozen for the test stays live meanwhile
    settle(hosts)
    where = ["--dsn", server, "--schema", schema]

    code, out, err = cli(
        "registry", "disable", "scanner", *where, "--reason", "CVE-2026-1", "--actor", OPERATOR, "--wait"
    )
    assert code == 0, err
    assert out.splitlines()[-1].startswith("acknowledged by all 4 live hosts in ")
    assert [h.ask("state scanner") for h in hosts] == ["stopped"] * 4
    stops = operator.list_events(plugin_id="scanner", event=EventKind.STOPPING)
    assert sorted((e.host, e.actor, e.details["reason"]) for e in stops) == [
        (h.name, OPERATOR, f"disabled by {OPERATOR}: CVE-2026-1") for h in hosts
    ]

    hosts[3].proc.send_signal(signal.SIGSTOP)
    try:
        code, out, err = cli("registry", "enable", "scanner", *where, "--wait", "--timeout", "1.5")
        assert code == 1
        assert err.strip().endswith("not acknowledged after 1.5 s by 1 of 4 live hosts: fleet-4")
    finally:
        hosts[3].proc.send_signal(signal.SIGCONT)
    assert operator.wait_for_acknowledgements("scanner", timeout_s=30).complete
    assert [h.ask("state scanner") for h in hosts] == ["active"] * 4


def test_a_disable_made_after_a_silent_outage_reaches_every_host(
    fleet: Callable[..., list[FleetHost]], operator: PostgresPluginRegistry, proxy: Proxy, server: str, schema: str
) -> None:
    hosts = fleet(4, dsn=proxy.dsn(server), heartbeat_s=0.5)
    settle(hosts)

    proxy.blackhole()  # no reply, no reset: every host's connections go silent
    time.sleep(3.0)  # the outage lasts longer than a heartbeat and a query's timeout
    proxy.restore()  # the database is back; the black-holed connections stay silent forever
    returned = time.monotonic()
    operator.set_enabled("scanner", False, actor=OPERATOR, reason="after the outage")

    # The hosts were shown lost during the outage (so a wait for "every live host" could end at once): wait
    # until all four acknowledged, within the target of 30 s after the database's return.
    names = [h.name for h in hosts]
    wait_for(lambda: list(operator.get_acknowledgements("scanner").acknowledged) == names, timeout_s=30)
    print(f"\nall 4 hosts applied the disable {time.monotonic() - returned:.1f} s after the database returned")
    assert [h.ask("state scanner") for h in hosts] == ["stopped"] * 4
    for host in hosts:
        lost = [r for r in host.warnings() if "registry link to" in r["message"] and "lost" in r["message"]]
        assert len(lost) == 1, f"{host.name} logged the lost link {len(lost)} times"
        reasons = {r.get("pluginId"): r["message"] for r in host.warnings() if r.get("event") == "plugin_disabled"}
        assert reasons == {
            "scanner": f"plugin scanner: disabled by {OPERATOR}: after the outage; stopping it on this host"
        }
