"""What the image declares and contains, without starting the server."""

import json

from tests.container.docker_run import docker


def inspect(image: str) -> dict:
    return json.loads(docker("image", "inspect", image).stdout)[0]["Config"]


def run(image: str, script: str) -> str:
    """``docker run IMAGE bash -c SCRIPT``: the entrypoint runs any command but ``serve``."""
    result = docker("run", "--rm", image, "bash", "-c", script, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_sagemaker_labels(cpu_image):
    labels = inspect(cpu_image)["Labels"]
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert labels["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"


def test_entrypoint_non_root_user_and_port(cpu_image):
    config = inspect(cpu_image)
    assert config["Entrypoint"] == ["/usr/local/bin/entrypoint.sh"]
    assert config["User"] not in ("", "0", "root") and not config["User"].startswith("0:")
    assert "8080/tcp" in config["ExposedPorts"]
    assert run(cpu_image, "id -u").strip() != "0"


def test_writable_caches_and_embedded_model(cpu_image):
    out = run(cpu_image, 'touch "$HF_HOME/probe" "$HOME/probe" /tmp/probe && echo writable; '
                         'ls "$SM_DEFAULT_MODEL_DIR"; command -v serve nginx java')
    assert out.startswith("writable")
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
