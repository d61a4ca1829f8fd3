"""What the image declares and contains, without starting the server."""

import json

import pytest

from tests.container.docker_run import docker


def inspect(image: str) -> dict:
    return json.loads(docker("image", "inspect", image).stdout)[0]["Config"]


def run(image: str, script: str, *options: str) -> str:
    """``docker run [OPTIONS] IMAGE bash -c SCRIPT``: the entrypoint runs any command but ``serve``."""
    result = docker("run", "--rm", *options, image, "bash", "-c", script, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_sagemaker_labels(cpu_image):
    labels = inspect(cpu_image)["Labels"]
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert labels["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"


def test_entrypoint_root_user_and_port(cpu_image):
    """Root by default, as SageMaker expects (its local mode mounts a root-only model dir)."""
    config = inspect(cpu_image)
    assert config["Entrypoint"] == ["/usr/local/bin/entrypoint.sh"]
    assert config["User"] in ("", "0", "root", "0:0")
    assert "8080/tcp" in config["ExposedPorts"]
    assert run(cpu_image, "id -u").strip() == "0"


@pytest.mark.parametrize("user", [(), ("--user", "12345:12345"), ("--user", "10001")])
def test_writable_caches_and_embedded_model(cpu_image, user):
    """As root and as any other uid: HOME, HF_HOME, /tmp and nginx's dirs are writable."""
    out = run(cpu_image, 'id -u; cd && touch "$HF_HOME/probe" "$HOME/probe" /tmp/probe '
                         '/var/log/nginx/probe /var/lib/nginx/probe && echo writable; '
                         'ls "$SM_DEFAULT_MODEL_DIR"; command -v serve nginx java', *user)
    lines = out.splitlines()
    assert lines[0] == (user[1].split(":")[0] if user else "0"), out
    assert lines[1] == "writable", out
    assert "config.json" in out.split()
    assert "/opt/venv/bin/serve" in out and "nginx" in out and "java" in out


def test_dependencies_import_and_java_runs(cpu_image):
    out = run(cpu_image, "python -c 'import torch, transformers, flask, gunicorn, mms, "
                         "sagemaker_inference, handlers, serve, container; print(torch.__version__)' "
                         "&& java -version 2>&1 | head -n 1")
    lines = out.splitlines()
    assert lines[0].startswith("2.13.0"), out
    assert "version" in lines[1], out


def test_no_build_extras_left_in_the_image(cpu_image):
    """--wheelhouse and --ca-cert are for the builder stage only."""
    out = run(cpu_image, "ls -d /tmp/build /opt/program/build /opt/program/requirements "
                         "2>/dev/null; find / -xdev -name '*.whl' -o -xdev -name 'extra-ca.pem' "
                         "2>/dev/null | head -n 5")
    assert out.strip() == ""
