"""The CTranslate2 backend on CUDA: run where a GPU exists and CUDA 12's cuBLAS loads
(CTranslate2's wheel dlopens libcublas.so.12); skipped elsewhere, with the reason.

    python -m pytest tests/gpu -v
"""

import json
import os
import shutil
from pathlib import Path

import ctranslate2
import pytest

from handlers.cuda import preload_cublas12
from tests.procs import DEMO_MODEL, Server, children, cmdline

CUBLAS = preload_cublas12()  # counting devices is not enough: a CUDA 13 machine has no cuBLAS 12
pytestmark = [pytest.mark.skipif(ctranslate2.get_cuda_device_count() == 0, reason="no CUDA device here"),
              pytest.mark.skipif(not CUBLAS.ok, reason=str(CUBLAS))]


def exact_match(model, qa_pairs) -> float:
    from handlers import predict
    answers = predict(model, [p["question"] for p in qa_pairs])
    return sum(a["generated_text"] == p["answer"] for a, p in zip(answers, qa_pairs)) / len(qa_pairs)


@pytest.mark.parametrize("compute_type", ["bfloat16", "int8_bfloat16", "float32"])
def test_demo_model_on_cuda_matches_transformers_on_cpu(qa_pairs, tmp_path, compute_type):
    from handlers import HandlerConfig, load_model
    reference = exact_match(load_model(DEMO_MODEL, HandlerConfig(device="cpu")), qa_pairs)
    model = load_model(DEMO_MODEL, HandlerConfig(backend="ctranslate2", device="cuda", compute_type=compute_type,
                                                 ct2_cache_dir=str(tmp_path)))
    assert model.engine.translator.device == "cuda"
    exact = exact_match(model, qa_pairs)
    print(f"exact match: ctranslate2 {compute_type} on cuda {exact:.1%}, transformers fp32 cpu {reference:.1%}")
    assert exact >= reference - 0.02


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                    reason="the flask stack needs nginx, which this machine lacks")
def test_flask_stack_on_cuda_builds_a_translator_per_worker_after_the_fork(qa_pairs, tmp_path):
    # The server's workers load cuBLAS themselves: from the loader's path (the image registers it
    # with ldconfig) or, until the engine preloads it, from LD_LIBRARY_PATH.
    env = {"INFERENCE_BACKEND": "ctranslate2", "CT2_CACHE_DIR": str(tmp_path / "cache"),
           "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
           "LD_LIBRARY_PATH": ":".join(dict.fromkeys([*(str(Path(p).parent) for p in CUBLAS.loaded if "/" in p),
                                                      *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":"))]))}
    with Server(DEMO_MODEL, env=env, log_path=tmp_path / "serve.log") as srv:
        for pair in qa_pairs[:8]:
            r = srv.post(json.dumps({"inputs": pair["question"]}))
            assert r.status_code == 200, r.text
            assert r.json()[0]["generated_text"] == pair["answer"]
        [master] = [p for p in children(srv.proc.pid) if "gunicorn" in cmdline(p)]
        workers = children(master)
        maps = {pid: Path(f"/proc/{pid}/maps").read_text() for pid in (master, *workers)}
        assert "libcuda" not in maps[master] and "libtorch" not in maps[master]
        assert all("libcuda" in maps[w] and "libtorch" not in maps[w] for w in workers)
    assert "on cuda" in (tmp_path / "serve.log").read_text()
