"""bench/locustfile.py, run headless for a few seconds against the real stack
(`python -m serve` on 127.0.0.1): the report counts requests and no failures; a wrong answer
is a failure."""

import re
import subprocess

import pytest

from tests.procs import REPO, Server

LOCUST = REPO / ".venv-sdk" / "bin" / "locust"
ROW = re.compile(r"^\| (?P<name>[^|]+) \| (?P<requests>\d+) \| (?P<failures>\d+) \|", re.M)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not LOCUST.exists():
        pytest.fail(f"{LOCUST} is missing: run `make venv` (requirements/sdk.txt)")
    with Server(log_path=tmp_path_factory.mktemp("serve") / "serve.log") as srv:
        yield srv


def locust(server, tmp_path, *options: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """Exit code and the final report (--markdown): (requests, failures) by row name.
    4 users for 5 seconds; --csv too, as a deployer would write it."""
    run = subprocess.run([str(LOCUST), "-f", "bench/locustfile.py", "--headless", "--host", server.url,
                          "-u", "4", "-r", "4", "-t", "5s", "--only-summary", "--markdown",
                          "--csv", str(tmp_path / "report"), *options],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert (tmp_path / "report_stats.csv").is_file()
    rows = {m["name"]: (int(m["requests"]), int(m["failures"])) for m in ROW.finditer(run.stdout)}
    assert "Aggregated" in rows, run.stdout + run.stderr[-3000:]
    return run.returncode, rows


def test_demo_questions_answered_without_failures(server, tmp_path):
    code, rows = locust(server, tmp_path, "--check-answers")
    requests, failures = rows["POST /invocations"]
    assert code == 0 and requests > 0 and failures == 0, rows


def test_streaming_requests_and_first_token(server, tmp_path):
    code, rows = locust(server, tmp_path, "--stream", "--check-answers")
    assert code == 0, rows
    requests, failures = rows["POST /invocations (stream)"]
    assert requests > 0 and failures == 0, rows
    first_tokens, _ = rows["STREAM first token"]
    assert requests <= first_tokens <= requests + 4  # streams still open when time ran out


def test_a_wrong_answer_is_a_failure(server, tmp_path):
    """One new token cannot spell most answers: --check-answers reports them, locust exits 1."""
    code, rows = locust(server, tmp_path, "--check-answers", "--max-new-tokens", "1")
    assert code == 1
    assert rows["POST /invocations"][1] > 0, rows
