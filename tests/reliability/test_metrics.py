"""/metrics on both stacks: after a known mix of good and bad requests, every counter and
histogram count equals what was sent (scraped through nginx, parsed with prometheus_client's
parser); batches show under concurrency; whole answers carry Server-Timing; nginx's own
answers stay outside; label values are bounded (a model label only while it is loaded).

Good requests ask for exactly N tokens (min_new_tokens = max_new_tokens), so the generated
tokens are known; input tokens are counted with the model's own tokenizer.
"""

import concurrent.futures
import json
import os
import re
import signal
import threading
import time

import pytest
import tokenizers

from contract import metrics
from tests.mms.harness import MmsServer, make_model
from tests.procs import DEMO_MODEL, REPO, http_request
from tests.reliability.conftest import QUESTION
from tests.scrape import Samples, scrape

JSON = {"Content-Type": "application/json"}
TIMING = re.compile(r"queue;dur=(\d+\.\d), engine;dur=(\d+\.\d)")
# ~150 ms of generation for the demo model: concurrent requests queue behind running ones.
CONCURRENT_TOKENS = 60
TOKENIZER = tokenizers.Tokenizer.from_file(str(DEMO_MODEL / "ctranslate2" / "tokenizer.json"))


def tokens(prompt: str) -> int:
    return len(TOKENIZER.encode(prompt).ids)  # with the closing </s>, as the engine reads it


def body(inputs, n: int, **parameters) -> bytes:
    return json.dumps({"inputs": inputs, "parameters": {"max_new_tokens": n, "min_new_tokens": n,
                                                        **parameters}}).encode()


def settled(port: int, before: Samples, expect: dict, timeout: float = 10) -> Samples:
    """The scrape's change since ``before`` once these counts are reached: a request is
    counted when its last byte is sent, a moment after the client has it."""
    deadline = time.monotonic() + timeout
    while True:
        delta = scrape(port).minus(before)
        if all(delta.get(key, 0.0) >= n for key, n in expect.items()) or \
                time.monotonic() > deadline:
            return delta
        time.sleep(0.1)


def timing(answer) -> tuple[float, float]:
    match = TIMING.fullmatch(answer.headers.get("server-timing", ""))
    assert match, answer.headers
    return float(match[1]), float(match[2])


def ask_together(port: int, questions: list[str]) -> list:
    start = threading.Barrier(len(questions))

    def one(question):
        start.wait(30)
        began = time.monotonic()
        answer = http_request(port, "POST", "/invocations", body(question, CONCURRENT_TOKENS), JSON)
        return answer, time.monotonic() - began

    with concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:
        return list(pool.map(one, questions))


def test_counters_and_histograms_equal_what_was_sent(stack, qa_pairs):
    port, model = stack.port, {"model": "model"}
    questions = [p["question"] for p in qa_pairs[:12]]
    before = scrape(port)
    assert before.value("serve_info", stack=stack.kind, backend="ctranslate2", compute_type="int8",
                        device="cpu", version="0.1.0") == 1
    assert before.value("serve_models_loaded") == 1

    # Concurrent: 8 callers at once onto the engine's lanes; the ones that wait share calls.
    answers = ask_together(port, questions[:8])
    for answer, elapsed in answers:
        assert answer.status == 200, answer.body
        queue, engine = timing(answer)
        assert queue + engine <= elapsed * 1000 + 1
    delta = settled(port, before, {("serve_batch_size_sum", (("model", "model"),)): 8})
    assert delta.value("serve_batch_size_sum", **model) == 8
    assert delta.value("serve_batch_size_count", **model) < 8, "no engine call held two prompts"

    # Good requests of several prompts (and a stream, where the stack streams), then bad ones.
    pairs = [questions[8:10], questions[10:12]]
    for pair in pairs:
        answer = http_request(port, "POST", "/invocations", body(pair, 4), JSON)
        assert answer.status == 200 and len(json.loads(answer.body)) == 2
        timing(answer)
    stream = http_request(port, "POST", "/invocations", body(QUESTION, 8),
                          {**JSON, "Accept": "text/event-stream"})
    streamed = stack.kind == "flask"
    assert stream.status == (200 if streamed else 406)
    assert "server-timing" not in stream.headers  # its headers leave before the engine starts
    bad = [(b'{"inputs": "x"', JSON, 400), (b'{"inputs": "x", "inputs": "y"}', JSON, 400),
           (body("x", 4, num_beams=99), JSON, 400), (b"x", {"Content-Type": "image/png"}, 415),
           (body("x", 4), {**JSON, "Accept": "image/png"}, 406)]
    for data, headers, status in bad:
        answer = http_request(port, "POST", "/invocations", data, headers)
        assert answer.status == status, answer.body
        assert "server-timing" not in answer.headers
    assert http_request(port, "GET", "/invocations").status == 405
    assert http_request(port, "GET", "/no/such/path").status == 404
    # nginx answers these itself: outside the app's counters.
    assert http_request(port, "POST", "/invocations", b"x" * (6 * 1024 * 1024 + 1), JSON).status == 413
    assert http_request(port, "TRACE", "/ping").status == 405
    for _ in range(3):
        assert http_request(port, "GET", "/ping").status == 200

    good = 8 + len(pairs) + streamed
    failed = len(bad) + (not streamed)
    expect = {("serve_requests_total", (("model", "model"), ("route", "invocations"), ("status", "200"))): good,
              ("serve_requests_total", (("model", ""), ("route", "ping"), ("status", "200"))): 3}
    delta = settled(port, before, expect)
    requests = {labels: n for labels, n in delta.series("serve_requests_total").items() if n}
    by_status = {}
    for labels, n in requests.items():
        key = (dict(labels)["route"], dict(labels)["model"], dict(labels)["status"])
        by_status[key] = n
    metrics_scrapes = by_status.pop(("metrics", "", "200"))
    assert 1 <= metrics_scrapes <= 20
    assert by_status == {
        ("invocations", "model", "200"): good, ("invocations", "model", "400"): 3,
        ("invocations", "model", "415"): 1, ("invocations", "model", "406"): 1 + (not streamed),
        ("invocations", "", "405"): 1, ("none", "", "404"): 1, ("ping", "", "200"): 3}
    assert delta.value("serve_request_duration_seconds_count", **model) == good + failed
    assert delta.value("serve_queue_duration_seconds_count", **model) == good
    assert delta.value("serve_engine_duration_seconds_count", **model) == good
    prompts = questions[:8] + [q for pair in pairs for q in pair] + [QUESTION] * streamed
    assert delta.value("serve_batch_size_sum", **model) == len(prompts)
    assert delta.value("serve_input_tokens_total", **model) == sum(map(tokens, prompts))
    assert delta.value("serve_generated_tokens_total", **model) == \
        8 * CONCURRENT_TOKENS + 2 * 4 * len(pairs) + 8 * streamed
    for histogram in ("serve_request_duration_seconds", "serve_queue_duration_seconds", "serve_batch_size"):
        assert delta.value(f"{histogram}_bucket", le="+Inf", **model) == delta.value(f"{histogram}_count", **model)
    after = scrape(port)
    assert after.value("serve_queue_depth", **model) == 0
    assert not [key for key in after if "413" in str(key)]


def test_a_replaced_worker_keeps_its_counts(stack):
    """The flask stack's workers write their counts to files that /metrics adds up
    (prometheus_client's multiprocess mode): a killed worker's requests still count."""
    if stack.kind != "flask":
        pytest.skip("the multi-model stack's app is one process (its counts live in it)")
    ok = {"route": "invocations", "model": "model", "status": "200"}
    before = scrape(stack.port)
    for _ in range(3):
        assert http_request(stack.port, "POST", "/invocations", body(QUESTION, 2), JSON).status == 200
    assert settled(stack.port, before, {("serve_requests_total", tuple(sorted(ok.items()))): 3}) \
        .value("serve_requests_total", **ok) == 3
    [worker] = stack.model_pids()
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while stack.model_pids() in ([], [worker]) or http_request(stack.port, "GET", "/ping").status != 200:
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.2)
    assert http_request(stack.port, "POST", "/invocations", body(QUESTION, 2), JSON).status == 200
    delta = settled(stack.port, before, {("serve_requests_total", tuple(sorted(ok.items()))): 4})
    assert delta.value("serve_requests_total", **ok) == 4
    assert delta.value("serve_batch_size_sum", model="model") == 4
    assert len(scrape(stack.port).series("serve_queue_depth")) == 1  # the live worker's only


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_model(root, "m1")
    server = MmsServer("--multi-model", "--model-root", str(root), "--workers", "1",
                       log_path=tmp_path_factory.mktemp("log") / "mms.log")
    try:
        server.start().wait_ready()
        yield server
        assert server.stop() == 0
    finally:
        server.kill_leftovers()


def test_multi_model_loads_unloads_and_labels_only_loaded_models(multi):
    port = multi.port
    before = scrape(port)
    assert before.value("serve_models_loaded") == 0
    assert before.value("serve_info", stack="mms", backend="auto", compute_type="auto", device="auto",
                        version="0.1.0") == 1
    assert multi.load("m1", "m1").status_code == 200
    assert multi.load("m1", "m1").status_code == 409
    assert multi.load("m2", "missing").status_code == 404
    for _ in range(3):
        assert multi.invoke("m1", body(QUESTION, 3)).status_code == 200
    assert multi.invoke("m1", b"{bad").status_code == 400
    assert multi.invoke("ghost", body(QUESTION, 3)).status_code == 404
    loaded = settled(port, before, {("serve_requests_total", (("model", "m1"), ("route", "invoke"),
                                                              ("status", "200"))): 3})
    assert loaded.value("serve_requests_total", route="invoke", model="m1", status="400") == 1
    assert loaded.value("serve_requests_total", route="invoke", model="", status="404") == 1
    assert loaded.value("serve_generated_tokens_total", model="m1") == 9
    assert loaded.value("serve_model_loads_total", outcome="ok") == 1
    assert loaded.value("serve_model_loads_total", outcome="409") == 1
    assert loaded.value("serve_model_loads_total", outcome="404") == 1
    assert loaded.value("serve_model_load_duration_seconds_count") == 1
    now = scrape(port)
    assert now.value("serve_models_loaded") == 1
    assert now.value("serve_model_memory_bytes", model="m1", kind="pss") > 10 * 1024 * 1024
    assert not [k for k in now if ("model", "ghost") in k[1]]

    assert multi.delete("/models/m1").status_code == 200
    assert multi.delete("/models/m1").status_code == 404
    assert multi.invoke("m1", body(QUESTION, 3)).status_code == 404
    gone = settled(port, before, {("serve_model_unloads_total", (("outcome", "404"),)): 1,
                                  ("serve_requests_total", (("model", ""), ("route", "invoke"),
                                                            ("status", "404"))): 2})
    assert gone.value("serve_model_unloads_total", outcome="ok") == 1
    assert gone.value("serve_requests_total", route="invoke", model="", status="404") == 2
    after = scrape(port)
    assert after.value("serve_models_loaded") == 0
    assert not [key for key in after if ("model", "m1") in key[1]], "an unloaded model's series stayed"


def test_the_example_dashboard_asks_only_for_what_the_server_exposes():
    """docs/grafana-dashboard.json: every series a panel queries is one /metrics serves."""
    exposed = set()
    for family in metrics.REGISTRY.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        exposed |= {family.name + suffix for suffix in suffixes}
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\bserve_[a-z_]+", target["expr"])}
    assert len(dashboard["panels"]) >= 6 and queried, dashboard["panels"]
    assert queried <= exposed, queried - exposed
