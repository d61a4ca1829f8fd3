"""The flask stack with INFERENCE_BACKEND=ctranslate2, over real HTTP: the same contract as with
transformers, torch-free workers (seen from outside, in /proc), conversion once per cache."""

import concurrent.futures
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.procs import DEMO_MODEL, REPO, Server, children, cmdline

CT2 = {"INFERENCE_BACKEND": "ctranslate2"}
TORCH_LIBRARIES = ("libtorch", "libc10")


def model_with_ctranslate2(target: Path, script: str | None = None) -> Path:
    """The demo model as users ship it converted: HF files + ctranslate2/ (+ code/inference.py),
    converted here as a user does."""
    shutil.copytree(DEMO_MODEL, target, ignore=shutil.ignore_patterns("ctranslate2"))
    done = subprocess.run([sys.executable, "-m", "tools.convert", str(target), str(target / "ctranslate2"),
                           "--quantization", "int8"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    if script:
        (target / "code").mkdir()
        shutil.copyfile(REPO / "tests" / "handlers" / "fixtures" / script, target / "code" / "inference.py")
    return target


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    return model_with_ctranslate2(tmp_path_factory.mktemp("shipped") / "model")


@pytest.fixture(scope="module")
def server(shipped, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache") / "unused"
    with Server(shipped, env={**CT2, "CT2_CACHE_DIR": str(cache)},
                log_path=tmp_path_factory.mktemp("serve") / "serve.log") as srv:
        yield srv
        assert not cache.exists()  # the shipped model was used as is
        assert srv.stop() == 0


def ask(server, question, **parameters):
    body = {"inputs": question, **({"parameters": parameters} if parameters else {})}
    response = server.post(json.dumps(body))
    assert response.status_code == 200, response.text
    return response.json()[0]["generated_text"]


def gunicorn_processes(server) -> tuple[int, list[int]]:
    [master] = [p for p in children(server.proc.pid) if "gunicorn" in cmdline(p)]
    return master, children(master)


def mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_workers_are_torch_free_and_the_master_never_built_a_translator(server, qa_pairs):
    assert ask(server, qa_pairs[0]["question"]) == qa_pairs[0]["answer"]
    master, workers = gunicorn_processes(server)
    assert len(workers) == 1
    for pid in (master, *workers):
        libraries = mapped(pid)
        assert not [lib for lib in TORCH_LIBRARIES if lib in libraries], cmdline(pid)
    assert "libctranslate2" in mapped(workers[0])
    assert "libctranslate2" not in mapped(master)  # threads and CUDA start after the fork


def test_answers_and_every_content_type(server, qa_pairs):
    q = [p["question"] for p in qa_pairs[:4]]
    a = [p["answer"] for p in qa_pairs[:4]]
    assert [ask(server, x) for x in q] == a
    assert [x["generated_text"] for x in server.post(json.dumps({"inputs": q})).json()] == a
    lines = "\n".join(json.dumps({"inputs": x}) for x in q) + "\n"
    r = server.post(lines, "application/jsonlines")
    assert [json.loads(line)["generated_text"] for line in r.text.splitlines()] == a
    assert server.post("\n".join(q) + "\n", "text/csv").text.splitlines() == a
    assert server.post(q[0], "text/plain").text == a[0]


def test_truncation_is_reported_and_a_prompt_near_the_cap_answers(server, qa_pairs):
    long = " ".join(["Where was Ada born?"] * 200)
    assert server.post(json.dumps({"inputs": long})).json()[0]["truncated"] is True
    huge = "Where was Ada born ? " * (5 * 1024 * 1024 // 21)
    r = server.post(json.dumps({"inputs": huge}))
    assert r.status_code == 200, r.text[:300]
    assert r.json()[0]["truncated"] is True
    assert "truncated" not in server.post(json.dumps({"inputs": qa_pairs[0]["question"]})).json()[0]


def test_streaming_and_stop_sequences(server, qa_pairs):
    question, answer = next((p["question"], p["answer"]) for p in qa_pairs if len(p["answer"].split()) >= 3)
    with server.post(json.dumps({"inputs": question, "parameters": {"stream": True}}), stream=True,
                     headers={"Accept": "text/event-stream"}) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in r.iter_lines(decode_unicode=True)
                  if line.startswith("data: ")]
    tokens = [e["token"]["text"] for e in events if "token" in e]
    assert len(tokens) >= 2 and "".join(tokens) == answer
    assert events[-1] == {"generated_text": answer}
    stop = answer.split()[1]
    assert ask(server, question, stop=stop) == answer[:answer.find(stop)]


def test_concurrent_requests_batch_and_match_sequential_answers(server, qa_pairs):
    questions = [p["question"] for p in qa_pairs[:16]]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda q: ask(server, q), questions))
    assert answers == [p["answer"] for p in qa_pairs[:16]]


def test_seed_is_a_400_among_good_requests_and_beam_search_runs(server, qa_pairs):
    good = [json.dumps({"inputs": p["question"]}) for p in qa_pairs[:4]]
    bad = json.dumps({"inputs": qa_pairs[5]["question"], "parameters": {"do_sample": True, "seed": 1}})
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        responses = list(pool.map(server.post, good[:2] + [bad] + good[2:]))
    assert [r.status_code for r in responses] == [200, 200, 400, 200, 200]
    error = responses[2].json()
    assert error["code"] == 400 and "'seed'" in error["error"] and "CTranslate2" in error["error"]
    with server.post(bad, stream=True, headers={"Accept": "text/event-stream"}) as r:
        assert r.status_code == 400  # streaming refuses it before the first byte
    # beam search with the model's defaults (early_stopping false) and its other parameters
    for parameters in ({}, {"early_stopping": True}, {"repetition_penalty": 1.3}, {"no_repeat_ngram_size": 3},
                       {"min_new_tokens": 1}, {"do_sample": True}):
        assert ask(server, qa_pairs[0]["question"], num_beams=3, **parameters) == qa_pairs[0]["answer"]


def test_user_script_calling_our_default_hooks(tmp_path, qa_pairs):
    model_dir = model_with_ctranslate2(tmp_path / "model", script="only_predict_fn.py")
    with Server(model_dir, env=CT2, log_path=tmp_path / "serve.log") as srv:
        r = srv.post(json.dumps({"inputs": qa_pairs[0]["question"]}))
        assert r.status_code == 200, r.text
        assert r.json() == {"answer": qa_pairs[0]["answer"], "data_type": "dict"}
        [worker] = gunicorn_processes(srv)[1]
        assert not [lib for lib in TORCH_LIBRARIES if lib in mapped(worker)]


def both_workers_loaded(srv, timeout_s: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        workers = gunicorn_processes(srv)[1]
        try:
            if len(workers) == 2 and all("libctranslate2" in mapped(w) for w in workers):
                return workers
        except FileNotFoundError:  # a worker exited between the listing and the read
            pass
        assert time.monotonic() < deadline, f"2 workers with CTranslate2 loaded, got {workers}"
        time.sleep(0.05)


def test_an_unconverted_model_converts_once_for_two_workers_then_starts_from_the_cache(tmp_path, qa_pairs):
    cache = tmp_path / "cache"
    env = {**CT2, "CT2_CACHE_DIR": str(cache), "SAGEMAKER_MODEL_SERVER_WORKERS": "2"}
    checkpoint = shutil.copytree(DEMO_MODEL, tmp_path / "model", ignore=shutil.ignore_patterns("ctranslate2"))
    for start in ("first", "second"):
        log = tmp_path / f"{start}.log"
        with Server(checkpoint, env=env, log_path=log) as srv:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda p: ask(srv, p["question"]), qa_pairs[:16]))
            assert answers == [p["answer"] for p in qa_pairs[:16]]
            workers = both_workers_loaded(srv)  # gunicorn forks the second up to 0.1 s later
            assert all("libtorch" not in mapped(w) for w in workers)
        conversions = log.read_text().count("to CTranslate2 (int8) in a subprocess")
        assert conversions == (1 if start == "first" else 0), log.read_text()[-3000:]
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1


def test_a_failed_conversion_exits_non_zero_and_never_pings_200(tmp_path):
    broken = shutil.copytree(DEMO_MODEL, tmp_path / "model", ignore=shutil.ignore_patterns("ctranslate2"))
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    srv = Server(broken, env={**CT2, "CT2_CACHE_DIR": str(tmp_path / "cache")},
                 log_path=tmp_path / "serve.log").start()
    try:
        deadline = time.monotonic() + 120
        while srv.proc.poll() is None and time.monotonic() < deadline:
            try:
                assert requests.get(srv.url + "/ping", timeout=5).status_code != 200
            except requests.RequestException:
                pass
            time.sleep(0.2)
        assert srv.proc.poll() not in (None, 0)
        assert "to CTranslate2 failed" in srv.log()
    finally:
        srv.stop()
