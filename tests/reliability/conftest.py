"""Both stacks under hostile input, faults and security checks: shared fixtures.

``stack`` starts one single-model server per module and parameter: ``flask`` (nginx ->
gunicorn -> flask, tests.procs.Server) and ``mms`` (front + Java MMS + Python worker,
tests.mms.harness.MmsServer), both serving the demo model at /invocations.

Fuzzing runs a bounded number of examples; ``HYPOTHESIS_PROFILE=long`` runs many more.
"""

import json
import os

import pytest
from hypothesis import HealthCheck, settings

from tests.mms.harness import MmsServer
from tests.procs import DEMO_MODEL, Server, http_request

# Real HTTP against real servers: no deadline per example, module-scoped servers.
COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                    HealthCheck.function_scoped_fixture],
              print_blob=True)
settings.register_profile("ci", max_examples=25, **COMMON)
settings.register_profile("long", max_examples=1000, **COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

QUESTION = "Where was Alnor Quarenard born?"
ANSWER = "Solvi"


def start_stack(kind: str, log_dir, env: dict | None = None, mms_args: tuple[str, ...] = ()):
    """A started, ready single-model server of ``kind`` on a free port (stopped by the caller)."""
    if kind == "flask":
        server = Server(log_path=log_dir / "flask.log", env=env)
        server.start()
        try:
            return server.wait_ready()
        except BaseException:
            server.stop()
            raise
    server = MmsServer("--model-dir", str(DEMO_MODEL), *mms_args, log_path=log_dir / "mms.log", env=env)
    server.start().wait_ready()
    return server


def stop_stack(server) -> int:
    try:
        return server.stop()
    finally:
        if isinstance(server, MmsServer):
            server.kill_leftovers()


@pytest.fixture(scope="module", params=["flask", "mms"])
def stack(request, tmp_path_factory):
    server = start_stack(request.param, tmp_path_factory.mktemp(request.param))
    server.kind = request.param
    try:
        yield server
        assert server.stop() == 0
        assert server.leftovers() == []
    finally:
        stop_stack(server)


def ask(server, question: str = QUESTION, timeout: float = 60):
    """The demo model's answer to ``question`` (a good request), as the raw Answer."""
    return http_request(server.port, "POST", "/invocations", json.dumps({"inputs": question}).encode(),
                        {"Content-Type": "application/json"}, timeout=timeout)


def assert_still_answers(server) -> None:
    answer = ask(server)
    assert answer.status == 200, (answer.status, answer.body[:300])
    assert json.loads(answer.body) == [{"generated_text": ANSWER}]
