"""bench/locustfile.py, run headless for a few seconds against the real stack
(`python -m serve` on 127.0.0.1): the report counts requests and no failures; a wrong answer
is a failure; the server's own figures (its /metrics) come beside locust's."""

import re
import subprocess

import pytest

from tests.procs import REPO, Server

LOCUST = REPO / ".venv-sdk" / "bin" / "locust"
ROW = re.compile(r"^\| (?P<name>[^|]+) \| (?P<requests>\d+) \| (?P<failures>\d+) \|", re.M)
SERVER_ROW = re.compile(r"^\| http://127\.0\.0\.1:\d+ \| (?P<requests>\d+) \| (?P<per_call>[\d.]+) \| "
                        r"(?P<depth>\d+) \| [\d.]+ \| (?P<queue_ms>[\d.]+) \| (?P<engine_ms>[\d.]+) \|$", re.M)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not LOCUST.exists():
        pytest.fail(f"{LOCUST} is missing: run `make venv` (requirements/sdk.txt)")
    with Server(log_path=tmp_path_factory.mktemp("serve") / "serve.log") as srv:
        yield srv


def locust(server, tmp_path, *options: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """Exit code and the final report (--markdown): (requests, failures) by row name, and
    under "server" the server's own row (its /metrics). 4 users for 5 seconds; --csv too, as a
    deployer would write it."""
    run = subprocess.run([str(LOCUST), "-f", "bench/locustfile.py", "--headless", "--host", server.url,
                          "-u", "4", "-r", "4", "-t", "5s", "--only-summary", "--markdown",
                          "--csv", str(tmp_path / "report"), *options],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert (tmp_path / "report_stats.csv").is_file()
    rows = {m["name"]: (int(m["requests"]), int(m["failures"])) for m in ROW.finditer(run.stdout)}
    assert "Aggregated" in rows, run.stdout + run.stderr[-3000:]
    server_rows = list(SERVER_ROW.finditer(run.stdout))
    assert len(server_rows) == 1, run.stdout
    rows["server"] = server_rows[0].groupdict()
    return run.returncode, rows


def test_the_servers_own_figures_beside_locusts(server, tmp_path):
    """Requests the server answered for the model, as its /metrics counted them between the
    start and the end (locust may stop with a few requests in flight), and its batching."""
    code, rows = locust(server, tmp_path)
    requests, failures = rows["POST /invocations"]
    assert code == 0 and failures == 0
    figures = rows["server"]
    assert requests - 4 <= int(figures["requests"]) <= requests + 4, (requests, figures)
    assert float(figures["per_call"]) >= 1 and float(figures["engine_ms"]) > 0


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
