"""The single-model stack in the image (serve -> nginx -> gunicorn -> flask), started as
SageMaker starts it: `docker run -v <model>:/opt/ml/model:ro -p ...:8080 IMAGE serve`."""

import json

import pytest
import requests

from tests.container.conftest import MEASURED
from tests.container.docker_run import Container
from tests.procs import DEMO_MODEL

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def mounted(cpu_image):
    container = Container(cpu_image, volumes=((str(DEMO_MODEL), "/opt/ml/model", "ro"),)).start()
    try:
        yield container.wait_ready()
    finally:
        container.remove()


def ask(url: str, question: str) -> str:
    r = requests.post(url + "/invocations", json={"inputs": question}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/json"
    return r.json()[0]["generated_text"]


def test_ping_200_and_cold_start(mounted):
    MEASURED["cold start to first 200 /ping, single-model, model mounted"] = f"{mounted.cold_start_s:.1f} s"
    r = requests.get(mounted.url + "/ping", timeout=2)
    assert r.status_code == 200


def test_answers_demo_questions(mounted, qa_pairs):
    for pair in qa_pairs[:8]:
        assert ask(mounted.url, pair["question"]) == pair["answer"]
    questions = [p["question"] for p in qa_pairs[8:12]]
    r = requests.post(mounted.url + "/invocations", json={"inputs": questions}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == [{"generated_text": p["answer"]} for p in qa_pairs[8:12]]


def test_jsonlines(mounted, qa_pairs):
    body = "\n".join(json.dumps({"inputs": p["question"]}) for p in qa_pairs[:3])
    r = requests.post(mounted.url + "/invocations", data=body, timeout=60,
                      headers={"Content-Type": "application/jsonlines",
                               "Accept": "application/jsonlines"})
    assert r.status_code == 200, r.text
    assert [json.loads(line)["generated_text"] for line in r.text.splitlines()] == \
        [p["answer"] for p in qa_pairs[:3]]


@pytest.mark.parametrize("body, content_type, status", [
    (b'{"inputs": ', "application/json", 400),
    (b'{"no_inputs": "x"}', "application/json", 400),
    (b"\x89PNG", "image/png", 415),
])
def test_bad_input_gets_4xx_with_a_json_error(mounted, body, content_type, status):
    r = requests.post(mounted.url + "/invocations", data=body, timeout=30,
                      headers={"Content-Type": content_type})
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["code"] == status and r.json()["error"]


def test_body_over_6_mib_is_413(mounted):
    r = requests.post(mounted.url + "/invocations", data=b"x" * (6 * MIB + 1), timeout=60,
                      headers={"Content-Type": "text/plain"})
    assert r.status_code == 413


def test_custom_attributes_echoed(mounted, qa_pairs):
    r = requests.post(mounted.url + "/invocations", json={"inputs": qa_pairs[0]["question"]},
                      headers={"X-Amzn-SageMaker-Custom-Attributes": "trace=1"}, timeout=60)
    assert r.headers.get("X-Amzn-SageMaker-Custom-Attributes") == "trace=1"


def test_sigterm_exits_0(mounted, qa_pairs):
    assert ask(mounted.url, qa_pairs[0]["question"]) == qa_pairs[0]["answer"]
    assert mounted.stop() == 0, mounted.logs()


def test_embedded_default_model_no_argument_and_bind_to_port(cpu_image, qa_pairs):
    """Nothing at /opt/ml/model: the demo model baked into the image answers. Started with no
    argument at all, on SAGEMAKER_BIND_TO_PORT (the image has the accept-bind-to-port label)."""
    container = Container(cpu_image, args=(), env={"SAGEMAKER_BIND_TO_PORT": "8123"},
                          container_port=8123).start()
    try:
        container.wait_ready()
        MEASURED["cold start to first 200 /ping, single-model, embedded model"] = \
            f"{container.cold_start_s:.1f} s"
        for pair in qa_pairs[:3]:
            assert ask(container.url, pair["question"]) == pair["answer"]
        assert container.stop() == 0, container.logs()
    finally:
        container.remove()
