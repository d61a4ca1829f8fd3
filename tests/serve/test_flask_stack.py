"""The single-model stack for real: nginx -> gunicorn -> flask -> handlers, over HTTP."""

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.procs import DEMO_MODEL, REPO, Server, alive, children, cmdline, descendants, free_port

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(log_path=tmp_path_factory.mktemp("serve") / "serve.log") as srv:
        yield srv
        assert srv.stop() == 0


def ask(server, question, **parameters):
    body = {"inputs": question, **({"parameters": parameters} if parameters else {})}
    response = server.post(json.dumps(body))
    assert response.status_code == 200, response.text
    return response.json()[0]["generated_text"]


def test_ping_is_503_until_the_model_is_loaded_then_200(tmp_path):
    """A model that takes 3 s to load (its script sleeps): /ping says 503 until it can answer."""
    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    shutil.copyfile(REPO / "tests" / "mms" / "fixtures" / "scripted_inference.py", model / "code" / "inference.py")
    (model / "behaviour.json").write_text('{"load_sleep": 3}')
    with Server(model, log_path=tmp_path / "serve.log") as server:
        assert server.pings[-1] == 200
        before = [p for p in server.pings[:-1] if p != 0]
        assert before, "expected /ping to answer (503) while the model was loading"
        assert set(before) == {503}
        response = requests.get(server.url + "/ping", timeout=2)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"


def test_answers_demo_questions(server, qa_pairs):
    for pair in qa_pairs[:10]:
        assert ask(server, pair["question"]) == pair["answer"]


def test_every_content_type(server, qa_pairs):
    q = [p["question"] for p in qa_pairs[:3]]
    a = [p["answer"] for p in qa_pairs[:3]]

    r = server.post(json.dumps({"inputs": q}))
    assert r.headers["Content-Type"] == "application/json"
    assert [x["generated_text"] for x in r.json()] == a

    lines = "\n".join(json.dumps({"inputs": x}) for x in q) + "\n"
    r = server.post(lines, "application/jsonlines")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/jsonlines"
    assert [json.loads(line)["generated_text"] for line in r.text.splitlines()] == a

    r = server.post("\n".join(q) + "\n", "text/csv")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/csv")
    assert r.text.splitlines() == a

    r = server.post(q[0], "text/plain")
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.text == a[0]

    r = server.post(q[0], "text/plain", headers={"Accept": "application/json"})
    assert r.json() == [{"generated_text": a[0]}]


@pytest.mark.parametrize("body, content_type, accept, status, words", [
    (b"", "application/json", None, 400, "empty"),
    (b"{not json", "application/json", None, 400, "malformed JSON"),
    (b'{"inputs": 42}', "application/json", None, 400, "'inputs' must be a string"),
    (b'{"inputs": "x", "parameters": {"num_beams": "two"}}', "application/json", None, 400, "num_beams"),
    (b'{"inputs": "x", "parameters": {"max_new_tokens": 100000}}', "application/json", None, 400, "cap"),
    (b'{"inputs": "x", "parameters": {"colour": 1}}', "application/json", None, 400, "colour"),
    (b'{"inputs": "a"}\n{oops\n', "application/jsonlines", None, 400, "line 2"),
    (b"\xff\xfe", "text/plain", None, 400, "utf-8"),
    (b'{"inputs": "x"}', "image/png", None, 415, "image/png"),
    (b'{"inputs": "x"}', "application/json", "application/x-npy", 406, "application/x-npy"),
])
def test_bad_inputs_get_a_clear_error_and_the_server_keeps_serving(server, body, content_type, accept,
                                                                   status, words, qa_pairs):
    headers = {"Accept": accept} if accept else {}
    r = server.post(body, content_type, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["code"] == status
    assert words in r.json()["error"]
    assert ask(server, qa_pairs[0]["question"]) == qa_pairs[0]["answer"]


def test_unknown_path_404_and_get_invocations_405(server):
    r = requests.get(server.url + "/nope", timeout=5)
    assert r.status_code == 404 and "/nope" in r.json()["error"]
    r = requests.get(server.url + "/invocations", timeout=5)
    assert r.status_code == 405 and r.json()["code"] == 405


def test_payload_cap_is_6_mib(server, qa_pairs):
    question = qa_pairs[0]["question"]
    skeleton = json.dumps({"inputs": question, "padding": ""})
    exact = json.dumps({"inputs": question, "padding": "x" * (6 * MIB - len(skeleton))}).encode()
    assert len(exact) == 6 * MIB
    r = server.post(exact)
    assert r.status_code == 200, r.text[:300]
    assert r.json()[0]["generated_text"] == qa_pairs[0]["answer"]
    r = server.post(exact + b" ")
    assert r.status_code == 413
    assert r.json() == {"error": f"request body is larger than {6 * MIB} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)",
                        "code": 413}


def test_custom_attributes_echoed_only_when_sent(server, qa_pairs):
    body = json.dumps({"inputs": qa_pairs[0]["question"]})
    r = server.post(body, headers={"X-Amzn-SageMaker-Custom-Attributes": "trace=abc;v=1"})
    assert r.headers["X-Amzn-SageMaker-Custom-Attributes"] == "trace=abc;v=1"
    r = server.post(body, headers={"X-Some-Unknown-Header": "ignored"})
    assert r.status_code == 200
    assert "X-Amzn-SageMaker-Custom-Attributes" not in r.headers


def test_execution_parameters(server):
    r = requests.get(server.url + "/execution-parameters", timeout=5)
    assert r.json()["BatchStrategy"] == "MULTI_RECORD"
    assert r.json()["MaxPayloadInMB"] == 6


def test_16_concurrent_requests_match_sequential_answers(server, qa_pairs):
    questions = [p["question"] for p in qa_pairs[:16]]
    sequential = [ask(server, q) for q in questions]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        concurrent_answers = list(pool.map(lambda q: ask(server, q), questions))
    assert concurrent_answers == sequential
    assert sequential == [p["answer"] for p in qa_pairs[:16]]


def test_a_bad_request_in_a_batch_fails_only_itself(server, qa_pairs):
    good = [json.dumps({"inputs": p["question"]}) for p in qa_pairs[:6]]
    bad = json.dumps({"inputs": "x", "parameters": {"top_p": 7}})
    bodies = good[:3] + [bad] + good[3:]
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(server.post, bodies))
    assert [r.status_code for r in responses] == [200, 200, 200, 400, 200, 200, 200]
    assert [r.json()[0]["generated_text"] for r in responses if r.status_code == 200] == \
        [p["answer"] for p in qa_pairs[:6]]


def test_streaming_sends_tokens_as_chunks(server, qa_pairs):
    question = qa_pairs[1]["question"]
    full = ask(server, question)
    with server.post(json.dumps({"inputs": question, "parameters": {"stream": True}}), stream=True,
                     headers={"Accept": "text/event-stream"}) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers.get("Transfer-Encoding") == "chunked"
        events = [json.loads(line[len("data: "):]) for line in r.iter_lines(decode_unicode=True)
                  if line.startswith("data: ")]
    tokens = [e["token"]["text"] for e in events if "token" in e]
    assert len(tokens) >= 2, events
    assert "".join(tokens) == full
    assert events[-1] == {"generated_text": full}


SDK_CLIENT = """
import json, sys
from sagemaker.local.local_session import LocalSagemakerRuntimeClient
response = LocalSagemakerRuntimeClient().invoke_endpoint(
    Body=json.dumps({"inputs": sys.argv[1]}), EndpointName="local",
    ContentType="application/json", Accept="application/json",
    CustomAttributes="trace=sdk")
print(json.dumps({"body": json.loads(response["Body"].read()),
                  "attributes": response.get("CustomAttributes")}))
"""


def test_sagemaker_sdk_local_runtime_client(tmp_path, qa_pairs):
    """The real SageMaker SDK (v2) local-mode client, which posts to localhost:8080."""
    sdk_python = REPO / ".venv-sdk" / "bin" / "python"
    if not sdk_python.exists():
        pytest.fail(".venv-sdk is missing: run `make venv` (requirements/sdk.txt)")
    pair = qa_pairs[2]
    with Server(port=8080, log_path=tmp_path / "serve.log"):
        run = subprocess.run([sdk_python, "-c", SDK_CLIENT, pair["question"]], capture_output=True,
                             text=True, timeout=120, env=dict(os.environ, SAGEMAKER_SUPPRESS_V2_WARNING="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["body"] == [{"generated_text": pair["answer"]}]


def test_request_timeout_gives_504(tmp_path, qa_pairs):
    env = {"SAGEMAKER_MODEL_SERVER_TIMEOUT": "1"}
    with Server(env=env, log_path=tmp_path / "serve.log") as srv:
        slow = {"inputs": [p["question"] for p in qa_pairs[:48]],
                "parameters": {"min_new_tokens": 400, "max_new_tokens": 400, "num_beams": 4}}
        started = time.monotonic()
        r = srv.post(json.dumps(slow))
        assert r.status_code == 504, r.text
        assert "1 s" in r.json()["error"]
        assert time.monotonic() - started < 5


def test_sigterm_finishes_in_flight_requests_and_exits_0(tmp_path, qa_pairs):
    with Server(log_path=tmp_path / "serve.log") as srv:
        body = json.dumps({"inputs": [p["question"] for p in qa_pairs[:16]],
                           "parameters": {"min_new_tokens": 60, "max_new_tokens": 60}})
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(srv.post, body) for _ in range(8)]
            time.sleep(0.5)
            srv.proc.send_signal(signal.SIGTERM)
            statuses = [f.result().status_code for f in futures]
        assert statuses == [200] * 8
        assert srv.proc.wait(30) == 0


def test_killed_worker_is_replaced_and_service_continues(tmp_path, qa_pairs):
    with Server(log_path=tmp_path / "serve.log") as srv:
        [master] = [p for p in children(srv.proc.pid) if "gunicorn" in cmdline(p)]
        workers = children(master)
        assert len(workers) == 1, [cmdline(p) for p in descendants(srv.proc.pid)]
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if srv.post(json.dumps({"inputs": qa_pairs[0]["question"]}), timeout=10).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        assert ask(srv, qa_pairs[0]["question"]) == qa_pairs[0]["answer"]
        assert srv.proc.poll() is None


def test_a_dead_child_takes_the_supervisor_down_non_zero(tmp_path):
    with Server(log_path=tmp_path / "serve.log") as srv:
        nginx = [p for p in descendants(srv.proc.pid) if cmdline(p).startswith("nginx: master")]
        assert len(nginx) == 1
        os.kill(nginx[0], signal.SIGKILL)
        code = srv.proc.wait(30)
        assert code != 0
        assert "nginx exited" in srv.log()
        assert not any(alive(p) for p in descendants(srv.proc.pid))


def test_a_model_that_fails_to_load_exits_non_zero_and_never_pings_200(tmp_path):
    broken = tmp_path / "model"
    broken.mkdir()
    for f in DEMO_MODEL.iterdir():  # the checkpoint, not its converted copy (ctranslate2/)
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    srv = Server(model_dir=broken, log_path=tmp_path / "serve.log").start()
    try:
        deadline = time.monotonic() + 60
        while srv.proc.poll() is None and time.monotonic() < deadline:
            try:
                assert requests.get(srv.url + "/ping", timeout=5).status_code != 200
            except requests.RequestException:
                pass
            time.sleep(0.1)
        assert srv.proc.poll() not in (None, 0)
        assert "model.safetensors" in srv.log()
    finally:
        srv.stop()


def test_a_gpu_asked_for_where_there_is_none_is_a_start_up_error(tmp_path):
    """INFERENCE_DEVICE=cuda on a host without a GPU: the start-up check says so, exit 2,
    nothing served (handlers.cuda.check_gpu; a GPU image without a GPU and no device asked
    for serves on the CPU instead)."""
    if Path("/dev/nvidia0").exists():
        pytest.skip("a GPU is here")
    done = subprocess.run([sys.executable, "-m", "serve"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, INFERENCE_DEVICE="cuda", SAGEMAKER_BIND_TO_PORT=str(free_port())))
    assert done.returncode == 2, done.stderr
    assert "GPU check: no NVIDIA GPU here" in done.stderr
