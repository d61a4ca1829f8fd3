"""Single-model endpoints on the MMS stack (SERVING_STACK=mms): the default model at
/invocations, through ``serve`` (the image's entrypoint) as well as directly."""

import json
import os
import tarfile
from pathlib import Path

import pytest

from tests.mms.harness import DEMO_MODEL, MmsServer, demo_model_ready, running
from tests.procs import children

pytestmark = pytest.mark.skipif(not demo_model_ready(), reason="demo/model is not built yet")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The MMS stack on transformers (the CTranslate2 default has tests/mms/test_ct2.py)."""
    srv = MmsServer("--model-dir", str(DEMO_MODEL), log_path=tmp_path_factory.mktemp("log") / "mms.log",
                    env={"INFERENCE_BACKEND": "transformers"})
    with running(srv):
        yield srv


def test_invocations_answer_with_the_default_model(server, qa_pairs):
    for pair in qa_pairs[:5]:
        r = server.post("/invocations", {"inputs": pair["question"]})
        assert r.status_code == 200, r.text
        assert r.json() == [{"generated_text": pair["answer"]}]
    r = server.post("/invocations", qa_pairs[0]["question"], "text/plain")
    assert r.headers["Content-Type"].startswith("text/plain") and r.text == qa_pairs[0]["answer"]


def test_no_management_api_and_clear_errors(server):
    assert server.get("/models").status_code == 404
    assert server.post("/models", {"model_name": "x", "url": "/tmp"}).status_code == 404
    r = server.post("/invocations", b"", "application/json")
    assert r.status_code == 400 and r.json()["code"] == 400
    assert server.post("/invocations", b"{}", "image/png").status_code == 415
    assert server.post("/invocations", b'{"inputs": "x"}', headers={"Accept": "image/png"}).status_code == 406
    assert server.get("/nope").status_code == 404
    assert server.get("/invocations").status_code == 405
    assert server.get("/execution-parameters").json()["MaxPayloadInMB"] == 6


def test_model_tar_gz_as_the_model(tmp_path, qa_pairs):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in DEMO_MODEL.iterdir():
            tar.add(path, arcname=path.name)
    srv = MmsServer("--model-dir", str(archive), log_path=tmp_path / "mms.log")
    try:
        srv.start().wait_ready()
        r = srv.post("/invocations", {"inputs": qa_pairs[2]["question"]})
        assert r.json() == [{"generated_text": qa_pairs[2]["answer"]}]
        assert srv.stop() == 0
    finally:
        srv.kill_leftovers()


@pytest.mark.parametrize("env", [{"SERVING_STACK": "mms"}, {"SAGEMAKER_MULTI_MODEL": "true"}])
def test_serve_entrypoint_starts_the_mms_stack(env, tmp_path, qa_pairs):
    multi = env.get("SAGEMAKER_MULTI_MODEL") == "true"
    srv = MmsServer(*([] if multi else ["--model-dir", str(DEMO_MODEL)]), via_serve=True, env=env,
                    log_path=tmp_path / "serve.log")
    try:
        srv.start().wait_ready()
        srv.remember_processes()
        assert srv.java_pid, "serve did not start MMS"
        if multi:
            assert srv.get("/models").json() == {"models": []}
        else:
            r = srv.post("/invocations", json.dumps({"inputs": qa_pairs[4]["question"]}))
            assert r.json() == [{"generated_text": qa_pairs[4]["answer"]}]
        assert srv.stop() == 0
        assert srv.leftovers() == []
    finally:
        srv.kill_leftovers()


def test_the_listener_imported_torch_before_forking_the_workers(server, qa_pairs):
    """MMS's listener imports the transformers engine (torch) and then forks: the workers share
    those pages and a restarted worker skips seconds of imports. It runs nothing: one thread."""
    assert server.post("/invocations", {"inputs": qa_pairs[0]["question"]}).status_code == 200
    pids = server.model_workers("model")
    [listener] = [p for p in pids if any(c in pids for c in children(p))]
    assert "libtorch" in Path(f"/proc/{listener}/maps").read_text()
    assert len(os.listdir(f"/proc/{listener}/task")) == 1
