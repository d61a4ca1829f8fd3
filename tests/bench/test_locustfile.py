"""bench/locustfile.py, run headless for a few seconds against the real stack
(`python -m serve` on 127.0.0.1): the report counts requests and no failures; a wrong answer
is a failure."""

import csv
import re
import subprocess

import pytest

from tests.procs import REPO, Server

LOCUST = REPO / ".venv-sdk" / "bin" / "locust"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not LOCUST.exists():
        pytest.fail(f"{LOCUST} is missing: run `make venv` (requirements/sdk.txt)")
    with Server(log_path=tmp_path_factory.mktemp("serve") / "serve.log") as srv:
        yield srv


def locust(server, tmp_path, *options: str) -> tuple[int, dict[str, dict], str]:
    """Exit code, the report's rows by name, and stdout (4 users, 4 seconds)."""
    prefix = tmp_path / "report"
    run = subprocess.run([str(LOCUST), "-f", "bench/locustfile.py", "--headless", "--host", server.url,
                          "-u", "4", "-r", "4", "-t", "4s", "--only-summary", "--csv", str(prefix), *options],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    return run.returncode, rows, run.stdout


def test_demo_questions_answered_without_failures(server, tmp_path):
    code, rows, out = locust(server, tmp_path, "--check-answers", "--markdown")
    assert code == 0
    assert int(rows["/invocations"]["Request Count"]) > 4
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    # --markdown: the summary as a table (its counts are final; the CSV's may lag a little)
    assert re.search(r"^\| POST /invocations \| [1-9][0-9]* \| 0 \|", out, re.M), out
    assert re.search(r"^\| Aggregated \| [1-9][0-9]* \| 0 \|", out, re.M), out


def test_streaming_requests_and_first_token(server, tmp_path):
    code, rows, _ = locust(server, tmp_path, "--stream", "--check-answers")
    assert code == 0
    assert int(rows["/invocations (stream)"]["Request Count"]) > 4
    assert int(rows["first token"]["Request Count"]) > 4
    assert int(rows["Aggregated"]["Failure Count"]) == 0


def test_a_wrong_answer_is_a_failure(server, tmp_path):
    """One new token cannot spell most answers: --check-answers reports them, locust exits 1."""
    code, rows, _ = locust(server, tmp_path, "--check-answers", "--max-new-tokens", "1")
    assert code == 1
    assert int(rows["/invocations"]["Failure Count"]) > 0
