"""Who the container runs as. Root by default, as SageMaker expects: its local mode unpacks
model.tar.gz into a host dir only root may read and mounts that at /opt/ml/model. Any other
uid (`docker run --user`, Kubernetes) works where the model dir is readable, and gets one
clear log line and a non-zero exit where it is not."""

import shutil
import tempfile
from pathlib import Path

import pytest
import requests

from tests.container.docker_run import Container
from tests.procs import DEMO_MODEL

OTHER_USER = "12345:12345"  # no entry in the image's /etc/passwd


@pytest.fixture(scope="module")
def root_only_model():
    """A copy of the demo model in a dir mode 0700, as local mode's extracted model.tar.gz."""
    parent = Path(tempfile.mkdtemp(prefix="root-only-model-"))
    model = parent / "model"
    shutil.copytree(DEMO_MODEL, model)
    model.chmod(0o700)
    try:
        yield model
    finally:
        shutil.rmtree(parent)


def answers(container: Container, pairs: list[dict]) -> list[str]:
    r = requests.post(container.url + "/invocations", json={"inputs": [p["question"] for p in pairs]},
                      timeout=60)
    assert r.status_code == 200, r.text
    return [item["generated_text"] for item in r.json()]


def test_root_reads_a_model_dir_only_root_may_read(cpu_image, root_only_model, qa_pairs):
    container = Container(cpu_image, volumes=((str(root_only_model), "/opt/ml/model", "ro"),)).start()
    try:
        container.wait_ready()
        assert container.exec("id", "-u").stdout.strip() == "0"
        assert answers(container, qa_pairs[:4]) == [p["answer"] for p in qa_pairs[:4]]
        assert container.stop() == 0, container.logs()
    finally:
        container.remove()


def test_any_uid_serves_a_readable_model(cpu_image, qa_pairs):
    container = Container(cpu_image, volumes=((str(DEMO_MODEL), "/opt/ml/model", "ro"),),
                          user=OTHER_USER).start()
    try:
        container.wait_ready()
        assert container.exec("id", "-u").stdout.strip() == OTHER_USER.split(":")[0]
        assert answers(container, qa_pairs[4:8]) == [p["answer"] for p in qa_pairs[4:8]]
        assert "Traceback" not in container.logs(tail=400)
        assert container.stop() == 0, container.logs()
    finally:
        container.remove()


def test_any_uid_runs_the_multi_model_stack(cpu_image, qa_pairs):
    """MMS (Java) writes its logs and sockets where any uid may: HOME and /tmp."""
    container = Container(cpu_image, env={"SAGEMAKER_MULTI_MODEL": "true"}, user=OTHER_USER,
                          volumes=((str(DEMO_MODEL), "/opt/ml/models/demo", "ro"),)).start()
    try:
        container.wait_ready()
        r = requests.post(container.url + "/models", json={"model_name": "demo", "url": "/opt/ml/models/demo"},
                          timeout=180)
        assert r.status_code == 200, r.text
        pair = qa_pairs[8]
        r = requests.post(container.url + "/models/demo/invoke", json={"inputs": pair["question"]}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json() == [{"generated_text": pair["answer"]}]
        assert container.stop() == 0, container.logs()
    finally:
        container.remove()


def test_other_uid_and_a_root_only_model_dir_is_one_clear_line(cpu_image, root_only_model):
    container = Container(cpu_image, volumes=((str(root_only_model), "/opt/ml/model", "ro"),),
                          user=OTHER_USER).start()
    try:
        assert container.wait_exit() == 2
        logs = container.logs(tail=200)
        assert "Traceback" not in logs, logs
        errors = [line for line in logs.splitlines() if " ERROR " in line]
        assert len(errors) == 1, logs
        assert "cannot read /opt/ml/model as uid 12345 (gid 12345)" in errors[0]
        assert "run the container as root" in errors[0]
    finally:
        container.remove()
