"""The MMS stack's front parsing a body itself (POST /models). Methods, HEAD, unknown paths
and slow clients on every stack: tests/reliability (test_methods, test_faults)."""

from pathlib import Path

import pytest

from tests.mms.harness import MmsServer, make_model

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (make_model(root, "echo", "scripted_inference.py", weights=False) / "behaviour.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def multi(root, tmp_path_factory):
    srv = MmsServer("--multi-model", "--model-root", str(root),
                    log_path=tmp_path_factory.mktemp("log") / "multi.log")
    try:
        srv.start().wait_ready()
        assert srv.load("echo", root / "echo").status_code == 200
        yield srv
        assert srv.stop() == 0
    finally:
        srv.kill_leftovers()


def test_deeply_nested_json_when_loading_is_400(multi):
    for body in ("[" * 5000 + "]" * 5000, '{"model_name": ' * 3000):
        r = multi.post("/models", body)
        assert r.status_code == 400, r.text
        assert r.json()["code"] == 400 and "JSON" in r.json()["error"]
    assert multi.get("/ping").status_code == 200
