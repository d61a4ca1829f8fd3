"""GPU checks: run where CUDA exists (skipped elsewhere, e.g. CI), by hand or on a lent GPU.

    python -m pytest tests/gpu -v
"""

import json
import os
import subprocess
import sys
import time

import pytest
import requests
import torch

from handlers.cuda import native_bf16
from tests.procs import DEMO_MODEL, REPO, free_port

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def test_demo_model_on_cuda_in_bf16_answers_like_fp32_cpu(qa_pairs):
    from handlers import HandlerConfig, load_model, predict
    gpu = load_model(DEMO_MODEL, HandlerConfig(backend="transformers"))
    assert gpu.engine.device.type == "cuda"
    # bf16 only where the GPU computes it (is_bf16_supported() also says yes on T4 and V100)
    assert next(gpu.engine.model.parameters()).dtype == (
        torch.bfloat16 if native_bf16(torch.cuda.get_device_capability()) else torch.float32)
    cpu = load_model(DEMO_MODEL, HandlerConfig(backend="transformers", device="cpu"))
    questions = [p["question"] for p in qa_pairs]
    gpu_answers = [a["generated_text"] for a in predict(gpu, questions)]
    cpu_answers = [a["generated_text"] for a in predict(cpu, questions)]
    expected = [p["answer"] for p in qa_pairs]
    gpu_exact = sum(a == e for a, e in zip(gpu_answers, expected)) / len(expected)
    cpu_exact = sum(a == e for a, e in zip(cpu_answers, expected)) / len(expected)
    print(f"exact match: cuda {gpu_exact:.1%}, cpu fp32 {cpu_exact:.1%}")
    assert gpu_exact >= 0.95
    fp32 = load_model(DEMO_MODEL, HandlerConfig(backend="transformers", dtype="float32"))
    assert [a["generated_text"] for a in predict(fp32, questions)] == cpu_answers


def test_gunicorn_worker_loads_on_cuda_after_fork(qa_pairs, tmp_path):
    """With CUDA the master must not load (CUDA cannot cross a fork): each worker does."""
    from contract.settings import Settings
    port = free_port()
    settings = Settings(model_dir=str(DEMO_MODEL), workers=2, timeout_s=30)
    env = dict(os.environ, SERVE_SETTINGS=settings.to_json(), SERVE_UPSTREAM=f"127.0.0.1:{port}")
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "python:serve.gunicorn_conf",
                             "serve.wsgi:app"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            time.sleep(0.2)
        for pair in qa_pairs[:8]:
            r = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=30,
                              data=json.dumps({"inputs": pair["question"]}),
                              headers={"Content-Type": "application/json"})
            assert r.status_code == 200, r.text
            assert r.json()[0]["generated_text"] == pair["answer"]
        assert "on cuda" in (tmp_path / "gunicorn.log").read_text()
    finally:
        proc.terminate()
        proc.wait(30)
