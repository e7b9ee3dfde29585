"""Smoke test of the benchmark suite: bench/run.py --quick against wsgate only.

Tiny sizes (20 subscribers x 50 messages, 10 devices for 2 s, 200 idle connections):
checks that the orchestrator, the load generator and the wsgate server-side apps work
together, not how fast they are.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("taskset", "redis-server")),
    reason="needs taskset and redis-server",
)


def test_quick_run_loses_nothing_and_answers_requests(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--peers", "wsgate"]
    argv += ["--workloads", "W1", "W3", "W4", "--no-docs", "--json", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=100, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {
        (r["workload"].split()[0], r["peer"], r["figure"]): r
        for r in json.loads(out.read_text())["rows"]
    }
    for key, row in rows.items():
        assert not row["failures"], (key, row["failures"], done.stdout)
        assert row["runs"], (key, done.stdout)

    for peer in ("wsgate", "wsgate unpacked"):
        (run,) = rows[("W1", peer, "deliveries/s")]["runs"]
        assert run["lost"] == 0 and run["deliveries"] == 20 * 50 and not run["incomplete"]

    (run,) = rows[("W3", "wsgate", "requests/s")]["runs"]
    assert run["errors"] == 0 and run["deliveries"] > 0

    (rss,) = rows[("W4", "wsgate", "RSS KiB/conn")]["runs"]
    (setups,) = rows[("W4", "wsgate", "setups/s")]["runs"]
    assert rss["value"] > 0 and setups["value"] > 0 and setups["errors"] == 0
