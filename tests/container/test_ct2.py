"""The CPU image with INFERENCE_BACKEND=ctranslate2: the demo model baked in converted (int8,
``/opt/ml/demo-model/ctranslate2``) serves with no conversion at start on the flask and the
multi-model stack; a read-only HF checkpoint without ``ctranslate2/`` is converted once into
the cache inside the container and served. No process in the container maps torch."""

import shutil
from pathlib import Path

import pytest
import requests

from tests.container.conftest import MEASURED
from tests.container.docker_run import Container
from tests.procs import DEMO_MODEL

CT2 = {"INFERENCE_BACKEND": "ctranslate2"}
BAKED = "/opt/ml/demo-model"
CACHE = "/home/model-server/.cache/flan-t5-serving/ctranslate2"  # CT2_CACHE_DIR's default in the image
CONVERTING = "to CTranslate2 (int8) in a subprocess"


def ask(url: str, path: str, question: str) -> str:
    r = requests.post(url + path, json={"inputs": question}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()[0]["generated_text"]


def torch_mappers(container: Container) -> str:
    """Processes in the container that map torch's libraries (none, with CTranslate2)."""
    found = container.exec("sh", "-c", "grep -l -E 'libtorch|libc10' /proc/[0-9]*/maps || true")
    assert found.returncode == 0, found.stderr
    return found.stdout.strip()


def cached_models(container: Container) -> list[str]:
    found = container.exec("sh", "-c", f"ls {CACHE} 2>/dev/null || true")
    return [name for name in found.stdout.split() if not name.endswith(".lock")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The demo model's HF files alone (no ctranslate2/), to mount read-only."""
    target = tmp_path_factory.mktemp("hf") / "model"
    shutil.copytree(DEMO_MODEL, target, ignore=shutil.ignore_patterns("ctranslate2", "code"))
    target.chmod(0o755)
    return target


def test_flask_stack_serves_the_baked_converted_demo_without_converting(cpu_image, qa_pairs):
    container = Container(cpu_image, args=(), env=CT2).start()  # `docker run -e ... IMAGE`
    try:
        container.wait_ready()
        MEASURED["cold start to first 200 /ping, single-model, ctranslate2, baked demo"] = \
            f"{container.cold_start_s:.1f} s"
        for pair in qa_pairs[:8]:
            assert ask(container.url, "/invocations", pair["question"]) == pair["answer"]
        logs = container.logs(tail=2000)
        assert f"loaded {BAKED}/ctranslate2 with CTranslate2 (int8 on cpu" in logs, logs
        assert CONVERTING not in logs and cached_models(container) == []
        assert torch_mappers(container) == ""
        assert container.stop() == 0, container.logs()
    finally:
        container.remove()


def test_flask_stack_converts_a_read_only_checkpoint_into_the_cache(cpu_image, checkpoint, qa_pairs):
    container = Container(cpu_image, env=CT2, volumes=((str(checkpoint), "/opt/ml/model", "ro"),)).start()
    try:
        container.wait_ready()
        for pair in qa_pairs[8:12]:
            assert ask(container.url, "/invocations", pair["question"]) == pair["answer"]
        logs = container.logs(tail=2000)
        assert logs.count(f"converting /opt/ml/model {CONVERTING}") == 1, logs
        [converted] = cached_models(container)
        assert converted.endswith("-int8") and f"loaded {CACHE}/{converted} with CTranslate2" in logs
        assert torch_mappers(container) == ""  # the conversion ran in a process of its own, now gone
        assert container.stop() == 0, container.logs()
    finally:
        container.remove()


def test_multi_model_stack_serves_the_baked_model_and_converts_a_mounted_one(cpu_image, checkpoint, qa_pairs):
    env = {**CT2, "SAGEMAKER_MULTI_MODEL": "true", "SERVE_MODEL_ROOT": "/opt/ml"}  # the baked demo is a url
    container = Container(cpu_image, env=env, volumes=((str(checkpoint), "/opt/ml/models/demo", "ro"),)).start()
    try:
        container.wait_ready()
        r = requests.post(container.url + "/models", json={"model_name": "baked", "url": BAKED}, timeout=180)
        assert r.status_code == 200, r.text
        logs = container.logs(tail=2000)
        assert f"loaded {BAKED}/ctranslate2 with CTranslate2" in logs and CONVERTING not in logs, logs
        r = requests.post(container.url + "/models", json={"model_name": "mounted", "url": "/opt/ml/models/demo"},
                          timeout=300)
        assert r.status_code == 200, r.text
        assert r.json()["memoryPssBytes"] < 100 * 1024 * 1024  # two CTranslate2 workers and their listener
        logs = container.logs(tail=2000)
        assert logs.count(CONVERTING) == 1 and len(cached_models(container)) == 1, logs
        for name in ("baked", "mounted"):
            for pair in qa_pairs[20:24]:
                assert ask(container.url, f"/models/{name}/invoke", pair["question"]) == pair["answer"]
        assert torch_mappers(container) == ""
        assert container.stop() == 0, container.logs()
    finally:
        container.remove()
