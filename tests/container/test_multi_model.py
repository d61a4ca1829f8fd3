"""The multi-model stack in the image (MMS, Java): SAGEMAKER_MULTI_MODEL=true, models loaded
from /opt/ml/models through POST /models, invoked both ways SageMaker does."""

import pytest
import requests

from tests.container.conftest import MEASURED
from tests.container.docker_run import Container
from tests.procs import DEMO_MODEL


@pytest.fixture(scope="module")
def mme(cpu_image):
    container = Container(cpu_image, env={"SAGEMAKER_MULTI_MODEL": "true"},
                          volumes=((str(DEMO_MODEL), "/opt/ml/models/demo", "ro"),)).start()
    try:
        yield container.wait_ready()
    finally:
        container.remove()


def test_ping_and_cold_start(mme):
    MEASURED["cold start to first 200 /ping, multi-model (MMS)"] = f"{mme.cold_start_s:.1f} s"
    assert requests.get(mme.url + "/ping", timeout=2).status_code == 200


def test_load_list_invoke(mme, qa_pairs):
    r = requests.post(mme.url + "/models", json={"model_name": "demo", "url": "/opt/ml/models/demo"},
                      timeout=180)
    assert r.status_code == 200, r.text
    again = requests.post(mme.url + "/models", json={"model_name": "demo", "url": "/opt/ml/models/demo"},
                          timeout=60)
    assert again.status_code == 409, again.text
    models = requests.get(mme.url + "/models", timeout=10).json()["models"]
    assert [m["modelName"] for m in models] == ["demo"]

    pair = qa_pairs[0]
    r = requests.post(mme.url + "/models/demo/invoke", json={"inputs": pair["question"]}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == [{"generated_text": pair["answer"]}]

    pair = qa_pairs[1]
    r = requests.post(mme.url + "/invocations", json={"inputs": pair["question"]}, timeout=60,
                      headers={"X-Amzn-SageMaker-Target-Model": "demo"})
    assert r.status_code == 200, r.text
    assert r.json() == [{"generated_text": pair["answer"]}]


def test_errors(mme):
    r = requests.post(mme.url + "/models/demo/invoke", data=b'{"inputs": ', timeout=60,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    r = requests.post(mme.url + "/models/demo/invoke", data=b"\x89PNG", timeout=60,
                      headers={"Content-Type": "image/png"})
    assert r.status_code == 415, r.text
    r = requests.post(mme.url + "/models/nope/invoke", json={"inputs": "x"}, timeout=60)
    assert r.status_code == 404, r.text
    r = requests.post(mme.url + "/models", json={"model_name": "gone", "url": "/opt/ml/models/gone"},
                      timeout=60)
    assert r.status_code == 404, r.text


def test_sigterm_exits_0(mme):
    assert mme.stop() == 0, mme.logs()
