"""The MMS stack with INFERENCE_BACKEND=ctranslate2, single-model and multi-model, on real MMS:
right answers, torch-free processes (seen from /proc, and from inside a live worker), each
checkpoint converted once into CT2_CACHE_DIR (in a subprocess, also when two workers start
together) and reused by a second model with the same weights, a shipped ``ctranslate2/`` used
as is, and a listener (MMS's process that forks the workers) that only imports."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mms.harness import MIB, MmsServer, demo_model_ready, make_model, running, wait_until
from tests.procs import REPO, alive, children

pytestmark = pytest.mark.skipif(not demo_model_ready(), reason="demo/model is not built yet")

CT2 = {"INFERENCE_BACKEND": "ctranslate2"}
TORCH_LIBRARIES = ("libtorch", "libc10")
CONVERTING = "to CTranslate2 (int8) in a subprocess"


def mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def torch_mapped(pid: int) -> list[str]:
    return [lib for lib in TORCH_LIBRARIES if lib in mapped(pid)]


def listener_and_workers(server: MmsServer, name: str) -> tuple[int, list[int]]:
    """MMS's listener for ``name`` (it imported the model code, then forked) and its workers."""
    pids = server.model_workers(name)
    [listener] = [p for p in pids if any(c in pids for c in children(p))]
    return listener, [p for p in pids if p != listener]


def assert_only_imports_before_the_fork(server: MmsServer, name: str, workers: int) -> list[int]:
    """The listener imported CTranslate2 (shared with the workers it forked) but never built a
    Translator: it runs one thread (a Translator starts its own); no process maps torch."""
    listener, forked = listener_and_workers(server, name)
    assert len(forked) == workers
    assert threads(listener) == 1
    assert "libctranslate2" in mapped(listener)
    for pid in (server.proc.pid, listener, *forked):  # the front, the listener, each worker
        assert torch_mapped(pid) == [], pid
    assert all("libctranslate2" in mapped(pid) for pid in forked)
    return forked


def ask(server: MmsServer, path: str, question: str) -> str:
    r = server.post(path, {"inputs": question})
    assert r.status_code == 200, r.text
    return r.json()[0]["generated_text"]


@pytest.fixture(scope="module")
def ct2_model(tmp_path_factory) -> Path:
    """The demo model as a user ships it converted: HF files + ctranslate2/ (int8)."""
    target = make_model(tmp_path_factory.mktemp("shipped"), "model", converted=False)
    done = subprocess.run([sys.executable, "-m", "tools.convert", str(target), str(target / "ctranslate2"),
                           "--quantization", "int8"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return target


def test_single_model_converts_once_for_two_workers_starting_together(tmp_path, qa_pairs):
    cache = tmp_path / "cache"
    model = make_model(tmp_path, "model", converted=False)  # a checkpoint without ctranslate2/
    srv = MmsServer("--model-dir", str(model), via_serve=True, log_path=tmp_path / "mms.log",
                    env={**CT2, "SERVING_STACK": "mms", "CT2_CACHE_DIR": str(cache),
                         "SAGEMAKER_MODEL_SERVER_WORKERS": "2"})
    with running(srv):
        pairs = qa_pairs[:8]
        assert [ask(srv, "/invocations", p["question"]) for p in pairs] == [p["answer"] for p in pairs]
        assert_only_imports_before_the_fork(srv, "model", workers=2)
        assert srv.full_log().count(CONVERTING) == 1, srv.log()
        assert [p.name.endswith("-int8") for p in cache.iterdir() if p.is_dir()] == [True]


@pytest.fixture(scope="module")
def root(tmp_path_factory, ct2_model) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_model(root, "plain", converted=False)  # converted on its first load
    make_model(root, "same-weights", "modules_inference.py", converted=False)  # reuses plain's conversion
    shutil.copytree(ct2_model, root / "shipped")  # used as is
    broken = make_model(root, "broken", converted=False)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    return root


@pytest.fixture(scope="module")
def mme(root, tmp_path_factory):
    # 400 MiB for all models: a torch-sized first guess (2 x 400 MiB) would refuse the first load.
    srv = MmsServer("--multi-model", "--model-root", str(root), "--workers", "2", "--memory-budget-mb", "400",
                    "--memory-reserve-mb", "0", log_path=tmp_path_factory.mktemp("log") / "mms.log",
                    env={**CT2, "CT2_CACHE_DIR": str(root.parent / "cache")})
    with running(srv):
        yield srv


def test_multi_model_loads_convert_once_per_checkpoint_and_serve(mme, root, qa_pairs):
    cache = root.parent / "cache"
    pairs = qa_pairs[10:14]
    for name in ("plain", "same-weights", "shipped"):
        r = mme.load(name, root / name)
        assert r.status_code == 200, r.text + mme.log()
        assert 0 < r.json()["memoryPssBytes"] < 100 * MIB  # two CTranslate2 workers and their listener
        assert mme.full_log().count(CONVERTING) == 1, mme.log()  # plain's, reused by same-weights
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1
    assert f"loaded {root / 'shipped' / 'ctranslate2'} with CTranslate2" in mme.full_log()
    for name in ("plain", "shipped"):
        assert [ask(mme, f"/models/{name}/invoke", p["question"]) for p in pairs] == [p["answer"] for p in pairs]
        assert_only_imports_before_the_fork(mme, name, workers=2)


def test_a_live_worker_has_imported_no_torch_or_transformers(mme, qa_pairs):
    forked = listener_and_workers(mme, "same-weights")[1]
    seen = set()
    for pair in qa_pairs[:6]:
        r = mme.invoke("same-weights", {"inputs": pair["question"]})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["answer"] == pair["answer"] and answer["torch_or_transformers"] == []
        seen.add(answer["pid"])
    assert seen <= set(forked) and seen


def test_a_failed_conversion_is_a_clear_error_and_the_endpoint_keeps_serving(mme, root, qa_pairs):
    r = mme.load("broken", root / "broken")
    assert r.status_code == 422, r.text
    assert "to CTranslate2 failed" in r.json()["error"] and r.json()["code"] == 422
    assert "broken" not in [m["modelName"] for m in mme.get("/models").json()["models"]]
    assert mme.get("/ping").status_code == 200


def test_unloading_returns_the_processes(mme, root):
    pids = [p for name in ("plain", "same-weights", "shipped") for p in mme.model_workers(name)]
    assert pids
    for name in ("plain", "same-weights", "shipped"):
        assert mme.delete(f"/models/{name}").status_code == 200
    assert wait_until(lambda: not [p for p in pids if alive(p)], 15)
    assert mme.get("/models").json()["models"] == []
