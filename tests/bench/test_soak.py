"""bench/soak.py for a few seconds on the flask stack: every answer checked, and the server's
own count of what it answered (its /metrics) equals what the clients sent."""

import json
import subprocess
import sys

from tests.procs import REPO


def test_a_short_soak_reads_the_servers_metrics(tmp_path):
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, "bench/soak.py", "--minutes", "0.1", "--stacks", "flask",
                          "--concurrency", "2", "--json", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    [result] = json.loads(out.read_text())
    [minute] = result["minutes"]
    assert result["errors"] == 0 and result["exit_code"] == 0, result["first_error"]
    assert minute["requests"] > 0 and minute["server_requests"] == minute["requests"]
    assert minute["server_prompts_per_call"] >= 1 and minute["server_engine_ms"] > 0
    assert minute["server_queue_depth_max"] is not None
    assert "server: requests | prompts per engine call | queue depth max" in run.stdout
