"""``plugin-pool run`` with real sandbox workers: ``--kill-workers N`` kills exactly N (each replaced and counted),
``--json`` keeps stderr to JSON lines, and ``--linger`` keeps the metrics endpoint up after the workload."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from plugin_pool.cli import main

pytestmark = pytest.mark.sandbox

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class _Lines(io.StringIO):
    """A stream another thread may read while it is written."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            return super().write(text)

    def text(self) -> str:
        with self.lock:
            return self.getvalue()


def test_kill_workers_kills_exactly_n_and_json_keeps_stderr_to_json_lines(tmp_path: Path) -> None:
    # min_workers == max_workers: every killed worker is replaced (a pool grown above its minimum replaces a
    # lost worker only when calls wait), so kills, replacements and their log records match exactly.
    config = tmp_path / "run.toml"
    scanner_dir = EXAMPLES / "secrets_scanner"
    config.write_text(f'[plugins.secrets-scanner]\npath = "{scanner_dir}"\nmin_workers = 2\nmax_workers = 2\n')
    out, err = io.StringIO(), io.StringIO()
    argv = ["--log-level", "INFO", "run", str(config), "--calls", "300"]
    code = main([*argv, "--kill-workers", "2", "--json"], out=out, err=err)
    assert code == 0, err.getvalue()
    records = [json.loads(line) for line in err.getvalue().splitlines()]  # every line is JSON
    summary = json.loads(out.getvalue())
    assert summary["killed_workers"] == 2
    [scanner] = [p for p in summary["plugins"] if p["plugin_id"] == "secrets-scanner"]
    assert scanner["restarts"] == {"crash": 2} and scanner["calls"] == 300, err.getvalue()
    assert sum(r.get("event") == "worker_killed" for r in records) == 2
    # Each death and each replacement is logged by the host (not only counted and audited).
    assert sum(r.get("event") == "worker_exited" for r in records) == 2, records
    assert sum(r.get("event") == "worker_restarted" for r in records) == 2, records


def test_linger_keeps_the_metrics_endpoint_up_after_the_workload() -> None:
    out, err = _Lines(), _Lines()
    argv = ["--log-format", "none", "run", "--plugin-dir", str(EXAMPLES / "secrets_scanner"), "--calls", "50"]
    result: list[int] = []
    runner = threading.Thread(
        target=lambda: result.append(main([*argv, "--json", "--metrics-port", "0", "--linger", "3"], out=out, err=err)),
        daemon=True,
    )
    runner.start()
    deadline = time.monotonic() + 60
    lingering = None
    while lingering is None and time.monotonic() < deadline and runner.is_alive():
        lingering = next((json.loads(x) for x in err.text().splitlines() if '"lingering"' in x), None)
        time.sleep(0.05)
    assert lingering is not None, err.text()
    port = next(json.loads(x)["port"] for x in err.text().splitlines() if '"metrics_serving"' in x)
    # The workload is over (its summary is out) and the final values are still served.
    assert json.loads(out.text())["plugins"][0]["calls"] == 50
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'plugin_active_count{trust_level="untrusted"} 1.0' in body
    assert 'plugin_calls_total{capability="scan",outcome="ok",plugin_id="secrets-scanner"} 50.0' in body
    runner.join(30)  # the linger runs out by itself, then the host closes
    assert result == [0] and not runner.is_alive()
