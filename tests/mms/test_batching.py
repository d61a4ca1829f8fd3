"""The MMS stack batches requests across callers in its front: concurrent requests are
answered exactly as sequential ones, each with its own content type, attributes and
status, on a single-model and a multi-model endpoint (two models)."""

import concurrent.futures
import json
import re
import threading
import time

import pytest

from tests.mms.harness import DEMO_MODEL, MmsServer, demo_model_ready, make_model

pytestmark = pytest.mark.skipif(not demo_model_ready(), reason="demo/model is not built yet")

ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
# A request the demo model needs about a second for: while it runs, the requests sent
# next queue in the front and go to the worker as one batch.
BLOCKER = {"inputs": "block", "parameters": {"max_new_tokens": 400, "min_new_tokens": 400}}


def batches(server) -> list[tuple[str, int]]:
    """(model, size) of every batch the front sent, from its DEBUG log."""
    return [(m, int(n)) for m, n in re.findall(r"model '([^']+)': a batch of (\d+) request", server.log(None))]


def cases(questions: list[str]) -> list[tuple[bytes, str, dict]]:
    """(body, content type, headers): every content type, Accept, parameters, attributes."""
    q = questions
    out = [(json.dumps({"inputs": q[i]}).encode(), "application/json", {}) for i in range(4)]
    out += [
        (json.dumps({"inputs": q[4:7]}).encode(), "application/json", {ATTRIBUTES: "trace=1"}),
        (json.dumps({"inputs": q[7], "parameters": {"max_new_tokens": 2}}).encode(), "application/json", {}),
        ("\n".join(json.dumps({"inputs": x}) for x in q[8:10]).encode(), "application/jsonlines", {}),
        ("\n".join(q[10:13]).encode(), "text/csv", {ATTRIBUTES: "a=b; c"}),
        (q[13].encode(), "text/plain", {}),
        (q[14].encode(), "text/plain", {"Accept": "application/json"}),
        (json.dumps({"inputs": q[15]}).encode(), "application/json", {"Accept": "text/csv"}),
    ]
    return out


def outcome(response) -> tuple:
    return (response.status_code, response.headers["Content-Type"], response.content,
            response.headers.get(ATTRIBUTES))


def send_together(server, path: str, requests: list[tuple[bytes, str, dict]], blocker_path: str | None = None):
    """Send ``requests`` at once, while a blocker keeps the worker busy, so that they
    queue in the front; answers in the same order."""
    start = threading.Barrier(len(requests) + 1)

    def one(request):
        body, content_type, headers = request
        start.wait(30)
        return server.post(path, body, content_type, headers=headers)

    with concurrent.futures.ThreadPoolExecutor(len(requests) + 1) as pool:
        blocker = pool.submit(server.post, blocker_path or path, BLOCKER)
        time.sleep(0.3)  # the blocker is on the worker now
        futures = [pool.submit(one, r) for r in requests]
        start.wait(30)
        answers = [f.result() for f in futures]
        assert blocker.result().status_code == 200
    return answers


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    srv = MmsServer("--model-dir", str(DEMO_MODEL), log_path=tmp_path_factory.mktemp("log") / "single.log",
                    env={"LOG_LEVEL": "DEBUG"})
    try:
        srv.start().wait_ready()
        yield srv
        assert srv.stop() == 0
    finally:
        srv.kill_leftovers()


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for name in ("demo-a", "demo-b"):
        make_model(root, name)
    make_model(root, "legacy", "legacy_inference.py")
    srv = MmsServer("--multi-model", "--model-root", str(root), env={"LOG_LEVEL": "DEBUG"},
                    log_path=tmp_path_factory.mktemp("log") / "multi.log")
    try:
        srv.start().wait_ready()
        for name in ("demo-a", "demo-b", "legacy"):
            assert srv.load(name, root / name).status_code == 200, srv.log()
        yield srv
        assert srv.stop() == 0
    finally:
        srv.kill_leftovers()


def test_single_model_concurrent_answers_equal_sequential_ones(single, qa_pairs):
    requests = cases([p["question"] for p in qa_pairs[:16]])
    sequential = [outcome(single.post("/invocations", *r[:2], headers=r[2])) for r in requests]
    assert all(status == 200 for status, *_ in sequential), sequential
    before = len(batches(single))
    together = send_together(single, "/invocations", requests)
    assert [outcome(r) for r in together] == sequential
    sizes = [n for _, n in batches(single)[before:]]
    assert max(sizes) > 1, f"no batch formed: {sizes}"
    assert sum(sizes) == len(requests) + 1  # the blocker
    # Under sustained load too (no blocker): same answers, in batches.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        again = list(pool.map(lambda r: outcome(single.post("/invocations", *r[:2], headers=r[2])), requests * 3))
    assert again == sequential * 3


def test_one_bad_request_in_a_batch_fails_alone(single, qa_pairs):
    good = [(json.dumps({"inputs": p["question"]}).encode(), "application/json", {}) for p in qa_pairs[20:24]]
    bad = [
        (b"{not json", "application/json", {}, 400),
        (b'{"inputs": "x", "parameters": {"num_beams": "two"}}', "application/json", {}, 400),
        (b'{"inputs": "x"}', "image/png", {}, 415),
        (b'{"inputs": "x"}', "application/json", {"Accept": "application/x-npy"}, 406),
        (b'{"inputs": "x"}', "application/json", {"Accept": "text/event-stream"}, 406),
        (b'{"inputs": "x", "parameters": {"stream": true}}', "application/json", {}, 400),
    ]
    mixed = [good[0], *[b[:3] for b in bad[:3]], good[1], good[2], *[b[:3] for b in bad[3:]], good[3]]
    before = len(batches(single))
    answers = send_together(single, "/invocations", mixed)
    assert max(n for _, n in batches(single)[before:]) > 1
    expected_bad = iter(bad)
    for request, answer in zip(mixed, answers):
        if request in good:
            pair = qa_pairs[20 + good.index(request)]
            assert answer.status_code == 200 and answer.json() == [{"generated_text": pair["answer"]}]
        else:
            status = next(expected_bad)[3]
            assert answer.status_code == status, answer.text
            assert answer.headers["Content-Type"] == "application/json"
            assert answer.json()["code"] == status and "Traceback" not in answer.text
    stream = [a for r, a in zip(mixed, answers) if b"stream" in r[0] or r[2].get("Accept") == "text/event-stream"]
    assert all("does not stream" in a.json()["error"] for a in stream)


def test_multi_model_two_models_concurrent_equal_sequential(multi, qa_pairs):
    questions = [p["question"] for p in qa_pairs[:16]]
    requests = [(f"/models/{'demo-a' if i % 2 else 'demo-b'}/invoke", r) for i, r in enumerate(cases(questions))]
    requests += [("/invocations", (r[0], r[1], {**r[2], "X-Amzn-SageMaker-Target-Model": "demo-a"}))
                 for r in cases(questions)[:4]]
    sequential = [outcome(multi.post(path, *r[:2], headers=r[2])) for path, r in requests]
    assert all(status == 200 for status, *_ in sequential), sequential
    before = len(batches(multi))
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda job: outcome(multi.post(job[0], *job[1][:2], headers=job[1][2])),
                                 requests * 3))
    assert together == sequential * 3
    sent = batches(multi)[before:]
    assert {m for m, _ in sent} == {"demo-a", "demo-b"} and max(n for _, n in sent) > 1, sent


def test_a_script_that_owns_predict_gets_one_request_at_a_time(multi, qa_pairs):
    pairs = qa_pairs[:6]
    before = len(batches(multi))
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda p: multi.invoke("legacy", {"inputs": p["question"]}), pairs))
    assert [a.json() for a in answers] == [[{"generated_text": p["answer"], "convention": "load_model/predict"}]
                                           for p in pairs]
    assert [n for m, n in batches(multi)[before:] if m == "legacy"] == [1] * len(pairs)
